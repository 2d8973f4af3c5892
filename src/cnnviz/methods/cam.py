"""Class activation maps (CAM family) computed at a convolutional layer.

Every map here is a weighted combination of the layer's activations ``A`` (shape ``(N, K, h, w)``)
for a target score ``y``; the methods differ in the weights. They return the raw, signed
combination; the papers' ReLU is applied by post-processing (:func:`cnnviz.postprocess.relu`,
the default :class:`~cnnviz.postprocess.Display.POSITIVE`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnviz.methods.base import Explanation, Method, check_finite, gradient_pass, register
from cnnviz.postprocess import Display
from cnnviz.targets import TargetSpec


class GradientCAM(Method):
    """Base of the gradient-weighted CAMs: one forward, one backward to the layer per target.

    Subclasses override :meth:`combine`, mapping activations ``A`` and gradients ``∂y/∂A``
    (both ``(N, K, h, w)``) to the raw map ``(N, h, w)``.
    """

    needs_layer = True
    display = Display.POSITIVE

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        if layer is None:
            raise ValueError(f"{self.title} needs a layer")
        run = gradient_pass(model, x, layer=layer, target=target, class_names=class_names)
        if run.value.dim() != 4:
            from cnnviz.errors import LayerError

            raise LayerError(
                f"{self.title} needs a layer with a spatial (N, C, H, W) output; {layer!r} gives "
                f"shape {tuple(run.value.shape)}. Choose a convolutional layer."
            )
        maps = torch.stack([self.combine(run.value, dA) for dA in run.grads], dim=1)
        check_finite(maps, f"The {self.title} map")
        return Explanation(
            method=self.name,
            maps=maps.detach(),
            layer=layer,
            targets=run.targets,
            scores=run.scores,
            probabilities=run.probabilities,
            input_size=(x.shape[-2], x.shape[-1]),
            display=self.display,
        )


@register
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017).

    α_k = (1 / hw) Σ_ij ∂y/∂A^k_ij,   map = Σ_k α_k A^k   (the paper's map is ReLU(map)),

    with ``y`` the pre-softmax score of the target. Example::

        >>> from cnnviz import explain
        >>> e = explain(model, x, "gradcam", layer="conv5_2", target="espresso")
        >>> e.maps.shape  # (N, 1, h, w), raw and signed
    """

    name = "gradcam"
    title = "Grad-CAM"
    paper = "Selvaraju et al., ICCV 2017"
    summary = "Layer activations weighted by the spatial mean of their gradients."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        alpha = dA.mean(dim=(2, 3), keepdim=True)
        return (alpha * A).sum(dim=1)
