"""Matplotlib figures: every figure cnnviz draws (filters, activations, maps, evaluation, sanity).

Figures are built with the object-oriented API on :class:`~cnnviz.render.canvas.InlineFigure`
(a ``Figure`` with its own Agg canvas that shows itself in Jupyter), never ``pyplot``, so no
global figure state is created or leaked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnviz.errors import NonFiniteError, positive_int
from cnnviz.render.canvas import figure_to_png_bytes as figure_to_png_bytes  # re-exported
from cnnviz.render.canvas import new_figure
from cnnviz.render.colours import as_rgb_uint8, colormap_lut, overlay
from cnnviz.render.grids import describe_array, image_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnviz.metrics.sanity import SanityResult


def filters_figure(
    tiles: np.ndarray,
    *,
    title: str,
    ncols: int | None = None,
    caption: str | None = None,
    tile_inches: float = 0.5,
    dpi: int = 100,
) -> Figure:
    """A titled grid of filter tiles: ``(K, kh, kw, 3)`` RGB or ``(K, kh, kw)`` gray uint8.

    The tiles are laid out with :func:`image_grid` (1-pixel white gaps) and drawn as one image
    with nearest-neighbour magnification, which stays fast for hundreds of filters.
    """
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
        raise TypeError(f"tiles must be a uint8 NumPy array, got {describe_array(tiles)}")
    if tiles.ndim not in (3, 4) or (tiles.ndim == 4 and tiles.shape[3] != 3):
        raise ValueError(
            f"Expected filter tiles of shape (K, kh, kw, 3) or (K, kh, kw), got {tiles.shape}"
        )
    n = tiles.shape[0]
    cols = min(ncols if ncols is not None else math.ceil(math.sqrt(n)), n)
    grid = image_grid(list(tiles), ncols=cols, pad=1, pad_value=255)
    width = max(3.0, cols * tile_inches)
    height = width * grid.shape[0] / grid.shape[1] + (0.9 if caption else 0.6)
    fig = new_figure(width, height, dpi)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_axis_off()
    fig.suptitle(title)
    if caption:
        ax.set_title(caption, fontsize="small")
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
    fig = new_figure(
        cols * panel_inches + (0.8 if shared_scale else 0.0), rows * panel_inches + 0.6, dpi
    )
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
    fig.suptitle(title + ("" if shared_scale else "  (each channel on its own scale)"))
    return fig


def maps_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    image_title: str = "input",
    title: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Figure:
    """The image followed by one overlay per map (values in [0, 1]), side by side, titled.

    A colour bar shows what the colours of ``cmap`` mean on the normalised [0, 1] scale.
    """
    from matplotlib.cm import ScalarMappable  # lazy: matplotlib is heavy
    from matplotlib.colors import Normalize  # lazy: matplotlib is heavy

    maps = list(maps)
    titles = list(titles)
    if len(maps) != len(titles):
        raise ValueError(f"Got {len(maps)} maps but {len(titles)} titles; give one title per map")
    rgb = as_rgb_uint8(image)
    panels = [(rgb, image_title)]
    panels += [
        (overlay(rgb, m, cmap=cmap, alpha=alpha), t) for m, t in zip(maps, titles, strict=True)
    ]
    fig = new_figure(len(panels) * panel_inches + 0.8, panel_inches + 0.6, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (picture, label) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(label, fontsize="small")
        ax.set_axis_off()
    if maps:
        mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
        fig.colorbar(mappable, ax=list(axes), shrink=0.8)
    if title:
        fig.suptitle(title)
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
    line per method (mean over images; the shaded band is the min–max over images)."""
    if not results:
        raise ValueError("No sanity results to plot")
    first = next(iter(results.values()))
    metrics = list(metrics) if metrics is not None else list(first.similarity)
    steps = first.steps
    fig = new_figure(3.6 * len(metrics), 3.8, 100)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    xs = np.arange(len(steps))
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
        ax.set_xticklabels([short_label(s) for s in steps], rotation=70, fontsize="x-small")
        ax.set_xlabel(
            "randomised " + ("down to" if first.mode == "cascading" else "layer"), fontsize="small"
        )
    axes[0].set_ylabel("similarity to the original map")
    axes[-1].legend(fontsize="x-small")
    fig.suptitle(title or f"{first.mode} parameter randomisation")
    return fig


def sanity_maps_figure(
    results: Mapping[str, SanityResult], *, image: int = 0, cmap: str = "jet", max_steps: int = 12
) -> Figure:
    """Displayed maps of one image: a row per method, the original then each randomised step."""
    first = next(iter(results.values()))
    labels = ["original", *first.steps]
    keep = np.unique(
        np.linspace(0, len(labels) - 1, min(len(labels), max_steps + 1)).round()
    ).astype(int)
    fig = new_figure(1.3 * len(keep) + 0.6, 1.4 * len(results) + 0.5, 100)
    axes = fig.subplots(len(results), len(keep), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        for col, k in enumerate(keep):
            ax = axes[row, col]
            ax.imshow(result.pictures[k, image], cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(short_label(labels[k]), fontsize="x-small")
            if col == 0:
                ax.set_ylabel(name, fontsize="small")
    fig.suptitle(f"{first.mode} randomisation: maps of image {image}")
    return fig
