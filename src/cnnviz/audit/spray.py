"""Spectral relevance analysis (SpRAy): cluster one class's maps to find its prediction strategies.

Lapuschkin, Wäldchen, Binder, Montavon, Samek & Müller, "Unmasking Clever Hans predictors and
assessing what machines really learn", Nature Communications 10, 1096 (2019). A classifier that
recognised horses by a copyright tag showed it in its heatmaps: clustered per class, the maps of
the tagged images formed their own group, with its relevance in the tag's corner.

For the ``n`` maps of one class:

1. each map's positive part is sum-pooled to a ``g × g`` grid and scaled to unit mass,
   ``p_i = pool(max(m_i, 0)) / Σ pool(max(m_i, 0))`` — a distribution of where the evidence lies,
   so images whose evidence sits in the same place are close whatever its strength;
2. a k-nearest-neighbour graph on the ``p_i`` (Euclidean, ``k = 10``: CoRelAy's default) is made
   symmetric, ``A = max(G, Gᵀ)`` (scikit-learn's ``kneighbors_graph``);
3. the symmetric normalised Laplacian ``L = I − D^{-1/2} A D^{-1/2}`` (SciPy's
   ``csgraph.laplacian``) has eigenvalues ``0 = λ₁ ≤ λ₂ ≤ … ≤ λ_n``, one near zero per
   well-separated group. The eigengap heuristic chooses the number of clusters
   ``c = argmax_{1 ≤ j ≤ c_max} (λ_{j+1} − λ_j)`` among the first 32 eigenvalues (the first
   gap within 80 % of the largest, :func:`eigengap_count`);
4. spectral clustering with ``c`` clusters on ``A`` (scikit-learn's ``SpectralClustering``: the
   Laplacian's leading eigenvectors, then k-means, seeded).

Each cluster's prototype is the mean of its members' ``p_i``. Example::

    import numpy as np
    from cnnviz.audit.spray import spectral_clusters

    rng = np.random.default_rng(0)
    maps = rng.random((60, 8, 8)) * 0.1
    maps[:30, 3:5, 3:5] += 1.0  # evidence in the middle …
    maps[30:, 0, 0] += 1.0  # … or in a corner
    clusters = spectral_clusters(maps)
    assert clusters.count == 2
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnviz.errors import AuditError, positive_int

NEIGHBOURS = 10
"""Neighbours of each map in the affinity graph (CoRelAy's default)."""

EIGENVALUES = 32
"""How many of the Laplacian's smallest eigenvalues are computed and shown (CoRelAy's default)."""

MAX_CLUSTERS = 8
"""The most clusters the eigengap may choose."""

GRID = 8
"""Maps are sum-pooled to at most ``GRID × GRID`` cells before clustering."""

NEAR_GAP = 0.8
"""A gap at least this share of the largest counts as the eigengap when it comes first."""


def min_images(neighbours: int = NEIGHBOURS) -> int:
    """The fewest maps a class needs: twice the neighbours, so a cluster can hold more than one
    neighbourhood."""
    return 2 * neighbours


def mass_grids(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """``(n, h, w)`` maps as ``(n, g, g')`` distributions of positive mass (each sums to 1).

    The positive part is sum-pooled to at most ``grid`` cells a side (adaptive average pooling
    times the cell area: exact sums when ``grid`` divides the size; a smaller map keeps its size).
    A map with no positive mass becomes the uniform distribution: it points nowhere.
    """
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (n, h, w), got {maps.shape}")
    positive = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float64)).clamp(min=0)
    h, w = positive.shape[1:]
    size = (min(grid, h), min(grid, w))
    pooled = F.adaptive_avg_pool2d(positive[:, None], size)[:, 0] * (h * w / (size[0] * size[1]))
    total = pooled.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / (size[0] * size[1]))
    grids = torch.where(total > 0, pooled / total.clamp(min=1e-300), uniform)
    return np.asarray(grids.numpy())


@dataclass(frozen=True)
class SpectralClusters:
    """The SpRAy clustering of one class's maps.

    Attributes:
        labels: ``(n,)`` cluster of each map, ``0 … count − 1``, numbered by decreasing size.
        eigenvalues: the Laplacian's smallest eigenvalues, ascending (at most 32).
        count: the number of clusters the eigengap chose.
        grids: ``(n, g, g')`` the maps as distributions of mass (:func:`mass_grids`).
        prototypes: ``(count, g, g')`` each cluster's mean distribution.
    """

    labels: np.ndarray
    eigenvalues: np.ndarray
    count: int
    grids: np.ndarray
    prototypes: np.ndarray

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the maps in ``cluster``, ascending."""
        return np.flatnonzero(self.labels == cluster)

    @property
    def gaps(self) -> np.ndarray:
        """``λ_{j+1} − λ_j`` for ``j = 1 …``: the eigengap is the largest of the first ones."""
        return np.diff(self.eigenvalues)


def affinity_graph(features: np.ndarray, neighbours: int) -> np.ndarray:
    """The symmetric k-nearest-neighbour connectivity of ``features`` ``(n, d)``: dense ``(n, n)``
    0/1 matrix, ``A_ij = 1`` when ``j`` is among ``i``'s ``neighbours`` nearest or the reverse."""
    from sklearn.neighbors import kneighbors_graph  # lazy: only audits need scikit-learn

    k = min(neighbours, features.shape[0] - 1)
    graph = kneighbors_graph(features, n_neighbors=k, mode="connectivity", include_self=False)
    dense = np.asarray(graph.toarray(), dtype=np.float64)
    return np.maximum(dense, dense.T)


def laplacian_spectrum(affinity: np.ndarray, count: int = EIGENVALUES) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the symmetric normalised Laplacian of ``affinity``,
    ascending (clipped at 0 against round-off)."""
    from scipy.linalg import eigh  # lazy: only audits need it
    from scipy.sparse.csgraph import laplacian  # lazy: only audits need it

    lap = laplacian(affinity, normed=True)
    top = min(count, affinity.shape[0]) - 1
    values: np.ndarray = np.sort(np.asarray(eigh(lap, eigvals_only=True, subset_by_index=[0, top])))
    clipped: np.ndarray = np.clip(values, 0.0, None)
    return clipped


def eigengap_count(
    eigenvalues: np.ndarray, max_clusters: int = MAX_CLUSTERS, near: float = NEAR_GAP
) -> int:
    """The number of clusters the eigengap heuristic chooses (von Luxburg, "A tutorial on spectral
    clustering", Statistics and Computing 2007, §8.3): the ``j ≤ max_clusters`` with the largest
    gap ``λ_{j+1} − λ_j`` — or the smallest ``j`` whose gap is at least ``near`` times the largest.

    The second rule keeps the count stable: a k-NN graph's clusters have structure of their own,
    which adds later gaps nearly as large as the one that separates the clusters; when two gaps
    are that close, the fewer clusters are the better-supported reading (a strategy split in
    two shows as two similar prototypes, a merged one not at all, so this errs on the safe side
    only when the gaps cannot tell).
    """
    gaps = np.diff(eigenvalues)[:max_clusters]
    if not gaps.size or gaps.max() <= 0:
        return 1
    return int(np.flatnonzero(gaps >= near * gaps.max())[0]) + 1


def spectral_clusters(
    maps: np.ndarray,
    *,
    neighbours: int = NEIGHBOURS,
    max_clusters: int = MAX_CLUSTERS,
    grid: int = GRID,
    seed: int = 0,
) -> SpectralClusters:
    """SpRAy on one class's ``(n, h, w)`` maps (the module docstring gives the steps).

    Raises:
        AuditError: fewer than :func:`min_images` maps, or maps that are not finite.
    """
    positive_int(neighbours, "neighbours")
    positive_int(max_clusters, "max clusters")
    positive_int(grid, "grid")
    n = maps.shape[0]
    if n < min_images(neighbours):
        raise AuditError(
            f"spectral clustering needs at least {min_images(neighbours)} maps of a class "
            f"({neighbours} neighbours each), got {n}; explain more images of it."
        )
    if not np.isfinite(maps).all():
        raise AuditError("the maps hold NaN or infinite values; explain the images again.")
    grids = mass_grids(maps, grid)
    features = grids.reshape(n, -1)
    affinity = affinity_graph(features, neighbours)
    eigenvalues = laplacian_spectrum(affinity)
    count = eigengap_count(eigenvalues, max_clusters)
    labels = _cluster(affinity, count, seed)
    prototypes = np.stack([grids[labels == c].mean(axis=0) for c in range(count)])
    return SpectralClusters(labels, eigenvalues, count, grids, prototypes)


def _cluster(affinity: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Spectral clustering of the graph into ``count`` clusters, numbered by decreasing size
    (ties: by smallest member index)."""
    if count == 1:
        return np.zeros(affinity.shape[0], dtype=np.int64)
    from sklearn.cluster import SpectralClustering  # lazy: only audits need scikit-learn

    with warnings.catch_warnings():
        # A graph of separate components is the clearest case of clusters, not a problem.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        raw = SpectralClustering(
            n_clusters=count, affinity="precomputed", random_state=seed, n_init=10
        ).fit_predict(affinity)
    found = sorted(
        set(raw.tolist()), key=lambda c: (-int((raw == c).sum()), int(np.argmax(raw == c)))
    )
    order = {c: rank for rank, c in enumerate(found)}
    return np.array([order[c] for c in raw.tolist()], dtype=np.int64)
