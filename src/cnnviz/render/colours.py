"""Colours: colour maps, overlays and boxes drawn on pictures (NumPy and PIL, no figures).

This module takes NumPy arrays, never tensors: the tensor stage
(:mod:`cnnviz.methods.postprocess`) hands over maps already normalised to ``[0, 1]``. Colouring
uses a 256-entry lookup table taken once from matplotlib's colormap, so :func:`colorize` and
:func:`overlay` build no figure per image.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from cnnviz.errors import CnnvizError, NonFiniteError, close_matches
from cnnviz.methods.postprocess import Display
from cnnviz.options import MapStyle

Box = tuple[int, int, int, int]
"""A pixel box ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive."""

# Values this far outside [0, 1] are float rounding from normalisation and are clipped silently.
_UNIT_TOLERANCE = 1e-5


class ColormapError(CnnvizError, ValueError):
    """An unknown matplotlib colormap name."""


def check_unit_range(x: np.ndarray, what: str) -> np.ndarray:
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
            "normalise it first (cnnviz.methods.postprocess)."
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
    import matplotlib  # lazy: matplotlib is heavy

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
    values = check_unit_range(map01, "The map")
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
    values = check_unit_range(x01, "The image")
    return np.floor(values * 255.0 + 0.5).astype(np.uint8)


def as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
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
    rgb = as_rgb_uint8(image)
    values = check_unit_range(map01, "The map")
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-D map (H, W), got shape {values.shape}")
    values = np.clip(resize_map(values, rgb.shape[:2]), 0.0, 1.0)
    colour = colorize(values, cmap)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colour.astype(np.float64)
    return np.floor(blended + 0.5).astype(np.uint8)


def compose(
    image: np.ndarray | Image.Image,
    map01: np.ndarray,
    *,
    style: MapStyle | str = MapStyle.OVERLAY,
    cmap: str = "jet",
    alpha: float = 0.5,
    signed: bool = False,
) -> np.ndarray:
    """The map drawn with its image in one of the :class:`~cnnviz.options.MapStyle` styles,
    ``(H, W, 3)`` uint8 at the image's size.

    - ``overlay``: :func:`overlay`, ``(1 − alpha)·image + alpha·colour(map)``;
    - ``heatmap``: ``colour(map)``;
    - ``masked``: ``image·map`` (for a ``signed`` map, whose zero is 0.5: ``image·|2·map − 1|``);
    - ``alpha``: ``(1 − a)·image + a·colour(map)`` with ``a = alpha·map`` per pixel (signed:
      ``a = alpha·|2·map − 1|``), so the image stays clear where there is no evidence.
    """
    style = MapStyle(style) if isinstance(style, str) else style
    if style is MapStyle.OVERLAY:
        return overlay(image, map01, cmap=cmap, alpha=alpha)
    rgb = as_rgb_uint8(image)
    values = check_unit_range(map01, "The map")
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-D map (H, W), got shape {values.shape}")
    values = np.clip(resize_map(values, rgb.shape[:2]), 0.0, 1.0)
    if style is MapStyle.HEATMAP:
        heat: np.ndarray = colorize(values, cmap)
        return heat
    strength = np.abs(2.0 * values - 1.0) if signed else values
    if style is MapStyle.MASKED:
        blended = rgb.astype(np.float64) * strength[:, :, None]
    else:
        weight = float(alpha) * strength[:, :, None]
        blended = (1.0 - weight) * rgb + weight * colorize(values, cmap).astype(np.float64)
    composed: np.ndarray = np.floor(blended + 0.5).astype(np.uint8)
    return composed


DIVERGING_CMAP = "bwr"
"""The colour map of signed maps: blue for negative, white for zero, red for positive evidence."""


def colormap_for(display: Display, cmap: str) -> str:
    """The colour map a map is drawn in: :data:`DIVERGING_CMAP` for signed maps, else ``cmap``."""
    return DIVERGING_CMAP if display is Display.SIGNED else cmap


def draw_box(image: np.ndarray, box: Box | None) -> np.ndarray:
    """A copy of ``image`` with a green rectangle around ``box`` (``image`` itself when ``None``).

    ``box`` is ``(x0, y0, x1, y1)`` in pixels, with ``x1``/``y1`` exclusive.
    """
    if box is None:
        return image
    picture = Image.fromarray(image)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(picture).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 220, 0))
    return np.asarray(picture)
