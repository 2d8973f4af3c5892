"""Input-space gradient methods: attributions with the resolution of the input image."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import nn

from cnnviz.methods.base import Explanation, Method, check_finite, gradient_pass, register
from cnnviz.postprocess import Display
from cnnviz.targets import TargetSpec


class ChannelReduction(enum.Enum):
    """How per-channel input attributions ``(C, H, W)`` become one map ``(H, W)``."""

    MAX_ABS = "max-abs"
    """max_c |a_c| — Simonyan et al.'s saliency map (non-negative)."""
    SIGNED_MAX = "signed-max"
    """a_c at the channel of largest |a_c|: the magnitude of MAX_ABS, with its sign."""
    SUM = "sum"
    """Σ_c a_c — signed; what completeness-style methods add up."""


def reduce_channels(attributions: torch.Tensor, how: ChannelReduction) -> torch.Tensor:
    """Collapse the channel axis (dim -3) of attributions ``(..., C, H, W)``."""
    if how is ChannelReduction.MAX_ABS:
        return attributions.abs().amax(dim=-3)
    if how is ChannelReduction.SUM:
        return attributions.sum(dim=-3)
    index = attributions.abs().argmax(dim=-3, keepdim=True)
    return attributions.gather(-3, index).squeeze(-3)


@register
class Saliency(Method):
    """Gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", ICLR workshop 2014).

    a = ∂S_c/∂I  (S_c the pre-softmax class score),   map_ij = max_c |a_c,ij|.

    ``signed=True`` keeps the sign of the largest-magnitude channel instead. The per-channel
    gradient is returned as ``Explanation.attributions``. Example::

        >>> e = explain(model, x, "saliency", target=3)
        >>> e.attributions.shape  # (N, 1, 3, H, W): ∂S_3/∂I
    """

    name = "saliency"
    title = "Saliency"
    paper = "Simonyan et al., ICLR-W 2014"
    summary = "Gradient of the class score w.r.t. the input pixels, max |·| over colour."
    display = Display.ABSOLUTE

    def __init__(self, *, signed: bool = False) -> None:
        self.reduction = ChannelReduction.SIGNED_MAX if signed else ChannelReduction.MAX_ABS
        if signed:
            self.display = Display.SIGNED

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        run = gradient_pass(model, x, layer=None, target=target, class_names=class_names)
        attributions = torch.stack(run.grads, dim=1)  # (N, T, C, H, W)
        check_finite(attributions, "The saliency gradient")
        return Explanation(
            method=self.name,
            maps=reduce_channels(attributions, self.reduction),
            layer=None,
            targets=run.targets,
            scores=run.scores,
            probabilities=run.probabilities,
            input_size=(x.shape[-2], x.shape[-1]),
            display=self.display,
            attributions=attributions,
        )
