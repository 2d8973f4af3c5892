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
    beside: Sequence[np.ndarray] | None = None,
) -> InlineFigure:
    """``pictures`` ``(N, H, W, 3)`` uint8 in a grid (``columns`` wide, at most 8), each panel
    titled and captioned (the captions hold the checks, a line or two each); ``beside[i]``
    ``(k, h, w, 3)``, when given, is a strip of natural exemplars drawn under picture ``i``."""
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
        shown = pictures[k] if beside is None else with_strip(pictures[k], beside[k])
        ax.imshow(shown, interpolation="lanczos" if pictures.shape[1] < 96 else "antialiased")
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


def with_strip(picture: np.ndarray, crops: np.ndarray, gap: int = 2) -> np.ndarray:
    """``picture`` with ``crops`` side by side under it, scaled to its width (white between)."""
    if crops.shape[0] == 0:
        return picture
    from PIL import Image  # lazy: Pillow only for the strip

    width = picture.shape[1]
    side = max(1, (width - gap * (crops.shape[0] - 1)) // crops.shape[0])
    strip = np.full((side, width, 3), 255, np.uint8)
    for i, crop in enumerate(crops):
        tile = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.LANCZOS))
        strip[:, i * (side + gap) : i * (side + gap) + side] = tile
    white = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([picture, white, strip])
