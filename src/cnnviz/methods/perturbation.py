"""Perturbation methods: attributions from forward passes on altered copies of the input.

No gradients are taken; the perturbed copies stream through the model without autograd,
``batch_size`` rows per forward pass, and every target of every image is scored from the same
passes. Targets are resolved once on the unperturbed input.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import NotApplicableError, positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method, check_finite, register
from cnnviz.methods.baselines import BaselineContext, BaselineSpec, baseline_tensor, parse_baseline
from cnnviz.methods.gradients import (
    CleanPass,
    chunks,
    clean_pass,
    forward_scores,
    make_generator,
    repeated_rows,
)
from cnnviz.methods.postprocess import Display
from cnnviz.progress import batches


class Score(enum.Enum):
    """Which scalar of a class target a perturbation method measures."""

    LOGIT = "logit"
    """The pre-softmax class score (captum's default)."""
    PROBABILITY = "probability"
    """The softmax probability (the RISE paper's, and Zeiler & Fergus's occlusion plots).
    A callable target's scalar is used as it is."""


def parse_score(value: str | Score) -> Score:
    """A :class:`Score` from itself or its value."""
    try:
        return Score(value)
    except ValueError:
        raise ValueError(f"score must be 'logit' or 'probability', got {value!r}") from None


def reference_scores(clean: CleanPass, probability: bool) -> torch.Tensor:
    """The unperturbed ``(N, T)`` scores a score drop is measured from: the probabilities when
    ``probability`` (class targets), else the logits (or a callable target's scalar)."""
    if probability and clean.probabilities is not None:
        return clean.probabilities
    return clean.scores


def pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """``(h, w)`` from one positive int or two."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2:
        raise ValueError(f"{what} must be one int or (height, width), got {value!r}")
    return positive_int(values[0], what), positive_int(values[1], what)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets 0, s, 2s, … of a window sliding along ``size``, the last one clipped at the edge
    (⌈(size − window)/stride⌉ + 1 positions, as captum's ``Occlusion``)."""
    if window > size:
        raise NotApplicableError(
            f"The occlusion window ({window} px) is larger than the input ({size} px)"
        )
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


@register
class Occlusion(Method):
    """Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014).

    A ``window`` (16 px) slides over the image with ``stride`` (default half the window),
    replacing all channels under it by ``baseline`` (0 in model-input units: the dataset mean
    colour for normalised inputs, the paper's grey square; any baseline of
    :mod:`cnnviz.methods.baselines`). Each pixel gets the mean score
    drop of the windows covering it:  a_p = mean_{w ∋ p} (S_c(x) − S_c(x with w occluded)).
    ``score`` is "logit" (default, as captum) or "probability". Positive = evidence for the
    class (display POSITIVE). Attributions repeat the map over the colour channels.
    ``batch_size`` (64) is the number of occluded images per forward pass (at least one per
    input image). Example::

        >>> e = explain(model, x, "occlusion", target=3, window=32, stride=16)
    """

    name = "occlusion"
    title = "Occlusion"
    paper = "Zeiler & Fergus, ECCV 2014"
    summary = "Score drop when a sliding grey square hides each region."
    display = Display.POSITIVE

    def __init__(
        self,
        *,
        window: int | Sequence[int] = 16,
        stride: int | Sequence[int] | None = None,
        baseline: BaselineSpec = 0.0,
        preprocessing: Preprocessing | None = None,
        score: str | Score = Score.LOGIT,
        batch_size: int = 64,
    ) -> None:
        self.window = pair(window, "window")
        half = (max(1, self.window[0] // 2), max(1, self.window[1] // 2))
        self.stride = half if stride is None else pair(stride, "stride")
        if any(s > w for s, w in zip(self.stride, self.window, strict=True)):
            raise ValueError(
                f"stride {self.stride} is larger than window {self.window}, which leaves pixels "
                "that no window covers; use a stride no larger than the window."
            )
        self.baseline = parse_baseline(baseline)
        self.context = BaselineContext(preprocessing)
        self.score = parse_score(score)
        self.batch_size = positive_int(batch_size, "batch_size")

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        (n, _, height, width), (wh, ww) = x.shape, self.window
        fill = baseline_tensor(self.baseline, x, self.context, "occlusion baseline")
        windows = [
            (top, left)
            for top in window_starts(height, wh, self.stride[0])
            for left in window_starts(width, ww, self.stride[1])
        ]
        clean = clean_pass(model, x, target, class_names)
        probability = self.score is Score.PROBABILITY
        reference = reference_scores(clean, probability)
        total = x.new_zeros((n, clean.targets.per_image, height, width))
        count = x.new_zeros((height, width))
        for span in batches(list(chunks(len(windows), n, self.batch_size)), self.title):
            batch = x.repeat(len(span), 1, 1, 1)
            for j, (top, left) in enumerate(windows[span.start : span.stop]):
                area = (slice(j * n, (j + 1) * n), slice(None), slice(top, top + wh))
                batch[(*area, slice(left, left + ww))] = fill[
                    :, :, top : top + wh, left : left + ww
                ]
            rows = repeated_rows(n, len(span), x.device)
            scores = forward_scores(model, batch, clean.targets, rows, probability=probability)
            drops = (reference.repeat(len(span), 1) - scores).view(len(span), n, -1, 1, 1)
            for j, (top, left) in enumerate(windows[span.start : span.stop]):
                total[:, :, top : top + wh, left : left + ww] += drops[j]
                count[top : top + wh, left : left + ww] += 1
        return map_result(self, x, clean, total / count)


def draw_rise_masks(
    generator: torch.Generator,
    count: int,
    *,
    grid: int,
    p: float,
    size: tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The next ``count`` RISE masks ``(count, H, W)`` in [0, 1] from ``generator``.

    Each is a ``grid × grid`` binary grid (cells kept with probability p), upsampled bilinearly
    (half-pixel centres, edges clamped) to ``(grid + 1) · cell`` and cropped at a random shift of
    less than one cell, cell = ⌈size / grid⌉ — the paper's construction. Masks are drawn one
    after another, so drawing 2 × k gives the same masks as drawing 2k.
    """
    device = generator.device
    cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
    cells, shifts = [], []
    for _ in range(count):
        cells.append(torch.rand((grid, grid), generator=generator, device=device) < p)
        dy = torch.randint(0, cell[0], (1,), generator=generator, device=device)
        dx = torch.randint(0, cell[1], (1,), generator=generator, device=device)
        shifts.append(torch.cat([dy, dx]))
    big = ((grid + 1) * cell[0], (grid + 1) * cell[1])
    up = F.interpolate(
        torch.stack(cells).to(dtype).unsqueeze(1), size=big, mode="bilinear", align_corners=False
    ).squeeze(1)
    offsets = torch.stack(shifts).tolist()
    return torch.stack(
        [m[dy : dy + size[0], dx : dx + size[1]] for m, (dy, dx) in zip(up, offsets, strict=True)]
    )


@register
class RISE(Method):
    """RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018).

    Draw ``masks`` (1000; the paper uses several thousand) random masks M_i:
    a ``grid × grid`` (7) grid of cells kept with probability ``p`` (0.5), upsampled bilinearly
    and shifted randomly by less than a cell. Score each masked input x ⊙ M_i, then

        map = Σ_i S_c(x ⊙ M_i) · M_i / (N · p)   ( = E[S_c(x ⊙ M) · M] / E[M] ),

    with S_c the class probability (``score="probability"``, the paper's) or the logit.
    ``seed`` (0) makes the masks deterministic; ``batch_size`` (64) masked images go through
    the model per forward pass, and every target is scored from the same passes. Example::

        >>> e = explain(model, x, "rise", target=3, masks=2000)
    """

    name = "rise"
    title = "RISE"
    paper = "Petsiuk et al., BMVC 2018"
    summary = "Class score averaged over random smooth masks that keep each pixel."
    display = Display.POSITIVE

    def __init__(
        self,
        *,
        masks: int = 1000,
        grid: int = 7,
        p: float = 0.5,
        score: str | Score = Score.PROBABILITY,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        self.masks = positive_int(masks, "masks")
        self.grid = positive_int(grid, "grid")
        if not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ValueError(f"p (the probability of keeping a cell) must be in (0, 1], got {p!r}")
        self.p = float(p)
        self.score = parse_score(score)
        self.seed = int(seed)
        self.batch_size = positive_int(batch_size, "batch_size")

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        n, size = x.shape[0], (x.shape[-2], x.shape[-1])
        clean = clean_pass(model, x, target, class_names)
        probability = self.score is Score.PROBABILITY
        generator = make_generator(self.seed, x.device)
        total = x.new_zeros((n, clean.targets.per_image, *size))
        for span in batches(list(chunks(self.masks, n, self.batch_size)), self.title):
            m = draw_rise_masks(
                generator, len(span), grid=self.grid, p=self.p, size=size, dtype=x.dtype
            )
            batch = (x.unsqueeze(0) * m[:, None, None]).flatten(0, 1)
            rows = repeated_rows(n, len(span), x.device)
            scores = forward_scores(model, batch, clean.targets, rows, probability=probability)
            total += torch.einsum("knt,khw->nthw", scores.view(len(span), n, -1), m)
        return map_result(self, x, clean, total / (self.masks * self.p))


def map_result(
    method: Method, x: torch.Tensor, clean: CleanPass, maps: torch.Tensor
) -> Explanation:
    """The :class:`Explanation` of one ``(N, T, H, W)`` map per target, repeated over the colour
    channels as ``attributions`` ``(N, T, C, H, W)`` (captum's per-channel layout)."""
    check_finite(maps, f"The {method.title} map")
    return Explanation(
        method=method.name,
        maps=maps,
        layer=None,
        targets=clean.targets,
        scores=clean.scores,
        probabilities=clean.probabilities,
        input_size=(x.shape[-2], x.shape[-1]),
        display=method.display,
        attributions=maps.unsqueeze(2).expand(-1, -1, x.shape[1], -1, -1).contiguous(),
    )
