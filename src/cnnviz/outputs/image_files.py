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
from cnnviz.methods.postprocess import Display, for_display

PNG_LEVEL = 1  # zlib level for overlays: ~3× faster to encode than 6, a few % larger
_NAME_BUDGET = 225  # bytes; atomic writes add ≤ 25 for the temporary name (limit 255)


def display_maps(explanation: Explanation) -> np.ndarray:
    """Maps ready to colour: ``(N, T, H, W)`` in [0, 1] at the input resolution."""
    shown = for_display(explanation.maps.float(), explanation.display, explanation.input_size)
    if explanation.display is Display.SIGNED:
        shown = (shown + 1) / 2
    return shown.cpu().numpy()


def target_label(explanation: Explanation, i: int, t: int) -> str:
    """Human label of target ``t`` of image ``i``."""
    return explanation.targets.labels[i][t]


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
    from cnnviz.outputs.files import safe_stem

    head = f"{method}.{rank}"
    room = _NAME_BUDGET - len(longest_suffix.encode("utf-8")) - len(head.encode("utf-8")) - 2
    stem = _fit(stem, max(room - 20, 24))
    label_room = room - len(stem.encode("utf-8"))
    label = safe_stem(label)
    base = f"{stem}.{head}"
    if label_room >= 4:
        base += "-" + _fit(label, label_room)
    return base


def comparison_grid(
    rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str]
) -> np.ndarray:
    """Tiles in a labelled table: one row per method, one column per target (uint8 RGB)."""
    from PIL import Image, ImageDraw, ImageFont

    from cnnviz.render.grids import image_grid

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


@dataclass(frozen=True)
class MethodResult:
    """One method's result for one image, as NumPy arrays ready to write."""

    method: str
    layer: str | None
    cmap: str
    shown: np.ndarray  # (T, H, W) in [0, 1]
    raw: np.ndarray  # (T, h, w)
    raw_input: np.ndarray  # (T, H, W)
    labels: tuple[str, ...]
    indices: list[int | None]
    scores: list[float]
    probabilities: list[float | None]


def per_image_results(explanation: Explanation, cmap: str) -> list[MethodResult]:
    """Split a batch explanation into one :class:`MethodResult` per image (NumPy, on the CPU).

    Signed maps are drawn with the diverging ``bwr`` colormap, others with ``cmap``.
    """
    shown = display_maps(explanation)
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
            cmap="bwr" if explanation.display is Display.SIGNED else cmap,
            shown=shown[i],
            raw=raw[i],
            raw_input=raw_input[i],
            labels=tuple(explanation.targets.labels[i]),
            indices=none if indices is None else [int(v) for v in indices[i].tolist()],
            scores=[float(v) for v in scores[i]],
            probabilities=none
            if probabilities is None
            else [float(v) for v in probabilities[i].tolist()],
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
    display: np.ndarray
    notes: tuple[str, ...]
    results: list[MethodResult]
    alpha: float
    grid: bool
    skipped_methods: dict[str, str]


def write_image_outputs(job: ImageJob) -> list[dict[str, Any]]:
    """Write one image's overlays, raw maps (and grid), then its record; return its items."""
    from cnnviz.outputs.files import atomic_write_bytes, encode_npy, encode_png
    from cnnviz.outputs.records import file_entry, write_record
    from cnnviz.render.colours import overlay

    for result in job.results:
        if not (np.isfinite(result.raw).all() and np.isfinite(result.raw_input).all()):
            raise NonFiniteError(
                f"{job.path}: the {result.method} map contains NaN or infinite values; nothing "
                "was written for it. Check the model's weights."
            )
    files: dict[str, dict[str, Any]] = {}

    def put(name: str, data: bytes, shape: Sequence[int] | None = None) -> str:
        atomic_write_bytes(job.out_dir / name, data, durable=False)
        files[name] = file_entry(data, shape=shape)
        return name

    items: list[dict[str, Any]] = []
    tiles: list[list[np.ndarray]] = []
    for result in job.results:
        row = []
        for t, label in enumerate(result.labels):
            base = output_base(job.stem, result.method, t, label, ".input.npy")
            picture = overlay(job.display, result.shown[t], cmap=result.cmap, alpha=job.alpha)
            row.append(picture)
            item_files = {
                "overlay": put(f"{base}.png", encode_png(picture, compress_level=PNG_LEVEL)),
                "raw_layer": put(
                    f"{base}.layer.npy", encode_npy(result.raw[t]), result.raw[t].shape
                ),
                "raw_input": put(
                    f"{base}.input.npy", encode_npy(result.raw_input[t]), result.raw_input[t].shape
                ),
            }
            items.append(
                {
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
                    "files": item_files,
                    "notes": list(job.notes),
                }
            )
        tiles.append(row)
    if job.grid and tiles:
        columns = list(job.results[0].labels)
        if all(len(row) == len(columns) for row in tiles):
            picture = comparison_grid(tiles, [r.method for r in job.results], columns)
            name = put(
                f"{_fit(job.stem, _NAME_BUDGET - 9)}.grid.png",
                encode_png(picture, compress_level=PNG_LEVEL),
            )
            for item in items:
                item["files"]["grid"] = name
    write_record(
        job.out_dir,
        job.stem,
        job.tag,
        {
            "input": str(job.path),
            "stem": job.stem,
            "tag": job.tag,
            "fingerprint": job.key,
            "source": job.source,
            "items": items,
            "files": files,
            "skipped_methods": job.skipped_methods,
        },
    )
    return items
