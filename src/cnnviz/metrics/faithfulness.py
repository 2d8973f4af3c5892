"""Faithfulness: does the model's confidence follow the map when pixels are taken away or added?

Three protocols, each on a prepared batch ``images`` ``(N, C, H, W)`` (model input space) and
maps ``(N, H, W)`` at the input resolution (:func:`relevance_maps` turns an
:class:`~cnnviz.methods.base.Explanation` into them). The score is always the **softmax
probability** of one class per image (default: the class the model predicts on the clean image).

* **Deletion / insertion** (Petsiuk et al., RISE, BMVC 2018). Pixels are ranked by the map, most
  relevant first (ties keep raster order: a stable sort). At step ``k = 0 … S`` the first
  ``n_k = round(k · H·W / S)`` ranked pixels are switched: deletion replaces them in the image by a
  baseline (zeros of the model input — the normalisation mean colour for a normalised model —,
  the image's per-channel mean, or its Gaussian blur); insertion copies them from the image into
  its blurred version (11×11 kernel, σ = 5, as RISE). The curve is the probability against the
  fraction ``k / S`` ∈ [0, 1] and its area is taken by the trapezoid rule over that normalised
  axis: ``AUC = (p_0/2 + p_1 + … + p_{S−1} + p_S/2) / S``. Deletion: lower is better; insertion:
  higher is better. All ``N·(S+1)`` step images are built vectorised and run in batches of
  ``batch_size`` under ``torch.inference_mode``: a 224×224 image with 100 steps costs
  ⌈101 / batch_size⌉ forward passes.
* **Average Drop / Increase in Confidence** (Chattopadhay et al., Grad-CAM++, WACV 2018). With
  ``Y_i`` the probability on image ``i`` and ``O_i`` the probability on the image multiplied by
  its map min-max normalised to [0, 1] (``x ⊙ m`` in model input space, i.e. blended towards the
  zero baseline), ``Average Drop = 100 · (1/N) Σ_i max(0, Y_i − O_i) / Y_i`` (lower is better) and
  ``Increase in Confidence = 100 · (1/N) Σ_i 1[O_i > Y_i]`` (higher is better).
* **ROAD** (Rong et al., ICML 2022): :mod:`cnnviz.metrics.road`.

Example::

    from cnnviz.api import explain
    from cnnviz.metrics.faithfulness import deletion, insertion, relevance_maps

    e = explain(model, x, "gradcam")
    maps = relevance_maps(e)
    print(deletion(model, x, maps, steps=50).auc, insertion(model, x, maps, steps=50).auc)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch
from torch import nn

from cnnviz.capture.forward import as_model_input, forward_in_layout, model_state_guard
from cnnviz.capture.targets import logits_of, resolve_targets
from cnnviz.errors import NonFiniteError, TargetError, positive_int
from cnnviz.inputs.preprocess import gaussian_blur
from cnnviz.methods.postprocess import Display, relu, to_unit_range
from cnnviz.options import DeletionBaseline as Baseline

if TYPE_CHECKING:
    from cnnviz.methods.base import Explanation

ClassTarget: TypeAlias = int | str | Sequence[int | str] | torch.Tensor | None
"""One class per image: an index or name for all images, one per image, or ``None`` (predicted)."""

RISE_BLUR_KERNEL = 11
RISE_BLUR_SIGMA = 5.0


# -- maps and targets ------------------------------------------------------------------------


def rectify(maps: torch.Tensor, display: Display) -> torch.Tensor:
    """Maps as the metrics rank them: ReLU for ``POSITIVE``, ``|·|`` for ``ABSOLUTE``, raw for
    ``SIGNED`` (most positive evidence first)."""
    if display is Display.POSITIVE:
        return relu(maps)
    if display is Display.ABSOLUTE:
        return maps.abs()
    return maps


def relevance_maps(explanation: Explanation, t: int = 0) -> torch.Tensor:
    """``(N, H, W)`` float maps of target ``t`` at the input resolution, rectified by
    :func:`rectify` according to the explanation's ``display``."""
    raw = explanation.upsampled()[:, t].detach().float()
    return rectify(raw, explanation.display)


def unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """Positive part of each map, min-max normalised to [0, 1] (constant maps become zeros): the
    map as a ``POSITIVE`` picture shows it (:func:`~cnnviz.methods.postprocess.to_unit_range`)."""
    return to_unit_range(maps, Display.POSITIVE)


def class_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` class logits, float32 on the CPU: one forward pass in eval mode under
    ``torch.inference_mode`` (channels-last where that suits the model), the model left as found.
    The one scoring forward of the metrics and the report; probabilities are its softmax."""
    with torch.inference_mode(), model_state_guard(model):
        return logits_of(forward_in_layout(model, as_model_input(model, images))).float().cpu()


def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` softmax probabilities of :func:`class_logits`."""
    return class_logits(model, images).softmax(dim=1)


def probabilities(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Softmax probability of ``targets[rows]`` for each image of ``images``, in batches of
    ``batch_size`` (:func:`class_probabilities`)."""
    if rows is None:
        rows = torch.arange(images.shape[0])
    out = []
    for start in range(0, images.shape[0], batch_size):
        p = class_probabilities(model, images[start : start + batch_size])
        index = targets[rows[start : start + batch_size]].view(-1, 1)
        out.append(p.gather(1, index).squeeze(1))
    return torch.cat(out) if out else torch.zeros(0)


def class_targets(
    model: nn.Module,
    images: torch.Tensor,
    target: ClassTarget,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """``(N,)`` class indices: ``target`` resolved against the model's clean output."""
    if isinstance(target, torch.Tensor):
        target = [int(v) for v in target.reshape(-1).tolist()]
    with torch.inference_mode(), model_state_guard(model):
        logits = logits_of(forward_in_layout(model, as_model_input(model, images)))
        logits = logits.float().cpu()
    if callable(target) and not isinstance(target, str):
        raise TargetError(
            "Faithfulness metrics need class targets (softmax probabilities); "
            "give a class index or name, not a callable."
        )
    resolved = resolve_targets(target, logits, class_names)
    if resolved.indices is None or resolved.indices.shape[1] != 1:
        raise TargetError("Faithfulness metrics take one class per image; give an index or name.")
    return resolved.indices[:, 0].clone()


def check_maps(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be an (N, C, H, W) tensor, got {_shape(images)}")
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    n, _, h, w = images.shape
    if tuple(maps.shape) != (n, h, w):
        raise ValueError(
            f"maps must be (N, H, W) = {(n, h, w)} like the images, got {tuple(maps.shape)}; "
            "upsample them first (Explanation.upsampled() or relevance_maps())."
        )
    if not torch.isfinite(maps).all():
        raise NonFiniteError("The maps contain NaN or infinite values; they cannot rank pixels.")
    return maps.detach().float().cpu()


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


# -- baselines ---------------------------------------------------------------------------------


def rise_blur(
    images: torch.Tensor, kernel_size: int = RISE_BLUR_KERNEL, sigma: float = RISE_BLUR_SIGMA
) -> torch.Tensor:
    """RISE's blurred image: :func:`~cnnviz.inputs.preprocess.gaussian_blur` with an odd
    ``kernel_size`` × ``kernel_size`` kernel (11×11, σ = 5 by default)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or not sigma > 0:
        raise ValueError(f"Need an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    return gaussian_blur(images, sigma, radius=kernel_size // 2)


def make_baseline(images: torch.Tensor, baseline: Baseline | str | torch.Tensor) -> torch.Tensor:
    """The substitute image for each image: a :class:`Baseline` or a tensor broadcast to it."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images.dtype).expand_as(images).clone()
    kind = Baseline(baseline) if isinstance(baseline, str) else baseline
    if kind is Baseline.ZEROS:
        return torch.zeros_like(images)
    if kind is Baseline.MEAN:
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    return rise_blur(images)


# -- deletion and insertion --------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve per image and its area.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``(S+1,)`` the x axis, ``k / S``.
        probabilities: ``(N, S+1)`` class probability at each step.
        auc: ``(N,)`` trapezoid area over ``fractions``.
        targets: ``(N,)`` class indices scored.
    """

    kind: str
    fractions: torch.Tensor
    probabilities: torch.Tensor
    auc: torch.Tensor
    targets: torch.Tensor


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(N, H·W)``: each pixel's rank, 0 for the most relevant (stable: ties in raster order)."""
    flat = maps.reshape(maps.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


def step_counts(num_pixels: int, steps: int) -> torch.Tensor:
    """``(S+1,)`` pixels switched after each step: ``round(k · P / S)`` (halves up), 0 … P."""
    positive_int(steps, "steps")
    k = torch.arange(steps + 1, dtype=torch.int64)
    return (2 * k * num_pixels + steps) // (2 * steps)


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under ``(N, S+1)`` curves sampled evenly on [0, 1], by the trapezoid rule."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("A curve needs at least two points")
    return (curves.sum(dim=-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


def switch_curve(
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
) -> torch.Tensor:
    """``(N, S+1)`` probabilities as the ranked pixels of ``start`` are switched to ``end``.

    Step ``k`` shows ``end`` on the ``round(k·H·W/S)`` most relevant pixels and ``start``
    elsewhere. The ``N·(S+1)`` images are built a batch at a time with one ``torch.where``.
    """
    positive_int(batch_size, "batch_size")
    n, _, h, w = start.shape
    ranks = pixel_ranks(maps).view(n, 1, h, w)
    counts = step_counts(h * w, steps)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(steps + 1))  # (N·(S+1), 2)
    out: list[torch.Tensor] = []
    for chunk in torch.split(pairs, batch_size):
        image, step = chunk[:, 0], chunk[:, 1]
        switched = ranks[image] < counts[step].view(-1, 1, 1, 1)
        batch = torch.where(switched, end[image], start[image])
        index = targets[image].cpu().view(-1, 1)
        out.append(class_probabilities(model, batch).gather(1, index).squeeze(1))
    return torch.cat(out).view(n, steps + 1)


def deletion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    target: ClassTarget = None,
    steps: int = 100,
    baseline: Baseline | str | torch.Tensor = Baseline.ZEROS,
    batch_size: int = 64,
) -> Curve:
    """RISE deletion: most relevant pixels replaced by ``baseline`` first (lower AUC is better).

    Args:
        model: the classifier (left as found).
        images: ``(N, C, H, W)`` model inputs.
        maps: ``(N, H, W)`` relevance at the input resolution (see :func:`relevance_maps`).
        target: class per image (default: the predicted class).
        steps: number of steps ``S``; the curve has ``S + 1`` points.
        baseline: see :class:`Baseline`, or a tensor broadcastable to ``images``.
        batch_size: images per forward pass.
    """
    maps = check_maps(images, maps)
    x = images.detach().float().cpu()
    targets = class_targets(model, x, target)
    probs = switch_curve(
        model, x, make_baseline(x, baseline), maps, targets, steps=steps, batch_size=batch_size
    )
    fractions = torch.arange(steps + 1, dtype=torch.float32) / steps
    return Curve("deletion", fractions, probs, trapezoid_auc(probs), targets)


def insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    target: ClassTarget = None,
    steps: int = 100,
    blur_kernel: int = RISE_BLUR_KERNEL,
    blur_sigma: float = RISE_BLUR_SIGMA,
    batch_size: int = 64,
) -> Curve:
    """RISE insertion: most relevant pixels copied into the blurred image first (higher AUC is
    better). Arguments as :func:`deletion`; the start image is ``rise_blur(images)``."""
    maps = check_maps(images, maps)
    x = images.detach().float().cpu()
    targets = class_targets(model, x, target)
    blurred = rise_blur(x, blur_kernel, blur_sigma)
    probs = switch_curve(model, blurred, x, maps, targets, steps=steps, batch_size=batch_size)
    fractions = torch.arange(steps + 1, dtype=torch.float32) / steps
    return Curve("insertion", fractions, probs, trapezoid_auc(probs), targets)


# -- Average Drop / Increase in Confidence -----------------------------------------------------


@dataclass(frozen=True)
class ConfidenceChange:
    """Average Drop and Increase in Confidence (see the module docstring for the formulas).

    Attributes:
        original: ``(N,)`` ``Y_i``, probability on the image.
        masked: ``(N,)`` ``O_i``, probability on the image ⊙ its normalised map.
        drop: ``(N,)`` ``max(0, Y_i − O_i) / Y_i`` (0 when ``Y_i = 0``).
        increase: ``(N,)`` 1.0 where ``O_i > Y_i``, else 0.0.
        targets: ``(N,)`` class indices scored.
    """

    original: torch.Tensor
    masked: torch.Tensor
    drop: torch.Tensor
    increase: torch.Tensor
    targets: torch.Tensor

    @property
    def average_drop(self) -> float:
        """Average Drop in per cent."""
        return 100.0 * float(self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        """Increase in Confidence in per cent."""
        return 100.0 * float(self.increase.mean())


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    target: ClassTarget = None,
    baseline: Baseline | str | torch.Tensor = Baseline.ZEROS,
    batch_size: int = 64,
) -> ConfidenceChange:
    """Average Drop / Increase in Confidence: feed ``b + m ⊙ (x − b)`` back, ``m`` the map's
    positive part min-max normalised to [0, 1] and ``b`` the baseline (zeros: ``x ⊙ m``)."""
    maps = check_maps(images, maps)
    x = images.detach().float().cpu()
    targets = class_targets(model, x, target)
    base = make_baseline(x, baseline)
    masked_images = base + unit_maps(maps).unsqueeze(1) * (x - base)
    both = torch.cat([x, masked_images])
    rows = torch.cat([torch.arange(x.shape[0])] * 2)
    probs = probabilities(model, both, targets, rows, batch_size)
    y, o = probs[: x.shape[0]], probs[x.shape[0] :]
    drop = torch.where(y > 0, (y - o).clamp(min=0) / y.clamp(min=1e-30), torch.zeros_like(y))
    return ConfidenceChange(y, o, drop, (o > y).float(), targets)
