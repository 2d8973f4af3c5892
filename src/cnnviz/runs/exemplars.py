"""Dataset exemplars of a folder of images: one bounded-memory, resumable pass.

The files are decoded in batches (a file that fails is recorded and skipped); each batch's layer
activations update an :class:`~cnnviz.featurevis.exemplar_collector.ExemplarCollector`, and after
every batch ``OUT/exemplars-state.json`` is rewritten atomically: a fingerprint of the settings
(layer, channels, k, model name, preprocessing, a digest of the weights), the collector's
state, each processed file with its size and modification time, and the failures. Memory
holds only that state and the current batch. ``resume=True`` reads a matching state and
processes only the files it lacks (one that does not match is logged and ignored); the result
equals one uninterrupted pass. At the end the peak images are decoded again for their crops,
and ``exemplars.json``, ``exemplars.png``, ``channel-XXXX/NN.png`` and ``manifest.json`` are
written. Several ranks (:mod:`cnnviz.runs.distributed`) share the batches, and rank 0 merges
their collectors (:func:`exemplar_files`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnviz.capture.forward import model_device
from cnnviz.capture.layers import resolve_layer
from cnnviz.errors import ArgumentError, ImageLoadError, positive_int
from cnnviz.featurevis.checks import layer_outputs
from cnnviz.featurevis.exemplar_collector import ExemplarCollector
from cnnviz.featurevis.exemplars import (
    Exemplars,
    check_channels,
    crop_name,
    exemplars_of,
    layer_field,
)
from cnnviz.inputs.decode import decode_input, failure_record
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import atomic_write_bytes, to_json_text
from cnnviz.outputs.manifest import Manifest, model_record, write_manifest
from cnnviz.outputs.records import fingerprint, parameter_digest, source_signature
from cnnviz.progress import disabled, track
from cnnviz.runs.distributed import Ranks, barrier, gathered, in_order, leader_writes

logger = logging.getLogger(__name__)

STATE_NAME = "exemplars-state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class ExemplarSettings:
    """What an exemplar run collects: ``layer``'s ``channels`` (``None``: all), the top ``k``,
    ``batch_size`` images per forward pass, and whether to ``resume`` from a saved state."""

    layer: str
    channels: tuple[int, ...] | None = None
    k: int = 9
    batch_size: int = 32
    resume: bool = False


@dataclass
class _Progress:
    """The run's state between batches (what ``exemplars-state.json`` holds)."""

    sources: list[str]
    processed: dict[str, dict[str, int]]
    failures: list[dict[str, Any]]
    collector: ExemplarCollector | None = None
    channels: tuple[int, ...] = ()

    def to_dict(self, key: str) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": key,
            "sources": self.sources,
            "processed": self.processed,
            "failures": self.failures,
            "channels": list(self.channels),
            "collector": self.collector.state() if self.collector is not None else None,
        }


def _fresh(paths: Sequence[Path]) -> _Progress:
    return _Progress(sources=[str(p) for p in paths], processed={}, failures=[])


def _resumed(out: Path, key: str, paths: Sequence[Path]) -> _Progress:
    """The saved state in ``out`` if it matches ``key`` and the files, else a fresh one."""
    path = out / STATE_NAME
    if not path.is_file():
        logger.info("No %s in %s to resume from; starting afresh.", STATE_NAME, out)
        return _fresh(paths)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION or data.get("fingerprint") != key:
            why = "the layer, channels, k or the model's weights differ"
            raise ValueError(why)
        wanted = {str(p) for p in paths}
        for name, signature in data["processed"].items():
            if name not in wanted:
                raise ValueError(f"{name} was processed but is not among the inputs now")
            if source_signature(Path(name)) != signature:
                raise ValueError(f"{name} changed since it was processed")
        state = data["collector"]
        progress = _Progress(
            sources=list(data["sources"]),
            processed=dict(data["processed"]),
            failures=[],  # the files that failed are tried again
            collector=ExemplarCollector.from_state(state) if state is not None else None,
            channels=tuple(int(c) for c in data["channels"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("Not resuming from %s (%s); starting afresh.", path, e)
        return _fresh(paths)
    known = set(progress.sources)
    progress.sources.extend(str(p) for p in paths if str(p) not in known)
    logger.info("Resuming: %d of %d files done.", len(progress.processed), len(paths))
    return progress


def _decode_batch(
    names: Sequence[str], loaded: LoadedModel, run: _Progress
) -> tuple[list[int], list[torch.Tensor]]:
    """The ids and tensors of the files that decode; the others are recorded as failures."""
    ids, tensors = [], []
    index = {name: i for i, name in enumerate(run.sources)}
    for name in names:
        try:
            _, tensor, _ = decode_input(Path(name), loaded.preprocessing)
            signature = source_signature(Path(name))
        except Exception as e:  # a bad file is recorded and skipped, never raised
            record = failure_record(Path(name), e, "exemplars")
            logger.warning("skipped %s", record["error"])
            run.failures.append(record)
            continue
        ids.append(index[name])
        tensors.append(tensor)
        run.processed[name] = signature
    return ids, tensors


def exemplar_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out: Path,
    settings: ExemplarSettings,
    *,
    ranks: Ranks | None = None,
) -> tuple[Exemplars, list[dict[str, Any]]]:
    """Collect the exemplars of ``paths`` into ``out`` (see the module docstring); returns them
    and the failures (one record per file that could not be read).

    With ``ranks`` of a distributed run (:mod:`cnnviz.runs.distributed`) this process reads its
    share of the batches (batch ``j`` to rank ``j mod N``, the batches of one process) into its
    own collector, saving its own state after each batch (each saved state is whole; the last
    one saved is what ``resume`` finds). Rank 0 merges the collectors into the overall top
    ``k`` (:meth:`ExemplarCollector.merged`: the lists one process makes), saves the merged
    state and writes the outputs; the other ranks wait and return the exemplars without crops.
    Every rank must call it with the same arguments.

    Raises:
        LayerError: an unknown layer. ArgumentError: a channel out of range, no paths, ``k`` or
        ``batch_size`` below 1. ImageLoadError: not one file could be read.
    """
    positive_int(settings.k, "k")
    positive_int(settings.batch_size, "batch_size")
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        raise ArgumentError("no images given; name image files or folders")
    module = loaded.module
    name = resolve_layer(module, settings.layer)
    key = fingerprint(
        {
            "layer": name,
            "channels": list(settings.channels) if settings.channels is not None else None,
            "k": settings.k,
            "model": loaded.name,
            "preprocessing": loaded.preprocessing.to_dict(),
            "parameters": parameter_digest(module),
        }
    )
    ranks = ranks or Ranks()
    run = _resumed(out, key, paths) if settings.resume else _fresh(paths)
    barrier(ranks)  # every rank has read the state before any rank saves one
    pending = [str(p) for p in paths if str(p) not in run.processed]
    if not ranks.leader:  # what was resumed counts once: in rank 0's collector
        run = _Progress(sources=run.sources, processed={}, failures=[])
    size = settings.batch_size
    spans = ranks.share([pending[i : i + size] for i in range(0, len(pending), size)])
    device = model_device(module)
    with disabled(not ranks.leader):
        _collect(loaded, name, spans, run, settings, (out / STATE_NAME, key))
    if ranks.distributed:
        _gather(ranks, run)
    if run.collector is None:
        raise ImageLoadError(f"none of the {len(paths)} image file(s) could be read")
    prep = loaded.preprocessing
    probe = torch.zeros((1, prep.channels, *prep.input_size), device=device)
    acts = layer_outputs(module, name, probe)
    field = layer_field(module, name, acts, probe)

    def pictures_of(ids: list[int]) -> dict[int, np.ndarray]:
        return {i: decode_input(Path(run.sources[i]), prep)[0] for i in ids}

    collector = run.collector

    def result(pictures: Callable[[list[int]], dict[int, np.ndarray]] | None) -> Exemplars:
        return exemplars_of(
            collector,
            layer=name,
            sources=run.sources,
            channels=run.channels,
            field=field,
            pictures_of=pictures,
        )

    def write() -> Exemplars:
        if ranks.distributed:  # the merged state: a later resume finds every image done
            atomic_write_bytes(out / STATE_NAME, to_json_text(run.to_dict(key)).encode())
        found = result(pictures_of)
        _write(loaded, out, found, run, settings.k, field.as_dict())
        return found

    return leader_writes(ranks, write, lambda: result(None)), run.failures


def _collect(
    loaded: LoadedModel,
    name: str,
    spans: list[list[str]],
    run: _Progress,
    settings: ExemplarSettings,
    state: tuple[Path, str],
) -> None:
    """Read ``spans`` batch by batch into ``run``'s collector, saving the state after each."""
    module, channels = loaded.module, settings.channels
    device = model_device(module)
    for span in track(spans, f"exemplars of {name}", "batch", leave=True):
        ids, tensors = _decode_batch(span, loaded, run)
        if ids:
            acts = layer_outputs(module, name, torch.stack(tensors).to(device))
            if run.collector is None:
                run.channels = check_channels(channels, acts.shape[1], name, acts.dim() == 4)
                run.collector = ExemplarCollector(len(run.channels), settings.k)
            run.collector.update(acts[:, list(run.channels)], ids)
        atomic_write_bytes(state[0], to_json_text(run.to_dict(state[1])).encode())


def _gather(ranks: Ranks, run: _Progress) -> None:
    """Every rank's collector merged into ``run`` (on every rank), with the processed files and
    the failures in input order (those of one process)."""
    index = {name: i for i, name in enumerate(run.sources)}
    shares = gathered(ranks, (run.collector, run.channels, run.processed))
    collectors = [collector for collector, _, _ in shares if collector is not None]
    run.collector = ExemplarCollector.merged(collectors) if collectors else None
    run.channels = next((channels for _, channels, _ in shares if channels), ())
    run.processed = {name: signature for _, _, done in shares for name, signature in done.items()}
    run.failures = in_order(ranks, [(index[f["input"]], f) for f in run.failures])


def _write(
    loaded: LoadedModel,
    out: Path,
    result: Exemplars,
    run: _Progress,
    k: int,
    field: dict[str, Any],
) -> None:
    """``exemplars.json``, the pictures and ``manifest.json``."""
    result.save(out)
    items = [
        {
            "channel": c,
            "best": result.best(c),
            "files": {
                f"crop-{j:02d}": crop_name(c, j)
                for j, source in enumerate(result.peak_sources[result.row(c)])
                if source >= 0
            },
        }
        for c in result.channels
    ]
    manifest = Manifest(
        command="exemplars",
        model=model_record(loaded),
        layer=result.layer,
        items=tuple(items),
        failures=tuple(run.failures),
        extra={
            "k": k,
            "images": len(run.processed),
            "receptive_field": field,
            "run": {"failed": len(run.failures)},
        },
    )
    write_manifest(out, manifest)
