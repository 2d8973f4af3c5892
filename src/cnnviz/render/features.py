"""Feature visualisations as a picture: one labelled panel per image, its checks written under it.

Arrays and strings in (the ``features`` stage imports this module to draw its results, never the
other way round), an :class:`~cnnviz.render.canvas.InlineFigure` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnnviz.render.canvas import InlineFigure, new_figure
from cnnviz.render.figures import fit_text, wrap_text

PANEL_INCHES = 2.1
CAPTION_INCHES = 0.42
TITLE_INCHES = 0.5
MAX_COLUMNS = 8
DPI = 100


def feature_figure(
    pictures: np.ndarray,
    titles: Sequence[str],
    captions: Sequence[str],
    *,
    title: str,
    columns: int | None = None,
) -> InlineFigure:
    """``pictures`` ``(N, H, W, 3)`` uint8 in a grid (``columns`` wide, at most 8), each panel
    titled and captioned (the captions hold the checks, a line or two each)."""
    if pictures.ndim != 4 or pictures.shape[-1] != 3 or pictures.dtype != np.uint8:
        raise ValueError(
            f"expected (N, H, W, 3) uint8 pictures, got {pictures.shape} {pictures.dtype}"
        )
    count = pictures.shape[0]
    if len(titles) != count or len(captions) != count:
        raise ValueError(
            f"{count} pictures need as many titles and captions, got {len(titles)} and "
            f"{len(captions)}"
        )
    cols = max(1, min(columns or MAX_COLUMNS, MAX_COLUMNS, count))
    rows = math.ceil(count / cols)
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    panel_height = PANEL_INCHES + 0.3 + CAPTION_INCHES * caption_lines / 3
    width = max(cols * PANEL_INCHES, 3.2)
    heading = fit_text(title, width)
    height = rows * panel_height + TITLE_INCHES * (heading.count("\n") + 1)
    fig = new_figure(width, height, DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    characters = int(PANEL_INCHES * 72 / 6.2)  # about how many small characters fit a panel
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= count:
            continue
        ax.imshow(pictures[k], interpolation="lanczos" if pictures.shape[1] < 96 else "antialiased")
        ax.set_title(wrap_text(titles[k], characters), fontsize="small")
        ax.text(
            0.5,
            -0.04,
            captions[k],
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=6.5,
        )
    fig.suptitle(heading)
    return fig
