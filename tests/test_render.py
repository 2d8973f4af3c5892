"""Rendering: colormap LUT, colorize, overlay, grid and figures, checked against hand values."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from cnnviz.errors import ArgumentError, NonFiniteError
from cnnviz.methods.postprocess import Display
from cnnviz.options import MapStyle
from cnnviz.render.colours import (
    ColormapError,
    colorize,
    colormap_lut,
    compose,
    overlay,
    resize_map,
    to_uint8,
)
from cnnviz.render.drawing import MapDrawing, colour_names, colour_strip, legend_text
from cnnviz.render.figures import (
    activations_figure,
    figure_to_png_bytes,
    filters_figure,
    maps_figure,
)
from cnnviz.render.grids import comparison_grid, grid_shape, image_grid, tile_sheet


@pytest.mark.parametrize("name", ["jet", "viridis", "gray"])
def test_lut_endpoints_equal_matplotlib(name: str) -> None:
    cmap = matplotlib.colormaps[name]
    lut = colormap_lut(name)
    assert lut.shape == (256, 3)
    assert lut.dtype == np.uint8
    assert tuple(lut[0]) == tuple(cmap(0.0, bytes=True)[:3])
    assert tuple(lut[255]) == tuple(cmap(1.0, bytes=True)[:3])


def test_lut_known_values_and_read_only() -> None:
    # jet starts at dark blue (0, 0, 127) and ends at dark red (127, 0, 0); gray is black → white.
    assert colormap_lut("jet")[0].tolist() == [0, 0, 127]
    assert colormap_lut("jet")[255].tolist() == [127, 0, 0]
    assert colormap_lut("gray")[[0, 255]].tolist() == [[0, 0, 0], [255, 255, 255]]
    with pytest.raises(ValueError, match="read-only"):
        colormap_lut("jet")[0, 0] = 1


def test_unknown_colormap_lists_close_matches() -> None:
    with pytest.raises(ColormapError, match="'jet'") as info:
        colormap_lut("jett")
    assert isinstance(info.value, ValueError)


def test_colorize_equals_matplotlib_bytes() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((7, 9))
    # The bin edges: 255/256 is the first value of the last bin; 1.0 maps to it too.
    values[0, :4] = [0.0, 1.0, 255 / 256, 1 / 256]
    expected = matplotlib.colormaps["jet"](values, bytes=True)[..., :3]
    np.testing.assert_array_equal(colorize(values, "jet"), expected)


def test_colorize_rejects_out_of_range_and_nan() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        colorize(np.array([[0.0, 1.5]]))
    with pytest.raises(NonFiniteError):
        colorize(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2)))
    # Float rounding just outside [0, 1] is clipped, not refused.
    np.testing.assert_array_equal(
        colorize(np.array([[-1e-9, 1 + 1e-9]])), colorize(np.array([[0.0, 1.0]]))
    )


def test_to_uint8_rounds_halves_up() -> None:
    x = np.array([0.0, 0.5, 1.0, 1 / 255, 2.5 / 255])
    assert to_uint8(x).tolist() == [0, 128, 255, 1, 3]
    u = np.array([[7]], dtype=np.uint8)
    assert to_uint8(u).tolist() == [[7]]


def _image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


def test_overlay_alpha_zero_is_image_and_one_is_colour_map() -> None:
    image = _image()
    m = np.random.default_rng(2).random((6, 8))
    np.testing.assert_array_equal(overlay(image, m, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, m, alpha=1.0), colorize(m, "jet"))
    np.testing.assert_array_equal(overlay(Image.fromarray(image), m, alpha=0.0), image)  # PIL input


def test_overlay_half_alpha_hand_value() -> None:
    image = np.array([[[100, 0, 200]]], dtype=np.uint8)
    out = overlay(image, np.array([[1.0]]), cmap="gray", alpha=0.5)
    # 0.5·100 + 0.5·255 = 177.5 → 178; 0.5·0 + 127.5 → 128; 0.5·200 + 127.5 = 227.5 → 228.
    assert out.tolist() == [[[178, 128, 228]]]


def test_overlay_resizes_map_bilinearly() -> None:
    # Pixel-centre-aligned bilinear 1×2 → 1×4: source x = -0.25, 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_allclose(resize_map(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]])
    image = np.zeros((1, 4, 3), dtype=np.uint8)
    out = overlay(image, np.array([[0.0, 1.0]]), cmap="gray", alpha=1.0)
    assert (
        out[0, :, 0].tolist()
        == colorize(np.array([[0.0, 0.25, 0.75, 1.0]]), "gray")[0, :, 0].tolist()
    )
    assert out[0, :, 0].tolist() == [0, 64, 192, 255]  # LUT entries ⌊256·x⌋ of gray


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(_image(), np.zeros((6, 8)), alpha=alpha)


def test_image_grid_places_tile_k_at_its_offset() -> None:
    tiles = [np.full((2, 3), 10 * (k + 1), dtype=np.uint8) for k in range(3)]
    tiles[2][1, 2] = 99
    grid = image_grid(tiles, ncols=2, pad=1, pad_value=7)
    # rows = 2, cols = 2 → height 1 + 2·(2 + 1) = 7, width 1 + 2·(3 + 1) = 9.
    assert grid.shape == (7, 9)
    # tile k at (1 + (k // 2)·3, 1 + (k % 2)·4)
    np.testing.assert_array_equal(grid[1:3, 1:4], tiles[0])
    np.testing.assert_array_equal(grid[1:3, 5:8], tiles[1])
    np.testing.assert_array_equal(grid[4:6, 1:4], tiles[2])
    assert grid[5, 3] == 99
    mask = np.ones_like(grid, dtype=bool)
    for top, left in [(1, 1), (1, 5), (4, 1)]:
        mask[top : top + 2, left : left + 3] = False
    assert (grid[mask] == 7).all()  # border, gaps and the empty fourth cell


def test_image_grid_promotes_gray_to_rgb_and_defaults() -> None:
    gray = np.full((2, 2), 50, dtype=np.uint8)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    grid = image_grid([gray, rgb, gray, rgb], pad=0)  # ncols = ceil(sqrt(4)) = 2
    assert grid.shape == (4, 4, 3)
    assert grid[0, 0].tolist() == [50, 50, 50]
    assert grid[0, 2].tolist() == [0, 200, 0]
    assert grid[2, 2].tolist() == [0, 200, 0]
    with pytest.raises(ValueError, match="same size"):
        image_grid([gray, np.zeros((3, 2), dtype=np.uint8)])
    with pytest.raises(TypeError, match="uint8"):
        image_grid([gray.astype(np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        image_grid([])


def _gcf_count() -> int:
    from matplotlib._pylab_helpers import Gcf

    return int(Gcf.get_num_fig_managers())


def test_filters_figure_renders_to_png_without_pyplot_figures() -> None:
    before = _gcf_count()
    tiles = np.random.default_rng(3).integers(0, 256, size=(10, 3, 3, 3), dtype=np.uint8)
    fig = filters_figure(tiles, title="conv1", ncols=5, dpi=50)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), image_grid(list(tiles), ncols=5, pad=1))
    assert fig.get_suptitle() == "conv1"
    png = figure_to_png_bytes(fig)
    decoded = Image.open(io.BytesIO(png))
    width, height = fig.get_size_inches() * 50
    assert decoded.size == (pytest.approx(width, abs=1), pytest.approx(height, abs=1))
    assert _gcf_count() == before


def test_activations_figure_shared_and_per_channel_scales() -> None:
    act = np.stack([np.full((2, 2), 1.0), np.arange(4.0).reshape(2, 2) * 3, -np.ones((2, 2))])
    act[0, 0, 0] = 2.0
    shared = activations_figure(act, title="bn4_1", channel_ids=[4, 9, 1], shared_scale=True)
    panels = [ax for ax in shared.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["ch 4", "ch 9", "ch 1"]
    assert [ax.images[0].get_clim() for ax in panels] == [(-1.0, 9.0)] * 3
    assert len(shared.axes) == 3 + 1  # one colour bar
    separate = activations_figure(act, title="x", channel_ids=[4, 9, 1], shared_scale=False)
    panels = [ax for ax in separate.axes if ax.images]
    assert [ax.images[0].get_clim() for ax in panels] == [(1.0, 2.0), (0.0, 9.0), (-1.0, -1.0)]
    assert len(separate.axes) == 3
    with pytest.raises(ValueError, match="channel_ids"):
        activations_figure(act, title="x", channel_ids=[0], shared_scale=True)
    with pytest.raises(ColormapError):
        activations_figure(act, title="x", channel_ids=[0, 1, 2], shared_scale=True, cmap="nope")


def test_maps_figure_shows_image_then_overlays() -> None:
    image = _image()
    maps = [np.zeros((3, 4)), np.ones((6, 8))]
    fig = maps_figure(image, maps, ["zero", "one"], alpha=0.4)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["input", "zero", "one"]
    np.testing.assert_array_equal(panels[0].images[0].get_array(), image)
    for ax, m in zip(panels[1:], maps, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), overlay(image, m, alpha=0.4))
    with pytest.raises(ValueError, match="titles"):
        maps_figure(image, maps, ["only one"])


# -- readable pictures: styles, legends, tile sheets, grid shapes -----------------------------


def test_compose_styles_hand_values() -> None:
    image = np.array([[[100, 50, 200], [100, 50, 200], [100, 50, 200]]], dtype=np.uint8)
    m = np.array([[0.0, 0.5, 1.0]])
    # heatmap: the colour map alone (gray LUT entry ⌊256·x⌋: 0, 128, 255)
    heat = compose(image, m, style="heatmap", cmap="gray")
    assert heat[0, :, 0].tolist() == [0, 128, 255]
    # masked: image · map (signed: image · |2·map − 1|)
    masked = compose(image, m, style=MapStyle.MASKED)
    assert masked[0].tolist() == [[0, 0, 0], [50, 25, 100], [100, 50, 200]]
    signed = compose(image, m, style="masked", signed=True)
    assert signed[0].tolist() == [[100, 50, 200], [0, 0, 0], [100, 50, 200]]
    # alpha: (1 − a)·image + a·colour with a = alpha·map: 0 → image, 1 → colour
    blended = compose(image, m, style="alpha", cmap="gray", alpha=1.0)
    assert blended[0].tolist() == [[100, 50, 200], [114, 89, 164], [255, 255, 255]]
    assert np.array_equal(
        compose(image, m, cmap="gray", alpha=0.3), overlay(image, m, cmap="gray", alpha=0.3)
    )


def test_colour_names_and_legend_texts() -> None:
    assert colour_names("jet") == ("blue", "green", "red")
    assert colour_names("gray") == ("black", "gray", "white")
    assert colour_names("viridis") == ("purple", "cyan", "yellow")
    assert colour_names("twilight") == ("low", "middle", "high")  # cyclic: both ends alike
    assert (
        legend_text(Display.POSITIVE, "espresso") == "red: more evidence for espresso · blue: none"
    )
    assert legend_text(Display.POSITIVE, None) == "red: more evidence · blue: none"
    assert legend_text(Display.NEGATIVE, "cat", cmap="gray") == (
        "white: more evidence against cat · black: none"
    )
    assert legend_text(Display.ABSOLUTE, "cat") == (
        "red: more influence on cat, for or against · blue: none"
    )
    assert legend_text(Display.SIGNED, "espresso") == (
        "red: for espresso · blue: against · white: neither"
    )
    strip = colour_strip("gray", 256, 3)
    assert strip.shape == (3, 256, 3)
    np.testing.assert_array_equal(strip[2], colormap_lut("gray"))  # column x: LUT entry x


def test_map_drawing_sign_record_and_validation() -> None:
    drawing = MapDrawing(sign="negative", style="masked", cmap="viridis", alpha=0.7)
    assert drawing.style is MapStyle.MASKED
    assert drawing.display_for(Display.POSITIVE) is Display.NEGATIVE
    assert MapDrawing().display_for(Display.ABSOLUTE) is Display.ABSOLUTE  # auto: the method's
    assert MapDrawing(sign="all").colormap(Display.SIGNED) == "bwr"
    assert drawing.record() == {
        "cmap": "viridis",
        "alpha": 0.7,
        "sign": "negative",
        "style": "masked",
        "outlier_percent": "auto",
    }
    assert MapDrawing(outlier_percent=0).percent == 0
    for bad, match in (
        ({"sign": "both"}, "sign must be one of auto, positive"),
        ({"style": "blend"}, "style must be one of overlay, heatmap, masked, alpha"),
        ({"alpha": 2}, "alpha"),
        ({"outlier_percent": 50}, r"\[0, 50\)"),
    ):
        with pytest.raises(ArgumentError, match=match):
            MapDrawing(**bad)  # type: ignore[arg-type]


def test_tile_sheet_magnifies_each_weight_to_an_equal_block() -> None:
    tiles = np.random.default_rng(5).integers(0, 256, size=(64, 3, 3, 3), dtype=np.uint8)
    sheet = tile_sheet(tiles)
    # 8 columns; factor max(⌈24/3⌉, ⌈256/(8·3)⌉) = 11: 33-pixel tiles, 2-pixel gaps.
    assert sheet.shape == (2 + 8 * 35, 2 + 8 * 35, 3)
    for k in (0, 9, 63):
        top, left = 2 + (k // 8) * 35, 2 + (k % 8) * 35
        block = sheet[top : top + 33, left : left + 33]
        expected = tiles[k].repeat(11, axis=0).repeat(11, axis=1)
        np.testing.assert_array_equal(block, expected)
    assert (sheet[:2] == 255).all() and (sheet[:, 35:37] == 255).all()
    big = tile_sheet(np.zeros((4, 11, 11), dtype=np.uint8))  # 2 columns: ⌈256/22⌉ = 12
    assert big.shape == (2 + 2 * (132 + 2), 2 + 2 * (132 + 2))


def _tile_boxes(grid: np.ndarray, colours: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Top-left corner of each tile of a single colour."""
    corners = []
    for colour in colours:
        ys, xs = np.nonzero((grid == np.array(colour, dtype=np.uint8)).all(axis=2))
        assert ys.max() - ys.min() == 31 and xs.max() - xs.min() == 31 and len(ys) == 32 * 32
        corners.append((int(ys.min()), int(xs.min())))
    return corners


def test_comparison_grid_is_near_square_with_labelled_tiles() -> None:
    assert grid_shape(20, 1) == (4, 5)
    assert grid_shape(3, 3) == (3, 3)
    assert grid_shape(20, 3) == (7, 9)
    assert grid_shape(1, 5) == (1, 5)
    colours = [(10 * m, 250 - 10 * m, 7) for m in range(20)]
    tiles = [[np.full((32, 32, 3), c, dtype=np.uint8)] for c in colours]
    methods = [f"method-{m}" for m in range(20)]
    legend = (colour_strip("jet", 120, 12), "red: more evidence for espresso · blue: none")
    grid = comparison_grid(tiles, methods, ["espresso"], title="coffee.jpg", legends=[legend])
    assert grid.shape[1] == 4 + 5 * 36  # five columns of 32 + 4 pixels
    corners = _tile_boxes(grid, colours)
    assert [x for _, x in corners] == [4 + (m % 5) * 36 for m in range(20)]
    rows = sorted({y for y, _ in corners})
    assert len(rows) == 4 and [rows.index(y) for y, _ in corners] == [m // 5 for m in range(20)]
    assert grid.shape[0] < 2 * grid.shape[1]  # no longer one tall column
    caption = grid[rows[0] - 16 : rows[0] - 1, 4:36]
    assert (caption < 128).any()  # each tile has its label above it
    colours = [(30 * m + 5, 20 * t + 3, 99) for m in range(3) for t in range(3)]
    tiles = [[np.full((32, 32, 3), colours[3 * m + t], dtype=np.uint8) for t in range(3)]
             for m in range(3)]  # fmt: skip
    grid = comparison_grid(tiles, ["a", "b", "c"], ["cat", "dog", "fox"])
    corners = _tile_boxes(grid, colours)
    assert grid.shape[1] == 4 + 3 * 36
    assert [x for _, x in corners] == [4 + t * 36 for _ in range(3) for t in range(3)]
    assert len({y for y, _ in corners}) == 3
