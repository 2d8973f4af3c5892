"""The chunked result store of a folder run (``--store zarr``): one Zarr v3 group, ``results.zarr``.

Layout, for ``N`` inputs explained in chunks of ``B`` (the batch size) with ``T`` targets each::

    results.zarr/                   group; its attributes hold the run's metadata (STORE_KIND)
      status        (N,)            uint8: PENDING, DONE or FAILED, chunks (B,)
      sha256        (N, 32)         uint8: SHA-256 of each input file, chunks (B, 32)
      <method>/layer                (N, T, h, w) float16|float32: raw maps at the layer
      <method>/input                (N, T, H, W): upsampled to the input (optional)
      <method>/targets              (N, T) int64: class indices (-1: none)
      <method>/scores               (N, T) float64
      <method>/probabilities        (N, T) float64 (NaN: none)

Every array is chunked along the images exactly as the run batches them, so each batch is one
chunk of every array and is written by exactly one process (:mod:`cnnviz.runs.distributed` gives
each rank whole batches): ranks never write the same chunk file. A batch's status is written
after its maps, so ``DONE`` always means complete maps; a killed run leaves a store whose
status says which images are complete. Failed images keep NaN maps and status ``FAILED``.
zarr is imported on first use only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.errors import OutputError

logger = logging.getLogger(__name__)

STORE_NAME = "results.zarr"
TABLE_NAME = "results.csv"
STORE_KIND = "cnnviz.results"
STORE_VERSION = 1
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
MAP_DTYPES = ("float16", "float32")
RESOLUTIONS = ("layer", "input")


def file_sha256(path: Path) -> np.ndarray:
    """The SHA-256 of a file's bytes as 32 ``uint8`` (zeros for a file that cannot be read)."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return np.zeros(32, np.uint8)
    return np.frombuffer(digest, np.uint8).copy()


@dataclass(frozen=True)
class MapShapes:
    """One method's map shapes: ``targets`` per image, ``layer`` (h, w), ``input`` (H, W)."""

    targets: int
    layer: tuple[int, int]
    input: tuple[int, int]


@dataclass(frozen=True)
class ChunkResult:
    """One method's results for the decoded images of one chunk, stacked (``n`` images)."""

    layer: np.ndarray  # (n, T, h, w) float32
    input: np.ndarray  # (n, T, H, W) float32
    targets: np.ndarray  # (n, T) int64, -1 for none
    scores: np.ndarray  # (n, T) float64
    probabilities: np.ndarray  # (n, T) float64, NaN for none


def _zarr() -> Any:
    import zarr  # lazy: only runs with --store zarr, and open_results, need it

    return zarr


class ResultStore:
    """A ``results.zarr`` group opened for writing chunks (:meth:`create`, :meth:`open`)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.warned = False  # said once that float16 overflowed

    @classmethod
    def create(
        cls,
        out_dir: Path,
        *,
        count: int,
        chunk: int,
        shapes: Mapping[str, MapShapes],
        dtype: str,
        input_maps: bool,
        attrs: Mapping[str, Any],
    ) -> ResultStore:
        """A new, empty store in ``out_dir`` (an existing one is replaced): every image pending."""
        zarr = _zarr()
        try:
            group = zarr.open_group(Path(out_dir) / STORE_NAME, mode="w", zarr_format=3)
        except OSError as e:
            raise OutputError(
                f"Cannot create {Path(out_dir) / STORE_NAME} ({e}); check --out."
            ) from e

        def array(name: str, shape: tuple[int, ...], kind: str, fill: Any) -> None:
            chunks = (chunk, *shape[1:])
            group.create_array(name, shape=shape, chunks=chunks, dtype=kind, fill_value=fill)

        n = count
        array("status", (n,), "uint8", PENDING)
        array("sha256", (n, 32), "uint8", 0)
        for method, shape in shapes.items():
            t = shape.targets
            array(f"{method}/layer", (n, t, *shape.layer), dtype, np.nan)
            if input_maps:
                array(f"{method}/input", (n, t, *shape.input), dtype, np.nan)
            array(f"{method}/targets", (n, t), "int64", -1)
            array(f"{method}/scores", (n, t), "float64", np.nan)
            array(f"{method}/probabilities", (n, t), "float64", np.nan)
        group.attrs.update(
            {
                "kind": STORE_KIND,
                "version": STORE_VERSION,
                "chunk": chunk,
                "dtype": dtype,
                "input_maps": input_maps,
                "methods": list(shapes),
                **attrs,
            }
        )
        return cls(group)

    @classmethod
    def open(cls, out_dir: Path) -> ResultStore | None:
        """The store in ``out_dir`` opened for writing, or ``None`` when there is none."""
        group = open_store_group(Path(out_dir) / STORE_NAME, mode="r+")
        return None if group is None else cls(group)

    @property
    def methods(self) -> list[str]:
        return list(self.attrs.get("methods", []))

    def status(self) -> np.ndarray:
        """Every image's status (PENDING, DONE, FAILED)."""
        return np.asarray(self.group["status"][:])

    def write_chunk(
        self,
        start: int,
        stop: int,
        decoded: Sequence[int],
        results: Mapping[str, ChunkResult],
        sha256: np.ndarray,
    ) -> None:
        """Write images ``start … stop - 1`` (one chunk): maps and per-image values of the
        ``decoded`` images (the rest failed), then their status, last."""
        n = stop - start
        rows = np.asarray(decoded, dtype=np.int64) - start
        dtype = np.dtype(self.attrs["dtype"])
        for method, result in results.items():
            names = ["layer", "input"] if self.attrs["input_maps"] else ["layer"]
            for name in names:
                values = getattr(result, name)
                block = np.full((n, *values.shape[1:]), np.nan, dtype=dtype)
                with np.errstate(over="ignore"):  # said once below
                    block[rows] = values.astype(dtype)
                if not np.isfinite(block[rows]).all() and not self.warned:
                    self.warned = True
                    logger.warning(
                        "%s maps exceed the float16 range (±65504) and are stored as infinite; "
                        "run with --store-dtype float32 to keep them",
                        method,
                    )
                self.group[f"{method}/{name}"][start:stop] = block
            for name, fill, kind in (
                ("targets", -1, np.int64),
                ("scores", np.nan, np.float64),
                ("probabilities", np.nan, np.float64),
            ):
                values = getattr(result, name)
                block = np.full((n, values.shape[1]), fill, dtype=kind)
                block[rows] = values
                self.group[f"{method}/{name}"][start:stop] = block
        self.group["sha256"][start:stop] = sha256
        status = np.full(n, FAILED, np.uint8)
        status[rows] = DONE
        self.group["status"][start:stop] = status

    def update_attrs(self, values: Mapping[str, Any]) -> None:
        """Add ``values`` to the group's attributes (the leader only: one writer of zarr.json)."""
        self.group.attrs.update(dict(values))
        self.attrs.update(values)


def open_store_group(path: Path, mode: str = "r") -> Any:
    """The cnnviz result group at ``path`` (``None`` if there is no group there).

    Raises:
        OutputError: a Zarr group that cnnviz did not write, or a newer layout.
    """
    if not (Path(path) / "zarr.json").is_file():
        return None
    zarr = _zarr()
    try:
        group = zarr.open_group(path, mode=mode, zarr_format=3)
    except Exception as e:  # any zarr error: the metadata does not read
        raise OutputError(
            f"{path} is not a readable Zarr v3 group ({type(e).__name__}: {e}); "
            "explain the folder again into a new --out."
        ) from e
    kind, version = group.attrs.get("kind"), group.attrs.get("version")
    if kind != STORE_KIND or not isinstance(version, int) or version > STORE_VERSION:
        raise OutputError(
            f"{path} is not a cnnviz result store of version {STORE_VERSION} or older (kind "
            f"{kind!r}, version {version!r}); write it with this cnnviz, or upgrade cnnviz."
        )
    return group
