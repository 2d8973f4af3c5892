"""Feature Ablation: the score drop when each group of pixels is set to a baseline at once.

The groups are a grid of square patches by default, or any segmentation given as ``mask``
(superpixels, objects, regions of interest); every group of every image is ablated in one
perturbed copy of the batch, and the copies stream through the model without autograd,
``batch_size`` rows per forward pass, as the other perturbation methods do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method, register
from cnnviz.methods.baselines import BaselineContext, BaselineSpec, baseline_tensor, parse_baseline
from cnnviz.methods.gradients import chunks, clean_pass, forward_scores, repeated_rows
from cnnviz.methods.perturbation import Score, map_result, parse_score, reference_scores
from cnnviz.methods.postprocess import Display
from cnnviz.progress import batches

GRID_CELLS = 14
"""Patches per side by default: 16 px patches on a 224 px input."""


def patch_groups(height: int, width: int, patch: int) -> torch.Tensor:
    """``(H, W)`` group ids of a grid of ``patch``-px squares, row by row (the last row and
    column of patches are cut at the edge)."""
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    per_row = -(-width // patch)
    return rows[:, None] * per_row + cols[None, :]


def mask_groups(mask: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``mask`` (``(H, W)`` or ``(N, H, W)`` integers, any ids) as ``(N, H, W)`` ids
    ``0 … G − 1``, numbered by first appearance in the sorted ids."""
    n, height, width = shape
    if mask.dtype.is_floating_point or mask.dtype == torch.bool or mask.is_complex():
        raise TypeError(f"mask must hold integer group ids, got dtype {mask.dtype}")
    if mask.shape not in ((height, width), (n, height, width)):
        raise ValueError(
            f"mask must be (H, W) = ({height}, {width}) or (N, H, W) = ({n}, {height}, {width}) "
            f"group ids, got shape {tuple(mask.shape)}"
        )
    ids: torch.Tensor = torch.unique(mask, return_inverse=True)[1]
    return ids.expand(n, height, width)


def pixel_groups(
    x: torch.Tensor, patch: int | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(N, H, W)`` group ids ``0 … G − 1`` of the pixels of ``x``: those of ``mask``
    (:func:`mask_groups`), else ``patch``-px squares (default ``⌈min(H, W) / 14⌉``)."""
    n, _, height, width = x.shape
    if mask is not None:
        return mask_groups(mask.to(x.device), (n, height, width))
    patch = patch or -(-min(height, width) // GRID_CELLS)
    return patch_groups(height, width, patch).to(x.device).expand(n, height, width)


@register
class FeatureAblation(Method):
    """Feature Ablation (captum's ``FeatureAblation``; the occlusion experiment of Zeiler &
    Fergus, ECCV 2014, on a partition of the image instead of a sliding window).

    The pixels are partitioned into groups ``g`` — ``patch``-px squares (default: a 14 × 14
    grid, ``patch = ⌈min(H, W) / 14⌉``) or the integer ids of ``mask`` (``(H, W)`` or
    ``(N, H, W)``, e.g. superpixels) — and every pixel gets the score drop of its group set, in
    all channels, to ``baseline`` (0 in model-input units: the dataset mean colour; any baseline
    of :mod:`cnnviz.methods.baselines`):

        a_p = S_c(x) − S_c(x with g(p) ablated).

    ``score`` is "logit" (default, as captum) or "probability"; ``batch_size`` (64) ablated
    images per forward pass. Equal to captum's ``FeatureAblation(model).attribute(x, target,
    feature_mask=groups, baselines=baseline)`` (tested). Example::

        >>> e = explain(model, x, "feature-ablation", target=3, patch=32)
    """

    name = "feature-ablation"
    title = "Feature Ablation"
    paper = "Zeiler & Fergus, ECCV 2014; captum"
    summary = "Score drop when each patch (or segment of a mask) is set to the baseline."
    display = Display.POSITIVE

    def __init__(
        self,
        *,
        patch: int | None = None,
        mask: torch.Tensor | None = None,
        baseline: BaselineSpec = 0.0,
        preprocessing: Preprocessing | None = None,
        score: str | Score = Score.LOGIT,
        batch_size: int = 64,
    ) -> None:
        self.patch = None if patch is None else positive_int(patch, "patch")
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor of group ids, got {type(mask).__name__}")
        if mask is not None and patch is not None:
            raise ValueError("give either patch or mask, not both")
        self.mask = mask
        self.baseline = parse_baseline(baseline)
        self.context = BaselineContext(preprocessing)
        self.score = parse_score(score)
        self.batch_size = positive_int(batch_size, "batch_size")

    def groups(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` group ids ``0 … G − 1`` of the pixels of ``x``."""
        return pixel_groups(x, self.patch, self.mask)

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        n = x.shape[0]
        groups = self.groups(x)
        count = int(groups.max()) + 1
        clean = clean_pass(model, x, target, class_names)
        probability = self.score is Score.PROBABILITY
        reference = reference_scores(clean, probability)
        fill = baseline_tensor(self.baseline, x, self.context)
        maps = x.new_zeros((n, clean.targets.per_image, *x.shape[-2:]))
        for span in batches(list(chunks(count, n, self.batch_size)), self.title):
            ids = torch.arange(span.start, span.stop, device=x.device)
            ablated = (groups.unsqueeze(0) == ids.view(-1, 1, 1, 1)).unsqueeze(2)  # (k,N,1,H,W)
            batch = torch.where(ablated, fill, x).flatten(0, 1)
            rows = repeated_rows(n, len(span), x.device)
            scores = forward_scores(model, batch, clean.targets, rows, probability=probability)
            drops = reference.unsqueeze(0) - scores.view(len(span), n, -1)  # (k, N, T)
            maps += torch.einsum("knt,knhw->nthw", drops, ablated.squeeze(2).to(x.dtype))
        return map_result(self, x, clean, maps)
