"""Image files in, explanations out: decode → explain → render → write, with the stages overlapped.

The CLI commands ``saliency``, ``gradcam`` and ``explain`` are thin wrappers around
:func:`explain_files`:

* decoding and preprocessing run in a ``torch.utils.data.DataLoader`` (``num_workers``
  processes; 0 decodes in the calling process);
* the model explains one batch at a time;
* overlays are coloured with the colormap lookup table (:func:`cnnviz.render.colours.overlay`,
  no matplotlib figure) and encoded and written by a small thread pool while the next batch runs.

Nothing is lost when something goes wrong. An unreadable image is logged as ``skipped …``,
recorded under ``failures`` in the manifest, and the run goes on. Every file is written to a
temporary name and renamed, and each image's record (:mod:`cnnviz.outputs.records`) is written after
its files, so a run stopped by Ctrl-C, ``SIGTERM`` or ``SIGKILL`` leaves complete files only and
``resume=True`` explains exactly the images whose outputs are missing or invalid. Batches are
fixed chunks of the input list (a resumed chunk is recomputed whole), so a resumed run gives
results identical, bit for bit, to an uninterrupted one. With ``method="all"`` every registered
method is run and a comparison grid is drawn per image; a method that cannot explain the model
is reported and skipped.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnviz.api import announce_default_layer, cam_layer, explain
from cnnviz.capture.forward import as_model_input
from cnnviz.capture.layers import resolve_layer
from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import (
    CnnvizError,
    NotApplicableError,
    TargetError,
    UsageError,
    positive_int,
)
from cnnviz.inputs.decode import failure_record
from cnnviz.inputs.images import image_mode
from cnnviz.methods.base import Explanation
from cnnviz.methods.registry import get_method, method_names
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import unique_stems
from cnnviz.outputs.image_files import (
    ImageJob,
    MethodResult,
    per_image_results,
    write_image_outputs,
)
from cnnviz.outputs.manifest import MANIFEST_NAME, model_record
from cnnviz.outputs.records import (
    fingerprint,
    parameter_digest,
    prepare_out_dir,
    rebuild_manifest,
    record_path,
    remove_stale_temp_files,
    source_signature,
    valid_record,
)
from cnnviz.outputs.result_store import MAP_DTYPES
from cnnviz.progress import Bar, disabled, progress
from cnnviz.render.colours import colormap_lut
from cnnviz.runs.decoding import Batch, Decoded, ImageFiles, auto_workers, collate, worker_init
from cnnviz.runs.distributed import Ranks, barrier, gathered
from cnnviz.runs.settings import ALL_METHODS as ALL_METHODS
from cnnviz.runs.settings import STORES, methods_of
from cnnviz.runs.settings import ExplainSettings as ExplainSettings
from cnnviz.runs.store_run import explain_into_store

logger = logging.getLogger(__name__)

_WRITERS = 2  # threads that render, encode and write while the model runs

ImageDone = Callable[[list[dict[str, Any]]], None]
"""Called in the run's thread with an image's manifest items once its files are written."""


# -- the folder run --------------------------------------------------------------------------


def _validate(loaded: LoadedModel, settings: ExplainSettings, count: int) -> None:
    """Refuse settings that cannot work, before any folder or file is made."""
    methods = methods_of(settings)
    if settings.layer is not None and any(get_method(m).needs_layer for m in methods):
        resolve_layer(loaded.module, settings.layer)
    positive_int(settings.batch_size, "batch size")
    if settings.num_workers is not None:
        positive_int(settings.num_workers, "workers (0: decode in this process)", minimum=0)
    colormap_lut(settings.drawing.cmap)
    if settings.store not in STORES or settings.store_dtype not in MAP_DTYPES:
        raise UsageError(
            f"store {settings.store!r} with dtype {settings.store_dtype!r}: choose a store from "
            f"{', '.join(STORES)} and a dtype from {', '.join(MAP_DTYPES)}."
        )
    image_mode(loaded.preprocessing.channels)  # a model whose inputs no image file holds
    if isinstance(settings.target, list) and len(settings.target) != count:
        raise TargetError(
            f"{len(settings.target)} targets given for {count} images; give one target "
            "for all images or exactly one per image."
        )


class _Run:
    """The state of one :func:`explain_files` call."""

    def __init__(
        self,
        loaded: LoadedModel,
        paths: list[Path],
        out: Path,
        settings: ExplainSettings,
        on_image: ImageDone | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.loaded, self.paths, self.out, self.settings = loaded, paths, out, settings
        self.on_image = on_image
        self.ranks = ranks or Ranks()
        self.methods = methods_of(settings)
        self.all = settings.method.strip().lower() == ALL_METHODS
        self.tag = ALL_METHODS if self.all else self.methods[0]
        self.stems = unique_stems(paths)
        if self.all and settings.options:
            logger.warning("method options %s are ignored with --method all", settings.options)
        common = {
            "model": model_record(loaded),
            "parameters": parameter_digest(loaded.module),
            "methods": self.methods,
            "layer": settings.layer,
            "options": {} if self.all else settings.options,
            **settings.drawing.record(),
        }
        self.keys = [
            fingerprint({**common, "target": self.target_of(i)}) for i in range(len(paths))
        ]
        self.sources: list[dict[str, int]] = []
        for path in paths:
            try:
                self.sources.append(source_signature(path))
            except OSError:  # missing or unreadable: it will fail to decode, and be reported
                self.sources.append({})
        self.pending = [True] * len(paths)
        self.failures: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.written = 0

    def target_of(self, index: int) -> TargetSpec:
        target = self.settings.target
        return target[index] if isinstance(target, list) else target

    def find_complete(self) -> None:
        """Mark images with valid records as done (resume); drop stale records of the rest."""
        for i, stem in enumerate(self.stems):
            if (
                self.settings.resume
                and self.sources[i]
                and valid_record(self.out, stem, self.tag, self.keys[i], self.sources[i])
            ):
                self.pending[i] = False
            else:
                record_path(self.out, stem, self.tag).unlink(missing_ok=True)

    def fail(self, failure: dict[str, Any]) -> None:
        logger.warning("skipped %s: %s", failure["input"], failure["error"])
        self.failures.append(failure)

    def explain_batch(
        self,
        x: torch.Tensor,
        indices: list[int],
        convert: Callable[[Explanation], Any] | None = None,
    ) -> list[Any]:
        """Per method, one result per image of the batch (or ``convert`` of the explanation).

        With ``method="all"`` a method that raises :class:`NotApplicableError` (it does not apply
        to this model or layer) is skipped for the rest of the run, and the reason recorded in
        ``skipped``; any other exception propagates: it is a failure of the run, not a skip.
        """
        target = self.settings.target
        if isinstance(target, list):
            target = [target[i] for i in indices]
        options = {} if self.all else self.settings.options
        results: list[Any] = []
        first_error: NotApplicableError | None = None
        methods = [m for m in self.methods if m not in self.skipped]
        # With --method all, a bar over the methods (described by the one running) below the
        # bar over the images.
        with progress(len(methods), "methods", "method", leave=False, show=self.all) as bar:
            for method in methods:
                bar.describe(get_method(method).title)
                try:
                    explanation = explain(
                        self.loaded, x, method, layer=self.settings.layer, target=target, **options
                    )
                except NotApplicableError as e:
                    if not self.all:
                        raise
                    first_error = first_error or e
                    self.skipped[method] = " ".join(str(e).split())
                    logger.warning("method %s skipped: %s", method, self.skipped[method])
                else:
                    if convert is not None:
                        results.append(convert(explanation))
                    else:
                        results.append(per_image_results(explanation, self.settings.drawing))
                bar.update()
        if not results:  # nothing can explain this model: a settings problem, not a skip
            raise first_error or NotApplicableError(
                f"every method was skipped for this model ({', '.join(self.skipped)})"
            )
        return results

    def pending_chunks(self) -> list[list[int]]:
        """Fixed chunks of the input list, ``batch_size`` each, that hold a pending image."""
        size, n = self.settings.batch_size, len(self.paths)
        chunks = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        return [chunk for chunk in chunks if any(self.pending[i] for i in chunk)]

    def loader(self, chunks: list[list[int]]) -> torch.utils.data.DataLoader[Decoded]:
        """Decodes ``chunks`` in ``num_workers`` processes (automatic by default)."""
        workers = self.settings.num_workers
        workers = auto_workers(len(chunks)) if workers is None else min(workers, len(chunks))
        return torch.utils.data.DataLoader(
            ImageFiles(self.paths, self.loaded.preprocessing, self.tag),
            batch_sampler=chunks,
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None,
        )

    def jobs(self, batch: Batch) -> Iterator[tuple[int, ImageJob]]:
        """Explain one decoded batch; the writing job of each of its pending images."""
        if batch.tensors is None or batch.pictures is None:
            return
        per_method = self.explain_batch(batch.tensors, batch.indices)
        pictures = batch.pictures.numpy()
        for k, index in enumerate(batch.indices):
            if self.pending[index]:
                yield index, self.job(index, pictures[k], batch.notes[k], per_method, k)

    def job(
        self,
        index: int,
        picture: np.ndarray,
        notes: tuple[str, ...],
        per_method: list[list[MethodResult]],
        k: int,
    ) -> ImageJob:
        return ImageJob(
            out_dir=self.out,
            path=self.paths[index],
            stem=self.stems[index],
            tag=self.tag,
            key=self.keys[index],
            source=self.sources[index],
            picture=picture,
            notes=notes,
            results=[results[k] for results in per_method],
            drawing=self.settings.drawing,
            grid=self.all,
            skipped_methods=dict(self.skipped),
        )

    def process(self) -> None:
        """Decode, explain and write every pending image of this rank's share of the batches
        (:mod:`cnnviz.runs.distributed`); writing overlaps the next batch."""
        chunks = self.ranks.share(self.pending_chunks())
        if chunks:
            count = sum(self.pending[i] for chunk in chunks for i in chunk)
            with progress(count, self.tag, "img", leave=False) as bar:
                self._process(chunks, bar)

    def _process(self, chunks: list[list[int]], bar: Bar) -> None:
        pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="cnnviz-write")
        in_flight: deque[tuple[int, Future[list[dict[str, Any]]]]] = deque()

        def collect() -> None:
            index, future = in_flight.popleft()
            try:
                items = future.result()
                self.written += 1
            except (CnnvizError, OSError) as e:
                self.fail(failure_record(self.paths[index], e, self.tag))
            else:
                if self.on_image is not None:
                    self.on_image(items)
            bar.update(1)

        batches = iter(self.loader(chunks))
        try:
            for batch in batches:
                for index, failure in batch.failures:
                    if self.pending[index]:
                        self.fail(failure)
                        bar.update(1)
                for index, job in self.jobs(batch):
                    in_flight.append((index, pool.submit(write_image_outputs, job)))
                while len(in_flight) > 2 * self.settings.batch_size:
                    collect()
            while in_flight:
                collect()
        finally:
            del batches  # stops the decoding processes now, also on Ctrl-C
            pool.shutdown(wait=True, cancel_futures=True)

    def manifest(self, command: str) -> dict[str, Any]:
        """The run's manifest: with several ranks, rank 0 gathers every rank's failures, skips
        and counts and writes it; the others read it once it is written."""
        if self.ranks.distributed:
            shares = gathered(self.ranks, (self.failures, self.skipped, self.written))
            self.failures = [failure for share in shares for failure in share[0]]
            self.skipped = {key: text for share in shares for key, text in share[1].items()}
            self.written = sum(share[2] for share in shares)
            if not self.ranks.leader:
                barrier(self.ranks)  # rank 0 writes the manifest meanwhile
                return dict(json.loads((self.out / MANIFEST_NAME).read_text()))
        manifest = self._manifest(command)
        if self.ranks.distributed:
            barrier(self.ranks)
        return manifest

    def _manifest(self, command: str) -> dict[str, Any]:
        attempted = {
            (str(p), self.tag) for p, todo in zip(self.paths, self.pending, strict=True) if todo
        }
        return rebuild_manifest(
            self.out,
            command=command,
            model=model_record(self.loaded),
            method=self.tag,
            layer=None,
            failures=self.failures,
            attempted=attempted,
            method_order=method_names(),
            extra={
                **self.settings.drawing.record(),
                "options": {} if self.all else self.settings.options,
                "skipped_methods": self.skipped,
                "run": {
                    "inputs": len(self.paths),
                    "already_complete": len(self.paths) - sum(self.pending),
                    "written": self.written,
                    "failed": len(self.failures),
                },
            },
        )


def _check_cam_layer(loaded: LoadedModel, settings: ExplainSettings) -> None:
    """Refuse, before any folder is made, the layer of a single CAM method that cannot work
    (a ViT's patch embedding, a TorchScript program); the automatic choice is made and said."""
    if settings.method.strip().lower() == ALL_METHODS:
        return
    method = get_method(settings.method)
    if method.needs_layer:
        module = loaded.module
        example = as_model_input(module, torch.zeros(1, *loaded.preprocessing.input_shape))
        cam_layer(module, example, settings.layer, model_name=loaded.name, title=method.title)


def explain_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out_dir: Path,
    settings: ExplainSettings,
    *,
    command: str,
    progress: bool = True,
    on_image: ImageDone | None = None,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Explain every image in ``paths`` into ``out_dir``; returns the manifest as a dict.

    Per image and target: ``<stem>.<method>.<rank>-<label>.png`` (overlay),
    ``….layer.npy`` (raw map at the layer's resolution) and ``….input.npy`` (upsampled to the
    input), plus ``<stem>.grid.png`` with ``method="all"``; then ``records/<stem>.<tag>.json``.
    ``manifest.json`` lists every item in the folder and this run's failures. A bad image is a
    failure, never an exception; an interrupted run (``KeyboardInterrupt``) still writes the
    manifest of what is complete before re-raising. ``on_image`` is called with each image's
    items (those of the manifest) as soon as its files are written; the automatic CAM layer is
    chosen, and logged, before the progress bar starts. With ``ranks`` of a distributed run,
    this process explains its share only (:mod:`cnnviz.runs.distributed`); every rank must call
    it with the same arguments.

    Raises:
        MethodNotFoundError, LayerError, TargetError, NonFiniteError, ...: for settings that
            cannot work for any image (raised before or at the first batch).
        OutputError: ``out_dir`` cannot be created or written.
    """
    path_list = [Path(p) for p in paths]
    _validate(loaded, settings, len(path_list))
    _check_cam_layer(loaded, settings)
    ranks = ranks or Ranks()
    run = _Run(loaded, path_list, prepare_out_dir(out_dir), settings, on_image, ranks)
    if settings.store == "zarr":  # one chunked store instead of files per image
        with disabled(not progress or not ranks.leader):
            return explain_into_store(run, command=command)
    remove_stale_temp_files(run.out)
    run.find_complete()
    barrier(ranks)  # every rank has read the records before any rank writes one
    done = len(path_list) - sum(run.pending)
    if done:
        logger.info("%d of %d image(s) already complete; resuming", done, len(path_list))
    every_method = settings.method.strip().lower() == ALL_METHODS  # one method: checked above
    needs_layer = any(get_method(m).needs_layer for m in run.methods)
    if every_method and settings.layer is None and needs_layer and any(run.pending):
        announce_default_layer(loaded)
    try:
        with disabled(not progress or not ranks.leader):
            run.process()
    except KeyboardInterrupt:
        if ranks.distributed:  # the other ranks may be gone: the next run rebuilds it
            raise
        try:
            run.manifest(command)
        except Exception:  # the interruption is what matters; resume rebuilds the manifest
            logger.debug("could not write the manifest after the interruption", exc_info=True)
        raise
    return run.manifest(command)
