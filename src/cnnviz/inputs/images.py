"""Decoding image files to upright 8-bit RGB (or RGBA), and the tensor ⇄ NumPy layout helpers.

:func:`load_image` is the only way cnnviz reads an image file. Whatever the file holds, it returns
an 8-bit RGB :class:`PIL.Image.Image` as the file is meant to be *displayed*:

* EXIF orientation is applied (a phone photo stored sideways comes out upright);
* transparency (RGBA, LA, PA, a palette or grey level marked transparent) is composited onto white
  (``keep_alpha=True`` of :func:`load_image_with_notes` keeps it instead: 8-bit RGBA, alpha 255
  where the file has none);
* 16-bit grey levels are scaled, not clipped: ``v ↦ round(v · 255 / 65535)``;
* 32-bit integer (``I``) images are read as 16-bit when their values fit 0…65535, else min-max
  scaled; float (``F``) images are read as 0…1 when they fit it, as 0…255 when they fit that,
  else min-max scaled (non-finite values become 0); each fallback is noted;
* CMYK (also Adobe's inverted CMYK JPEG), palette and bilevel images are converted by Pillow;
* of an animated image (GIF, APNG, WebP) or a multi-page TIFF, the first frame is used — said in
  the notes of :func:`load_image_with_notes` and logged at INFO level.

Anything that cannot be decoded — a missing file, a directory, an empty or non-image file, a
truncated file, an image larger than :data:`MAX_IMAGE_PIXELS` (a decompression bomb) — raises
:class:`~cnnviz.errors.ImageLoadError` with one line naming the file and the remedy; no raw
Pillow or ``OSError`` traceback escapes. Pillow's global settings are never changed: the pixel
limit is checked from the header before any pixel is decoded, and truncated files are refused
as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default ``False`` (a warning is
logged if your program has set it).

A model's input channel count decides the mode a file is read in (:data:`CHANNEL_MODES`,
:func:`load_image_for`): 1 → ``"L"`` (the RGB image above as Pillow's ITU-R 601-2 luma),
2 → ``"LA"`` and 4 → ``"RGBA"`` (the file's alpha kept), 3 → ``"RGB"``; any other count is
refused with :class:`~cnnviz.errors.ImageLoadError` (such a model takes tensors from Python).
:func:`rgb_picture` is what is drawn on: always RGB, alpha composited on white.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cnnviz.errors import ImageLoadError, error_text

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width × height) :func:`load_image` decodes: Pillow's default limit, ~ 9459²."""

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
"""File suffixes (lower case) that :func:`find_images` picks up in a directory."""

CHANNEL_MODES: Mapping[int, str] = MappingProxyType({1: "L", 2: "LA", 3: "RGB", 4: "RGBA"})
"""The Pillow mode an image file is read in for a model with that many input channels."""

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MAX_16 = 65535.0


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image file at ``path`` as an upright 8-bit RGB image (see the module docstring).

    Example:
        >>> from cnnviz.inputs.images import bundled_samples, load_image
        >>> load_image(bundled_samples()[0]).mode
        'RGB'

    Raises:
        ImageLoadError: the file is missing, not an image, truncated or too large.
        TypeError: ``path`` is not a string or path.
    """
    image, _ = load_image_with_notes(path)
    return image


def image_mode(channels: int) -> str:
    """The Pillow mode of :data:`CHANNEL_MODES` for a model with ``channels`` input channels.

    Raises:
        ImageLoadError: a count other than 1, 2, 3 or 4 (no image file has such pixels).
    """
    mode = CHANNEL_MODES.get(channels)
    if mode is None:
        raise ImageLoadError(
            f"the model takes {channels} input channels; cnnviz reads image files as 1 (grey), "
            "2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels; pass a tensor from Python: "
            "cnnviz.explain(model, x)"
        )
    return mode


def load_image_for(path: str | os.PathLike[str], channels: int) -> tuple[Image.Image, list[str]]:
    """The image file at ``path`` in the mode :func:`image_mode` gives for ``channels``, and notes.

    ``"L"`` is the RGB image of :func:`load_image` (alpha composited on white) converted to
    Pillow's luma ``L = R·299/1000 + G·587/1000 + B·114/1000``; ``"LA"`` and ``"RGBA"`` keep the
    file's alpha (255 where it has none), ``"LA"`` taking the luma of the colour part.

    Raises:
        ImageLoadError: an unsupported channel count (before the file is opened), or a file
            that cannot be decoded.
    """
    mode = image_mode(channels)
    image, notes = load_image_with_notes(path, keep_alpha=mode.endswith("A"))
    return (image if image.mode == mode else image.convert(mode)), notes


def load_image_with_notes(
    path: str | os.PathLike[str], *, keep_alpha: bool = False
) -> tuple[Image.Image, list[str]]:
    """Like :func:`load_image`, also returning notes on what was done to the file's pixels.

    Notes are short phrases such as ``"animated GIF: first of 12 frames used"``,
    ``"EXIF orientation 6 applied"`` or ``"alpha composited on white"``; an ordinary RGB file
    gives no notes. Each note is also logged at INFO level. With ``keep_alpha`` the image is
    8-bit RGBA: the file's alpha as it is (not composited), 255 for a file without alpha.
    """
    file = _checked_file(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this program, so a truncated %s "
            "would load with grey where the data is missing",
            file,
        )
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                image = _decode(opened, file, notes, keep_alpha=keep_alpha)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(file, None) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"Cannot read {file}: it is not an image file Pillow recognises; "
            f"convert it to PNG or JPEG ({_suffixes()})."
        ) from e
    # Pillow raises many exception types on corrupt data (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, IndexError, …); all mean "cannot decode this file".
    except Exception as e:
        raise ImageLoadError(
            f"Cannot decode {file} ({type(e).__name__}: {error_text(e)}); the file is damaged "
            "or truncated: re-export or re-download it."
        ) from e
    for note in notes:
        logger.info("%s: %s", file, note)
    return image, notes


def _checked_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path to an existing, non-empty regular file, else ImageLoadError."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    try:
        if not file.exists():
            raise ImageLoadError(
                f"Image file not found: {file} (looked from {Path.cwd()}); check the path."
            )
        if file.is_dir():
            raise ImageLoadError(
                f"{file} is a directory, not an image file; give one image file "
                "(or use find_images to list the images in a directory)."
            )
        if file.stat().st_size == 0:
            raise ImageLoadError(f"Image file {file} is empty (0 bytes); re-export or re-copy it.")
    except OSError as e:  # permission denied, name too long, …
        raise ImageLoadError(
            f"Cannot access {file} ({error_text(e)}); check the path and its permissions."
        ) from e
    return file


def _decode(opened: Image.Image, file: Path, notes: list[str], *, keep_alpha: bool) -> Image.Image:
    """Frame selection, size check, decode, orientation and conversion to RGB(A) (may raise)."""
    width, height = opened.size
    if width * height > MAX_IMAGE_PIXELS:  # from the header: nothing decoded yet
        raise _too_large(file, (width, height))
    frames = int(getattr(opened, "n_frames", 1))
    if frames > 1:
        opened.seek(0)
        kind = "multi-page TIFF" if opened.format == "TIFF" else f"animated {opened.format}"
        unit = "pages" if opened.format == "TIFF" else "frames"
        notes.append(f"{kind}: first of {frames} {unit} used")
    opened.load()
    orientation = opened.getexif().get(0x0112, 1)
    image = ImageOps.exif_transpose(opened)
    if orientation in range(2, 9):  # the values exif_transpose acts on
        notes.append(f"EXIF orientation {orientation} applied")
    return _to_rgb_or_rgba(image, notes, keep_alpha=keep_alpha)


def _to_rgb_or_rgba(image: Image.Image, notes: list[str], *, keep_alpha: bool) -> Image.Image:
    """8-bit RGB (transparency composited on white), or RGBA with the file's alpha kept."""
    has_transparency = image.mode in _ALPHA_MODES or (
        image.info.get("transparency") is not None and image.mode in ("P", "L", "RGB", "1")
    )
    if has_transparency:
        rgba = image.convert("RGBA")
        if keep_alpha:
            return rgba
        if int(np.asarray(rgba.getchannel("A")).min(initial=255)) < 255:
            notes.append("alpha composited on white")
        return _on_white(rgba)
    rgb = _to_rgb(image, notes)
    return rgb.convert("RGBA") if keep_alpha else rgb


def _on_white(rgba: Image.Image) -> Image.Image:
    """An RGBA image composited onto opaque white, as RGB."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def rgb_picture(image: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB to draw on: grey replicated, an alpha channel composited on white.

    Accepts the modes of :data:`CHANNEL_MODES` (and any other Pillow converts to RGB).
    """
    if image.mode in _ALPHA_MODES:
        return np.array(_on_white(image.convert("RGBA")), dtype=np.uint8)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """An 8-bit RGB copy of a decoded image of any Pillow mode without transparency."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.float64)
        return _grey_to_rgb(array * (255.0 / _MAX_16))
    if mode == "I":
        array = np.asarray(image).astype(np.float64)
        if array.size and (array.min() < 0 or array.max() > _MAX_16):
            notes.append("32-bit integer image: min-max scaled to 0…255")
            return _grey_to_rgb(_min_max(array))
        return _grey_to_rgb(array * (255.0 / _MAX_16))
    if mode == "F":
        return _grey_to_rgb(_float_levels(np.asarray(image).astype(np.float64), notes))
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return image.convert("RGB")


def _float_levels(array: np.ndarray, notes: list[str]) -> np.ndarray:
    """Grey levels 0…255 from a float image, by the rule in the module docstring."""
    finite = np.isfinite(array)
    if not finite.all():
        notes.append("non-finite pixel values set to 0")
        array = np.where(finite, array, 0.0)
    if array.size == 0 or (array.min() >= 0 and array.max() <= 1):
        return array * 255.0
    if array.min() >= 0 and array.max() <= 255:
        return array
    notes.append("float image outside 0…255: min-max scaled")
    return _min_max(array)


def _min_max(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high == low:
        return np.zeros_like(array)
    return (array - low) * (255.0 / (high - low))


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    """An RGB image whose three channels are the grey ``levels`` (0…255, rounded)."""
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.stack([grey] * 3, axis=-1)), mode="RGB")


def _too_large(file: Path, size: tuple[int, int] | None) -> ImageLoadError:
    what = (
        f"its {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels exceed"
        if size
        else "its pixel count (too large for Pillow even to open) exceeds"
    )
    return ImageLoadError(
        f"Refusing {file}: {what} the limit of {MAX_IMAGE_PIXELS:,} "
        "(a possible decompression bomb); downscale the image first."
    )


def _suffixes() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


def find_images(path: str | os.PathLike[str]) -> list[Path]:
    """The image files ``path`` names: a file gives ``[file]``, a directory its image files.

    A directory is searched non-recursively for files whose suffix (any case) is in
    :data:`IMAGE_SUFFIXES`; hidden files (names starting with ``.``, e.g. macOS ``._x.jpg``) are
    skipped. The result is sorted by path; an empty list means the directory has no images.
    A file is returned as given, whatever its suffix (:func:`load_image` decides if it decodes).

    Raises:
        ImageLoadError: ``path`` does not exist.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    root = Path(path)
    if root.is_dir():
        return sorted(
            entry
            for entry in root.iterdir()
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.suffix.lower() in IMAGE_SUFFIXES
        )
    if root.exists():
        return [root]
    raise ImageLoadError(f"No such file or directory: {root} (looked from {Path.cwd()}).")


def tensor_to_numpy(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) or (N, C, H, W) image tensor as an (H, W, C) / (N, H, W, C) float NumPy copy.

    C must be 1, 2, 3 or 4 (an image's channels, :data:`CHANNEL_MODES`). float16/32/64 tensors
    keep their dtype (values unchanged); other dtypes (integer, bool, bfloat16) become float32.
    The tensor is detached and copied to the CPU; it is not modified.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4) or image.shape[-3] not in CHANNEL_MODES:
        raise ValueError(
            f"Expected an image tensor of shape (C, H, W) or (N, C, H, W) with C in 1, 2, 3, 4, "
            f"got shape {tuple(image.shape)}"
        )
    tensor = image.detach().cpu()
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()  # integers, bool, bfloat16 (which NumPy lacks)
    order = (1, 2, 0) if tensor.dim() == 3 else (0, 2, 3, 1)
    return np.array(tensor.permute(*order).numpy(), copy=True)


def numpy_to_tensor(image: np.ndarray) -> torch.Tensor:
    """The inverse of :func:`tensor_to_numpy`: (H, W, C) / (N, H, W, C) → (C, H, W) / (N, C, H, W).

    Values are unchanged (no scaling by 255); floating arrays keep their dtype, integer and bool
    arrays become float32. The result is a new tensor that does not share memory with ``image``.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"Expected a numpy.ndarray, got {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-1] not in CHANNEL_MODES:
        raise ValueError(
            f"Expected an image array of shape (H, W, C) or (N, H, W, C) with C in 1, 2, 3, 4, "
            f"got shape {image.shape}"
        )
    array = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)
    order = (2, 0, 1) if array.ndim == 3 else (0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(order)).copy())
