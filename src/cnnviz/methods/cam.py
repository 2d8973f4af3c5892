"""Class activation maps (CAM family) computed at a convolutional layer.

Every map here is a weighted combination of the layer's activations ``A`` (shape ``(N, K, h, w)``)
for a target score ``y``; the methods differ in the weights. They return the raw, signed
combination; the papers' ReLU is applied by post-processing
(:func:`cnnviz.methods.postprocess.relu`, the default
:class:`~cnnviz.methods.postprocess.Display.POSITIVE`).

Gradient-weighted CAMs (Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, HiResCAM, EigenGrad-CAM)
subclass :class:`GradientCAM` and supply :meth:`GradientCAM.combine`; gradient-free ones (CAM,
Eigen-CAM, and Score-CAM / Ablation-CAM in :mod:`cnnviz.methods.cam_perturbation`) subclass
:class:`ActivationCAM` and supply :meth:`ActivationCAM.compute`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import Targets, TargetSpec
from cnnviz.errors import NotApplicableError, TargetError
from cnnviz.methods.base import (
    Explanation,
    Method,
    check_finite,
    explained_scores,
    gradient_pass,
    register,
)
from cnnviz.methods.postprocess import Display

logger = logging.getLogger(__name__)


def require_spatial(value: torch.Tensor, layer: str, title: str) -> None:
    """Raise :class:`NotApplicableError` unless the layer output is ``(N, K, h, w)``."""
    if value.dim() != 4:
        raise NotApplicableError(
            f"{title} needs a layer with a spatial (N, C, H, W) output; {layer!r} gives "
            f"shape {tuple(value.shape)}. Choose a convolutional layer."
        )


@dataclass(frozen=True)
class LayerPass:
    """One forward pass without autograd: the layer's activations and what was explained."""

    activations: torch.Tensor  # (N, K, h, w), detached
    targets: Targets
    scores: torch.Tensor  # (N, T), detached
    probabilities: torch.Tensor | None


def layer_pass(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str,
    target: TargetSpec,
    class_names: Sequence[str] | None,
    title: str,
) -> LayerPass:
    """Forward ``x`` once without a graph, capturing ``layer`` and resolving the targets."""
    with LayerCapture(model, [layer], grad=GradFrom.NONE) as capture:
        output = capture.forward(x)
    targets, scores, probabilities = explained_scores(output, target, class_names, len(x))
    activations = capture.activations[layer]
    require_spatial(activations, layer, title)
    return LayerPass(
        activations=activations,
        targets=targets,
        scores=scores.detach(),
        probabilities=probabilities,
    )


class _LayerMethod(Method):
    """Shared plumbing of the layer methods: validation and the :class:`Explanation`."""

    needs_layer = True
    display = Display.POSITIVE

    def _layer(self, layer: str | None) -> str:
        if layer is None:
            raise ValueError(f"{self.title} needs a layer")
        return layer

    def _result(
        self,
        maps: torch.Tensor,
        layer: str,
        x: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        probabilities: torch.Tensor | None,
    ) -> Explanation:
        check_finite(maps, f"The {self.title} map")
        return Explanation(
            method=self.name,
            maps=maps.detach(),
            layer=layer,
            targets=targets,
            scores=scores,
            probabilities=probabilities,
            input_size=(x.shape[-2], x.shape[-1]),
            display=self.display,
        )


class GradientCAM(_LayerMethod):
    """Base of the gradient-weighted CAMs: one forward, one backward to the layer per target.

    Subclasses override :meth:`combine`, mapping activations ``A`` and gradients ``∂y/∂A``
    (both ``(N, K, h, w)``) to the raw map ``(N, h, w)``.
    """

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
        layer = self._layer(layer)
        run = gradient_pass(model, x, layer=layer, target=target, class_names=class_names)
        require_spatial(run.value, layer, self.title)
        maps = torch.stack([self.combine(run.value, dA) for dA in run.grads], dim=1)
        return self._result(maps, layer, x, run.targets, run.scores, run.probabilities)


class ActivationCAM(_LayerMethod):
    """Base of the CAMs whose weights need no gradient: one forward without a graph, then
    :meth:`compute` maps the captured :class:`LayerPass` to raw maps ``(N, T, h, w)``."""

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
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
        layer = self._layer(layer)
        run = layer_pass(
            model, x, layer=layer, target=target, class_names=class_names, title=self.title
        )
        maps = self.compute(model, x, layer, run)
        return self._result(maps, layer, x, run.targets, run.scores, run.probabilities)


def spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ_ij over the last two axes, kept as ``(N, K, 1, 1)``."""
    return t.sum(dim=(2, 3), keepdim=True)


def weighted_sum(weights: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k A_k for channel weights ``(N, K)`` → ``(N, h, w)``."""
    return torch.einsum("nk,nkhw->nhw", weights, A)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den ≠ 0``, else 0 (the 0/0 of a zero gradient or activation)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)


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


@register
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, "Grad-CAM++: Generalized
    Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018).

    With ``g = ∂y/∂A`` and the paper's exponential score ``Y = exp(y)`` (Eq. 19: for a piecewise
    linear network the 2nd and 3rd derivatives of ``Y`` are ``exp(y) g²`` and ``exp(y) g³``)::

        α^k_ij = g²_ij / (2 g²_ij + (Σ_ab A^k_ab) g³_ij),   w_k = Σ_ij α^k_ij ReLU(g^k_ij),
        map = Σ_k w_k A^k.

    Where the denominator is 0 (``g = 0``) α is 0. The factor ``exp(y)`` of ``∂Y/∂A`` is a
    positive constant per map and is dropped, as in the authors' code and pytorch-grad-cam.
    pytorch-grad-cam adds ``1e-6`` to the denominator; cnnviz does not (the paper has no ε), which
    matters only where ``g² ≲ 1e-6`` (e.g. an untrained network). Example::

        >>> e = explain(model, x, "gradcam++", layer="conv5_2", target=TopK(3))
        >>> e.maps.shape  # (N, 3, h, w)
    """

    name = "gradcam++"
    title = "Grad-CAM++"
    paper = "Chattopadhay et al., WACV 2018"
    summary = "Grad-CAM with pixel-wise weights α from higher-order derivatives of exp(score)."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        g2 = dA * dA
        alpha = safe_divide(g2, 2 * g2 + spatial_sum(A) * g2 * dA)
        weights = (alpha * dA.clamp(min=0)).sum(dim=(2, 3))
        return weighted_sum(weights, A)


@register
class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020).

    w_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) ∂y/∂A^k_ij,   map = Σ_k w_k A^k,

    the weights that satisfy the paper's sensitivity and conservation axioms. A channel whose
    activations sum to 0 gets weight 0 (pytorch-grad-cam adds ``1e-7`` to the sum instead).
    Example::

        >>> e = explain(model, x, "xgradcam", layer="conv5_2", target=[3, 7])
    """

    name = "xgradcam"
    title = "XGrad-CAM"
    paper = "Fu et al., BMVC 2020"
    summary = "Gradients weighted by the normalised activations (axiom-based Grad-CAM)."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        weights = safe_divide(spatial_sum(A * dA), spatial_sum(A)).flatten(1)
        return weighted_sum(weights, A)


@register
class LayerCAM(GradientCAM):
    """Layer-CAM (Jiang, Zhang, Hou, Cheng & Wei, "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization", IEEE TIP 2021).

    map_ij = Σ_k ReLU(∂y/∂A^k_ij) · A^k_ij   (element-wise weights; the paper's map is ReLU(map)).

    It works at shallow layers too, where Grad-CAM's spatially averaged weight blurs. Example::

        >>> e = explain(model, x, "layercam", layer="conv4_2", target="tabby")
    """

    name = "layercam"
    title = "Layer-CAM"
    paper = "Jiang et al., IEEE TIP 2021"
    summary = "Activations weighted element-wise by their positive gradients."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        return (dA.clamp(min=0) * A).sum(dim=1)


@register
class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020).

    map_ij = Σ_k ∂y/∂A^k_ij · A^k_ij.

    For a network that ends in a linear layer after the chosen layer the map sums to the score
    (minus the bias), so it shows exactly where the model looked. Example::

        >>> e = explain(model, x, "hirescam", layer="conv5_2")
    """

    name = "hirescam"
    title = "HiResCAM"
    paper = "Draelos & Carin, arXiv 2020"
    summary = "Element-wise product of gradients and activations, summed over channels."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        return (dA * A).sum(dim=1)


@register
class EigenCAM(ActivationCAM):
    """Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020).

    With ``M`` the activations reshaped to ``(hw, K)`` and centred per channel
    (``M ← M − mean_ij M``) and ``v₁`` the first right singular vector of ``M``: ``map = M v₁``
    reshaped to ``(h, w)`` — the projection on the first principal component. The paper writes
    the SVD of the activations themselves; the centring follows pytorch-grad-cam (without it the
    first component mostly reproduces the mean activation). No gradients; the map is the same
    for every target.

    Sign rule: a singular vector's sign is arbitrary, so cnnviz picks the sign that makes the map
    correlate non-negatively with ``Σ_k A^k`` (where the layer is most active, the map is high).
    pytorch-grad-cam keeps whatever sign its SVD returns. Example::

        >>> e = explain(model, x, "eigencam", layer="conv5_2")
    """

    name = "eigencam"
    title = "Eigen-CAM"
    paper = "Muhammad & Yeasin, IJCNN 2020"
    summary = "Projection of the activations on their first principal component (no gradients)."

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
        A = run.activations
        n, _, h, w = A.shape
        maps = first_component(A, A.sum(dim=1)).reshape(n, 1, h, w)
        return maps.expand(n, run.targets.per_image, h, w).clone()


def first_component(M: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The projection of ``M`` ``(N, K, h, w)``, centred per channel over the pixels, on its first
    principal component: ``(N, h, w)``, the sign chosen to correlate non-negatively with
    ``reference`` ``(N, h, w)``. The SVD runs in float64; the result has ``M``'s dtype."""
    n, _, h, w = M.shape
    rows = M.flatten(2).transpose(1, 2).double()  # (N, hw, K)
    rows = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = (rows @ vh[:, 0, :, None]).squeeze(2)  # (N, hw)
    sign = torch.where(
        (projection * reference.flatten(1).double()).sum(dim=1, keepdim=True) < 0, -1.0, 1.0
    )
    result: torch.Tensor = (sign * projection).to(M.dtype).reshape(n, h, w)
    return result


@register
class EigenGradCAM(GradientCAM):
    """EigenGrad-CAM (pytorch-grad-cam, Gildenblat et al. 2021): Eigen-CAM
    (Muhammad & Yeasin, IJCNN 2020) applied to the gradient-weighted activations, so that the
    first principal component is class-specific.

    With ``M = ∂y/∂A ⊙ A`` reshaped to ``(hw, K)`` and centred per channel, and ``v₁`` the first
    right singular vector of ``M``: ``map = M v₁`` reshaped to ``(h, w)``. The sign of ``v₁`` is
    arbitrary; cnnviz picks the one that correlates non-negatively with ``Σ_k M_k`` (the HiResCAM
    map: where gradient and activation agree, the map is high). pytorch-grad-cam keeps the sign
    its SVD returns; otherwise the maps are equal (tested). Example::

        >>> e = explain(model, x, "eigengradcam", layer="conv5_2", target=TopK(2))
    """

    name = "eigengradcam"
    title = "EigenGrad-CAM"
    paper = "Gildenblat et al., pytorch-grad-cam 2021"
    summary = "First principal component of the gradient-weighted activations (class-specific)."

    def combine(self, A: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
        M = dA * A
        return first_component(M, M.sum(dim=1))


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier of ``model`` and its name: timm's ``get_classifier()`` or
    ``pretrained_cfg['classifier']`` when that is an ``nn.Linear``, else the last ``nn.Linear``."""
    names = {id(module): name for name, module in model.named_modules()}
    candidates: list[nn.Module] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            candidates.append(head)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("classifier"), str):
        with contextlib.suppress(AttributeError):
            candidates.append(model.get_submodule(cfg["classifier"]))
    candidates += [m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)]
    for module in candidates:
        if isinstance(module, nn.Linear) and id(module) in names:
            return names[id(module)], module
    raise NotApplicableError(
        f"CAM needs a model that ends in global average pooling + one linear layer, and "
        f"{type(model).__name__} has no nn.Linear; use gradcam instead."
    )


@register
class CAM(ActivationCAM):
    """CAM (Zhou, Khosla, Lapedriza, Oliva & Torralba, "Learning Deep Features for
    Discriminative Localization", CVPR 2016).

    For a model whose output is ``y_c = Σ_k w_{c,k} mean_ij(A^k_ij) + b_c`` (the layer, global
    average pooling, one linear layer): ``map = Σ_k w_{c,k} A^k``, so ``mean(map) + b_c = y_c``.
    On such a model CAM equals Grad-CAM × (h·w). The linear layer is timm's classifier or the
    last ``nn.Linear``; cnnviz checks that the layer's channels feed it and that the logits are
    reproduced, and raises :class:`~cnnviz.errors.NotApplicableError` otherwise. Example::

        >>> e = explain(load_model("efficientnet_lite0"), x, "cam", layer="bn2")
    """

    name = "cam"
    title = "CAM"
    paper = "Zhou et al., CVPR 2016"
    summary = "Final linear layer's class weights applied to a global-average-pooled layer."

    def compute(
        self, model: nn.Module, x: torch.Tensor, layer: str, run: LayerPass
    ) -> torch.Tensor:
        fc_name, fc = final_linear(model)
        A = run.activations
        remedy = "CAM needs the layer right before global average pooling + one linear layer"
        if A.shape[1] != fc.in_features:
            raise NotApplicableError(
                f"{remedy}; {layer!r} has {A.shape[1]} channels but the last linear layer "
                f"{fc_name!r} takes {fc.in_features} features. Use gradcam instead."
            )
        indices = run.targets.indices
        if indices is None:
            raise TargetError("CAM explains class scores; for a callable target use gradcam.")
        if int(indices.max()) >= fc.out_features:
            raise NotApplicableError(
                f"{remedy}; the last linear layer {fc_name!r} has {fc.out_features} outputs, "
                f"fewer than the model's classes. Use gradcam instead."
            )
        weight = fc.weight.detach().to(A.dtype)
        bias = (
            fc.bias.detach().to(A.dtype) if fc.bias is not None else torch.zeros_like(weight[:, 0])
        )
        index = indices.to(A.device)
        pooled = torch.einsum("nk,ntk->nt", A.mean(dim=(2, 3)), weight[index]) + bias[index]
        if not torch.allclose(
            pooled, run.scores, rtol=1e-3, atol=1e-4 * float(run.scores.abs().max())
        ):
            raise NotApplicableError(
                f"{remedy}; the scores of {type(model).__name__} are not {fc_name!r} applied to "
                f"the spatial mean of {layer!r}. Use gradcam instead."
            )
        logger.info("CAM uses the linear layer %r", fc_name)
        return torch.einsum("ntk,nkhw->nthw", weight[index], A)
