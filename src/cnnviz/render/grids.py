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


_FONT_SIZE = 13
_GAP = 2
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return math.ceil(x1 - min(x0, 0)), math.ceil(y1 - min(y0, 0))


def _fit_line(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text`` cut (ending in ``…``) to fit ``width`` pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def grid_shape(methods: int, targets: int) -> tuple[int, int]:
    """``(rows, columns)`` of tiles for ``methods`` × ``targets`` pictures: each method's
    targets side by side, and ``⌈√(methods / targets)⌉`` methods per row, so the grid is near
    square (20 methods × 1 target: 4 × 5; 3 methods × 3 targets: 3 × 3)."""
    positive_int(methods, "methods")
    positive_int(targets, "targets")
    per_row = min(methods, math.ceil(math.sqrt(methods / targets)))
    return math.ceil(methods / per_row), per_row * targets


def comparison_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str | None = None,
    legends: Sequence[tuple[np.ndarray, str]] = (),
) -> np.ndarray:
    """Method × target pictures (``rows[m][t]``, equal-sized uint8) in a near-square labelled
    grid (:func:`grid_shape`), uint8 RGB.

    Each tile is captioned above with its method (``row_labels``) and, with several targets,
    its target (``col_labels``); ``title`` heads the grid, and each ``(strip, text)`` of
    ``legends`` (a colour strip, :func:`cnnviz.render.drawing.colour_strip`, and what its
    colours mean) is drawn under it.
    """
    methods, targets = len(rows), len(col_labels)
    if len(row_labels) != methods or any(len(row) != targets for row in rows):
        raise ValueError(
            f"comparison_grid needs one label per method and one picture per target: got "
            f"{methods} rows, {len(row_labels)} row labels and {targets} column labels"
        )
    grid_rows, grid_cols = grid_shape(methods, targets)
    h, w = rows[0][0].shape[:2]
    font = ImageFont.load_default(size=_FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_lines = 1 if targets == 1 else 2
    caption = caption_lines * (_text_size(measure, "Ag", font)[1] + 2) + 2
    cell_w, cell_h = w + 2 * _GAP, h + caption + 2 * _GAP
    width = grid_cols * cell_w + 2 * _GAP
    heading = _fit_line(measure, title, font, width - 8) if title else ""
    top = (_text_size(measure, heading, font)[1] + 8) if title else _GAP
    legend_h = (_text_size(measure, "Ag", font)[1] + 6) * len(legends) + (4 if legends else 0)
    canvas = Image.new("RGB", (width, top + grid_rows * cell_h + legend_h + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), heading, fill=(0, 0, 0), font=font)
    per_row = grid_cols // targets
    for m, (row, method) in enumerate(zip(rows, row_labels, strict=True)):
        for t, tile in enumerate(row):
            x = _GAP + ((m % per_row) * targets + t) * cell_w + _GAP
            y = top + (m // per_row) * cell_h + _GAP
            text = _fit_line(draw, method, font, w)
            if targets > 1:
                text += "\n" + _fit_line(draw, col_labels[t], font, w)
            draw.multiline_text((x, y), text, fill=(0, 0, 0), font=font, spacing=2)
            canvas.paste(Image.fromarray(tile), (x, y + caption))
    y = top + grid_rows * cell_h + 4
    for strip, text in legends:
        line_h = _text_size(measure, "Ag", font)[1]
        bar = Image.fromarray(strip).resize((min(120, width // 3), line_h))
        canvas.paste(bar, (4, y + 2))
        room = width - bar.width - 16
        draw.text((bar.width + 12, y), _fit_line(draw, text, font, room), fill=(0, 0, 0), font=font)
        y += line_h + 6
    return np.asarray(canvas)


def tile_sheet(tiles: np.ndarray, *, min_tile: int = 24, min_width: int = 256) -> np.ndarray:
    """Filter tiles ``(K, h, w)`` or ``(K, h, w, 3)`` uint8 as one near-square sheet
    (``round(√K)`` columns, 2-pixel white gaps): ``cnnviz filters``' ``*.tiles.png``.

    Each tile is magnified by an integer factor with nearest-neighbour (every weight a block of
    ``f × f`` equal pixels): ``f = max(⌈min_tile / min(h, w)⌉, ⌈min_width / (columns·w)⌉)``, so a
    tile is at least 24 pixels and the sheet at least 256 wide (3×3 filters, 8 columns: 11×).
    """
    cols = max(1, round(tiles.shape[0] ** 0.5))
    cols = min(cols, tiles.shape[0])
    h, w = tiles.shape[1:3]
    factor = max(1, math.ceil(min_tile / min(h, w)), math.ceil(min_width / (cols * w)))
    big = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    return image_grid(list(big), ncols=cols, pad=2)
