"""Completion records of a folder run: what ``--resume`` trusts, and the manifest built from them.

A folder run (:func:`cnnviz.runs.explain.explain_files`) writes, for each input image, its overlays
and raw maps and then, **last**, a record ``records/<stem>.<tag>.json`` listing every file with
its size and SHA-256. A record therefore exists only once the image's outputs are complete, and
``--resume`` trusts an image only when its record parses, was made with the same settings
(:func:`fingerprint`) from the same input file (:func:`source_signature`), and every file it
lists is still there, unchanged, and decodes (a PNG opens, a ``.npy`` loads with its recorded
shape and holds finite values).

The manifest is rebuilt from all records in the folder under an exclusive ``flock`` on
``.manifest.lock``, so two runs writing into the same folder never lose each other's items.
Every file is written to a unique temporary name and renamed (:mod:`cnnviz.outputs`); temporary
files left behind by a killed process are removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnviz.errors import OutputError
from cnnviz.outputs.files import atomic_write_bytes, file_lock, to_json_text
from cnnviz.outputs.manifest import MANIFEST_NAME, Manifest, write_manifest

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

RECORDS_DIR = "records"
RECORD_KIND = "cnnviz.record"
RECORD_VERSION = 1
LOCK_NAME = ".manifest.lock"
# outputs.atomic_write_bytes names its temporary files ".<name>.<pid>.<8 hex>.tmp".
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of the settings that determine an image's outputs."""
    text = json.dumps(settings, sort_keys=True, default=repr, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parameter_digest(module: nn.Module) -> str:
    """A cheap fingerprint of a module's weights: every tensor's name, shape, sum and norm.

    ``--resume`` uses it so that outputs made with other weights (a user module changed in
    place, a checkpoint file overwritten) are never taken for complete.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            if tensor.is_floating_point() and tensor.numel():
                values = torch.stack(
                    [
                        torch.sum(tensor, dtype=torch.float64),
                        torch.linalg.vector_norm(tensor, dtype=torch.float64),
                    ]
                )
                digest.update(values.cpu().numpy().tobytes())
            elif tensor.numel():
                digest.update(str(int(tensor.sum())).encode())
    return digest.hexdigest()[:16]


def source_signature(path: Path) -> dict[str, int]:
    """Size and modification time of an input file: a changed file is explained again."""
    stat = Path(path).stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_entry(data: bytes, *, shape: Sequence[int] | None = None) -> dict[str, Any]:
    """What a record says about one written file: its size, SHA-256 and (``.npy``) shape."""
    entry: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if shape is not None:
        entry["shape"] = list(shape)
    return entry


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and check that it is a writable folder."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise OutputError(f"{out} exists and is not a folder; give a folder for --out.") from e
    except OSError as e:
        raise OutputError(
            f"Cannot create the output folder {out} ({e.strerror or e}); choose a writable --out."
        ) from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder {out} is not writable; choose another --out.")
    return out


def record_path(out_dir: Path, stem: str, tag: str) -> Path:
    """Where the record of image ``stem`` for method ``tag`` lives."""
    return Path(out_dir) / RECORDS_DIR / f"{stem}.{tag}.json"


def write_record(out_dir: Path, stem: str, tag: str, record: Mapping[str, Any]) -> None:
    """Write an image's record atomically; call it after every file it lists is written."""
    body = {"kind": RECORD_KIND, "version": RECORD_VERSION, **record}
    data = (to_json_text(body) + "\n").encode("utf-8")
    atomic_write_bytes(record_path(out_dir, stem, tag), data, durable=False)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _is_record(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("kind") == RECORD_KIND
        and data.get("version") == RECORD_VERSION
        and isinstance(data.get("items"), list)
        and isinstance(data.get("files"), dict)
    )


def file_problem(out_dir: Path, name: str, entry: Mapping[str, Any]) -> str | None:
    """Why the file ``name`` no longer matches its record entry (``None`` when it does)."""
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        return f"{name!r} is not a plain file name"
    path = Path(out_dir) / name
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"{name}: {e.strerror or e}"
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return f"{name} changed since it was written"
    try:
        if name.endswith(".png"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                image.load()
        elif name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if list(array.shape) != entry.get("shape"):
                return f"{name} has shape {array.shape}, expected {entry.get('shape')}"
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                return f"{name} holds NaN or infinite values"
    except Exception as e:  # any decoder error means "not a valid output"
        return f"{name} does not decode ({type(e).__name__})"
    return None


def valid_record(
    out_dir: Path, stem: str, tag: str, key: str, source: Mapping[str, int]
) -> dict[str, Any] | None:
    """The record of ``stem`` if it proves the image's outputs complete and current, else None."""
    path = record_path(out_dir, stem, tag)
    if not path.exists():
        return None
    data = _read_json(path)
    if not _is_record(data):
        logger.info("%s: unreadable record, explaining again", stem)
        return None
    if data.get("fingerprint") != key or data.get("source") != dict(source):
        logger.info("%s: settings or input changed since the last run, explaining again", stem)
        return None
    for name, entry in data["files"].items():
        problem = file_problem(out_dir, name, entry if isinstance(entry, dict) else {})
        if problem:
            logger.info("%s: %s; explaining again", stem, problem)
            return None
    result: dict[str, Any] = data
    return result


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every well-formed record in ``out_dir`` (files are not re-verified here)."""
    folder = Path(out_dir) / RECORDS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        data = _read_json(path)
        if _is_record(data):
            found.append(data)
    return found


def folder_lock(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``out_dir``: :func:`~cnnviz.outputs.files.file_lock` on its
    ``.manifest.lock``."""
    return file_lock(Path(out_dir) / LOCK_NAME)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete temporary files of processes that no longer run (e.g. killed); returns how many."""
    removed = 0
    for folder in (Path(out_dir), Path(out_dir) / RECORDS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP_NAME.match(path.name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


def _item_order(method_order: Sequence[str]) -> Any:
    rank = {name: i for i, name in enumerate(method_order)}

    def key(item: Mapping[str, Any]) -> tuple[Any, ...]:
        method = str(item.get("method"))
        return (
            str(item.get("input")),
            str(item.get("stem")),
            rank.get(method, len(rank)),
            method,
            int(item.get("target_rank", 0)),
        )

    return key


def _failure_key(failure: Mapping[str, Any]) -> tuple[str, str]:
    return str(failure.get("input")), str(failure.get("method"))


def rebuild_manifest(
    out_dir: Path,
    *,
    command: str,
    model: dict[str, Any],
    method: str,
    layer: str | None,
    failures: Iterable[Mapping[str, Any]],
    attempted: Iterable[tuple[str, str]],
    method_order: Sequence[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write ``manifest.json`` from every record in ``out_dir``, under the folder lock.

    Items come from all records (this run's and any other run's into the same folder), sorted
    by input, method and target rank. Failures are this run's, plus earlier ones for inputs that
    this run did not try and that have no record now. ``extra["skipped_methods"]`` merges the
    methods that records say were skipped. Returns the manifest as a dict.
    """
    out_dir = Path(out_dir)
    with folder_lock(out_dir):
        records = read_records(out_dir)
        items = sorted(
            (item for record in records for item in record["items"]), key=_item_order(method_order)
        )
        done = {(str(r.get("input")), str(r.get("tag"))) for r in records}
        tried = set(attempted)
        previous = _read_json(out_dir / MANIFEST_NAME)
        earlier = previous.get("failures", []) if isinstance(previous, dict) else []
        merged = {
            _failure_key(f): dict(f)
            for f in earlier
            if isinstance(f, dict) and _failure_key(f) not in tried
        }
        merged.update({_failure_key(f): dict(f) for f in failures})
        kept = [f for key, f in sorted(merged.items()) if key not in done]
        skipped: dict[str, str] = {}
        for record in records:
            skipped.update(record.get("skipped_methods") or {})
        skipped.update(extra.get("skipped_methods") or {})
        if layer is None:  # the one layer this method's items share, if they share one
            layers = {item.get("layer") for item in items if item.get("method") == method}
            layer = layers.pop() if len(layers) == 1 else None
        manifest = Manifest(
            command=command,
            model=model,
            method=method,
            layer=layer,
            items=tuple(items),
            failures=tuple(kept),
            extra={**extra, "skipped_methods": dict(sorted(skipped.items()))},
        )
        write_manifest(out_dir, manifest)
    return manifest.to_dict()
