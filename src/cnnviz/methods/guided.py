"""Methods that change the backward pass of ReLU modules: Guided Backprop, DeconvNet, and
Guided Grad-CAM.

:class:`ReluOverride` gives every ``nn.ReLU``/``nn.ReLU6`` module a backward rule through the one
hook mechanism, :class:`cnnviz.capture.module_rules.ModuleRules` (the same values forward, the
rule's gradient back; in-place ReLUs and ReLUs used twice in one forward are handled there).
Only ReLU *modules* can be overridden; a ``torch.relu``/``F.relu`` call inside a ``forward``
keeps its ordinary gradient (a warning is logged when a model has no ReLU module).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from cnnviz.capture.module_rules import ModuleRules
from cnnviz.capture.targets import TargetSpec
from cnnviz.methods.base import Explanation, Method, gradient_pass, register
from cnnviz.methods.cam import GradCAM
from cnnviz.methods.gradients import (
    ChannelReduction,
    CleanPass,
    display_for,
    input_gradients,
    input_space_result,
    parse_reduction,
)
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT, Display, relu, upsample

logger = logging.getLogger(__name__)

RELU_MODULES: dict[str, type[nn.Module]] = {"ReLU": nn.ReLU, "ReLU6": nn.ReLU6}
"""Module types whose backward pass can be overridden, by the names ``modules=`` accepts."""


class ReluRule(enum.Enum):
    """The backward rule that replaces ∂relu(x)/∂x · g for an incoming gradient g."""

    GUIDED = "guided"
    """max(g, 0) · 1[ReLU passes x] — Springenberg et al.: only positive signal, only through
    units that were active (0 < x, and x < 6 for ReLU6)."""
    DECONVNET = "deconvnet"
    """max(g, 0) — Zeiler & Fergus: the ReLU applied to the signal, ignoring the forward."""


class ReluBackward:
    """The backward rule of a ReLU module for :class:`ReluRule` ``rule``."""

    def __init__(self, rule: ReluRule) -> None:
        self.rule = rule

    def backward(
        self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor
    ) -> torch.Tensor:
        grad = grad.clamp(min=0)
        if self.rule is ReluRule.DECONVNET:
            return grad
        upper = float(getattr(module, "max_val", float("inf")))  # 6 for ReLU6
        return grad * ((y > 0) & (y < upper))  # 0 < x (< 6), read off the output


def parse_modules(modules: Sequence[str]) -> tuple[type[nn.Module], ...]:
    """The module types named in ``modules`` (a subset of ``RELU_MODULES``)."""
    if isinstance(modules, str):
        modules = (modules,)
    unknown = [m for m in modules if m not in RELU_MODULES]
    if unknown or not modules:
        raise ValueError(
            f"modules must name some of {', '.join(RELU_MODULES)}; got {tuple(modules)!r}"
        )
    return tuple(RELU_MODULES[m] for m in modules)


class ReluOverride(ModuleRules):
    """Context manager: for its block, every module of ``types`` in ``model`` backpropagates by
    ``rule``. The forward values are unchanged; hooks are removed on exit (idempotent), also
    after an exception, and the model is left exactly as found.

        with ReluOverride(model, ReluRule.GUIDED):
            run = gradient_pass(model, x, layer=None, target=3, class_names=None)
    """

    def __init__(
        self,
        model: nn.Module,
        rule: ReluRule,
        types: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6),
    ) -> None:
        self.rule = ReluRule(rule)
        self.types = types
        backward = ReluBackward(self.rule)
        super().__init__(model, lambda _name, m: backward if isinstance(m, types) else None)

    def __enter__(self) -> ReluOverride:
        super().__enter__()
        if not self.modules:
            logger.warning(
                "%s has no %s modules: the %s gradient equals the plain gradient "
                "(functional relu calls cannot be overridden).",
                type(self.model).__name__,
                "/".join(t.__name__ for t in self.types),
                self.rule.value,
            )
        return self


class ModifiedReluGradient(Method):
    """Base of Guided Backprop and DeconvNet: ∂S_c/∂x with ReLU modules backpropagating by
    ``rule``; ``modules`` chooses which (``("ReLU", "ReLU6")``; captum overrides ``nn.ReLU``
    only, so ``modules=("ReLU",)`` reproduces it on models with ReLU6)."""

    rule: ReluRule
    display = Display.ABSOLUTE
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        modules: Sequence[str] = ("ReLU", "ReLU6"),
        reduction: str | ChannelReduction = ChannelReduction.MAX_ABS,
    ) -> None:
        self.types = parse_modules(modules)
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        with ReluOverride(model, self.rule, self.types):
            run = gradient_pass(model, x, layer=None, target=target, class_names=class_names)
        clean = CleanPass(run.targets, run.scores, run.probabilities)
        return input_space_result(
            self.name, x, clean, torch.stack(run.grads, dim=1), self.reduction
        )


@register
class GuidedBackprop(ModifiedReluGradient):
    """Guided Backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for
    Simplicity: The All Convolutional Net", ICLR workshop 2015).

    Backpropagate ∂S_c/∂x, but at every ReLU send back R_in = 1[x > 0] · max(R_out, 0)
    (also · 1[x < 6] for ReLU6); map = max_c |a_c|. Example::

        >>> e = explain(model, x, "guided-backprop", target=3)
        >>> e.attributions.shape  # (N, 1, 3, H, W)
    """

    name = "guided-backprop"
    title = "Guided Backprop"
    paper = "Springenberg et al., ICLR-W 2015"
    summary = "Gradient with only positive signal passed back through active ReLUs."
    rule = ReluRule.GUIDED


@register
class DeconvNet(ModifiedReluGradient):
    """DeconvNet (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014), as the backward pass of the classifier:

    at every ReLU send back R_in = max(R_out, 0), ignoring the forward activation; transposed
    convolutions are the gradient's own; map = max_c |a_c|. Example::

        >>> e = explain(model, x, "deconvnet", target=3)
    """

    name = "deconvnet"
    title = "DeconvNet"
    paper = "Zeiler & Fergus, ECCV 2014"
    summary = "Backward pass with the ReLU applied to the signal instead of its derivative."
    rule = ReluRule.DECONVNET


class Upsampling(enum.Enum):
    """How the layer's Grad-CAM is resized to the input for Guided Grad-CAM."""

    BILINEAR = "bilinear"
    NEAREST = "nearest"
    BICUBIC = "bicubic"


@register
class GuidedGradCAM(Method):
    """Guided Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017).

    a_c = GuidedBackprop_c(x) ⊙ up(ReLU(Grad-CAM)),  per colour channel c;  map = max_c |a_c|.

    ``up`` is ``upsample="bilinear"`` (default) or ``"nearest"`` (captum's ``GuidedGradCam``
    default). The Grad-CAM comes from :class:`~cnnviz.methods.cam.GradCAM` at ``layer``;
    ``extras["cam"]`` holds ReLU(Grad-CAM) at the layer's resolution. Example::

        >>> e = explain(model, x, "guided-gradcam", layer="conv5_2", target=3)
    """

    name = "guided-gradcam"
    title = "Guided Grad-CAM"
    paper = "Selvaraju et al., ICCV 2017"
    summary = "Guided Backprop masked by the upsampled Grad-CAM of a layer."
    needs_layer = True
    display = Display.ABSOLUTE
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        upsample: str | Upsampling = Upsampling.BILINEAR,
        modules: Sequence[str] = ("ReLU", "ReLU6"),
        reduction: str | ChannelReduction = ChannelReduction.MAX_ABS,
    ) -> None:
        try:
            self.upsample = Upsampling(upsample)
        except ValueError:
            choices = ", ".join(u.value for u in Upsampling)
            raise ValueError(f"upsample must be one of {choices}; got {upsample!r}") from None
        self.types = parse_modules(modules)
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        cam = GradCAM().explain(model, x, layer=layer, target=target, class_names=class_names)
        with ReluOverride(model, ReluRule.GUIDED, self.types):
            guided, _ = input_gradients(model, x, cam.targets)
        positive = relu(cam.maps)
        weights = upsample(positive, (x.shape[-2], x.shape[-1]), mode=self.upsample.value)
        clean = CleanPass(cam.targets, cam.scores, cam.probabilities)
        result = input_space_result(
            self.name, x, clean, guided * weights.unsqueeze(2), self.reduction, cam=positive
        )
        return replace(result, layer=layer)
