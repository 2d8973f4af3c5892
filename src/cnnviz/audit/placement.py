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
  the object covers (area-averaged mask), the share of the evidence on the object;
* ``centre_of_mass``: ``(x, y)`` in [0, 1] of the image's width and height.

A cluster is *flagged* when its members' mean statistics place the evidence away from what
decides the class (:meth:`PlacementSummary.flags`): off the object where masks are known
(``on_object < OFF_OBJECT``), otherwise concentrated in a corner (``corner ≥ CORNER``) or at the
border (``border ≥ BORDER``). Lapuschkin et al. (2019) found the copyright-tag strategy as
exactly such a cluster: its relevance sat in the image's lower-left corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OFF_OBJECT = 0.25
"""A cluster whose mean share of evidence on the object is below this is flagged ``off-object``."""

CORNER = 0.4
"""Without masks: a cluster with this mean share (or more) in one corner square is flagged."""

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
    centre_x: np.ndarray
    centre_y: np.ndarray

    def mean(self, members: np.ndarray) -> PlacementSummary:
        """The mean statistics of the maps ``members`` (indices); ``on_object`` over the maps
        with a mask (``None`` if none has one); ``corner_name``: the most frequent corner."""
        on_object = self.on_object[members]
        known = on_object[~np.isnan(on_object)]
        names = [self.corner_name[i] for i in members.tolist()]
        return PlacementSummary(
            corner=float(self.corner[members].mean()),
            corner_name=max(CORNERS, key=names.count),
            border=float(self.border[members].mean()),
            centre=float(self.centre[members].mean()),
            on_object=float(known.mean()) if known.size else None,
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
    centre_x: float
    centre_y: float

    def flags(self) -> list[str]:
        """``off-object`` where masks are known and the evidence is mostly elsewhere (then also
        where it is: ``corner (…)``, ``border``); without masks ``corner (…)`` and/or ``border``;
        none for a group whose evidence is on the object."""
        flags = []
        if self.on_object is not None:
            if self.on_object >= OFF_OBJECT:
                return []
            flags.append("off-object")
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
    on_object = np.full(n, np.nan)
    for i, mask in enumerate(masks or []):
        if mask is not None:
            on_object[i] = float((grids[i] * cell_coverage(mask, (height, width))).sum())
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    return Placement(
        corner=corner_shares.max(axis=1),
        corner_name=tuple(CORNERS[k] for k in which.tolist()),
        border=grids[:, border].sum(axis=1),
        centre=grids[:, centre].sum(axis=1),
        on_object=on_object,
        centre_x=(grids.sum(axis=1) * xs).sum(axis=1),
        centre_y=(grids.sum(axis=2) * ys).sum(axis=1),
    )
