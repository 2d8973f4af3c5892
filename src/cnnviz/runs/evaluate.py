"""``cnnviz evaluate``: every metric of :mod:`cnnviz.metrics` for every method on a folder.

For each readable image the model's predicted class is explained by each method and scored:
deletion and insertion AUC, Average Drop / Increase in Confidence, ROAD (MoRF and LeRF means),
the pointing games when ground truth is given, and — on the first ``sanity_images`` images —
the similarity to the original map after full cascading randomisation. Results are one row per
image × method × metric (``results.csv``, ``results.json``) and means with seeded 95 % bootstrap
intervals, each method compared image by image with the ``random-map`` baseline
(``summary.csv``, :func:`cnnviz.metrics.statistics.compare_with_baseline`); plots
(``curves.png``, ``road.png``, ``sanity.png``, ``sanity-maps.png``) and a self-contained
``index.html`` come with them, written by :mod:`cnnviz.runs.evaluate_outputs`. Several ranks
(:mod:`cnnviz.runs.distributed`) share the images; rank 0 gathers and writes
(:func:`evaluate_files`).

An unreadable image is reported (stderr and the manifest's failures) and skipped; so is an image
smaller than ``min_side`` pixels on a side (upsampled to the model input it is a flat picture on
which the metrics mean nothing). An undefined value (e.g. the energy game of a map without
positive mass) is written as ``null`` with a note and left out of the means; no NaN is written.

Besides registry methods, three reference maps can be scored
(:func:`cnnviz.metrics.localisation.reference_map`):
``random-map`` (uniform noise per pixel), ``coarse-random-map`` (uniform noise on a grid 1/16 of
the image side, upsampled bilinearly like a CAM) and ``centre-map`` (peaked at the centre).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from cnnviz.api import announce_default_layer, explain
from cnnviz.errors import CnnvizError, ImageLoadError
from cnnviz.inputs.decode import LoadedImage, load_input
from cnnviz.inputs.images import image_mode
from cnnviz.methods.postprocess import Display, percentile_normalize
from cnnviz.methods.registry import get_method
from cnnviz.metrics import faithfulness as fa
from cnnviz.metrics import localisation as lo
from cnnviz.metrics.faithfulness import class_targets
from cnnviz.metrics.localisation import REFERENCE_MAPS, load_ground_truth, lookup, reference_map
from cnnviz.metrics.road import road as road_metric
from cnnviz.metrics.sanity import SIMILARITIES
from cnnviz.metrics.statistics import BASELINE, METRIC_GROUPS, summarize_metrics
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import unique_stems
from cnnviz.outputs.manifest import Manifest, model_record, read_manifest, write_manifest
from cnnviz.progress import Bar, disabled, status
from cnnviz.progress import progress as progress_bar
from cnnviz.render.colours import compose
from cnnviz.render.drawing import legend_text
from cnnviz.render.html import png_data_uri
from cnnviz.runs.distributed import Ranks, in_order, leader_writes
from cnnviz.runs.evaluate_outputs import EvaluationOutputs, write_results
from cnnviz.runs.randomization import parameter_randomization

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateSettings:
    """What ``cnnviz evaluate`` measures (defaults follow the papers)."""

    methods: tuple[str, ...] = ("gradcam", "saliency", BASELINE)
    metrics: tuple[str, ...] = tuple(METRIC_GROUPS)
    layer: str | None = None
    steps: int = 100
    baseline: str = "zeros"
    batch_size: int = 64
    tolerance: float = 15.0
    road_percentages: tuple[float, ...] = (10.0, 30.0, 50.0, 70.0, 90.0)
    sanity_images: int = 2
    bootstrap: int = 2000
    seed: int = 0
    min_side: int = 8
    cmap: str = "jet"
    thumbnails: int = 12


# -- one image -------------------------------------------------------------------------------


def _row(base: dict[str, Any], metric: str, value: float, note: str = "") -> dict[str, Any]:
    """One value's row; a non-finite one becomes ``None`` with a note."""
    finite = math.isfinite(value)
    return {
        **base,
        "metric": metric,
        "value": float(value) if finite else None,
        "note": note if finite or note else "undefined",
    }


class _SanityInput(NamedTuple):
    tensor: torch.Tensor  # (C, H, W)
    path: Path
    target: int


@dataclass
class _Image:
    """What one input adds to the run, made by the rank whose share it is (and gathered)."""

    index: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # method → kind →
    road: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] | None = None  # its manifest item; None if skipped
    thumb: dict[str, Any] | None = None  # its row of the page's thumbnail table
    sanity: _SanityInput | None = None


@dataclass
class _Run:
    """Everything one ``evaluate_files`` call accumulates (all images, in input order)."""

    loaded: LoadedModel
    settings: EvaluateSettings
    methods: list[str]
    truth: dict[str, Any] | None
    root: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    road: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    thumbs: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    sanity_inputs: list[_SanityInput] = field(default_factory=list)
    sanity: dict[str, Any] = field(default_factory=dict)
    bar: Bar = field(default_factory=Bar)  # the bar over the images, noted with each step
    made: dict[str, int] = field(default_factory=lambda: {"thumbs": 0, "sanity": 0})  # by me

    def add(self, image: _Image) -> None:
        """Take in the next image's values (the order of the images is the order of the rows,
        curves and failures; the first images evaluated give the thumbnails and sanity check)."""
        self.rows += image.rows
        for method, kinds in image.curves.items():
            for kind, probabilities in kinds.items():
                self.curves.setdefault(method, {}).setdefault(kind, []).append(probabilities)
        for method, road in image.road.items():
            self.road.setdefault(method, []).append(road)
        self.failures += image.failures
        if image.record is not None:
            self.items.append(image.record)
        if image.thumb is not None and len(self.thumbs) < self.settings.thumbnails:
            self.thumbs.append(image.thumb)
        if image.sanity is not None and len(self.sanity_inputs) < self.settings.sanity_images:
            self.sanity_inputs.append(image.sanity)


def _method_maps(
    run: _Run, x: torch.Tensor, method: str, index: int, base: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(1, H, W)`` relevance maps of one method (or reference map) on ``x``, and the row base
    with the layer it explained."""
    if method in REFERENCE_MAPS:
        size = (x.shape[-2], x.shape[-1])
        return reference_map(method, size, index, run.settings.seed)[None], base
    layer = run.settings.layer if get_method(method).needs_layer else None
    e = explain(run.loaded, x, method, layer=layer, target=[base["target_index"]])
    return fa.relevance_maps(e), {**base, "layer": e.layer}


Values = list[tuple[str, float, str]]
"""``(metric, value, note)`` rows of one method on one image."""


def _faithfulness(
    run: _Run, x: torch.Tensor, maps: torch.Tensor, target: int, note: str
) -> tuple[Values, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Deletion, insertion, confidence and ROAD values (as selected), with their curves."""
    settings, model = run.settings, run.loaded.module
    wanted = set(settings.metrics)
    common: dict[str, Any] = {"target": [target], "batch_size": settings.batch_size}
    values: Values = []
    curves: dict[str, np.ndarray] = {}
    for kind in ("deletion", "insertion"):
        if kind in wanted:
            run.bar.note(f"{note}: {kind}")
            options = {"baseline": settings.baseline} if kind == "deletion" else {}
            curve = getattr(fa, kind)(model, x, maps, steps=settings.steps, **options, **common)
            curves[kind] = curve.probabilities[0].numpy()
            values.append((f"{kind}_auc", float(curve.auc[0]), ""))
    if "confidence" in wanted:
        run.bar.note(f"{note}: confidence")
        change = fa.confidence_change(model, x, maps, **common)
        values.append(("average_drop", 100.0 * float(change.drop[0]), ""))
        values.append(("increase_in_confidence", 100.0 * float(change.increase[0]), ""))
    road = None
    if "road" in wanted:
        run.bar.note(f"{note}: ROAD")
        percentages = settings.road_percentages
        result = road_metric(model, x, maps, percentages=percentages, seed=settings.seed, **common)
        road = (result.morf[0].numpy(), result.lerf[0].numpy())
        values.append(("road_morf", float(result.morf_mean[0]), ""))
        values.append(("road_lerf", float(result.lerf_mean[0]), ""))
    return values, curves, road


def _pointing(run: _Run, maps: torch.Tensor, truth: torch.Tensor | None) -> Values:
    """The pointing games against the ground truth (none without it)."""
    if "pointing" not in run.settings.metrics or truth is None:
        return []
    hit = lo.pointing_game(maps, truth[None], tolerance=run.settings.tolerance)
    energy = float(lo.energy_pointing_game(maps, truth[None])[0])
    note = "" if math.isfinite(energy) else "no positive map mass"
    return [("pointing_game", float(hit.hits[0]), ""), ("energy_pointing_game", energy, note)]


def _score_method(
    run: _Run,
    image: _Image,
    x: torch.Tensor,
    method: str,
    index: int,
    base: dict[str, Any],
    truth: torch.Tensor | None,
) -> np.ndarray:
    """Every selected metric of one method on one image ``x`` ``(1, C, H, W)``; its picture.

    Rows and curves are recorded only when every metric succeeded.
    """
    where = f"{Path(base['image']).name} · {method}"  # the bar's note: where, and what step
    run.bar.note(f"{where}: map")
    maps, base = _method_maps(run, x, method, index, base)
    values, curves, road = _faithfulness(run, x, maps, base["target_index"], where)
    run.bar.note(f"{where}: pointing")
    values += _pointing(run, maps, truth)
    image.rows += [_row(base, metric, value, note) for metric, value, note in values]
    if curves:
        image.curves[method] = curves
    if road is not None:
        image.road[method] = road
    picture: np.ndarray = fa.unit_maps(maps)[0].numpy()
    return picture


def _file_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file that has already been decoded once (header only)."""

    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot be read again ({e}).") from e
    return height, width


def _truth_mask(run: _Run, item: Any, size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    if run.truth is None:
        return None, ""
    entry = lookup(run.truth, item.path, run.root)
    if entry is None:
        return None, "no ground truth for this image"
    mask = entry.model_mask(size, run.loaded.preprocessing)
    if not mask.any():
        return None, "the object lies outside the model's centre crop"
    return mask, ""


def _evaluate_image(run: _Run, image: _Image, item: LoadedImage) -> None:
    """Score every method on one decoded image: its record, rows, curves, failures, and (among
    this rank's first) its thumbnail and sanity-check input."""
    try:
        size = _file_size(item.path)
    except CnnvizError as e:
        image.failures.append({"input": str(item.path), "error": str(e)})
        return
    if min(size) < run.settings.min_side:
        reason = (
            f"skipped: the image is {size[1]}×{size[0]} pixels, the evaluation needs at least "
            f"{run.settings.min_side} on a side (resized to the model input, a tinier image is "
            "a flat picture whose metrics mean nothing)"
        )
        logger.error("%s: %s", item.path, reason)
        image.failures.append({"input": str(item.path), "error": reason})
        return
    x = item.tensor.unsqueeze(0)
    target = int(class_targets(run.loaded.module, x, None)[0])
    label = _label(run.loaded, target)
    mask, truth_note = _truth_mask(run, item, size)
    notes = list(item.notes) + ([truth_note] if truth_note else [])
    done: list[str] = []
    record = {"input": str(item.path), "target_index": target, "target_name": label}
    record |= {"methods": done, "notes": notes}
    base: dict[str, Any] = {
        "image": str(item.path),
        "method": "",
        "layer": None,
        "target_index": target,
        "target_name": label,
    }
    pictures = {}
    for method in run.methods:
        try:
            pictures[method] = _score_method(
                run, image, x, method, item.index, {**base, "method": method}, mask
            )
        except CnnvizError as e:
            logger.error("%s, %s: %s", item.path, method, e)
            image.failures.append({"input": str(item.path), "method": method, "error": str(e)})
            continue
        done.append(method)
    image.record = record
    if run.made["thumbs"] < run.settings.thumbnails:  # the run's first are among each rank's
        image.thumb = _thumbnail_row(run, item, pictures, label)
        run.made["thumbs"] += 1
    if run.made["sanity"] < run.settings.sanity_images:
        image.sanity = _SanityInput(item.tensor, item.path, target)
        run.made["sanity"] += 1


def _label(loaded: LoadedModel, index: int) -> str:
    return loaded.class_names[index] if loaded.class_names else str(index)


# -- the folder --------------------------------------------------------------------------------


def evaluate_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out_dir: Path,
    settings: EvaluateSettings,
    *,
    truth_file: Path | None = None,
    root: Path | None = None,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Evaluate ``settings.methods`` on ``paths`` into ``out_dir``; returns the manifest dict.

    ``truth_file`` holds ground-truth boxes or masks (:mod:`cnnviz.metrics.localisation`),
    matched by path relative to ``root`` or by file name.

    With ``ranks`` of a distributed run (:mod:`cnnviz.runs.distributed`) this process scores
    its share of the images: each image is scored alone (its metrics batch its own perturbed
    copies), so image ``i`` goes to rank ``i mod N`` and gives the numbers one process gives,
    bit for bit. Rank 0 gathers every image's values into input order, runs the sanity check
    on the first images, aggregates and writes; the other ranks wait, then read the manifest.
    Every rank must call it with the same arguments.
    """

    unknown = set(settings.metrics) - set(METRIC_GROUPS)
    if unknown:
        raise ValueError(
            f"Unknown metric group(s) {sorted(unknown)}; choose from {', '.join(METRIC_GROUPS)}."
        )
    methods = [m if m in REFERENCE_MAPS else get_method(m).name for m in settings.methods]
    truth = load_ground_truth(truth_file) if truth_file is not None else None
    run = _Run(loaded, settings, methods, truth, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.layer is None and any(
        m not in REFERENCE_MAPS and get_method(m).needs_layer for m in methods
    ):
        announce_default_layer(loaded)  # its log line before the bar
    ranks = ranks or Ranks()
    mine = ranks.share(range(len(paths)))
    image_mode(loaded.preprocessing.channels)  # a model no image file fits: at once
    stems = unique_stems(list(paths))
    images: list[tuple[int, _Image]] = []
    shown = progress and ranks.leader
    with disabled(not shown), progress_bar(len(mine), "evaluate", "img") as run.bar:
        for index in mine:
            image = _Image(index)
            item = load_input(loaded, index, Path(paths[index]), stems[index], image.failures)
            if item is not None:
                _evaluate_image(run, image, item)
            images.append((index, image))
            run.bar.update()  # skipped files count as done
    for image in in_order(ranks, images):
        run.add(image)
    return leader_writes(
        ranks, lambda: _finish(run, out_dir, progress), lambda: read_manifest(out_dir).to_dict()
    )


def _finish(run: _Run, out_dir: Path, progress: bool) -> dict[str, Any]:
    """The sanity check, the means, the outputs and the manifest of the gathered ``run``."""
    settings, methods, loaded = run.settings, run.methods, run.loaded
    with disabled(not progress):
        if "sanity" in settings.metrics and run.sanity_inputs:
            _sanity(run, run.sanity_inputs)  # its bar: the randomised layers × methods
        with status(f"evaluate: bootstrap means ({settings.bootstrap} resamples)"):
            summary = summarize_metrics(run.rows, resamples=settings.bootstrap, seed=settings.seed)
        with status("evaluate: plots, tables and page"):
            files = _write_results(run, out_dir, summary)
    manifest = Manifest(
        command="evaluate",
        model=model_record(loaded),
        method=",".join(methods),
        layer=settings.layer,
        items=tuple(run.items),
        failures=tuple(run.failures),
        extra={"settings": _settings_dict(settings), "files": files, "summary": summary},
    )
    write_manifest(out_dir, manifest)
    return manifest.to_dict()


def _settings_dict(settings: EvaluateSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


def _sanity(run: _Run, inputs: list[_SanityInput]) -> None:
    """Full-depth cascading randomisation of the registry methods on the first images."""
    methods = [m for m in run.methods if m not in REFERENCE_MAPS]
    if not methods:
        return
    x = torch.stack([given.tensor for given in inputs])
    try:
        run.sanity = parameter_randomization(
            run.loaded.module,
            x,
            methods,
            layer=run.settings.layer,
            target=[given.target for given in inputs],
            seed=run.settings.seed,
        )
    except CnnvizError as e:
        logger.error("sanity check: %s", e)
        run.failures.append({"input": "sanity check", "error": str(e)})
        return
    for name, result in run.sanity.items():
        for i, (_, path, target) in enumerate(inputs):
            base = {
                "image": str(path),
                "method": name,
                "layer": result.layer,
                "target_index": target,
                "target_name": _label(run.loaded, target),
            }
            for metric in SIMILARITIES:
                value = float(result.full_depth(metric)[i])
                run.rows.append(_row(base, f"cascading_{metric}", value))


# -- writing (cnnviz.runs.evaluate_outputs) ----------------------------------------------------


def _write_results(run: _Run, out_dir: Path, summary: list[dict[str, Any]]) -> dict[str, str]:
    """The CSVs, JSON, plots and page of ``run`` in ``out_dir``; ``{role: file name}``."""
    outputs = EvaluationOutputs(
        loaded=run.loaded,
        methods=tuple(run.methods),
        settings=_settings_dict(run.settings),
        rows=run.rows,
        summary=summary,
        curves=run.curves,
        road=run.road,
        sanity=run.sanity,
        failures=run.failures,
        thumbs=run.thumbs,
    )
    return write_results(out_dir, outputs)


def _thumbnail_row(
    run: _Run, item: LoadedImage, maps: dict[str, np.ndarray], label: str
) -> dict[str, Any]:
    """One image of the page's thumbnail table: the input, then each method's overlay."""
    cells = [
        {
            "method": m,
            "src": png_data_uri(compose(item.picture, _shown(m, maps[m]), cmap=run.settings.cmap))
            if m in maps
            else None,
        }
        for m in run.methods
    ]
    return {
        "title": item.path.name,
        "label": label,
        "input": png_data_uri(item.picture),
        "cells": cells,
        "legend": legend_text(Display.POSITIVE, "the class", cmap=run.settings.cmap),
    }


def _shown(method: str, map01: np.ndarray) -> np.ndarray:
    """A thumbnail's map as its method's pictures show it (gradient maps' top 2 % saturated)."""
    percent = None if method in REFERENCE_MAPS else get_method(method).outlier_percent
    return percentile_normalize(torch.from_numpy(map01), percent).numpy()
