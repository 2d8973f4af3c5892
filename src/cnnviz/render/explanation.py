"""An explanation as a picture: the labelled image × target grid that
:meth:`cnnviz.methods.base.Explanation.plot` returns and a notebook shows, its HTML caption,
and its files.

This module takes NumPy arrays and strings, never an ``Explanation`` (the methods stage imports
it lazily to draw its results, so it must not import that stage back).
"""

from __future__ import annotations

import base64
import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.axes import Axes

from cnnviz.methods.postprocess import Display
from cnnviz.options import MapStyle
from cnnviz.outputs.files import atomic_write_bytes, encode_npy, encode_png, safe_stem
from cnnviz.render.canvas import InlineFigure, figure_to_png_bytes, new_figure
from cnnviz.render.colours import colormap_for, colormap_lut, compose
from cnnviz.render.drawing import legend_text

MAX_ROWS = 8
"""Images drawn at most by :func:`explanation_figure` (the title says when more were given)."""
MAX_COLUMNS = 6
"""Targets per image drawn at most."""
PANEL_INCHES = 2.4
COLOUR_BAR_INCHES = 1.1
TITLE_INCHES = 0.55
DPI = 100


@dataclass(frozen=True)
class Drawing:
    """What to draw: ``shown`` maps ``(N, T, H, W)`` in [0, 1], ``pictures`` ``(N, H, W, 3)``
    uint8 (``None``: the maps alone), one label and probability per image and target."""

    shown: np.ndarray
    pictures: np.ndarray | None
    labels: Sequence[Sequence[str]]
    probabilities: np.ndarray | None
    method_title: str
    layer: str | None
    display: Display
    outlier_percent: float | None


def scale_note(outlier_percent: float | None) -> str:
    """How the map was scaled, for the colour bar."""
    if outlier_percent:
        return f"scaled per map; brightest {outlier_percent:g} % clipped"
    return "scaled per map to its min…max"


def panel_title(label: str, probability: float | None) -> str:
    """``espresso · 95.4 %`` (the probability when there is one)."""
    short = label if len(label) <= 20 else label[:19] + "…"  # fits a panel at "small"
    return short if probability is None else f"{short} · {100 * probability:.1f} %"


def figure_title(drawing: Drawing, shown_images: int, shown_targets: int) -> str:
    """The method and layer, and what was left out of the grid."""
    title = drawing.method_title + (f" @ {drawing.layer}" if drawing.layer else "")
    n, t = drawing.shown.shape[:2]
    left_out = []
    if shown_images < n:
        left_out.append(f"first {shown_images} of {n} images")
    if shown_targets < t:
        left_out.append(f"first {shown_targets} of {t} targets")
    return title + (f" ({', '.join(left_out)})" if left_out else "")


def common_label(labels: Sequence[Sequence[str]], rows: int, cols: int) -> str | None:
    """The one label every drawn panel explains, else ``None`` (the legend then says "the
    target")."""
    found = {labels[n][t] for n in range(rows) for t in range(cols)}
    return found.pop() if len(found) == 1 else None


def explanation_figure(
    drawing: Drawing,
    *,
    style: MapStyle | str = MapStyle.OVERLAY,
    cmap: str = "jet",
    alpha: float = 0.5,
    colorbar: bool = True,
) -> InlineFigure:
    """The grid of one panel per image (rows) and target (columns), each titled with its class
    and probability, under the method and layer, with a colour bar that says what the colours
    mean. At most :data:`MAX_ROWS` × :data:`MAX_COLUMNS` panels; the title says what was left out.

    The PNG is ``(cols·PANEL_INCHES + COLOUR_BAR_INCHES) × (rows·PANEL_INCHES + TITLE_INCHES)``
    inches at :data:`DPI` (no colour bar: without its width).
    """
    from matplotlib.cm import ScalarMappable  # lazy: matplotlib is heavy
    from matplotlib.colors import Normalize  # lazy: matplotlib is heavy

    style = MapStyle(style) if isinstance(style, str) else style
    colour_map = colormap_for(drawing.display, cmap)
    colormap_lut(colour_map)  # our error for an unknown name, before matplotlib's
    n, t = drawing.shown.shape[:2]
    rows, cols = min(n, MAX_ROWS), min(t, MAX_COLUMNS)
    width = cols * PANEL_INCHES + (COLOUR_BAR_INCHES if colorbar else 0.0)
    fig = new_figure(width, rows * PANEL_INCHES + TITLE_INCHES, DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            draw_panel(axes[r, c], drawing, r, c, style=style, cmap=cmap, alpha=alpha)
    if colorbar:
        label = legend_text(
            drawing.display, common_label(drawing.labels, rows, cols), cmap=colour_map
        )
        bar = fig.colorbar(
            ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colour_map),
            ax=axes.ravel().tolist(),
            shrink=0.9,
            fraction=0.08,
        )
        bar.set_label(
            fitted(label, rows * PANEL_INCHES) + "\n" + scale_note(drawing.outlier_percent),
            fontsize="small",
        )
        bar.set_ticks([0.0, 0.5, 1.0], labels=bar_tick_labels(drawing.display))
    fig.suptitle(fitted(figure_title(drawing, rows, cols), width), fontsize="medium")
    return fig


def draw_panel(
    ax: Axes,
    drawing: Drawing,
    image: int,
    target: int,
    *,
    style: MapStyle | str = MapStyle.OVERLAY,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> None:
    """Draw one image × target panel into ``ax``, titled with its class and probability."""
    ax.imshow(np.asarray(panel_image(drawing, image, target, style=style, cmap=cmap, alpha=alpha)))
    probability = None if drawing.probabilities is None else drawing.probabilities[image, target]
    ax.set_title(panel_title(drawing.labels[image][target], probability), fontsize="small")
    ax.set_axis_off()


def bar_tick_labels(display: Display) -> list[str]:
    """The colour bar's three tick labels: ``none``/``max`` or, for signed maps, both ends."""
    if display is Display.SIGNED:
        return ["−max", "0", "+max"]
    return ["0", "half", "max"]


def fitted(text: str, inches: float) -> str:
    """``text`` wrapped to lines that fit ``inches`` at about 11 characters per inch (matplotlib's
    default 10-point font)."""
    return "\n".join(textwrap.wrap(text, width=max(12, math.floor(inches * 11)))) or text


def explanation_html(drawing: Drawing, png: bytes) -> str:
    """The picture (PNG bytes, embedded) over :func:`caption_html`: what a notebook shows."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(drawing.method_title)}"/>' + caption_html(drawing)


def caption_html(drawing: Drawing) -> str:
    """A short HTML table under the picture: image, target, class, probability."""
    title = html.escape(figure_title(drawing, *drawing.shown.shape[:2]))
    rows = []
    for n, labels in enumerate(drawing.labels[:MAX_ROWS]):
        for t, label in enumerate(labels[:MAX_COLUMNS]):
            p = drawing.probabilities
            shown = "" if p is None else f"{100 * float(p[n, t]):.1f} %"
            rows.append(
                f"<tr><td>{n}</td><td>{t}</td><td>{html.escape(label)}</td><td>{shown}</td></tr>"
            )
    return (
        f"<div><b>{title}</b><table><tr><th>image</th><th>target</th><th>class</th>"
        f"<th>probability</th></tr>{''.join(rows)}</table></div>"
    )


def panel_image(
    drawing: Drawing, image: int, target: int, *, style: MapStyle | str, cmap: str, alpha: float
) -> Image.Image:
    """One map drawn with its image at the input's size, as a PIL image."""
    style = MapStyle(style) if isinstance(style, str) else style
    colour_map = colormap_for(drawing.display, cmap)
    shown = drawing.shown[image, target]
    if drawing.pictures is None:
        style = MapStyle.HEATMAP
    picture = (
        drawing.pictures[image]
        if drawing.pictures is not None
        else np.zeros((*shown.shape, 3), np.uint8)
    )
    array = compose(
        picture,
        shown,
        style=style,
        cmap=colour_map,
        alpha=alpha,
        signed=drawing.display is Display.SIGNED,
    )
    return Image.fromarray(array)


def save_drawing(
    drawing: Drawing,
    raw: np.ndarray,
    folder: Path,
    *,
    stem: str,
    style: MapStyle | str = MapStyle.OVERLAY,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> list[Path]:
    """Write the figure (``<stem>.png``), one picture per image and target
    (``<stem>_<image>_<label>.png``) and the raw maps (``<stem>.npy``); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    figure = explanation_figure(drawing, style=style, cmap=cmap, alpha=alpha)
    written = [folder / f"{stem}.png"]
    atomic_write_bytes(written[0], figure_to_png_bytes(figure))
    for n, labels in enumerate(drawing.labels):
        for t, label in enumerate(labels):
            path = folder / f"{stem}_{n}_{safe_stem(label)}.png"
            picture = panel_image(drawing, n, t, style=style, cmap=cmap, alpha=alpha)
            atomic_write_bytes(path, encode_png(np.asarray(picture)))
            written.append(path)
    written.append(folder / f"{stem}.npy")
    atomic_write_bytes(written[-1], encode_npy(raw))
    return written
