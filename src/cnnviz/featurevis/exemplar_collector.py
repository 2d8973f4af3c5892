"""The running top-k of a stream of images, per channel, in O(C·k) memory.

For each channel ``c`` two lists of ``k`` images are kept:

* the best by **score** ``s[n, c] = mean_{y,x} a[n, c, y, x]`` (:func:`~cnnviz.featurevis.checks.
  unit_scores`; the value itself for a ``(B, C)`` layer);
* the best by **peak** ``p[n, c] = max_{y,x} a[n, c, y, x]`` with the position ``(y, x)`` of the
  first maximum in row-major order (``(0, 0)`` for a ``(B, C)`` layer).

Both are ordered by value, descending; equal values by the lower source id. Each update merges
the ``k`` kept candidates with the batch's (a stable sort over ``k + B`` per channel), so the
result is the same for every batch size and equals one sort over all images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cnnviz.errors import positive_int
from cnnviz.featurevis.checks import unit_scores

STATE_KIND = "cnnviz.exemplar-collector"
STATE_VERSION = 1
_MISSING = -1


def _merge(
    values: torch.Tensor, sources: torch.Tensor, extra: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of ``(C, M)`` ``values`` (NaN last, ties by lower source), with
    their sources and the matching rows of ``extra`` ``(C, M, E)``."""
    key = torch.nan_to_num(values, nan=-torch.inf)
    by_source = torch.argsort(torch.where(sources < 0, torch.iinfo(torch.int64).max, sources))
    key = key.gather(1, by_source)
    order = by_source.gather(1, torch.sort(key, dim=1, descending=True, stable=True).indices)
    order = order[:, :k]
    gathered_extra = extra.gather(1, order[:, :, None].expand(-1, -1, extra.shape[2]))
    return values.gather(1, order), sources.gather(1, order), gathered_extra


class ExemplarCollector:
    """Keeps, per channel, the ``k`` best images by score and by peak (see the module docstring).

    Args:
        channels: how many channels the activations given to :meth:`update` have.
        k: how many images are kept per channel and list.
    """

    def __init__(self, channels: int, k: int) -> None:
        self.channels = positive_int(channels, "channels")
        self.k = positive_int(k, "k")
        shape = (self.channels, self.k)
        self.scores = torch.full(shape, torch.nan, dtype=torch.float64)
        self.score_sources = torch.full(shape, _MISSING, dtype=torch.int64)
        self.peaks = torch.full(shape, torch.nan, dtype=torch.float64)
        self.peak_sources = torch.full(shape, _MISSING, dtype=torch.int64)
        self.peak_positions = torch.full((*shape, 2), _MISSING, dtype=torch.int64)
        self.seen = 0

    def update(self, activations: torch.Tensor, sources: Sequence[int]) -> None:
        """Merge a batch: ``activations`` ``(B, C, H, W)`` or ``(B, C)``, ``sources`` its ``B``
        image ids (whole numbers ≥ 0, unique over the stream).

        Raises:
            ValueError: a shape that does not fit, or as many sources as images.
        """
        if activations.dim() not in (2, 4) or activations.shape[1] != self.channels:
            raise ValueError(
                f"expected activations (B, {self.channels}, H, W) or (B, {self.channels}), got "
                f"{tuple(activations.shape)}"
            )
        ids = torch.as_tensor(list(sources), dtype=torch.int64)
        if ids.shape != (activations.shape[0],) or bool((ids < 0).any()):
            raise ValueError(
                f"expected {activations.shape[0]} source ids ≥ 0, one per image, got "
                f"{list(sources)}"
            )
        acts = activations.detach().to(device="cpu", dtype=torch.float64)
        batch_sources = ids[None, :].expand(self.channels, -1)
        scores = unit_scores(acts).T  # (C, B)
        if acts.dim() == 4:
            width = acts.shape[3]
            peak, flat = acts.flatten(2).max(dim=2)  # (B, C), the first maximum
            where = torch.stack((flat // width, flat % width), dim=-1)  # (B, C, 2)
        else:
            peak, where = acts, torch.zeros((*acts.shape, 2), dtype=torch.int64)
        self.scores, self.score_sources, _ = _merge(
            torch.cat((self.scores, scores), dim=1),
            torch.cat((self.score_sources, batch_sources), dim=1),
            torch.zeros((self.channels, self.k + len(ids), 0), dtype=torch.int64),
            self.k,
        )
        self.peaks, self.peak_sources, self.peak_positions = _merge(
            torch.cat((self.peaks, peak.T), dim=1),
            torch.cat((self.peak_sources, batch_sources), dim=1),
            torch.cat((self.peak_positions, where.transpose(0, 1)), dim=1),
            self.k,
        )
        self.seen += len(ids)

    @classmethod
    def merged(cls, collectors: Sequence[ExemplarCollector]) -> ExemplarCollector:
        """One collector of several that saw disjoint images (the shares of the ranks of a
        distributed run): the same lists as one collector that saw every image, since each
        image of the overall top ``k`` is among the top ``k`` of the collector that saw it, and
        the merge orders by value and source id as :meth:`update` does.

        Raises:
            ValueError: no collectors, or collectors of other channel counts or ``k``.
        """
        if not collectors:
            raise ValueError("expected at least one collector to merge, got none")
        shapes = {(c.channels, c.k) for c in collectors}
        if len(shapes) != 1:
            raise ValueError(f"expected collectors of one (channels, k), got {sorted(shapes)}")
        channels, k = shapes.pop()
        merged = cls(channels, k)

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(c, name) for c in collectors], dim=1)

        merged.scores, merged.score_sources, _ = _merge(
            cat("scores"),
            cat("score_sources"),
            torch.zeros((channels, k * len(collectors), 0), dtype=torch.int64),
            k,
        )
        merged.peaks, merged.peak_sources, merged.peak_positions = _merge(
            cat("peaks"), cat("peak_sources"), cat("peak_positions"), k
        )
        merged.seen = sum(c.seen for c in collectors)
        return merged

    def arrays(self) -> dict[str, np.ndarray]:
        """The kept lists as NumPy arrays (NaN and -1 where fewer than ``k`` images came)."""
        return {
            "scores": self.scores.numpy().copy(),
            "score_sources": self.score_sources.numpy().copy(),
            "peaks": self.peaks.numpy().copy(),
            "peak_sources": self.peak_sources.numpy().copy(),
            "peak_positions": self.peak_positions.numpy().copy(),
        }

    def state(self) -> dict[str, Any]:
        """JSON-able state (missing values as ``None``), read back by :meth:`from_state`."""

        def values(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if np.isnan(v) else float(v) for v in row] for row in t.tolist()]

        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "channels": self.channels,
            "k": self.k,
            "seen": self.seen,
            "scores": values(self.scores),
            "score_sources": self.score_sources.tolist(),
            "peaks": values(self.peaks),
            "peak_sources": self.peak_sources.tolist(),
            "peak_positions": self.peak_positions.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ExemplarCollector:
        """The collector :meth:`state` described.

        Raises:
            ValueError: not a collector state, or one of another version or shape.
        """
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a version-{STATE_VERSION} exemplar-collector state: kind "
                f"{state.get('kind')!r}, version {state.get('version')!r}"
            )
        collector = cls(int(state["channels"]), int(state["k"]))
        shape = (collector.channels, collector.k)

        def tensor(name: str, dtype: torch.dtype, size: tuple[int, ...]) -> torch.Tensor:
            raw = state[name]
            if dtype == torch.float64:
                raw = [[np.nan if v is None else float(v) for v in row] for row in raw]
            t = torch.tensor(raw, dtype=dtype)
            if tuple(t.shape) != size:
                raise ValueError(f"state {name!r} has shape {tuple(t.shape)}, expected {size}")
            return t

        collector.scores = tensor("scores", torch.float64, shape)
        collector.score_sources = tensor("score_sources", torch.int64, shape)
        collector.peaks = tensor("peaks", torch.float64, shape)
        collector.peak_sources = tensor("peak_sources", torch.int64, shape)
        collector.peak_positions = tensor("peak_positions", torch.int64, (*shape, 2))
        collector.seen = int(state["seen"])
        return collector
