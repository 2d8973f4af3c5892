"""Dataset exemplars as a picture: one row per channel, its best crops left to right.

Arrays and strings in (the ``exemplars`` stage imports this module to draw its results, never the
other way round), an :class:`~cnnviz.render.canvas.InlineFigure` out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnviz.render.canvas import InlineFigure, new_figure
from cnnviz.render.figures import fit_text

PANEL_INCHES = 1.1
TITLE_INCHES = 0.5
MAX_ROWS = 16
DPI = 100


def exemplar_figure(
    crops: Sequence[np.ndarray],
    values: np.ndarray,
    channel_ids: Sequence[int],
    *,
    title: str,
) -> InlineFigure:
    """Row ``r`` shows ``crops[r]`` ``(k, s, s, 3)`` uint8 (channel ``channel_ids[r]``), each
    crop titled with ``values[r, j]`` (an empty panel where it is NaN); at most 16 rows, the
    title says when more were given."""
    count = len(crops)
    if count == 0 or values.ndim != 2 or values.shape[0] != count or len(channel_ids) != count:
        raise ValueError(
            f"expected one (k, s, s, 3) crop array, values row and channel id per channel, got "
            f"{count} crop arrays, values {values.shape} and {len(channel_ids)} channel ids"
        )
    for row in crops:
        if row.ndim != 4 or row.shape[-1] != 3 or row.dtype != np.uint8:
            raise ValueError(f"expected (k, s, s, 3) uint8 crops, got {row.shape} {row.dtype}")
    rows = min(count, MAX_ROWS)
    if count > MAX_ROWS:
        title = f"{title} (first {MAX_ROWS} of {count} channels)"
    columns = max(1, values.shape[1])
    width = max(columns * PANEL_INCHES + 0.6, 3.2)
    heading = fit_text(title, width)
    height = rows * (PANEL_INCHES + 0.2) + TITLE_INCHES * (heading.count("\n") + 1)
    fig = new_figure(width, height, DPI)
    axes = fig.subplots(rows, columns, squeeze=False)
    for r in range(rows):
        for j in range(columns):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j == 0:
                ax.set_ylabel(f"ch {channel_ids[r]}", fontsize="small")
            value = float(values[r, j])
            if j >= crops[r].shape[0] or np.isnan(value):
                continue
            ax.imshow(crops[r][j], interpolation="nearest")
            ax.set_title(f"{value:.3g}", fontsize=7)
    fig.suptitle(heading)
    return fig
