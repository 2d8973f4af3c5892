"""ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022: RemOve And Debias). For each percentage ``p`` the ``p`` %
most relevant (MoRF) or least relevant (LeRF) pixels are removed and filled by *noisy linear
imputation*: every removed pixel equals the weighted average of its 8 neighbours (weight 1/6
for the 4 direct neighbours, 1/12 for the diagonals, renormalised over neighbours inside the
image), a sparse linear system solved with SciPy for all removed pixels at once, plus Gaussian
noise of ``noise_std`` (model input units). A faithful map makes MoRF fall fast (low mean) and
LeRF stay high.

The probabilities come from :func:`cnnviz.metrics.faithfulness.probabilities` (softmax of one
class per image, by default the class predicted on the clean image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnviz.metrics.faithfulness import (
    ClassTarget,
    check_maps,
    class_targets,
    pixel_ranks,
    probabilities,
)

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
    from scipy.sparse import coo_matrix  # lazy: SciPy is heavy
    from scipy.sparse.linalg import splu  # lazy: SciPy is heavy

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
    maps = check_maps(images, maps)
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
