"""Uploaded images: refused unless small enough in bytes and pixels and of an image type, and
kept only inside the explorer's temporary folder, named by their content."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cnnviz.serve.requests import HttpError

UPLOAD_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
}
"""The content types an upload may have, and the Pillow format each must decode as."""

MEGABYTE = 1024 * 1024


class UploadError(HttpError):
    """An upload the explorer refuses; ``status`` is the HTTP status that says why."""


@dataclass(frozen=True)
class UploadLimits:
    """How large an upload may be: ``max_bytes`` of file, ``max_pixels`` once decoded."""

    max_bytes: int = 20 * MEGABYTE
    max_pixels: int = 40_000_000

    def too_large(self, size: int) -> UploadError:
        return UploadError(
            f"The upload is {size / MEGABYTE:.1f} MB; the limit is "
            f"{self.max_bytes / MEGABYTE:.1f} MB (--max-upload-mb). Downscale or recompress it.",
            413,
        )


def checked_upload(data: bytes, content_type: str, limits: UploadLimits) -> str:
    """The Pillow format of an acceptable upload, read from its header without decoding it.

    Raises:
        UploadError: 413 more bytes than ``limits.max_bytes``; 415 a content type or file
            format other than :data:`UPLOAD_TYPES`; 422 a file that is not an image or whose
            width × height exceeds ``limits.max_pixels`` (a decompression bomb is refused from
            its header, before any pixel is decoded).
    """
    if len(data) > limits.max_bytes:
        raise limits.too_large(len(data))
    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise UploadError(
            f"Uploads must be images ({', '.join(UPLOAD_TYPES)}); got content type "
            f"{content_type or 'none'!r}.",
            415,
        )
    if not data:
        raise UploadError("The upload is empty (0 bytes).", 422)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            found = opened.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(None, limits) from None
    except Exception as e:  # Pillow raises many types for a file it cannot read
        raise UploadError(f"The upload is not a readable image ({e}).", 422) from e
    if found not in UPLOAD_TYPES.values():
        raise UploadError(
            f"The upload is a {found or 'unknown'} file; the explorer takes "
            f"{', '.join(sorted(set(UPLOAD_TYPES.values())))}.",
            415,
        )
    if width * height > limits.max_pixels:
        raise _bomb((width, height), limits)
    return str(found)


def _bomb(size: tuple[int, int] | None, limits: UploadLimits) -> UploadError:
    what = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return UploadError(
        f"The upload has {what}; the limit is {limits.max_pixels:,} (--max-upload-mp): a "
        "possible decompression bomb. Downscale the image first.",
        422,
    )


def store_upload(data: bytes, image_format: str, folder: Path) -> tuple[str, Path]:
    """Write ``data`` into ``folder`` under a name made of its SHA-256; returns the id (the
    hash's first 16 hex digits) and the path. Nothing from the request names the file."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = folder / f"upload-{digest}.{image_format.lower()}"
    if not path.exists():
        path.write_bytes(data)
    return digest, path
