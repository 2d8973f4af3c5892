"""The audit's pictures and page: eigenvalue plots, cluster prototypes and member mosaics.

:func:`audit_page` renders ``audit.html.j2`` from an :class:`~cnnviz.audit.clusters.Audit`; every
picture is embedded (``data:`` URIs), so the page opens offline. Classes with flagged clusters
come first; at most ``max_classes`` classes are drawn (the CSV lists every image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cnnviz.audit.clusters import Audit, ClassAudit, ClusterAudit
from cnnviz.audit.placement import BORDER, CORNER, CORNER_HINT, PlacementSummary, region_masks
from cnnviz.render.canvas import new_figure
from cnnviz.render.colours import colorize, overlay, resize_map, to_uint8
from cnnviz.render.html import figure_data_uri, png_data_uri, render_page

TILE = 96  # pixels of a mosaic tile and of a prototype
MOSAIC_COLUMNS = 6
MOSAIC_MEMBERS = 18  # members drawn per cluster (the first ones, by image order)

Picture = Callable[[int], np.ndarray | None]
"""Image ``i`` as the model saw it, ``(H, W, 3)`` uint8, or ``None`` if it cannot be read."""

RawMap = Callable[[int], np.ndarray]
"""Image ``i``'s ``(h, w)`` map (read when its tile is drawn)."""


def eigenvalue_figure_uri(audited: ClassAudit) -> str:
    """The Laplacian's smallest eigenvalues with the eigengap that chose the cluster count."""
    values = audited.spectrum.eigenvalues
    count = audited.spectrum.count
    fig = new_figure(3.6, 2.4, 100)
    ax = fig.subplots()
    xs = np.arange(1, values.size + 1)
    ax.plot(xs, values, "o-", markersize=3, linewidth=1, color="C0")
    if count < values.size:
        ax.axvspan(count + 0.1, count + 0.9, color="C3", alpha=0.2, label=f"largest gap: {count}")
        ax.legend(fontsize="x-small", loc="lower right")
    ax.set_xlabel("j")
    ax.set_ylabel("eigenvalue λⱼ")
    ax.set_title(f"{audited.label}: {count} cluster(s)", fontsize="small")
    return figure_data_uri(fig)


def prototype_uri(prototype: np.ndarray) -> str:
    """A cluster's mean mass distribution, scaled to its maximum, as a ``TILE``-pixel picture."""
    peak = float(prototype.max())
    scaled = prototype / peak if peak > 0 else prototype
    big = np.clip(resize_map(scaled, (TILE, TILE)), 0.0, 1.0)
    return png_data_uri(colorize(big, "jet"))


def mosaic(
    members: Sequence[int], map_of: RawMap, picture: Picture, columns: int = MOSAIC_COLUMNS
) -> np.ndarray:
    """Members' maps (positive part, scaled to each map's maximum) over their images, in a grid
    of ``TILE``-pixel tiles with 2-pixel white gaps; a missing image is drawn grey."""
    rows = max(1, -(-len(members) // columns))
    width = min(columns, max(1, len(members)))
    sheet = np.full((rows * (TILE + 2), width * (TILE + 2), 3), 255, dtype=np.uint8)
    for k, index in enumerate(members):
        positive = np.clip(map_of(index), 0.0, None)
        peak = float(positive.max())
        map01 = positive / peak if peak > 0 else positive
        image = picture(index)
        base = np.full((TILE, TILE, 3), 128, dtype=np.uint8) if image is None else image
        tile = overlay(_fit(base), map01, cmap="jet", alpha=0.45)
        r, c = divmod(k, columns)
        sheet[r * (TILE + 2) : r * (TILE + 2) + TILE, c * (TILE + 2) : c * (TILE + 2) + TILE] = tile
    return sheet


def _fit(image: np.ndarray) -> np.ndarray:
    """``image`` resized to ``TILE × TILE`` (bilinear, each channel)."""
    if image.shape[:2] == (TILE, TILE):
        return image
    channels = [resize_map(image[..., c] / 255.0, (TILE, TILE)) for c in range(3)]
    return to_uint8(np.clip(np.stack(channels, axis=-1), 0.0, 1.0))


def _where(summary: PlacementSummary) -> dict[str, Any]:
    return summary.record()


def _cluster_view(
    cluster: ClusterAudit,
    audited: ClassAudit,
    map_of: RawMap,
    picture: Picture,
    names: Sequence[str],
) -> dict[str, Any]:
    shown = cluster.members[:MOSAIC_MEMBERS].tolist()
    return {
        "index": cluster.index,
        "size": cluster.size,
        "share": cluster.size / audited.members.size,
        "flags": list(cluster.flags),
        "where": _where(cluster.where),
        "correct": cluster.correct,
        "labelled": cluster.labelled,
        "prototype": prototype_uri(cluster.prototype),
        "mosaic": png_data_uri(mosaic(shown, map_of, picture)),
        "shown": len(shown),
        "names": [names[i] for i in shown],
    }


def audit_page(
    audit: Audit,
    map_of: RawMap,
    picture: Picture,
    names: Sequence[str],
    *,
    context: dict[str, Any],
    max_classes: int = 50,
) -> str:
    """The audit's HTML page; ``map_of(i)`` and ``names`` (one per image) are the run's,
    ``context`` adds the template's ``model``, ``method``, ``layer``, ``source`` and ``files``."""
    ordered = sorted(audit.classes, key=lambda c: (-len(c.flagged), c.index))
    classes = [
        {
            "label": audited.label,
            "count": int(audited.members.size),
            "clusters": [
                _cluster_view(c, audited, map_of, picture, names) for c in audited.clusters
            ],
            "flagged": len(audited.flagged),
            "eigen": eigenvalue_figure_uri(audited),
            "where": _where(audited.where),
            "mean": prototype_uri(audited.spectrum.grids.mean(axis=0)),
        }
        for audited in ordered[:max_classes]
    ]
    summary = [
        {
            "label": audited.label,
            "count": int(audited.members.size),
            "clusters": audited.spectrum.count,
            "flagged": len(audited.flagged),
            "where": _where(audited.where),
        }
        for audited in sorted(audit.classes, key=lambda c: c.index)
    ]
    grid = audit.classes[0].spectrum.grids.shape[1:] if audit.classes else (8, 8)
    return render_page(
        "audit.html.j2",
        thresholds={"corner_hint": CORNER_HINT, "corner": CORNER, "border": BORDER},
        border_area=float(region_masks(*grid)[1].mean()),
        classes=classes,
        summary=summary,
        hidden=max(0, len(ordered) - max_classes),
        skipped=audit.skipped,
        settings=audit.settings,
        fewest=audit.settings.fewest(),
        flagged=audit.flagged_count,
        **context,
    )
