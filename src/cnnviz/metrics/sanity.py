"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS'18):
how alike two maps are, and the result of a randomisation test.

A map that explains the model must change when the model's weights are destroyed; the tests
themselves (which models are randomised, how) are in :mod:`cnnviz.runs.randomization`. Here,
each randomised map is compared with the original map of the same image, class and layer by
:func:`similarity`:

- ``spearman_abs``: Spearman rank correlation of ``|map|`` (``scipy.stats.spearmanr``);
- ``spearman``: Spearman rank correlation of the raw signed maps;
- ``ssim``: ``skimage.metrics.structural_similarity`` of the displayed pictures (rectified as
  the method draws them, min-max normalised to [0, 1], ``data_range=1``);
- ``hog``: **Pearson** correlation of the ``skimage.feature.hog`` vectors of the displayed
  pictures (9 orientations, 8×8-pixel cells, 2×2-cell blocks).

Maps are compared at the input resolution. An undefined similarity (a constant map, a map too
small for SSIM's 7×7 window or HOG's 16×16 block) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnviz.methods.postprocess import (
    Display,
    percentile_normalize,
    signed_percentile_normalize,
    to_unit_range,
)
from cnnviz.options import SANITY_MODES

if TYPE_CHECKING:
    from cnnviz.methods.base import Explanation

SIMILARITIES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
MODES: tuple[str, ...] = SANITY_MODES


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr  # lazy: SciPy is heavy

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _hog(picture: np.ndarray) -> np.ndarray | None:
    from skimage.feature import hog  # lazy: scikit-image is heavy

    if min(picture.shape) < 16:
        return None
    vector: np.ndarray = hog(
        picture, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True
    )
    return vector


def displayed(raw: torch.Tensor, display: Display) -> np.ndarray:
    """``(…, H, W)`` raw maps as the method draws them (:func:`to_unit_range`), as float64."""
    return to_unit_range(raw, display).numpy().astype(np.float64)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity  # lazy: scikit-image is heavy

    if min(a.shape) < 7 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    value = structural_similarity(a, b, data_range=1.0)  # type: ignore[no-untyped-call]  # untyped
    return float(value)


def similarity(
    original: torch.Tensor,
    other: torch.Tensor,
    display: Display,
    metrics: Sequence[str] = SIMILARITIES,
) -> dict[str, float]:
    """The similarities ``metrics`` (see the module docstring) of two raw ``(H, W)`` maps."""
    unknown = set(metrics) - set(SIMILARITIES)
    if unknown:
        raise ValueError(f"Unknown similarity {sorted(unknown)}; choose from {SIMILARITIES}")
    a = original.detach().double().cpu().numpy()
    b = other.detach().double().cpu().numpy()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Expected two (H, W) maps of one shape, got {a.shape} and {b.shape}")
    result: dict[str, float] = {}
    if "spearman_abs" in metrics:
        result["spearman_abs"] = _spearman(np.abs(a), np.abs(b))
    if "spearman" in metrics:
        result["spearman"] = _spearman(a, b)
    if "ssim" in metrics or "hog" in metrics:
        pa, pb = displayed(original, display), displayed(other, display)
        if "ssim" in metrics:
            result["ssim"] = _ssim(pa, pb)
        if "hog" in metrics:
            ha, hb = _hog(pa), _hog(pb)
            result["hog"] = math.nan if ha is None or hb is None else _pearson(ha, hb)
    return result


def batch_similarity(
    original: Explanation, other: Explanation, metrics: Sequence[str] = SIMILARITIES
) -> dict[str, np.ndarray]:
    """``metric → (N,)`` similarities of the first target's maps, image by image."""
    a, b = original.upsampled()[:, 0], other.upsampled()[:, 0]
    rows = [similarity(a[i], b[i], original.display, metrics) for i in range(a.shape[0])]
    return {m: np.array([r[m] for r in rows], dtype=np.float64) for m in metrics}


@dataclass(frozen=True)
class SanityResult:
    """One method's maps compared across randomised models.

    Attributes:
        method: registry name.
        mode: ``"cascading"``, ``"independent"`` or ``"data"``.
        layer: the CAM layer explained (``None`` for input-space methods).
        steps: the group randomised at each step (cascading: the lowest one randomised so far).
        similarity: metric → ``(N, S)`` array, image × step.
        pictures: ``(S + 1, N, H, W)`` displayed maps in [0, 1], the original first (min-max,
            as the similarities see them; :meth:`shown` for the pictures people look at).
        display: how the method rectifies its maps (signed pictures are ``(s + 1) / 2``).
        outlier_percent: the share (%) of each map's brightest pixels its pictures saturate.
    """

    method: str
    mode: str
    layer: str | None
    steps: tuple[str, ...]
    similarity: dict[str, np.ndarray]
    pictures: np.ndarray = field(repr=False)
    display: Display = Display.POSITIVE
    outlier_percent: float | None = None

    def shown(self) -> np.ndarray:
        """:attr:`pictures` as the method's pictures show them, ``(S + 1, N, H, W)`` float64 in
        [0, 1]: the brightest :attr:`outlier_percent` % of each map saturated
        (:func:`~cnnviz.methods.postprocess.percentile_normalize`, which gives the same picture
        from a min-max map as from the raw one)."""
        maps = torch.from_numpy(np.asarray(self.pictures, dtype=np.float64))
        if self.display is Display.SIGNED:
            clipped = (signed_percentile_normalize(2 * maps - 1, self.outlier_percent) + 1) / 2
        else:
            clipped = percentile_normalize(maps, self.outlier_percent)
        return clipped.numpy()

    def full_depth(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(N,)`` similarity at the last step (every group randomised, for cascading)."""
        return self.similarity[metric][:, -1]

    def mean(self, metric: str = "spearman_abs") -> np.ndarray:
        """``(S,)`` mean over images of ``metric`` at each step, NaN-aware (NaN if all are)."""
        values = self.similarity[metric]
        counts = np.isfinite(values).sum(axis=0)
        sums = np.where(np.isfinite(values), values, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
