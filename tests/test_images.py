"""cnnviz.inputs.images: every kind of file decodes to upright 8-bit RGB with the right pixels."""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cnnviz.data.samples import bundled_samples
from cnnviz.errors import ImageLoadError
from cnnviz.inputs.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    find_images,
    load_image,
    load_image_with_notes,
    numpy_to_tensor,
    tensor_to_numpy,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def close(actual: object, expected: tuple[int, ...], tol: int = 8) -> bool:
    """Colour equality up to JPEG's rounding."""
    assert isinstance(actual, tuple)
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims ``width`` × ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


# -- ordinary files and modes ----------------------------------------------------------------------


def test_rgb_png_is_returned_exactly_without_notes(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(data).save(tmp_path / "x.png")
    image, notes = load_image_with_notes(tmp_path / "x.png")
    assert image.size == (3, 2)
    np.testing.assert_array_equal(pixels(image), data)
    assert notes == []


def test_one_pixel_image_loads(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (12, 34, 56)).save(tmp_path / "one.png")
    image = load_image(str(tmp_path / "one.png"))
    assert image.size == (1, 1)
    assert image.getpixel((0, 0)) == (12, 34, 56)


def test_grayscale_l_becomes_equal_channels(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(
        pixels(load_image(tmp_path / "g.png"))[0], [[0, 0, 0], [100] * 3, [255] * 3]
    )


def test_la_composites_grey_on_white(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (100, 255))
    image.putpixel((1, 0), (100, 0))
    image.save(tmp_path / "la.png")
    result, notes = load_image_with_notes(tmp_path / "la.png")
    assert result.getpixel((0, 0)) == (100, 100, 100)
    assert result.getpixel((1, 0)) == WHITE
    assert notes == ["alpha composited on white"]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    grey = pixels(load_image(tmp_path / "16.png"))[0]
    # round(v · 255 / 65535): 257 → 1, 32768 → 127.502 → 128, 65535 → 255.
    np.testing.assert_array_equal(grey[:, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(grey[:, 0], grey[:, 2])


def test_int32_image_in_16_bit_range_is_scaled_like_16_bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    image, notes = load_image_with_notes(tmp_path / "i.tif")
    np.testing.assert_array_equal(pixels(image)[0, :, 1], [0, 128, 255])
    assert notes == []


def test_int32_image_outside_16_bit_range_is_min_max_scaled(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-100, 50, 200]], dtype=np.int32)).save(tmp_path / "i.tif")
    image, notes = load_image_with_notes(tmp_path / "i.tif")
    # (v + 100) · 255 / 300: 0, 127.5 → 128, 255
    np.testing.assert_array_equal(pixels(image)[0, :, 0], [0, 128, 255])
    assert notes == ["32-bit integer image: min-max scaled to 0…255"]


@pytest.mark.parametrize(
    ("values", "expected", "note"),
    [
        ([0.0, 0.25, 1.0], [0, 64, 255], None),  # 0…1: × 255 (63.75 → 64)
        ([0.0, 2.0, 200.0], [0, 2, 200], None),  # 0…255: as is
        ([-1.0, 0.0, 3.0], [0, 64, 255], "float image outside 0…255: min-max scaled"),
        ([np.nan, 0.5, 1.0], [0, 128, 255], "non-finite pixel values set to 0"),
    ],
)
def test_float_image_levels(
    tmp_path: Path, values: list[float], expected: list[int], note: str | None
) -> None:
    Image.fromarray(np.array([values], dtype=np.float32)).save(tmp_path / "f.tif")
    image, notes = load_image_with_notes(tmp_path / "f.tif")
    np.testing.assert_array_equal(pixels(image)[0, :, 2], expected)
    assert notes == ([note] if note else [])


def test_palette_colours_are_preserved(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png")
    result, notes = load_image_with_notes(tmp_path / "p.png")
    assert result.getpixel((0, 0)) == (10, 20, 30)
    assert result.getpixel((1, 0)) == (200, 100, 50)
    assert notes == []


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "pt.png", transparency=0)  # palette index 0 is transparent
    result, notes = load_image_with_notes(tmp_path / "pt.png")
    assert result.getpixel((0, 0)) == WHITE
    assert result.getpixel((1, 0)) == (200, 100, 50)
    assert notes == ["alpha composited on white"]


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red → white
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red stays red
    image.putpixel((2, 0), (0, 0, 0, 128))  # half black: 255 · (1 − 128/255) = 127
    image.save(tmp_path / "rgba.png")
    result, notes = load_image_with_notes(tmp_path / "rgba.png")
    assert [result.getpixel((x, 0)) for x in range(3)] == [WHITE, RED, (127, 127, 127)]
    assert notes == ["alpha composited on white"]


def test_opaque_rgba_gives_no_alpha_note(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (1, 2, 3, 255)).save(tmp_path / "o.png")
    result, notes = load_image_with_notes(tmp_path / "o.png")
    assert result.getpixel((1, 1)) == (1, 2, 3)
    assert notes == []


@pytest.mark.parametrize(
    ("cmyk", "rgb"), [((0, 0, 0, 0), WHITE), ((0, 255, 255, 0), RED), ((0, 0, 0, 255), (0, 0, 0))]
)
def test_cmyk_jpeg_becomes_rgb(
    tmp_path: Path, cmyk: tuple[int, ...], rgb: tuple[int, int, int]
) -> None:
    Image.new("CMYK", (8, 8), cmyk).save(tmp_path / "cmyk.jpg")
    result, notes = load_image_with_notes(tmp_path / "cmyk.jpg")
    assert close(result.getpixel((4, 4)), rgb, tol=3), result.getpixel((4, 4))
    assert notes == ["CMYK converted to RGB"]


def test_animated_gif_uses_the_first_frame_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    with caplog.at_level(logging.INFO, logger="cnnviz.inputs.images"):
        result, notes = load_image_with_notes(tmp_path / "a.gif")
    assert result.getpixel((2, 2)) == RED
    assert notes == ["animated GIF: first of 3 frames used"]
    assert "first of 3 frames used" in caplog.text


def test_multipage_tiff_uses_the_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (5, 3), colour) for colour in (BLUE, GREEN)]
    pages[0].save(tmp_path / "m.tiff", save_all=True, append_images=pages[1:])
    result, notes = load_image_with_notes(tmp_path / "m.tiff")
    assert result.size == (5, 3)
    assert result.getpixel((0, 0)) == BLUE
    assert notes == ["multi-page TIFF: first of 2 pages used"]


# -- EXIF orientation: a red 8×8 block in the stored top-left corner of a 32×16 blue image ------- -


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [
        (1, "top-left"),  # stored as displayed
        (6, "top-right"),  # "rotate 90° clockwise to display"
        (8, "bottom-left"),  # "rotate 90° anticlockwise to display"
        (3, "bottom-right"),  # 180°
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, suffix: str, orientation: int, red_corner: str
) -> None:
    stored = Image.new("RGB", (32, 16), BLUE)
    stored.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / f"o{suffix}", exif=exif)
    result, notes = load_image_with_notes(tmp_path / f"o{suffix}")
    rotated = orientation in (6, 8)
    assert result.size == ((16, 32) if rotated else (32, 16))
    w, h = result.size
    corners = {
        "top-left": (3, 3),
        "top-right": (w - 4, 3),
        "bottom-left": (3, h - 4),
        "bottom-right": (w - 4, h - 4),
    }
    for name, xy in corners.items():
        expected = RED if name == red_corner else BLUE
        assert close(result.getpixel(xy), expected), (name, result.getpixel(xy))
    assert notes == ([] if orientation == 1 else [f"EXIF orientation {orientation} applied"])


# -- refusals: one line, naming the file, chained to the cause -------------------------------------


def assert_refused(path: Path, *words: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, message
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    error = assert_refused(tmp_path / "nope.jpg", "not found", "check the path")
    assert isinstance(error, ValueError)  # ImageLoadError is also a ValueError


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert_refused(tmp_path, "is a directory")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert_refused(tmp_path / "empty.png", "empty (0 bytes)")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "fake.jpg").write_text("this is not a picture\n")
    error = assert_refused(tmp_path / "fake.jpg", "not an image file")
    assert isinstance(error.__cause__, OSError)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_is_refused_not_half_grey(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) * 6 // 10])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    error = assert_refused(tmp_path / f"cut{suffix}", "damaged or truncated")
    assert error.__cause__ is not None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # Pillow's global left alone


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (9460, 9460),  # 89,491,600: just above the limit
        (10_000, 10_000),  # 1e8: Pillow's DecompressionBombWarning range
        (20_000, 20_000),  # 4e8: Pillow's DecompressionBombError range
        (2**31 - 1, 2**31 - 1),
    ],
)
def test_decompression_bomb_is_refused_from_the_header(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    assert path.stat().st_size < 100
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    assert_refused(path, "decompression bomb", "downscale")
    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_own_pixel_limit_holds_when_pillows_is_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    (tmp_path / "bomb.png").write_bytes(png_claiming(10_000, 10_000))
    assert_refused(tmp_path / "bomb.png", f"{MAX_IMAGE_PIXELS:,}", "100,000,000 pixels")


def test_a_stricter_pillow_limit_is_honoured_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 px is over a Pillow limit of 60 but not over twice it: Pillow only warns, we refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)
    (tmp_path / "bomb.png").write_bytes(png_claiming(10, 10))
    assert_refused(tmp_path / "bomb.png", "decompression bomb")


@pytest.mark.parametrize(("width", "height", "refused"), [(10, 10, False), (101, 1, True)])
def test_the_limit_itself_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int, refused: bool
) -> None:
    # With a limit of 100 px, 10×10 passes the size check and then fails as truncated (the file
    # holds a header only), while 101×1 is refused as a bomb: the check is `pixels > limit`.
    monkeypatch.setattr("cnnviz.inputs.images.MAX_IMAGE_PIXELS", 100)
    (tmp_path / "edge.png").write_bytes(png_claiming(width, height))
    error = assert_refused(tmp_path / "edge.png")
    assert ("decompression bomb" in str(error)) is refused
    assert ("damaged or truncated" in str(error)) is not refused


def test_paths_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "my photos ✓"
    folder.mkdir()
    path = folder / "ünïcødé 图像 (1).png"
    Image.new("RGB", (2, 2), GREEN).save(path)
    assert load_image(path).getpixel((1, 1)) == GREEN
    assert load_image(str(path)).getpixel((0, 0)) == GREEN
    assert find_images(folder) == [path]


def test_wrong_path_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"str or os\.PathLike"):
        load_image(42)  # type: ignore[arg-type]


# -- finding files and samples ---------------------------------------------------------------------


def test_find_images_lists_image_files_sorted_non_recursively(tmp_path: Path) -> None:
    for name in ("b.png", "A.JPG", "c.webp", "notes.txt", ".hidden.jpg", "x.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a directory with an image suffix is not a file
    assert [p.name for p in find_images(tmp_path)] == ["A.JPG", "b.png", "c.webp", "x.tiff"]
    assert find_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert find_images(tmp_path / "sub") == [tmp_path / "sub" / "d.png"]
    (tmp_path / "empty").mkdir()
    assert find_images(tmp_path / "empty") == []
    with pytest.raises(ImageLoadError, match="No such file or directory"):
        find_images(tmp_path / "missing")


def test_image_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES


def test_bundled_samples_load() -> None:
    samples = bundled_samples()
    assert [p.name for p in samples] == ["chelsea.jpg", "coffee.jpg"]
    sizes = [load_image(p).size for p in samples]
    assert sizes == [(451, 300), (600, 400)]


# -- tensor ⇄ NumPy --------------------------------------------------------------------------------


def test_tensor_to_numpy_moves_channels_last() -> None:
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    batch = tensor_to_numpy(t)
    assert batch.shape == (2, 4, 5, 3)
    assert batch[1, 2, 3, 0] == t[1, 0, 2, 3].item()
    assert batch[0, 1, 4, 2] == t[0, 2, 1, 4].item()
    single = tensor_to_numpy(t[1])
    assert single.shape == (4, 5, 3)
    np.testing.assert_array_equal(single, batch[1])
    single[0, 0, 0] = -1.0  # a copy: the tensor is untouched
    assert t[1, 0, 0, 0].item() == 60.0


def test_tensor_to_numpy_dtypes() -> None:
    assert tensor_to_numpy(torch.zeros(3, 2, 2, dtype=torch.float64)).dtype == np.float64
    as_float = tensor_to_numpy(torch.full((3, 1, 1), 7, dtype=torch.uint8))
    assert as_float.dtype == np.float32
    assert as_float[0, 0, 2] == 7.0
    assert tensor_to_numpy(torch.ones(1, 2, 2, dtype=torch.bfloat16)).dtype == np.float32
    y = torch.ones(3, 2, 2, requires_grad=True) * 2
    assert tensor_to_numpy(y)[1, 1, 1] == 2.0  # detached


def test_numpy_to_tensor_is_the_inverse() -> None:
    rng = np.random.default_rng(1)
    array = rng.random((2, 4, 5, 3)).astype(np.float32)
    t = numpy_to_tensor(array)
    assert t.shape == (2, 3, 4, 5)
    assert t[1, 2, 3, 4].item() == array[1, 3, 4, 2]
    np.testing.assert_array_equal(tensor_to_numpy(t), array)
    np.testing.assert_array_equal(tensor_to_numpy(numpy_to_tensor(array[0])), array[0])
    as_int = numpy_to_tensor(np.full((2, 2, 3), 200, dtype=np.uint8))
    assert as_int.dtype == torch.float32
    assert as_int[0, 0, 0].item() == 200.0  # values unchanged, no /255
    t[0, 0, 0, 0] = -5.0
    assert array[0, 0, 0, 0] != -5.0  # no shared memory


@pytest.mark.parametrize("shape", [(224, 224, 3), (5, 5), (1, 3, 8, 8, 8)])
def test_tensor_to_numpy_rejects_non_image_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        tensor_to_numpy(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 224, 224), (5, 5)])
def test_numpy_to_tensor_rejects_non_image_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        numpy_to_tensor(np.zeros(shape))


def test_helpers_reject_wrong_types() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        tensor_to_numpy(np.zeros((3, 2, 2)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        numpy_to_tensor(torch.zeros(2, 2, 3))  # type: ignore[arg-type]
