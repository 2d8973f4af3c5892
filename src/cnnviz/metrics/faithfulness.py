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
* **ROAD** (Rong et al., ICML 2022, "Remove and Debias"). For each percentage ``p`` the ``p`` %
  most relevant (MoRF) or least relevant (LeRF) pixels are removed and filled by *noisy linear
  imputation*: every removed pixel equals the weighted average of its 8 neighbours (weight 1/6
  for the 4 direct neighbours, 1/12 for the diagonals, renormalised over neighbours inside the
  image), a sparse linear system solved with SciPy for all removed pixels at once, plus Gaussian
  noise of ``noise_std`` (model input units). A faithful map makes MoRF fall fast (low mean) and
  LeRF stay high.

Example::

    from cnnviz.api import explain
    from cnnviz.metrics.faithfulness import deletion, insertion, relevance_maps

    e = explain(model, x, "gradcam")
    maps = relevance_maps(e)
    print(deletion(model, x, maps, steps=50).auc, insertion(model, x, maps, steps=50).auc)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.capture.hooks import as_model_input, forward_in_layout, model_state_guard
from cnnviz.errors import TargetError
from cnnviz.methods.postprocess import Display, minmax_normalize, relu
from cnnviz.options import DeletionBaseline as Baseline

if TYPE_CHECKING:
    from cnnviz.methods.base import Explanation

ClassTarget: TypeAlias = int | str | Sequence[int | str] | torch.Tensor | None
"""One class per image: an index or name for all images, one per image, or ``None`` (predicted)."""

RISE_BLUR_KERNEL = 11
RISE_BLUR_SIGMA = 5.0
ROAD_PERCENTAGES: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)


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
    """Positive part of each map, min-max normalised to [0, 1] (constant maps become zeros)."""
    return minmax_normalize(relu(maps.float()))


def probabilities(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Softmax probability of ``targets[rows]`` for each image of ``images``, in batches.

    The model runs in eval mode under ``torch.inference_mode`` and is left as found.
    """
    from cnnviz.capture.targets import logits_of

    if rows is None:
        rows = torch.arange(images.shape[0])
    out = []
    with torch.inference_mode(), model_state_guard(model):
        for start in range(0, images.shape[0], batch_size):
            chunk = as_model_input(model, images[start : start + batch_size])
            logits = logits_of(forward_in_layout(model, chunk)).float()
            index = targets[rows[start : start + batch_size]].to(logits.device)
            out.append(logits.softmax(dim=1).gather(1, index.view(-1, 1)).squeeze(1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def class_targets(
    model: nn.Module,
    images: torch.Tensor,
    target: ClassTarget,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """``(N,)`` class indices: ``target`` resolved against the model's clean output."""
    from cnnviz.capture.targets import logits_of, resolve_targets

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


def _check(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
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
        from cnnviz.errors import NonFiniteError

        raise NonFiniteError("The maps contain NaN or infinite values; they cannot rank pixels.")
    return maps.detach().float().cpu()


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


# -- baselines ---------------------------------------------------------------------------------


def gaussian_blur(
    images: torch.Tensor, kernel_size: int = RISE_BLUR_KERNEL, sigma: float = RISE_BLUR_SIGMA
) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with replicated borders (any image size)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or not sigma > 0:
        raise ValueError(f"Need an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    half = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - half
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype).to(images.device)
    n, c, h, w = images.shape
    flat = images.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (half, half, half, half), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def make_baseline(images: torch.Tensor, baseline: Baseline | str | torch.Tensor) -> torch.Tensor:
    """The substitute image for each image: a :class:`Baseline` or a tensor broadcast to it."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images.dtype).expand_as(images).clone()
    kind = Baseline(baseline) if isinstance(baseline, str) else baseline
    if kind is Baseline.ZEROS:
        return torch.zeros_like(images)
    if kind is Baseline.MEAN:
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    return gaussian_blur(images)


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
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive whole number, got {steps!r}")
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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    n, _, h, w = start.shape
    ranks = pixel_ranks(maps).view(n, 1, h, w)
    counts = step_counts(h * w, steps)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(steps + 1))  # (N·(S+1), 2)
    from cnnviz.capture.targets import logits_of

    out: list[torch.Tensor] = []
    with torch.inference_mode(), model_state_guard(model):
        for chunk in torch.split(pairs, batch_size):
            image, step = chunk[:, 0], chunk[:, 1]
            switched = ranks[image] < counts[step].view(-1, 1, 1, 1)
            batch = torch.where(switched, end[image], start[image])
            logits = logits_of(forward_in_layout(model, as_model_input(model, batch))).float()
            index = targets[image].to(logits.device).view(-1, 1)
            out.append(logits.softmax(dim=1).gather(1, index).squeeze(1).cpu())
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
    maps = _check(images, maps)
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
    better). Arguments as :func:`deletion`; the start image is ``gaussian_blur(images)``."""
    maps = _check(images, maps)
    x = images.detach().float().cpu()
    targets = class_targets(model, x, target)
    blurred = gaussian_blur(x, blur_kernel, blur_sigma)
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
    maps = _check(images, maps)
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


# -- ROAD --------------------------------------------------------------------------------------


def noisy_linear_impute(
    image: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise_std: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill the ``removed`` pixels of a ``(C, H, W)`` image by noisy linear imputation (ROAD).

    Each removed pixel ``u`` satisfies ``Σ_n w_n (x_u − x_n) = 0`` over its neighbours ``n``
    inside the image (4-neighbours ``w = 1/6``, diagonals ``w = 1/12``): it is their weighted
    average. Known neighbours move to the right-hand side; the sparse system (one matrix, one
    column per channel) is solved with ``scipy.sparse.linalg.splu``. Then Gaussian noise of
    ``noise_std`` is added to the imputed pixels only. A linear ramp is reproduced exactly
    wherever a removed pixel's neighbourhood is symmetric (away from the border). If every pixel
    is removed there is nothing to interpolate from: the image becomes zeros plus noise.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    c, h, w = image.shape
    mask = removed.detach().cpu().bool().numpy()
    result = image.detach().cpu().double().clone()
    count = int(mask.sum())
    if count == 0:
        return result.to(image.dtype)
    values = result.numpy().reshape(c, h * w)
    unknown = np.full((h, w), -1, dtype=np.int64)
    unknown[mask] = np.arange(count)
    ys, xs = np.nonzero(mask)
    if count == h * w:
        solved = np.zeros((count, c))
    else:
        diagonal = np.zeros(count)
        rhs = np.zeros((count, c))
        rows, cols, data = [np.arange(count)], [np.arange(count)], []
        for dy, dx, weight in _NEIGHBOURS:
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            diagonal[inside] += weight
            src = np.nonzero(inside)[0]
            neighbour = unknown[ny[src], nx[src]]
            free = neighbour >= 0
            rows.append(src[free])
            cols.append(neighbour[free])
            data.append(np.full(int(free.sum()), -weight))
            known = src[~free]
            flat = ny[known] * w + nx[known]
            np.add.at(rhs, known, weight * values[:, flat].T)
        data.insert(0, diagonal)
        matrix = coo_matrix(
            (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
            shape=(count, count),
        ).tocsc()
        solved = splu(matrix).solve(rhs)
    noise = torch.randn((count, c), generator=generator, dtype=torch.float64).numpy()
    values[:, ys * w + xs] = (solved + noise_std * noise).T
    return torch.from_numpy(values.reshape(c, h, w)).to(image.dtype)


@dataclass(frozen=True)
class RoadResult:
    """ROAD probabilities ``(N, P)`` for MoRF and LeRF removal at each percentage."""

    percentages: tuple[float, ...]
    morf: torch.Tensor
    lerf: torch.Tensor
    targets: torch.Tensor

    @property
    def morf_mean(self) -> torch.Tensor:
        """``(N,)`` mean MoRF probability over the percentages (lower is better)."""
        return self.morf.mean(dim=1)

    @property
    def lerf_mean(self) -> torch.Tensor:
        """``(N,)`` mean LeRF probability over the percentages (higher is better)."""
        return self.lerf.mean(dim=1)


def road(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    target: ClassTarget = None,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise_std: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
) -> RoadResult:
    """ROAD: probability after removing ``p`` % of the pixels, most (MoRF) or least (LeRF)
    relevant first, each removal filled by :func:`noisy_linear_impute` (noise seeded by ``seed``).
    """
    maps = _check(images, maps)
    points = tuple(float(p) for p in percentages)
    if not points or any(not 0 <= p <= 100 or math.isnan(p) for p in points):
        raise ValueError(f"percentages must be numbers in [0, 100], got {list(percentages)}")
    x = images.detach().float().cpu()
    targets = class_targets(model, x, target)
    n, _, h, w = x.shape
    ranks = pixel_ranks(maps).view(n, h, w)
    generator = torch.Generator().manual_seed(seed)
    imputed = []
    for i in range(n):
        for p in points:
            count = math.floor(p / 100.0 * h * w + 0.5)
            for removed in (ranks[i] < count, ranks[i] >= h * w - count):  # MoRF, LeRF
                imputed.append(
                    noisy_linear_impute(x[i], removed, noise_std=noise_std, generator=generator)
                )
    rows = torch.arange(n).repeat_interleave(2 * len(points))
    probs = probabilities(model, torch.stack(imputed), targets, rows, batch_size)
    probs = probs.view(n, len(points), 2)
    return RoadResult(points, probs[..., 0].clone(), probs[..., 1].clone(), targets)
