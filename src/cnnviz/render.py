"""Rendering: colour maps, overlays, tile grids and matplotlib figures (NumPy/PIL only here).

Everything that turns numbers into pixels lives in this module, and it takes NumPy arrays, never
tensors: the tensor stages (:mod:`cnnviz.postprocess`) hand over maps already normalised to
``[0, 1]``. Colouring uses a 256-entry lookup table taken once from matplotlib's colormap, so
:func:`colorize` and :func:`overlay` build no figure per image. Figures are built with the
object-oriented API (``matplotlib.figure.Figure`` with an Agg canvas), never ``pyplot``, so no
global figure state is created or leaked; matplotlib itself is imported only when needed.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cnnviz.errors import CnnvizError, NonFiniteError, close_matches

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Values this far outside [0, 1] are float rounding from normalisation and are clipped silently.
_UNIT_TOLERANCE = 1e-5


class ColormapError(CnnvizError, ValueError):
    """An unknown matplotlib colormap name."""


def _check_unit_range(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float64, checked finite and within [0, 1] (up to rounding), clipped to [0, 1]."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a NumPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be a numeric array, got dtype {x.dtype}")
    values = x.astype(np.float64, copy=False)
    if values.size and not np.isfinite(values).all():
        raise NonFiniteError(
            f"{what} contains NaN or infinite values; fix the map (or the model) before rendering."
        )
    if values.size and (values.min() < -_UNIT_TOLERANCE or values.max() > 1.0 + _UNIT_TOLERANCE):
        raise ValueError(
            f"{what} must lie in [0, 1], got values in [{values.min():.4g}, {values.max():.4g}]; "
            "normalise it first (cnnviz.postprocess)."
        )
    return np.clip(values, 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str = "jet") -> np.ndarray:
    """The matplotlib colormap ``name`` sampled at 256 points, as a read-only ``(256, 3)`` uint8.

    Entry ``i`` is matplotlib's own byte colour for ``i / 255`` (``cmap(x, bytes=True)``), so
    ``colormap_lut(n)[0]`` and ``[255]`` are the colormap's two ends.

    Raises:
        ColormapError: ``name`` is not a registered matplotlib colormap (close matches listed).

    Example:
        >>> colormap_lut("gray")[[0, 255]].tolist()
        [[0, 0, 0], [255, 255, 255]]
    """
    import matplotlib

    if not isinstance(name, str):
        raise TypeError(f"cmap must be a colormap name (str), got {type(name).__name__}")
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ColormapError(
            f"Unknown colormap {name!r}.{close_matches(name, list(matplotlib.colormaps))} "
            "Use a matplotlib colormap name such as 'jet', 'viridis' or 'gray'."
        ) from None
    lut = np.asarray(cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3], dtype=np.uint8)
    lut.flags.writeable = False  # cached and shared: nobody may modify it
    return lut


def colorize(map01: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Colour a 2-D map with values in ``[0, 1]``: ``(H, W)`` → ``(H, W, 3)`` uint8.

    A value ``x`` takes LUT entry ``min(⌊256·x⌋, 255)``, which is how matplotlib indexes a
    256-colour map, so the result equals ``matplotlib.colormaps[cmap](map01, bytes=True)[..., :3]``.

    Raises:
        ValueError: not 2-D, or values outside [0, 1].
        NonFiniteError: NaN or infinite values.
    """
    values = _check_unit_range(map01, "The map")
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-D map (H, W), got shape {values.shape}")
    lut = colormap_lut(cmap)
    index = np.minimum(np.floor(values * 256.0).astype(np.intp), 255)
    return lut[index]


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """Floats in ``[0, 1]`` to uint8 ``round(255·x)`` (halves rounded up); uint8 passes through.

    Raises:
        ValueError: values outside [0, 1]. NonFiniteError: NaN or infinite values.
    """
    if isinstance(x01, np.ndarray) and x01.dtype == np.uint8:
        return x01.copy()
    values = _check_unit_range(x01, "The image")
    return np.floor(values * 255.0 + 0.5).astype(np.uint8)


def _as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8: PIL images are converted to RGB, gray arrays stacked."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a NumPy array or PIL image, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    return to_uint8(image)


def resize_map(map01: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to ``size = (H, W)`` (PIL, pixel-centre aligned)."""
    if map01.shape == size:
        return map01.astype(np.float64, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(map01, dtype=np.float32))  # mode "F"
    resized = pil.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def overlay(
    image: np.ndarray | Image.Image,
    map01: np.ndarray,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the colourised map over the image: ``(1 − alpha)·image + alpha·colorize(map)``.

    The map is resized to the image bilinearly when the sizes differ. ``alpha = 0`` returns the
    image and ``alpha = 1`` the colourised map, exactly.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8 (or floats in [0, 1]) or a PIL image.
        map01: ``(h, w)`` map with values in [0, 1].
        cmap: matplotlib colormap name.
        alpha: weight of the map, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_uint8(image)
    values = _check_unit_range(map01, "The map")
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-D map (H, W), got shape {values.shape}")
    values = np.clip(resize_map(values, rgb.shape[:2]), 0.0, 1.0)
    colour = colorize(values, cmap)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colour.astype(np.float64)
    return np.floor(blended + 0.5).astype(np.uint8)


def image_grid(
    tiles: Sequence[np.ndarray],
    *,
    ncols: int | None = None,
    pad: int = 2,
    pad_value: int = 255,
) -> np.ndarray:
    """Lay equal-sized uint8 tiles out row by row in one image.

    Tile ``k`` goes to row ``k // ncols``, column ``k % ncols``, with its top-left corner at
    ``(pad + row·(h + pad), pad + col·(w + pad))``; the border and gaps are ``pad_value``.
    Gray tiles are promoted to RGB when any tile is RGB. ``ncols`` defaults to ``⌈√n⌉``.

    Returns:
        ``(H, W)`` uint8 if every tile is gray, else ``(H, W, 3)`` uint8.
    """
    arrays = list(tiles)
    if not arrays:
        raise ValueError("image_grid needs at least one tile, got none")
    for i, tile in enumerate(arrays):
        if not isinstance(tile, np.ndarray) or tile.dtype != np.uint8:
            raise TypeError(f"Tile {i} must be a uint8 NumPy array, got {_describe(tile)}")
        if tile.ndim not in (2, 3) or (tile.ndim == 3 and tile.shape[2] != 3):
            raise ValueError(f"Tile {i} must have shape (h, w) or (h, w, 3), got {tile.shape}")
    h, w = arrays[0].shape[:2]
    if any(tile.shape[:2] != (h, w) for tile in arrays):
        sizes = sorted({tile.shape[:2] for tile in arrays})
        raise ValueError(f"All tiles must have the same size, got sizes {sizes}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in [0, 255], got {pad_value!r}")
    n = len(arrays)
    cols = math.ceil(math.sqrt(n)) if ncols is None else ncols
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    rgb = any(tile.ndim == 3 for tile in arrays)
    shape: tuple[int, ...] = (pad + rows * (h + pad), pad + cols * (w + pad))
    grid = np.full((*shape, 3) if rgb else shape, pad_value, dtype=np.uint8)
    for k, tile in enumerate(arrays):
        top = pad + (k // cols) * (h + pad)
        left = pad + (k % cols) * (w + pad)
        grid[top : top + h, left : left + w] = tile[:, :, None] if rgb and tile.ndim == 2 else tile
    return grid


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of dtype {x.dtype}"
    return type(x).__name__


# -- figures ---------------------------------------------------------------------------------


def _new_figure(width: float, height: float, dpi: int) -> Figure:
    """A Figure with its own Agg canvas and constrained layout, outside pyplot's registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_png_bytes(fig: Figure, *, dpi: int | None = None) -> bytes:
    """Render ``fig`` (Agg) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else fig.dpi)
    return buffer.getvalue()


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
        raise TypeError(f"tiles must be a uint8 NumPy array, got {_describe(tiles)}")
    if tiles.ndim not in (3, 4) or (tiles.ndim == 4 and tiles.shape[3] != 3):
        raise ValueError(
            f"Expected filter tiles of shape (K, kh, kw, 3) or (K, kh, kw), got {tiles.shape}"
        )
    n = tiles.shape[0]
    cols = min(ncols if ncols is not None else math.ceil(math.sqrt(n)), n)
    grid = image_grid(list(tiles), ncols=cols, pad=1, pad_value=255)
    width = max(3.0, cols * tile_inches)
    height = width * grid.shape[0] / grid.shape[1] + (0.9 if caption else 0.6)
    fig = _new_figure(width, height, dpi)
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
        raise ValueError(f"Expected activations as a (C, H, W) NumPy array, got {_describe(act)}")
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
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    n = values.shape[0]
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(
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
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    maps = list(maps)
    titles = list(titles)
    if len(maps) != len(titles):
        raise ValueError(f"Got {len(maps)} maps but {len(titles)} titles; give one title per map")
    rgb = _as_rgb_uint8(image)
    panels = [(rgb, image_title)]
    panels += [
        (overlay(rgb, m, cmap=cmap, alpha=alpha), t) for m, t in zip(maps, titles, strict=True)
    ]
    fig = _new_figure(len(panels) * panel_inches + 0.8, panel_inches + 0.6, dpi)
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
