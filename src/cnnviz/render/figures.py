"""Matplotlib figures: every figure cnnviz draws (filters, activations, maps, evaluation, sanity).

Figures are built with the object-oriented API on :class:`~cnnviz.render.canvas.InlineFigure`
(a ``Figure`` with its own Agg canvas that shows itself in Jupyter), never ``pyplot``, so no
global figure state is created or leaked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnviz.errors import NonFiniteError, positive_int
from cnnviz.methods.postprocess import Display
from cnnviz.options import MapStyle
from cnnviz.render.canvas import figure_to_png_bytes as figure_to_png_bytes  # re-exported
from cnnviz.render.canvas import new_figure
from cnnviz.render.colours import as_rgb_uint8, colormap_for, colormap_lut
from cnnviz.render.drawing import MapDrawing
from cnnviz.render.drawing import legend_text as legend_text
from cnnviz.render.grids import describe_array, image_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure

    from cnnviz.metrics.sanity import SanityResult

# Font sizes in points at matplotlib's default 10-pt font: "large" (titles), "medium", "small",
# "x-small".
TITLE_PT, MEDIUM_PT, SMALL_PT, X_SMALL_PT = 12.0, 10.0, 8.33, 6.94
# The widest average glyph of a title in DejaVu Sans, in ems (digits 0.64, capitals up to 0.72).
_EM_WIDTH = 0.64


def wrap_text(text: str, width: int) -> str:
    """``text`` wrapped greedily to lines of at most ``width`` characters, at spaces outside
    parentheses (a shape ``(64, 3, 3, 3)`` stays on one line); a word longer than a line is
    broken after a ``.``, ``_``, ``-`` or ``/`` (a layer name such as
    ``features.denseblock4.denselayer16.conv2``), else anywhere. Line breaks in ``text`` stay.

    Example:
        >>> print(wrap_text("Filters of features.denseblock4.denselayer16.conv2", 24))
        Filters of features.
        denseblock4.
        denselayer16.conv2
    """
    width = max(int(width), 4)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in re.findall(r"\([^()]*\)\S*|\S+", paragraph):  # a "(3, 3)" stays whole
            pieces = [word] if len(word) <= width else _word_pieces(word, width)
            for k, piece in enumerate(pieces):
                gap = " " if k == 0 and line else ""
                if line and len(line) + len(gap) + len(piece) > width:
                    lines.append(line)
                    line = piece
                else:
                    line += gap + piece
        lines.append(line)
    return "\n".join(lines)


def _word_pieces(word: str, width: int) -> list[str]:
    """A word too long for a line, cut after its separators, then every ``width`` characters."""
    pieces: list[str] = []
    for part in re.findall(r"[^./_-]*[./_-]|[^./_-]+$", word):
        pieces += [part[i : i + width] for i in range(0, len(part), width)]
    return pieces


def fit_text(text: str, inches: float, points: float = TITLE_PT) -> str:
    """``text`` wrapped to lines that fit ``inches`` at a font of ``points`` (:func:`wrap_text`
    with a conservative average glyph width, so no line runs past the figure)."""
    return wrap_text(text, math.floor(max(inches, 0.5) * 72.0 / (_EM_WIDTH * points)))


def colour_bar(
    fig: Figure,
    axes: Sequence[Axes],
    *,
    display: Display,
    cmap: str,
    label: str | None,
    location: str = "bottom",
) -> Colorbar:
    """The colour bar of map pictures drawn in ``cmap`` with ``display`` next to ``axes``,
    labelled with what its colours mean (:func:`legend_text`, ``label`` naming the class;
    ``None``: generic "evidence"). A signed map's bar is the diverging map, from against (−) to
    for (+); an unsigned map's runs from 0 to its maximum (1).
    """
    from matplotlib.cm import ScalarMappable  # lazy: matplotlib is heavy
    from matplotlib.colors import Normalize  # lazy: matplotlib is heavy

    drawn = colormap_for(display, cmap)
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=drawn)
    horizontal = location in ("bottom", "top")
    shrink = 0.8 if horizontal else 0.9
    bar = fig.colorbar(
        mappable, ax=list(axes), location=location, shrink=shrink, aspect=40 if horizontal else 12
    )
    if display is Display.SIGNED:
        bar.set_ticks([0.0, 0.5, 1.0], labels=["−", "0", "+"])
    else:
        bar.set_ticks([0.0, 0.5, 1.0])
    bar.ax.tick_params(labelsize=X_SMALL_PT)
    width, height = fig.get_size_inches()
    room = shrink * (width - 0.4 if horizontal else height * _row_share(axes) - 0.3)
    bar.set_label(fit_text(legend_text(display, label, cmap=drawn), room, SMALL_PT), size=SMALL_PT)
    return bar


def _row_share(axes: Sequence[Axes]) -> float:
    """The share of its figure's height that the grid rows holding ``axes`` take."""
    specs = [ax.get_subplotspec() for ax in axes]
    known = [spec for spec in specs if spec is not None]
    if not known:
        return 1.0
    rows = {row for spec in known for row in spec.rowspan}
    return len(rows) / known[0].get_gridspec().nrows


def filters_figure(
    tiles: np.ndarray,
    *,
    title: str,
    ncols: int | None = None,
    caption: str | None = None,
    total: int | None = None,
    tiles_per_filter: int = 1,
    tile_inches: float = 0.5,
    dpi: int = 100,
) -> Figure:
    """A titled grid of filter tiles: ``(K, kh, kw, 3)`` RGB or ``(K, kh, kw)`` gray uint8.

    The tiles are laid out with :func:`image_grid` (1-pixel white gaps) and drawn as one image
    with nearest-neighbour magnification, which stays fast for hundreds of filters. With the
    layer's ``total`` number of filters, the title says how many are shown: "all 64 filters",
    or "first 64 of 96 filters" when the tiles (``tiles_per_filter`` each) are fewer.
    """
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
        raise TypeError(f"tiles must be a uint8 NumPy array, got {describe_array(tiles)}")
    if tiles.ndim not in (3, 4) or (tiles.ndim == 4 and tiles.shape[3] != 3):
        raise ValueError(
            f"Expected filter tiles of shape (K, kh, kw, 3) or (K, kh, kw), got {tiles.shape}"
        )
    n = tiles.shape[0]
    if total is not None:
        shown = n // positive_int(tiles_per_filter, "tiles_per_filter")
        title += (
            f": first {shown} of {total} filters" if shown < total else f": all {total} filters"
        )
    cols = min(ncols if ncols is not None else math.ceil(math.sqrt(n)), n)
    grid = image_grid(list(tiles), ncols=cols, pad=1, pad_value=255)
    width = max(4.0, cols * tile_inches)
    heading = fit_text(title, width - 0.3, MEDIUM_PT)
    lines = heading.count("\n") + 1 + (2 if caption else 0)
    height = width * grid.shape[0] / grid.shape[1] + 0.3 + 0.2 * lines
    fig = new_figure(width, height, dpi)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_axis_off()
    fig.suptitle(heading, fontsize="medium")
    if caption:
        ax.set_title(fit_text(caption, width - 0.3, SMALL_PT), fontsize="small")
    return fig


def activations_figure(
    act: np.ndarray,
    *,
    title: str,
    channel_ids: Sequence[int],
    shared_scale: bool,
    cmap: str = "viridis",
    ncols: int = 8,
    panel_inches: float = 1.4,
    dpi: int = 100,
) -> Figure:
    """One panel per channel of a ``(C, H, W)`` activation, labelled with its channel index.

    With ``shared_scale`` every panel uses the same colour range (the min and max over all shown
    channels) and one colour bar explains it, so channels can be compared; otherwise each panel
    is scaled to its own range, written under the channel index.
    """
    colormap_lut(cmap)  # validate the name with our error before matplotlib's
    if not isinstance(act, np.ndarray) or act.ndim != 3:
        raise ValueError(
            f"Expected activations as a (C, H, W) NumPy array, got {describe_array(act)}"
        )
    ids = list(channel_ids)
    if len(ids) != act.shape[0]:
        raise ValueError(
            f"channel_ids has {len(ids)} entries for {act.shape[0]} channels; give one per channel"
        )
    if act.shape[0] == 0:
        raise ValueError("No channels to show: the activation has C = 0")
    values = act.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise NonFiniteError(f"The activations for {title!r} contain NaN or infinite values.")
    positive_int(ncols, "ncols")
    n = values.shape[0]
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    width = max(cols * panel_inches + (0.8 if shared_scale else 0.0), 3.0)
    heading = fit_text(title + ("" if shared_scale else "  (each channel on its own scale)"), width)
    fig = new_figure(width, rows * panel_inches + 0.4 + 0.22 * (heading.count("\n") + 1), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    vmin, vmax = (float(values.min()), float(values.max())) if shared_scale else (None, None)
    image = None
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        channel = values[k]
        image = ax.imshow(channel, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        label = f"ch {ids[k]}"
        if not shared_scale:
            label += f"\n[{channel.min():.3g}, {channel.max():.3g}]"
        ax.set_title(label, fontsize="small")
    if shared_scale and image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(heading)
    return fig


def maps_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    display: Display = Display.POSITIVE,
    label: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    style: MapStyle | str = MapStyle.OVERLAY,
    image_title: str = "input",
    title: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Figure:
    """The image followed by one picture per map (values in [0, 1]; signed maps as
    ``(s + 1) / 2``), side by side, titled, drawn in ``style``
    (:meth:`~cnnviz.render.drawing.MapDrawing.draw`).

    A colour bar under the pictures says what the colours mean (:func:`colour_bar`; ``label``
    names the explained class, ``display`` how the maps were rectified).
    """
    maps = list(maps)
    titles = list(titles)
    if len(maps) != len(titles):
        raise ValueError(f"Got {len(maps)} maps but {len(titles)} titles; give one title per map")
    drawing = MapDrawing(style=style, cmap=cmap, alpha=alpha)
    rgb = as_rgb_uint8(image)
    panels = [(rgb, image_title)]
    panels += [(drawing.draw(rgb, m, display), t) for m, t in zip(maps, titles, strict=True)]
    width = max(len(panels) * panel_inches, 4.0)
    heading = fit_text(title, width) if title else ""
    labels = [fit_text(text, panel_inches - 0.1, SMALL_PT) for _, text in panels]
    title_lines = max(t.count("\n") + 1 for t in labels)
    height = panel_inches + 0.2 * title_lines + (0.9 if maps else 0.1)
    fig = new_figure(width, height + (0.22 * (heading.count("\n") + 1) if title else 0.0), dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (picture, _), text in zip(axes, panels, labels, strict=True):
        ax.imshow(picture)
        ax.set_title(text, fontsize="small")
        ax.set_axis_off()
    if maps:
        colour_bar(fig, list(axes), display=display, cmap=cmap, label=label)
    if title:
        fig.suptitle(heading)
    return fig


# -- evaluation ------------------------------------------------------------------------------


def curves_figure(curves: dict[str, dict[str, list[np.ndarray]]]) -> Figure:
    """Mean deletion and insertion curves per method (faint lines: single images)."""
    kinds = [k for k in ("deletion", "insertion") if any(k in c for c in curves.values())]
    fig = new_figure(5.0 * len(kinds), 4.0, 100)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        for index, (method, by_kind) in enumerate(curves.items()):
            if kind not in by_kind:
                continue
            stack = np.stack(by_kind[kind])
            xs = np.linspace(0.0, 1.0, stack.shape[1])
            for row in stack[:20]:
                ax.plot(xs, row, color=f"C{index % 10}", alpha=0.08, linewidth=0.8)
            auc = float(np.mean((stack.sum(1) - (stack[:, 0] + stack[:, -1]) / 2) / (len(xs) - 1)))
            ax.plot(
                xs, stack.mean(axis=0), color=f"C{index % 10}", label=f"{method} (AUC {auc:.3f})"
            )
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} is better)")
        ax.set_xlabel("fraction of pixels " + ("deleted" if kind == "deletion" else "inserted"))
        ax.set_ylabel("class probability")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="x-small")
    return fig


def road_figure(
    road: dict[str, list[tuple[np.ndarray, np.ndarray]]], percentages: Sequence[float]
) -> Figure:
    """Mean ROAD MoRF (solid) and LeRF (dashed) curves per method."""
    fig = new_figure(5.5, 4.0, 100)
    ax = fig.add_subplot()
    for index, (method, pairs) in enumerate(road.items()):
        for k, (kind, style) in enumerate((("MoRF", "-"), ("LeRF", "--"))):
            mean = np.stack([p[k] for p in pairs]).mean(axis=0)
            ax.plot(
                percentages,
                mean,
                color=f"C{index % 10}",
                linestyle=style,
                marker="os"[k],
                label=f"{method} {kind}",
            )
    ax.set_xlabel("% of pixels removed (noisy linear imputation)")
    ax.set_ylabel("class probability")
    ax.set_title("ROAD: MoRF low and LeRF high is faithful")
    ax.legend(fontsize="x-small")
    return fig


# -- sanity checks ---------------------------------------------------------------------------


def short_label(name: str) -> str:
    """A layer's name for plots: its last part, or its last two when that is a number
    (``backbone.conv5_2`` → ``conv5_2``, ``classifier.6`` → ``classifier.6``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def similarity_figure(
    results: Mapping[str, SanityResult],
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Similarity against randomised depth: one panel per metric (default: all computed), one
    line per method (mean over images; the shaded band is the min–max over images).

    The step labels stand upright under their ticks; the panels widen with the number of steps
    (up to 9 inches) and, past what that fits, only every k-th step is labelled.
    """
    if not results:
        raise ValueError("No sanity results to plot")
    first = next(iter(results.values()))
    metrics = list(metrics) if metrics is not None else list(first.similarity)
    steps = first.steps
    panel = min(max(3.6, _TICK_INCHES * len(steps) + 1.0), 9.0)
    every = max(1, math.ceil(_TICK_INCHES * len(steps) / (panel - 1.0)))
    width = panel * len(metrics)
    heading = fit_text(title or f"{first.mode} parameter randomisation", width)
    longest = max((len(short_label(s)) for s in steps), default=1)
    height = 3.2 + longest * _EM_WIDTH * X_SMALL_PT / 72.0 + 0.22 * heading.count("\n")
    fig = new_figure(width, height, 100)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    xs = np.arange(len(steps))
    names = [short_label(s) if k % every == 0 else "" for k, s in enumerate(steps)]
    for ax, metric in zip(axes, metrics, strict=True):
        for name, result in results.items():
            values = result.similarity[metric]
            mean = result.mean(metric)
            ax.plot(xs, mean, marker="o", markersize=3, label=name)
            finite = np.where(np.isfinite(values), values, np.nan)
            if values.shape[0] > 1 and np.isfinite(finite).any(axis=0).all():
                ax.fill_between(
                    xs, np.nanmin(finite, axis=0), np.nanmax(finite, axis=0), alpha=0.15
                )
        ax.set_title(metric, fontsize="medium")
        ax.set_ylim(-1.05 if metric.startswith(("spearman", "hog")) else -0.05, 1.05)
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=90, fontsize="x-small")
        ax.set_xlabel(
            "randomised " + ("down to" if first.mode == "cascading" else "layer"), fontsize="small"
        )
    axes[0].set_ylabel("similarity to the original map")
    axes[-1].legend(fontsize="x-small")
    fig.suptitle(heading)
    return fig


_TICK_INCHES = 0.16
"""The room each upright step label of :func:`similarity_figure` takes along the x axis."""


def sanity_maps_figure(
    results: Mapping[str, SanityResult], *, image: int = 0, cmap: str = "jet", max_steps: int = 12
) -> Figure:
    """Displayed maps of one image: a row per method, the original then each randomised step
    (:meth:`~cnnviz.metrics.sanity.SanityResult.shown`: gradient maps with their brightest 2 %
    saturated, as the method's pictures show them).

    One colour bar says what the colours mean when every method draws its maps alike, else one
    per row (signed maps in the diverging colour map).
    """
    first = next(iter(results.values()))
    labels = ["original", *first.steps]
    keep = np.unique(
        np.linspace(0, len(labels) - 1, min(len(labels), max_steps + 1)).round()
    ).astype(int)
    pictures = {name: result.shown() for name, result in results.items()}
    displays = {result.display for result in results.values()}
    per_row = len(displays) > 1
    width = max(1.3 * len(keep) + 0.6 + (1.0 if per_row else 0.0), 4.0)
    heading = fit_text(f"{first.mode} randomisation: maps of image {image}", width)
    height = 1.4 * len(results) + 0.4 + 0.22 * heading.count("\n") + (0.0 if per_row else 0.8)
    fig = new_figure(width, height, 100)
    axes = fig.subplots(len(results), len(keep), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        row_cmap = colormap_for(result.display, cmap)
        for col, k in enumerate(keep):
            ax = axes[row, col]
            ax.imshow(pictures[name][k, image], cmap=row_cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(fit_text(short_label(labels[k]), 1.2, X_SMALL_PT), fontsize="x-small")
            if col == 0:
                ax.set_ylabel(fit_text(name, 1.3, SMALL_PT), fontsize="small")
        if per_row:
            colour_bar(fig, list(axes[row]), display=result.display, cmap=cmap, label=None,
                       location="right")  # fmt: skip
    if not per_row:
        colour_bar(fig, list(axes.flat), display=first.display, cmap=cmap, label=None)
    fig.suptitle(heading)
    return fig
