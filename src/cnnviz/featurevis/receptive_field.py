"""Where in the image a layer's position looks: its effective receptive field, from gradients.

The *effective* receptive field (Luo et al., "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", NeurIPS 2016) of the centre position ``(y0, x0)`` of a layer
``a`` is the input-gradient mass

    m(i, j) = mean_{r=1..4} Σ_c | ∂ Σ_k a_r[k, y0, x0] / ∂ x_r[c, i, j] |

over four fixed-seed random inputs ``x_r``. It is computed by autograd, so it works for any
model (padding, dilation, pooling, skip connections included), not only for plain conv stacks.
The crop of a position is the smallest box centred on it (Chebyshev distance from its centre in
input pixels) that holds 90 % of that mass, and at least one stride on each side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.forward import model_device, model_dtype
from cnnviz.capture.hooks import GradFrom, LayerCapture

logger = logging.getLogger(__name__)

MASS = 0.9
"""The share of the gradient mass a crop holds."""
INPUTS = 4
"""Random inputs the gradient mass is averaged over."""
SEED = 0
_EPSILON = 1e-6


@dataclass(frozen=True)
class ReceptiveField:
    """A layer's effective receptive field, in model-input pixels.

    ``stride_y = input height / feature height`` (and so for x); a position ``(y, x)`` is centred
    at ``((y + 0.5)·stride_y, (x + 0.5)·stride_x)``; its crop reaches ``half_height`` and
    ``half_width`` pixels either side of that centre.
    """

    input_size: tuple[int, int]
    feature_size: tuple[int, int]
    stride_y: float
    stride_x: float
    half_height: float
    half_width: float

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` (bottom and right exclusive) of position ``(y, x)``'s
        crop, clipped to the image."""
        cy, cx = (y + 0.5) * self.stride_y, (x + 0.5) * self.stride_x
        height, width = self.input_size
        top = max(0, math.floor(cy - self.half_height + _EPSILON))
        left = max(0, math.floor(cx - self.half_width + _EPSILON))
        bottom = min(height, math.ceil(cy + self.half_height - _EPSILON))
        right = min(width, math.ceil(cx + self.half_width - _EPSILON))
        return top, left, max(bottom, top + 1), max(right, left + 1)

    def as_dict(self) -> dict[str, object]:
        """The fields, for JSON."""
        return {
            "input_size": list(self.input_size),
            "feature_size": list(self.feature_size),
            "stride": [self.stride_y, self.stride_x],
            "half_size": [self.half_height, self.half_width],
        }


def whole_image(input_size: tuple[int, int]) -> ReceptiveField:
    """The field of a layer without positions (``(B, C)`` output): the whole image."""
    height, width = input_size
    return ReceptiveField(input_size, (1, 1), float(height), float(width), height / 2, width / 2)


def receptive_field(
    module: nn.Module, layer: str, input_shape: tuple[int, int, int]
) -> ReceptiveField:
    """The effective receptive field of ``layer`` for inputs ``(C, H, W)`` (see the module
    docstring); the model is left exactly as found (hooks removed, modes restored, parameter
    gradients untouched: ``torch.autograd.grad`` w.r.t. the input only).

    Raises:
        LayerError: an unknown layer, or one the forward pass never runs.
    """
    channels, height, width = input_shape
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn((INPUTS, channels, height, width), generator=generator)
    x = x.to(device=model_device(module), dtype=model_dtype(module))
    with LayerCapture(module, [layer], grad=GradFrom.INPUT, stop_after_layers=True) as cap:
        cap.forward(x)
        acts = cap.activations[cap.names[0]]
        if acts.dim() < 4:
            return whole_image((height, width))
        fh, fw = acts.shape[-2:]
        y0, x0 = fh // 2, fw // 2
        assert cap.input is not None  # set by forward with GradFrom.INPUT
        (grad,) = torch.autograd.grad(acts[:, :, y0, x0].sum(), cap.input)
    mass = grad.detach().abs().sum(dim=1).mean(dim=0).double().cpu()  # (H, W)
    stride_y, stride_x = height / fh, width / fw
    cy, cx = (y0 + 0.5) * stride_y, (x0 + 0.5) * stride_x
    rows = (torch.arange(height, dtype=torch.float64) + 0.5 - cy).abs()
    cols = (torch.arange(width, dtype=torch.float64) + 0.5 - cx).abs()
    distance = torch.maximum(rows[:, None], cols[None, :]).flatten()
    total = float(mass.sum())
    if not math.isfinite(total) or total <= 0:
        logger.warning(
            "Layer %r has no input gradient at its centre on random inputs; its crops are the "
            "whole image.",
            layer,
        )
        return whole_image((height, width))
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(mass.flatten()[order], dim=0)
    inside = int(torch.searchsorted(cumulative, MASS * total - 1e-12 * total))
    reach = float(distance[order][min(inside, len(order) - 1)]) + 0.5  # to the pixel's edge
    return ReceptiveField(
        input_size=(height, width),
        feature_size=(int(fh), int(fw)),
        stride_y=stride_y,
        stride_x=stride_x,
        half_height=max(reach, stride_y / 2),
        half_width=max(reach, stride_x / 2),
    )
