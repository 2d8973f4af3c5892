"""A folder run into a chunked result store (``--store zarr``, :mod:`cnnviz.outputs.result_store`).

:func:`cnnviz.runs.explain.explain_files` hands its run here when ``settings.store == "zarr"``:

1. rank 0 probes each method on one zero input, which gives the maps' shapes, then creates the
   store (or, with ``resume``, opens it and refuses one written with other settings) and finds
   the chunks not fully done; every rank receives that list (:func:`gathered`);
2. each rank decodes and explains its share of those chunks (batch ``j`` to rank ``j mod N``) and
   writes each chunk's arrays, status last;
3. rank 0 gathers the failures and writes ``results.csv`` (:func:`cnnviz.outputs.results`)
   and ``manifest.json``, which describes the store instead of listing per-image files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cnnviz.api import explain
from cnnviz.errors import CnnvizError, NonFiniteError, NotApplicableError, OutputError
from cnnviz.inputs.decode import failure_record
from cnnviz.methods.base import Explanation
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import to_json_text
from cnnviz.outputs.manifest import MANIFEST_NAME, Manifest, model_record, write_manifest
from cnnviz.outputs.records import fingerprint, parameter_digest
from cnnviz.outputs.result_store import (
    DONE,
    PENDING,
    STORE_NAME,
    TABLE_NAME,
    ChunkResult,
    MapShapes,
    ResultStore,
    file_sha256,
)
from cnnviz.outputs.results import open_results, write_table
from cnnviz.progress import progress
from cnnviz.runs.decoding import Batch, Decoded
from cnnviz.runs.distributed import Ranks, barrier, gathered
from cnnviz.runs.settings import ExplainSettings

logger = logging.getLogger(__name__)


class FolderRun(Protocol):
    """What this module needs of :class:`cnnviz.runs.explain`'s run of a folder."""

    @property
    def loaded(self) -> LoadedModel: ...
    @property
    def paths(self) -> list[Path]: ...
    @property
    def out(self) -> Path: ...
    @property
    def settings(self) -> ExplainSettings: ...
    @property
    def methods(self) -> list[str]: ...
    @property
    def ranks(self) -> Ranks: ...
    @property
    def all(self) -> bool: ...
    @property
    def tag(self) -> str: ...

    pending: list[bool]
    failures: list[dict[str, Any]]
    skipped: dict[str, str]
    written: int

    def fail(self, failure: dict[str, Any]) -> None: ...
    def explain_batch(
        self, x: torch.Tensor, indices: list[int], convert: Callable[[Explanation], Any] | None
    ) -> list[Any]: ...
    def pending_chunks(self) -> list[list[int]]: ...
    def loader(self, chunks: list[list[int]]) -> torch.utils.data.DataLoader[Decoded]: ...


def store_key(run: FolderRun) -> str:
    """The fingerprint of everything that determines the store's content."""
    settings = run.settings
    return fingerprint(
        {
            "model": model_record(run.loaded),
            "parameters": parameter_digest(run.loaded.module),
            "methods": run.methods,
            "layer": settings.layer,
            "options": {} if run.all else settings.options,
            "target": settings.target,
            "chunk": settings.batch_size,
            "dtype": settings.store_dtype,
            "input_maps": settings.store_input_maps,
            "inputs": [str(p) for p in run.paths],
        }
    )


def probe_shapes(run: FolderRun) -> tuple[dict[str, MapShapes], dict[str, str | None]]:
    """Each method's map shapes and layer, from one zero input (methods that do not apply to
    the model are skipped with ``method="all"``, as in the run)."""
    settings, loaded = run.settings, run.loaded
    target = settings.target[0] if isinstance(settings.target, list) else settings.target
    x = torch.zeros(1, *loaded.preprocessing.input_shape)
    shapes: dict[str, MapShapes] = {}
    layers: dict[str, str | None] = {}
    for method in run.methods:
        options = {} if run.all else settings.options
        try:
            e = explain(loaded, x, method, layer=settings.layer, target=target, **options)
        except NotApplicableError as error:
            if not run.all:
                raise
            run.skipped[method] = " ".join(str(error).split())
            logger.warning("method %s skipped: %s", method, run.skipped[method])
            continue
        maps, upsampled = e.maps, e.upsampled()
        shapes[method] = MapShapes(
            int(maps.shape[1]),
            (int(maps.shape[2]), int(maps.shape[3])),
            (int(upsampled.shape[2]), int(upsampled.shape[3])),
        )
        layers[method] = e.layer
    if not shapes:
        skipped = ", ".join(run.skipped)
        raise NotApplicableError(f"every method was skipped for this model ({skipped})")
    return shapes, layers


def _prepare(run: FolderRun) -> tuple[list[bool], dict[str, str]]:
    """Rank 0: create the store or, to resume, check it; returns which images are pending."""
    key, settings = store_key(run), run.settings
    store = ResultStore.open(run.out) if settings.resume else None
    if store is not None and store.attrs.get("fingerprint") != key:
        raise OutputError(
            f"{run.out / STORE_NAME} was written with other settings (model, weights, "
            "method, layer, target, inputs, batch size or --store-dtype/--store-input-maps)"
            "; resume with the settings it was written with, or drop --resume to replace it "
            "(or choose another --out)."
        )
    for name in (MANIFEST_NAME, TABLE_NAME):  # they describe an earlier run: rewritten at the end
        (run.out / name).unlink(missing_ok=True)
    if store is not None:
        for left in (run.out / STORE_NAME).rglob("*.partial"):  # zarr's, of a killed run
            left.unlink(missing_ok=True)
        status = store.status()
        for i in np.flatnonzero(status == DONE):  # an input changed since: explain it again
            if not np.array_equal(store.group["sha256"][int(i)], file_sha256(run.paths[int(i)])):
                status[i] = PENDING
        size = settings.batch_size
        pending = [True] * len(run.paths)
        for start in range(0, len(run.paths), size):
            done = bool((status[start : start + size] == DONE).all())
            pending[start : start + size] = [not done] * len(status[start : start + size])
        return pending, dict(store.attrs.get("skipped_methods", {}))
    shapes, layers = probe_shapes(run)
    attrs = {
        "fingerprint": key,
        "inputs": [str(p) for p in run.paths],
        "class_names": list(run.loaded.class_names),
        "model": model_record(run.loaded),
        "layers": layers,
        "method": run.tag,
        "options": {} if run.all else settings.options,
        "target": repr(settings.target),
        "skipped_methods": dict(run.skipped),
        "complete": False,
    }
    ResultStore.create(
        run.out,
        count=len(run.paths),
        chunk=settings.batch_size,
        shapes=shapes,
        dtype=settings.store_dtype,
        input_maps=settings.store_input_maps,
        attrs=json.loads(to_json_text(attrs)),
    )
    return [True] * len(run.paths), dict(run.skipped)


def chunk_result(explanation: Explanation, input_maps: bool) -> tuple[str, ChunkResult]:
    """The values one chunk stores of a batch ``explanation`` (NumPy, on the CPU)."""
    maps = explanation.maps.detach().float().cpu().numpy()
    upsampled = explanation.upsampled() if input_maps else explanation.maps[:, :, :0, :0]
    indices, probabilities = explanation.targets.indices, explanation.probabilities
    shape = maps.shape[:2]
    return explanation.method, ChunkResult(
        layer=maps,
        input=upsampled.detach().float().cpu().numpy(),
        targets=np.full(shape, -1, np.int64) if indices is None else indices.cpu().numpy(),
        scores=explanation.scores.detach().float().cpu().numpy().astype(np.float64),
        probabilities=np.full(shape, np.nan)
        if probabilities is None
        else probabilities.detach().cpu().numpy().astype(np.float64),
    )


def _write(run: FolderRun, store: ResultStore, chunk: list[int], batch: Batch) -> None:
    """Explain one decoded chunk and write it into the store (failed images: status failed)."""
    for _, failure in batch.failures:
        run.fail(failure)
    results: dict[str, ChunkResult] = {}
    decoded = list(batch.indices)
    if batch.tensors is not None:
        maps = run.settings.store_input_maps
        for method, result in run.explain_batch(
            batch.tensors, batch.indices, lambda e: chunk_result(e, maps)
        ):
            results[method] = result
        finite = np.ones(len(decoded), bool)
        for result in results.values():
            finite &= np.isfinite(result.layer).all(axis=(1, 2, 3))
            finite &= np.isfinite(result.input).all(axis=(1, 2, 3))
        for k in np.flatnonzero(~finite):
            path = run.paths[decoded[k]]
            problem = NonFiniteError(
                f"{path}: a map contains NaN or infinite values; its maps are stored as NaN. "
                "Check the model's weights."
            )
            run.fail(failure_record(path, problem, run.tag))
        keep = np.flatnonzero(finite)
        decoded = [decoded[k] for k in keep]
        results = {
            m: ChunkResult(*(getattr(r, f)[keep] for f in ChunkResult.__dataclass_fields__))
            for m, r in results.items()
        }
    sha = np.stack([file_sha256(run.paths[i]) for i in chunk])
    store.write_chunk(chunk[0], chunk[-1] + 1, decoded, results, sha)
    run.written += len(decoded)


def explain_into_store(run: FolderRun, *, command: str) -> dict[str, Any]:
    """Explain the pending chunks of ``run`` into its result store; returns the manifest."""
    ranks = run.ranks
    prepared: tuple[list[bool], dict[str, str]] | str = "not prepared"
    if ranks.leader:
        try:
            prepared = _prepare(run)
        except CnnvizError as e:
            prepared = str(e)
            gathered(ranks, prepared)  # the other ranks stop too
            raise
    leader = gathered(ranks, prepared)[0]
    if isinstance(leader, str):
        raise OutputError(f"rank 0 could not prepare the result store: {leader}")
    run.pending[:], skipped = leader
    run.skipped.update(skipped)
    done = len(run.paths) - sum(run.pending)
    if done:
        logger.info("%d of %d image(s) already complete; resuming", done, len(run.paths))
    store = ResultStore.open(run.out)
    if store is None:
        raise OutputError(f"{run.out / STORE_NAME} disappeared during the run; run it again.")
    chunks = ranks.share(run.pending_chunks())
    if chunks:
        with progress(sum(len(c) for c in chunks), run.tag, "img", leave=False) as bar:
            batches = iter(run.loader(chunks))
            try:
                for chunk, batch in zip(chunks, batches, strict=True):
                    _write(run, store, chunk, batch)
                    bar.update(len(chunk))
            finally:
                del batches  # stops the decoding processes now, also on Ctrl-C
    return _finish(run, store, command, done)


def _finish(run: FolderRun, store: ResultStore, command: str, done: int) -> dict[str, Any]:
    """Rank 0 gathers the ranks' failures and writes ``results.csv`` and ``manifest.json``."""
    ranks = run.ranks
    shares = gathered(ranks, (run.failures, run.skipped, run.written))
    failures = [failure for share in shares for failure in share[0]]
    skipped = {key: text for share in shares for key, text in share[1].items()}
    written = sum(share[2] for share in shares)
    if not ranks.leader:
        barrier(ranks)  # rank 0 writes the table and the manifest meanwhile
        return dict(json.loads((run.out / MANIFEST_NAME).read_text()))
    results = open_results(run.out)
    store.update_attrs({"complete": bool(results.complete.all()), "skipped_methods": skipped})
    write_table(results, run.out / TABLE_NAME)
    manifest = Manifest(
        command=command,
        model=model_record(run.loaded),
        method=run.tag,
        layer=run.settings.layer,
        failures=tuple(failures),
        extra={
            "store": results.summary(),
            "skipped_methods": skipped,
            "run": {
                "inputs": len(run.paths),
                "already_complete": done,
                "written": written,
                "failed": len(failures),
            },
        },
    )
    write_manifest(run.out, manifest)
    barrier(ranks)
    return manifest.to_dict()
