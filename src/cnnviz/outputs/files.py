"""Written files: atomic PNG/NPY/JSON writes, safe file names, and file locks.

Every file is written to a temporary name in its destination folder, flushed to disk and renamed
over the target with :func:`os.replace`, so a reader (or a crash) sees either the old file or the
complete new one, never a half-written file. The manifest that describes a run's files is
:mod:`cnnviz.outputs.manifest`.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cnnviz.errors import NonFiniteError

logger = logging.getLogger(__name__)

SCHEMA_VERSION: int = 1
"""Version of the manifest layout; bumped on any incompatible change."""

MANIFEST_NAME = "manifest.json"

_MAX_STEM_CHARS = 100
_MAX_STEM_BYTES = 200  # UTF-8; file names are limited to 255 bytes and suffixes get appended
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)


# -- atomic writes ---------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The parent folder is created if needed. On any failure the temporary file is removed and an
    existing file at ``path`` is left untouched. ``durable=False`` skips the two ``fsync`` calls:
    the write stays atomic for readers and when the process is killed (the rename happens after
    the last byte is written), but after a power loss the file may be empty; callers that verify
    what they wrote (``cnnviz explain --resume``) use it to write many files fast.
    """
    path = Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it (POSIX); best effort elsewhere."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("Could not fsync folder %s", folder)
    finally:
        os.close(fd)


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """A uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB image as PNG bytes (zlib ``compress_level``
    0–9: 1 is about three times faster than the default 6 for a few percent more bytes)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = f"dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(
            f"encode_png expects a uint8 NumPy image, got {got}; use cnnviz.render.colours.to_uint8"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"encode_png expects shape (H, W) or (H, W, 3), got {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (never pickled); floating arrays are stored as float32."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"encode_npy expects a NumPy array, got {type(array).__name__}")
    if array.dtype.kind == "O":
        raise TypeError("encode_npy refuses object arrays (they would need pickle)")
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB image as PNG, atomically."""
    atomic_write_bytes(path, encode_png(image))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` atomically; floating arrays are stored as float32."""
    atomic_write_bytes(path, encode_npy(array))


def _json_default(obj: object) -> object:
    """JSON for the few non-JSON types our records hold: paths, enums, NumPy scalars/arrays."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json_text(obj: object) -> str:
    """``obj`` as cnnviz JSON text: indent 2, sorted keys, UTF-8, no NaN, no final newline."""
    try:
        text = json.dumps(
            obj,
            indent=2,
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except ValueError as e:
        if "Out of range float" in str(e):
            raise NonFiniteError(
                f"Refusing to write NaN or infinity to JSON ({e}); "
                "store non-finite values as null or fix their source."
            ) from e
        raise
    return text


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON atomically (see :func:`to_json_text`, plus a final newline).

    Nothing is written when ``obj`` cannot be serialised.
    """
    atomic_write_bytes(path, (to_json_text(obj) + "\n").encode("utf-8"))


# -- file names ------------------------------------------------------------------------------


def safe_stem(name: str) -> str:
    """A file-name stem derived from untrusted input that is safe on every platform.

    Keeps Unicode letters and digits and ``-``, ``_``, ``.``; every other run of characters (path
    separators, spaces, control characters, …) becomes one ``_``. Runs of dots collapse to one,
    leading ``-._`` and trailing ``._`` are stripped (no hidden files, no ``..``, no option-like
    names), Windows device names get a ``_`` prefix, and the result is at most 100 characters and
    200 UTF-8 bytes. Never empty: ``"image"`` is the fallback.

    Example:
        >>> safe_stem("../../etc/passwd")
        'etc_passwd'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name)
    text = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    text = re.sub(r"_+", "_", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = text.lstrip("-._")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    text = text[:_MAX_STEM_CHARS]
    while len(text.encode("utf-8")) > _MAX_STEM_BYTES:
        text = text[:-1]
    return text.rstrip("._") or "image"


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """:func:`safe_stem` of each path's stem, made unique: ``a.jpg``, ``a.png`` → ``a``, ``a-2``.

    Uniqueness ignores case (``A`` and ``a`` would collide on macOS and Windows). A suffixed name
    never takes the plain name of another input (``a-2.jpg`` keeps ``a-2``).
    """
    bases = [safe_stem(Path(p).stem) for p in paths]
    plain = {b.casefold() for b in bases}
    used: set[str] = set()
    result: list[str] = []
    for base in bases:
        candidate, k = base, 2
        while candidate.casefold() in used or (candidate != base and candidate.casefold() in plain):
            candidate, k = f"{base}-{k}", k + 1
        used.add(candidate.casefold())
        result.append(candidate)
    return result


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Without ``fcntl`` (Windows) there is no lock: concurrent writers may then race, and the
    atomic renames of :func:`atomic_write_bytes` still keep every file whole.
    """
    try:
        import fcntl  # POSIX only
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
