"""Does the picture really show what the unit wants? The four checks beside every visualisation.

An optimised image is only evidence if it does what it claims. For a unit ``u`` of layer ``l``
with score ``a_u(x)`` (the objective itself: a channel's mean activation, a neuron's value, a
class's logit), on the optimised image ``x*`` seen whole (no random moves):

(a) **activation ratio** ``a_u(x*) / max_{e ∈ exemplars} a_u(e)``: ≥ 1 means the picture drives
    the unit at least as hard as the best natural image found (Borowski et al., ICLR 2021, show
    people read exemplars better than visualisations, so both are shown).
(b) **selectivity** ``a_u(x*) / mean_{k ≠ u} max(a_k(x*), 0)``: how much more the target fires
    than the layer's other units on the same image (> 1: the picture is about this unit, not a
    stimulus every unit answers). The others' positive parts are averaged so that the ratio is
    defined for layers with signed outputs; on a ReLU layer it is the plain ratio of means.
(c) **stability**: the same unit optimised from three independent starts (initial images and
    moves drawn from the seed): ``min_r a_u(x_r) / max_r a_u(x_r)`` (1: every start reaches the
    same strength) and the mean pairwise SSIM of the three images in grey (1: the same picture).
(d) **class robustness** (class units only): the model's probability for the class on ``x*`` and
    its median, over 16 randomly moved copies (scale 0.9–1.1, ±10°, jitter; seeded), and
    whether the median copy is still classified as the class (top-1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.featurevis.transforms import RobustnessTransforms

COPIES = 16
"""Randomly moved copies on which a class visualisation's probability is measured."""


@dataclass(frozen=True)
class UnitChecks:
    """The checks of one unit's picture (``None`` where a check does not apply or was not run)."""

    activation: float
    exemplar_activation: float | None = None
    activation_ratio: float | None = None
    selectivity: float | None = None
    stability_activation: float | None = None
    stability_similarity: float | None = None
    class_probability: float | None = None
    copies_probability: float | None = None
    copies_top1: bool | None = None

    def as_dict(self) -> dict[str, float | bool | None]:
        """The checks by name, for JSON: an infinite or undefined value (a zero denominator) is
        ``None``."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


def unit_scores(activations: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: each channel's mean over positions (the value itself for a 1-D layer)."""
    return activations.flatten(2).mean(dim=2) if activations.dim() > 2 else activations


def layer_outputs(module: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's activations for the model input ``x`` (the forward pass stops there), model
    left as found."""
    with LayerCapture(module, [layer], grad=GradFrom.NONE, stop_after_layers=True) as cap:
        cap.forward(x)
        return cap.activations[cap.names[0]]


def selectivity(scores: torch.Tensor, units: Sequence[int]) -> list[float]:
    """(b) for each image ``b`` with target unit ``units[b]``, from ``scores`` ``(B, C)``."""
    result = []
    for row, unit in zip(scores, units, strict=True):
        others = torch.cat([row[:unit], row[unit + 1 :]]).clamp(min=0)
        denominator = float(others.mean()) if others.numel() else math.nan
        value = float(row[unit])
        result.append(value / denominator if denominator > 0 else math.inf)
    return result


def stability(scores: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """(c) from a unit's scores ``(R,)`` and images ``(R, C, H, W)`` over ``R`` starts."""
    low, high = float(scores.min()), float(scores.max())
    spread = low / high if high > 0 else math.nan
    grey = images.float().mean(dim=1).cpu().numpy()
    pairs = [_ssim(grey[i], grey[j]) for i in range(len(grey)) for j in range(i + 1, len(grey))]
    return spread, float(np.mean(pairs)) if pairs else math.nan


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity  # lazy: scikit-image is heavy

    if min(a.shape) < 7:
        return math.nan
    return float(structural_similarity(a, b, data_range=1.0))  # type: ignore[no-untyped-call]  # untyped


def class_robustness(
    module: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int],
    normalise: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int,
    copies: int = COPIES,
) -> list[tuple[float, float, bool]]:
    """(d) per image: the class probability on the image, the median over ``copies`` moved
    copies, and whether the copy with the median probability is classified as the class."""
    moves = RobustnessTransforms().for_size((images.shape[-2], images.shape[-1]))
    generator = torch.Generator().manual_seed(seed)
    device = images.device
    result = []
    for image, k in zip(images, classes, strict=True):
        batch = image.unsqueeze(0).expand(copies, -1, -1, -1)
        moved = torch.cat([image.unsqueeze(0), moves(batch, generator)])
        logits = model_logits(module, normalise(moved.to(device)))
        probabilities = torch.softmax(logits.float(), dim=1)
        on_copies = probabilities[1:, k]
        order = torch.argsort(on_copies)
        median_copy = int(order[(copies - 1) // 2])
        top1 = int(probabilities[1 + median_copy].argmax()) == k
        result.append((float(probabilities[0, k]), float(on_copies.median()), top1))
    return result


def model_logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of the model input ``x``, model left as found."""
    with LayerCapture(module, [], grad=GradFrom.NONE) as cap:
        logits = cap.forward(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("the model must return (batch, classes) logits for a class check")
    return logits.detach()
