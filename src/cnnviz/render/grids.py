"""Tile grids: equal-sized pictures laid out in rows, with or without labels (uint8 NumPy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cnnviz.errors import positive_int


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
            raise TypeError(f"Tile {i} must be a uint8 NumPy array, got {describe_array(tile)}")
        if tile.ndim not in (2, 3) or (tile.ndim == 3 and tile.shape[2] != 3):
            raise ValueError(f"Tile {i} must have shape (h, w) or (h, w, 3), got {tile.shape}")
    h, w = arrays[0].shape[:2]
    if any(tile.shape[:2] != (h, w) for tile in arrays):
        sizes = sorted({tile.shape[:2] for tile in arrays})
        raise ValueError(f"All tiles must have the same size, got sizes {sizes}")
    positive_int(pad, "pad", minimum=0)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in [0, 255], got {pad_value!r}")
    n = len(arrays)
    cols = math.ceil(math.sqrt(n)) if ncols is None else ncols
    positive_int(cols, "ncols")
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


def describe_array(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of dtype {x.dtype}"
    return type(x).__name__


def comparison_grid(
    rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str]
) -> np.ndarray:
    """Tiles in a labelled table: one row per method, one column per target (uint8 RGB)."""
    tiles = [tile for row in rows for tile in row]
    grid = image_grid(tiles, ncols=len(col_labels), pad=2)
    font = ImageFont.load_default(size=13)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        return int(x1 - x0), int(y1 - y0)

    col_labels = [label[:40] for label in col_labels]
    left = 8 + max(size(label)[0] for label in row_labels)
    top = 8 + max(size(label)[1] for label in col_labels)
    canvas = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    h, w = rows[0][0].shape[:2]
    for r, label in enumerate(row_labels):
        y = top + 2 + r * (h + 2) + (h - size(label)[1]) // 2
        draw.text((4, y), label, fill=(0, 0, 0), font=font)
    for c, label in enumerate(col_labels):
        x = left + 2 + c * (w + 2) + max(0, (w - size(label)[0]) // 2)
        draw.text((x, 3), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def tile_sheet(tiles: np.ndarray) -> np.ndarray:
    """Filter tiles ``(K, h, w)`` or ``(K, h, w, 3)`` uint8 as one near-square sheet at their own
    pixel size (``round(√K)`` columns, 1-pixel white gaps): ``cnnviz filters``' ``*.tiles.png``."""
    cols = max(1, round(tiles.shape[0] ** 0.5))
    return image_grid(list(tiles), ncols=cols, pad=1)
