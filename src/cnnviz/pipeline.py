"""Image files in, explanations out: load → preprocess → explain → render → write, per batch.

The CLI commands ``saliency``, ``gradcam`` and ``explain`` are thin wrappers around
:func:`explain_files`. One unreadable file is recorded as a failure and skipped; every output
file is written atomically; the manifest lists items and failures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnviz.errors import CnnvizError, TargetError
from cnnviz.methods.base import Explanation, get_method
from cnnviz.models import LoadedModel
from cnnviz.postprocess import Display, for_display
from cnnviz.targets import TargetSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain and how to draw it."""

    method: str = "gradcam"
    layer: str | None = None
    target: TargetSpec = None
    options: dict[str, Any] = field(default_factory=dict)
    cmap: str = "jet"
    alpha: float = 0.5
    batch_size: int = 8


@dataclass(frozen=True)
class LoadedImage:
    """One decoded input: its path, safe output stem, display picture and model tensor."""

    index: int  # position in the list of inputs
    path: Path
    stem: str
    display: np.ndarray  # (H, W, 3) uint8, resized and cropped like the model input
    tensor: torch.Tensor  # (3, H, W) preprocessed
    notes: tuple[str, ...]


def load_inputs(
    loaded: LoadedModel, paths: Sequence[Path], failures: list[dict[str, Any]]
) -> Iterator[LoadedImage]:
    """Decode and preprocess each path; a failure is logged, recorded and skipped."""
    from cnnviz.images import load_image_with_notes
    from cnnviz.outputs import unique_stems
    from cnnviz.preprocess import display_image, preprocess_image

    for index, (path, stem) in enumerate(zip(paths, unique_stems(list(paths)), strict=True)):
        try:
            image, notes = load_image_with_notes(path)
        except CnnvizError as e:
            logger.error("%s", e)
            failures.append({"input": str(path), "error": str(e)})
            continue
        for note in notes:
            logger.info("%s: %s", path.name, note)
        yield LoadedImage(
            index=index,
            path=path,
            stem=stem,
            display=np.asarray(display_image(image, loaded.preprocessing), dtype=np.uint8),
            tensor=preprocess_image(image, loaded.preprocessing),
            notes=tuple(notes),
        )


def batched(items: Iterator[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    """Consecutive lists of at most ``size`` items."""
    batch: list[LoadedImage] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def display_maps(explanation: Explanation) -> np.ndarray:
    """Maps ready to colour: ``(N, T, H, W)`` in [0, 1] at the input resolution."""
    shown = for_display(explanation.maps.float(), explanation.display, explanation.input_size)
    if explanation.display is Display.SIGNED:
        shown = (shown + 1) / 2
    return shown.cpu().numpy()


def target_label(explanation: Explanation, i: int, t: int) -> str:
    """Human label of target ``t`` of image ``i``."""
    return explanation.targets.labels[i][t]


def item_records(
    explanation: Explanation,
    batch: Sequence[LoadedImage],
    out_dir: Path,
    settings: ExplainSettings,
) -> list[dict[str, Any]]:
    """Write overlays and raw maps for a batch; return one manifest record per image × target."""
    from cnnviz.outputs import safe_stem, write_npy, write_png
    from cnnviz.render import overlay

    shown = display_maps(explanation)
    raw = explanation.maps.detach().float().cpu()
    raw_input = explanation.upsampled().detach().float().cpu()
    cmap = "bwr" if explanation.display is Display.SIGNED else settings.cmap
    records = []
    for i, item in enumerate(batch):
        for t in range(explanation.maps.shape[1]):
            label = target_label(explanation, i, t)
            base = f"{item.stem}.{explanation.method}.{t}-{safe_stem(label)}"
            files = {
                "overlay": f"{base}.png",
                "raw_layer": f"{base}.layer.npy",
                "raw_input": f"{base}.input.npy",
            }
            picture = overlay(item.display, shown[i, t], cmap=cmap, alpha=settings.alpha)
            write_npy(out_dir / files["raw_layer"], raw[i, t].numpy())
            write_npy(out_dir / files["raw_input"], raw_input[i, t].numpy())
            write_png(out_dir / files["overlay"], picture)
            indices = explanation.targets.indices
            probabilities = explanation.probabilities
            records.append(
                {
                    "input": str(item.path),
                    "stem": item.stem,
                    "method": explanation.method,
                    "layer": explanation.layer,
                    "target_rank": t,
                    "target_index": None if indices is None else int(indices[i, t]),
                    "target_name": label,
                    "score": float(explanation.scores[i, t]),
                    "probability": None
                    if probabilities is None
                    else float(probabilities[i, t]),
                    "layer_shape": list(raw.shape[-2:]),
                    "input_shape": list(raw_input.shape[-2:]),
                    "files": files,
                    "notes": list(item.notes),
                }
            )
    return records


def explain_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out_dir: Path,
    settings: ExplainSettings,
    *,
    command: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Explain every image in ``paths`` into ``out_dir``; returns the manifest as a dict."""
    from tqdm import tqdm

    from cnnviz.api import explain
    from cnnviz.outputs import Manifest, write_manifest

    method = get_method(settings.method)
    if isinstance(settings.target, list) and len(settings.target) != len(paths):
        raise TargetError(
            f"{len(settings.target)} targets given for {len(paths)} images; give one target "
            "for all images or exactly one per image."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    failures: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    layer_used: str | None = None
    bar = tqdm(total=len(paths), desc=method.name, unit="img", disable=not progress, leave=False)
    try:
        for batch in batched(load_inputs(loaded, paths, failures), settings.batch_size):
            x = torch.stack([item.tensor for item in batch])
            target = settings.target
            if isinstance(target, list):  # one target per input file
                target = [target[item.index] for item in batch]
            explanation = explain(
                loaded,
                x,
                settings.method,
                layer=settings.layer,
                target=target,
                **settings.options,
            )
            layer_used = explanation.layer
            items.extend(item_records(explanation, batch, out_dir, settings))
            bar.update(len(batch))
    finally:
        bar.close()
    manifest = Manifest(
        command=command,
        model=model_record(loaded),
        method=method.name,
        layer=layer_used,
        items=tuple(items),
        failures=tuple(failures),
        extra={"cmap": settings.cmap, "alpha": settings.alpha, "options": settings.options},
    )
    write_manifest(out_dir, manifest)
    return manifest.to_dict()


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """The manifest's description of a model."""
    return {
        "name": loaded.name,
        "architecture": loaded.architecture,
        "weights": loaded.weights,
        "num_classes": len(loaded.class_names),
        "preprocessing": loaded.preprocessing.to_dict(),
    }
