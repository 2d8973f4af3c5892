"""One image's outputs of a folder run: overlays, raw maps, comparison grid, then its record.

:func:`write_image_outputs` runs in a writer thread of :func:`cnnviz.runs.explain.explain_files`.
File names come from the input's safe stem, the method, the target rank and the target's label,
cut to fit every file system; each file is written atomically, and the image's record
(:mod:`cnnviz.outputs.records`) is written last, so a record always describes complete outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.errors import NonFiniteError
from cnnviz.methods.base import Explanation
from cnnviz.methods.postprocess import Display
from cnnviz.outputs.files import atomic_write_bytes, encode_npy, encode_png, safe_stem
from cnnviz.outputs.records import file_entry, write_record
from cnnviz.render.drawing import MapDrawing, colour_strip
from cnnviz.render.grids import comparison_grid

PNG_LEVEL = 1  # zlib level for overlays: ~3× faster to encode than 6, a few % larger
_NAME_BUDGET = 225  # bytes; atomic writes add ≤ 25 for the temporary name (limit 255)


def _fit(text: str, room: int) -> str:
    """``text`` cut to ``room`` UTF-8 bytes; a cut text ends in ``~`` and a hash of the whole."""
    if len(text.encode("utf-8")) <= room:
        return text
    tag = "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    cut = text
    while len(cut.encode("utf-8")) > room - len(tag):
        cut = cut[:-1]
    return cut + tag


def output_base(stem: str, method: str, rank: int, label: str, longest_suffix: str) -> str:
    """``<stem>.<method>.<rank>-<label>``, short enough for every file system (255 bytes)."""
    head = f"{method}.{rank}"
    room = _NAME_BUDGET - len(longest_suffix.encode("utf-8")) - len(head.encode("utf-8")) - 2
    stem = _fit(stem, max(room - 20, 24))
    label_room = room - len(stem.encode("utf-8"))
    label = safe_stem(label)
    base = f"{stem}.{head}"
    if label_room >= 4:
        base += "-" + _fit(label, label_room)
    return base


@dataclass(frozen=True)
class MethodResult:
    """One method's result for one image, as NumPy arrays ready to write."""

    method: str
    layer: str | None
    display: Display  # how the maps are rectified in ``shown`` (the drawing's sign)
    shown: np.ndarray  # (T, H, W) in [0, 1]
    raw: np.ndarray  # (T, h, w)
    raw_input: np.ndarray  # (T, H, W)
    labels: tuple[str, ...]
    indices: list[int | None]
    scores: list[float]
    probabilities: list[float | None]
    outlier_percent: float | None = None  # the share (%) of brightest pixels saturated in shown


def drawn_maps(explanation: Explanation, drawing: MapDrawing) -> tuple[Display, np.ndarray]:
    """The display ``drawing`` gives ``explanation``'s maps (its sign, else the method's own)
    and the maps as pictures show them: ``(N, T, H, W)`` float32 in [0, 1]
    (:meth:`~cnnviz.methods.base.Explanation.shown`, with the drawing's outlier clipping)."""
    display = drawing.display_for(explanation.display)
    shown = explanation.shown(sign=display, outlier_percent=drawing.percent)
    return display, shown.numpy()


def used_percent(explanation: Explanation, drawing: MapDrawing) -> float | None:
    """The share (%) of the brightest pixels ``drawing`` saturates in ``explanation``'s
    pictures (``None``: plain min-max)."""
    if drawing.outlier_percent is None:
        return explanation.outlier_percent
    return drawing.outlier_percent or None


def per_image_results(explanation: Explanation, drawing: MapDrawing) -> list[MethodResult]:
    """Split a batch explanation into one :class:`MethodResult` per image (NumPy, on the CPU),
    its maps as ``drawing`` shows them (:func:`drawn_maps`)."""
    display, shown = drawn_maps(explanation, drawing)
    raw = explanation.maps.detach().float().cpu().numpy()
    raw_input = explanation.upsampled().detach().float().cpu().numpy()
    count = raw.shape[1]
    indices = explanation.targets.indices
    probabilities = explanation.probabilities
    scores = explanation.scores.detach().float().cpu().tolist()
    none: list[Any] = [None] * count
    return [
        MethodResult(
            method=explanation.method,
            layer=explanation.layer,
            display=display,
            shown=shown[i],
            raw=raw[i],
            raw_input=raw_input[i],
            labels=tuple(explanation.targets.labels[i]),
            indices=none if indices is None else [int(v) for v in indices[i].tolist()],
            scores=[float(v) for v in scores[i]],
            probabilities=none
            if probabilities is None
            else [float(v) for v in probabilities[i].tolist()],
            outlier_percent=used_percent(explanation, drawing),
        )
        for i in range(raw.shape[0])
    ]


@dataclass(frozen=True)
class ImageJob:
    """Everything needed to write one image's outputs (runs in a writer thread)."""

    out_dir: Path
    path: Path
    stem: str
    tag: str
    key: str
    source: dict[str, int]
    picture: np.ndarray  # (H, W, 3) uint8: the image as the model sees it, resized and cropped
    notes: tuple[str, ...]
    results: list[MethodResult]
    drawing: MapDrawing
    grid: bool
    skipped_methods: dict[str, str]


class _FileSet:
    """The files one image's record lists: each written atomically, then entered with its hash."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.entries: dict[str, dict[str, Any]] = {}

    def put(self, name: str, data: bytes, shape: Sequence[int] | None = None) -> str:
        atomic_write_bytes(self.out_dir / name, data, durable=False)
        self.entries[name] = file_entry(data, shape=shape)
        return name


def _check_finite_maps(job: ImageJob) -> None:
    for result in job.results:
        if not (np.isfinite(result.raw).all() and np.isfinite(result.raw_input).all()):
            raise NonFiniteError(
                f"{job.path}: the {result.method} map contains NaN or infinite values; nothing "
                "was written for it. Check the model's weights."
            )


def _write_target(
    job: ImageJob, result: MethodResult, t: int, files: _FileSet
) -> tuple[np.ndarray, dict[str, Any]]:
    """Overlay and raw maps of target ``t`` of one method; returns the overlay and its item."""
    label = result.labels[t]
    base = output_base(job.stem, result.method, t, label, ".input.npy")
    picture = job.drawing.draw(job.picture, result.shown[t], result.display)
    raw, raw_input = result.raw[t], result.raw_input[t]
    item_files = {
        "overlay": files.put(f"{base}.png", encode_png(picture, compress_level=PNG_LEVEL)),
        "raw_layer": files.put(f"{base}.layer.npy", encode_npy(raw), raw.shape),
        "raw_input": files.put(f"{base}.input.npy", encode_npy(raw_input), raw_input.shape),
    }
    item = {
        "input": str(job.path),
        "stem": job.stem,
        "method": result.method,
        "layer": result.layer,
        "target_rank": t,
        "target_index": result.indices[t],
        "target_name": label,
        "score": result.scores[t],
        "probability": result.probabilities[t],
        "layer_shape": list(result.raw.shape[-2:]),
        "input_shape": list(result.raw_input.shape[-2:]),
        "display": result.display.value,
        "outlier_percent": result.outlier_percent,
        "files": item_files,
        "notes": list(job.notes),
    }
    return picture, item


def _write_grid(
    job: ImageJob, tiles: list[list[np.ndarray]], items: list[dict[str, Any]], files: _FileSet
) -> None:
    """The comparison grid of ``method="all"`` (near-square, each tile captioned), headed by
    the image and its target, with a legend line per kind of map under it."""
    widest: tuple[str, ...] = max((r.labels for r in job.results), key=len)
    columns = list(widest)
    if not all(len(row) in (1, len(columns)) for row in tiles):
        return
    # a method with one target among several (a neuron's attribution): its other cells blank
    tiles = [row + [np.full_like(row[0], 255)] * (len(columns) - len(row)) for row in tiles]
    label = columns[0] if len(columns) == 1 else None
    title = f"{job.path.name}" + (f": {label}" if label else f", top {len(columns)} classes")
    picture = comparison_grid(
        tiles,
        [r.method for r in job.results],
        columns,
        title=title,
        legends=_legends(job, label),
    )
    name = files.put(
        f"{_fit(job.stem, _NAME_BUDGET - 9)}.grid.png",
        encode_png(picture, compress_level=PNG_LEVEL),
    )
    for item in items:
        item["files"]["grid"] = name


def _legends(job: ImageJob, label: str | None) -> list[tuple[np.ndarray, str]]:
    """One ``(colour strip, text)`` per kind of map in the grid, naming its methods."""
    by_display: dict[Display, list[str]] = {}
    for result in job.results:
        by_display.setdefault(result.display, []).append(result.method)
    legends = []
    for display, methods in by_display.items():
        more = f" and {len(methods) - 3} more" if len(methods) > 3 else ""
        names = ", ".join(methods[:3]) + more
        prefix = f"{names}: " if len(by_display) > 1 else ""
        strip = colour_strip(job.drawing.colormap(display), 120, 12)
        legends.append((strip, prefix + job.drawing.legend(display, label)))
    return legends


def write_image_outputs(job: ImageJob) -> list[dict[str, Any]]:
    """Write one image's overlays, raw maps (and grid), then its record; return its items."""
    _check_finite_maps(job)
    files = _FileSet(job.out_dir)
    items: list[dict[str, Any]] = []
    tiles: list[list[np.ndarray]] = []
    for result in job.results:
        row = []
        for t in range(len(result.labels)):
            picture, item = _write_target(job, result, t, files)
            row.append(picture)
            items.append(item)
        tiles.append(row)
    if job.grid and tiles:
        _write_grid(job, tiles, items, files)
    record = {
        "input": str(job.path),
        "stem": job.stem,
        "tag": job.tag,
        "fingerprint": job.key,
        "source": job.source,
        "items": items,
        "files": files.entries,
        "skipped_methods": job.skipped_methods,
    }
    write_record(job.out_dir, job.stem, job.tag, record)
    return items
