"""Where a map's evidence lies: shares of its mass on the object, at the border, in a corner.

Every statistic reads a map as a distribution of positive mass on a ``g × g'`` grid
(:func:`cnnviz.audit.spray.mass_grids`, ``Σ p = 1``):

* ``corner``: the largest share of the four corner squares, each ``c × c`` cells with
  ``c = max(1, round(g / 4))`` (1/16 of the image for ``g = 8``; a uniform map puts 6.25 % there),
  and which corner it is;
* ``border``: the share of the outer band ``b = max(1, round(g / 8))`` cells wide (44 % of the
  cells of an 8 × 8 grid);
* ``centre``: the share of the middle square, half the image's height and width;
* ``on_object``: with a ground-truth mask, ``Σ p · f`` where ``f`` is the fraction of each cell
  the object covers (area-averaged mask), the share of the evidence on the object, and
  ``coverage = mean(f)``, the share an even spread of evidence would put there (the object's
  area);
* ``centre_of_mass``: ``(x, y)`` in [0, 1] of the image's width and height.

A cluster is *flagged* when its members' mean statistics place the evidence away from what
decides the class (:meth:`PlacementSummary.flags`):

* where masks are known, ``off-object`` when ``on_object < coverage``: less evidence on the object
  than a map spread evenly over the image would put there. It is a comparison with chance, so it
  needs no threshold, and it holds for small objects and large ones alike; the flag then names
  the corner that holds at least ``CORNER_HINT`` of the mass (3 × an even share), if one does;
* without masks, a corner cannot be told from an object that sits in it, so only strong
  concentration is flagged: ``corner`` when one corner square holds ``≥ CORNER`` of the mass,
  ``border`` when the band holds ``≥ BORDER``.

Lapuschkin et al. (2019) found the copyright-tag strategy as exactly such a cluster: its
relevance sat in the image's lower-left corner, off the horse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CORNER = 0.4
"""Without masks: a cluster with this mean share (or more) in one corner square is flagged."""

CORNER_HINT = 0.2
"""With masks: an ``off-object`` cluster with this mean share (or more) in one corner square says
which corner (3.2 × the 1/16 an even spread puts there)."""

BORDER = 0.8
"""Without masks: a cluster with this mean share (or more) in the border band is flagged."""

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class Placement:
    """Per map (arrays of length ``n``): where its mass lies (see the module docstring)."""

    corner: np.ndarray
    corner_name: tuple[str, ...]
    border: np.ndarray
    centre: np.ndarray
    on_object: np.ndarray  # NaN where no mask is known
    coverage: np.ndarray  # the object's share of the image, NaN where no mask is known
    centre_x: np.ndarray
    centre_y: np.ndarray

    def row(self, i: int) -> dict[str, float | str | None]:
        """Map ``i``'s statistics by name (``None`` where no mask is known)."""
        on_object, coverage = float(self.on_object[i]), float(self.coverage[i])
        return {
            "corner": float(self.corner[i]),
            "corner_name": self.corner_name[i],
            "border": float(self.border[i]),
            "centre": float(self.centre[i]),
            "on_object": None if np.isnan(on_object) else on_object,
            "coverage": None if np.isnan(coverage) else coverage,
            "centre_x": float(self.centre_x[i]),
            "centre_y": float(self.centre_y[i]),
        }

    def mean(self, members: np.ndarray) -> PlacementSummary:
        """The mean statistics of the maps ``members`` (indices); ``on_object`` over the maps
        with a mask (``None`` if none has one); ``corner_name``: the most frequent corner."""
        on_object, coverage = self.on_object[members], self.coverage[members]
        known = ~np.isnan(on_object)
        names = [self.corner_name[i] for i in members.tolist()]
        return PlacementSummary(
            corner=float(self.corner[members].mean()),
            corner_name=max(CORNERS, key=names.count),
            border=float(self.border[members].mean()),
            centre=float(self.centre[members].mean()),
            on_object=float(on_object[known].mean()) if known.any() else None,
            coverage=float(coverage[known].mean()) if known.any() else None,
            centre_x=float(self.centre_x[members].mean()),
            centre_y=float(self.centre_y[members].mean()),
        )


@dataclass(frozen=True)
class PlacementSummary:
    """The mean :class:`Placement` of a group of maps (a cluster, a class)."""

    corner: float
    corner_name: str
    border: float
    centre: float
    on_object: float | None
    coverage: float | None
    centre_x: float
    centre_y: float

    def record(self) -> dict[str, float | str | None]:
        """The statistics by name, the lift included."""
        return {**dataclasses.asdict(self), "lift": self.lift}

    @property
    def lift(self) -> float | None:
        """``on_object / coverage``: how many times an even spread's share of the evidence lies
        on the object (below 1: less than chance)."""
        if self.on_object is None or not self.coverage:
            return None
        return self.on_object / self.coverage

    def flags(self) -> list[str]:
        """``off-object`` (and the corner it favours, if one) where masks are known and less
        evidence lies on the object than chance puts there; without masks ``corner (…)`` and/or
        ``border`` for strong concentration; none otherwise (module docstring)."""
        if self.on_object is not None and self.coverage is not None:
            if self.on_object >= self.coverage:
                return []
            hint = [f"corner ({self.corner_name})"] if self.corner >= CORNER_HINT else []
            return ["off-object", *hint]
        flags = []
        if self.corner >= CORNER:
            flags.append(f"corner ({self.corner_name})")
        if self.border >= BORDER:
            flags.append("border")
        return flags


def region_masks(height: int, width: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Boolean masks of the four corner squares, the border band and the centre square."""
    side = max(1, round(min(height, width) / 4))
    band = max(1, round(min(height, width) / 8))
    corners = []
    for top, left in ((True, True), (True, False), (False, True), (False, False)):
        mask = np.zeros((height, width), dtype=bool)
        rows = slice(0, side) if top else slice(height - side, height)
        cols = slice(0, side) if left else slice(width - side, width)
        mask[rows, cols] = True
        corners.append(mask)
    border = np.ones((height, width), dtype=bool)
    border[band : height - band, band : width - band] = False
    centre = np.zeros((height, width), dtype=bool)
    centre[height // 4 : height - height // 4, width // 4 : width - width // 4] = True
    return corners, border, centre


def cell_coverage(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The fraction of each cell of a ``size`` grid that the ``(H, W)`` bool ``mask`` covers
    (adaptive average pooling: exact when the grid divides the mask's size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float64))[None, None]
    return np.asarray(F.adaptive_avg_pool2d(tensor, size)[0, 0].numpy())


def placement(grids: np.ndarray, masks: list[np.ndarray | None] | None = None) -> Placement:
    """The statistics of ``(n, g, g')`` mass distributions; ``masks[i]``: image ``i``'s object
    mask at the model's input (any resolution), or ``None``."""
    n, height, width = grids.shape
    corners, border, centre = region_masks(height, width)
    corner_shares = np.stack([grids[:, m].sum(axis=1) for m in corners], axis=1)
    which = corner_shares.argmax(axis=1)
    on_object, coverage = np.full(n, np.nan), np.full(n, np.nan)
    for i, mask in enumerate(masks or []):
        if mask is not None:
            cells = cell_coverage(mask, (height, width))
            on_object[i], coverage[i] = float((grids[i] * cells).sum()), float(cells.mean())
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    return Placement(
        corner=corner_shares.max(axis=1),
        corner_name=tuple(CORNERS[k] for k in which.tolist()),
        border=grids[:, border].sum(axis=1),
        centre=grids[:, centre].sum(axis=1),
        on_object=on_object,
        coverage=coverage,
        centre_x=(grids.sum(axis=1) * xs).sum(axis=1),
        centre_y=(grids.sum(axis=2) * ys).sum(axis=1),
    )
