"""One forward pass kept with its autograd graph above a layer, explained again and again.

An interactive explorer asks the same image many questions at one layer: Grad-CAM for this class,
then that one, then Grad-CAM++ or Layer-CAM. Each is a weighted combination of the layer's
activations ``A`` whose weights come from ``∂y_c/∂A`` (:class:`~cnnviz.methods.cam.GradientCAM`)
or from ``A`` alone (:class:`~cnnviz.methods.cam.ActivationCAM`). :class:`LayerGraph` runs the
forward pass once — the part below the layer without autograd, as
:class:`~cnnviz.capture.hooks.GradFrom` ``LAYERS`` does — and keeps the output with the graph from
``A`` up. A new class then costs one backward pass through the layers above ``A`` (for the last
convolutional block, the head), a new CAM method only its own arithmetic. The maps are those of
the method's own :meth:`~cnnviz.methods.base.Method.explain` (tested equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cnnviz.capture.forward import autograd_enabled
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import LayerError
from cnnviz.methods.base import Explanation, Method, check_finite, explained_scores
from cnnviz.methods.cam import ActivationCAM, GradientCAM, LayerPass, require_spatial


def uses_layer_graph(method: Method | type[Method]) -> bool:
    """Whether :meth:`LayerGraph.explain` answers ``method`` (the gradient-weighted and the
    activation-weighted CAMs); other methods run their own passes."""
    cls = method if isinstance(method, type) else type(method)
    return issubclass(cls, GradientCAM | ActivationCAM)


class LayerGraph:
    """The forward pass of ``x`` with ``layer``'s activations and the graph above them.

    Build it once per image and layer (one forward); then :meth:`explain` answers any CAM method
    for any target from it. The model is left as found (:class:`LayerCapture`); the graph holds
    the tensors the layers above ``layer`` saved for backward, :attr:`nbytes` counts them roughly.

    Example::

        >>> graph = LayerGraph(model, x, "features.28")
        >>> graph.explain(make_method("gradcam"), target=281, class_names=names).maps.shape
        (1, 1, 14, 14)
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, layer: str) -> None:
        self.model = model
        self.x = x
        self.layer = layer
        saved: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with (
            autograd_enabled(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            LayerCapture(model, [layer], grad=GradFrom.LAYERS) as capture,
        ):
            self.output: Any = capture.forward(x)
        self.activations: torch.Tensor = capture.activations[layer]
        self._saved_bytes = sum(saved)

    @property
    def nbytes(self) -> int:
        """What the kept pass holds: the tensors the graph above the layer saved for backward
        (counted as they were saved), the activations, one gradient of them and the input."""
        a, x = self.activations, self.x
        return self._saved_bytes + 2 * a.numel() * a.element_size() + x.numel() * x.element_size()

    def explain(
        self, method: Method, *, target: TargetSpec, class_names: Sequence[str] | None
    ) -> Explanation:
        """``method``'s explanation of the kept forward pass at :attr:`layer`.

        Raises:
            TypeError: ``method`` is not a CAM (:func:`uses_layer_graph`).
            NotApplicableError: the layer's output is not a spatial map.
            LayerError: the target does not depend on the layer.
        """
        if not uses_layer_graph(method):
            raise TypeError(f"{method.title} does not work from a layer's activations")
        A = self.activations
        require_spatial(A, self.layer, method.title)
        with autograd_enabled():
            targets, scores, probabilities = explained_scores(
                self.output, target, class_names, len(self.x)
            )
            if isinstance(method, GradientCAM):
                if not scores.requires_grad:
                    raise LayerError(
                        f"The target scores do not depend on layer {self.layer!r}; choose a "
                        "layer that lies on the path from the input to the output."
                    )
                maps = torch.stack(
                    [method.combine(A.detach(), dA) for dA in self._gradients(scores)], dim=1
                )
            else:
                assert isinstance(method, ActivationCAM)  # uses_layer_graph checked it
                run = LayerPass(A.detach(), targets, scores.detach(), probabilities)
                maps = method.compute(self.model, self.x, self.layer, run)
        check_finite(maps, f"The {method.title} map")
        return Explanation(
            method=method.name,
            maps=maps.detach(),
            layer=self.layer,
            targets=targets,
            scores=scores.detach(),
            probabilities=probabilities,
            input_size=(self.x.shape[-2], self.x.shape[-1]),
            display=method.display,
            outlier_percent=method.outlier_percent,
        )

    def _gradients(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """``∂scores[:, t]/∂A`` for every target ``t``, the graph kept for the next call."""
        grads = []
        for t in range(scores.shape[1]):
            (g,) = torch.autograd.grad(
                scores[:, t].sum(), self.activations, retain_graph=True, allow_unused=True
            )
            grads.append(torch.zeros_like(self.activations) if g is None else g)
        return grads
