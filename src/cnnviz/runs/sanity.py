"""One image file in, the sanity checks' files out (the ``cnnviz sanity`` command's work).

:func:`sanity_files` runs the model-parameter randomisation test (:mod:`cnnviz.metrics.sanity`)
in each asked mode — and, for ``shapes_vgg11``, optionally the data randomisation test — on one
image, and writes into the output folder:

* ``sanity-<mode>.png``: similarity against randomised depth (not for ``data``, one step);
* ``maps-<mode>.png``: the displayed maps, the original first, then each randomised step;
* ``sanity.json``: the similarities (``null`` where undefined), per mode and method;
* ``manifest.json``: the run, with those files listed under the item's ``files``.

Example::

    from cnnviz.runs.sanity import SanitySettings, sanity_files

    manifest = sanity_files(loaded, Path("cat.png"), Path("out"), SanitySettings(("gradcam",)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnviz.errors import NotApplicableError
from cnnviz.inputs.decode import LoadedImage, decode_input
from cnnviz.metrics.faithfulness import ClassTarget
from cnnviz.metrics.sanity import SanityResult
from cnnviz.models.loaded import LoadedModel
from cnnviz.options import SANITY_MODES
from cnnviz.outputs.files import atomic_write_bytes, safe_stem, write_json
from cnnviz.outputs.manifest import Manifest, model_record, write_manifest
from cnnviz.progress import Bar, progress, status
from cnnviz.render.figures import figure_to_png_bytes, sanity_maps_figure, similarity_figure
from cnnviz.runs.randomization import compare_models, parameter_randomization, train_random_labels

__all__ = ["DATA_RANDOMIZATION_MODEL", "SanitySettings", "sanity_files"]

DATA_RANDOMIZATION_MODEL = "shapes_vgg11"
"""The one model the data randomisation test can retrain (on permuted labels)."""


@dataclass(frozen=True)
class SanitySettings:
    """What :func:`sanity_files` checks: methods (registry names), randomisation ``modes``
    (``cascading``, ``independent``), the CAM ``layer`` (default: automatic), the class
    ``target`` (default: the prediction), the ``seed`` of every random choice, the ``cmap``
    of the maps figure, and whether to run the data randomisation test too."""

    methods: tuple[str, ...]
    modes: tuple[str, ...] = SANITY_MODES
    layer: str | None = None
    target: ClassTarget = None
    seed: int = 0
    cmap: str = "jet"
    data_randomization: bool = False


def sanity_files(
    loaded: LoadedModel, image: Path, out: Path, settings: SanitySettings
) -> dict[str, Any]:
    """Run the sanity checks on ``image`` and write their files into ``out``; returns the
    manifest as a dict (its one item lists the files written).

    Raises:
        ValueError: an unknown mode.
        NotApplicableError: data randomisation asked for a model other than ``shapes_vgg11``.
        ImageLoadError: ``image`` cannot be read.
    """
    unknown = [mode for mode in settings.modes if mode not in SANITY_MODES]
    if unknown:
        raise ValueError(f"modes must be among {', '.join(SANITY_MODES)}, got {unknown}")
    if settings.data_randomization and loaded.name != DATA_RANDOMIZATION_MODEL:
        raise NotApplicableError(
            "Data randomisation retrains the model on permuted labels and is available for "
            f"the model {DATA_RANDOMIZATION_MODEL} only (--model {DATA_RANDOMIZATION_MODEL})."
        )
    with status("sanity: reading the image"):  # the first decode imports torchvision (seconds)
        item = _load_image(loaded, image)
    runs, training = _randomize(loaded, item, settings)
    report: dict[str, Any] = {
        "input": str(item.path),
        "methods": list(settings.methods),
        "modes": {mode: _mode_record(results) for mode, results in runs.items()},
    }
    if training is not None:
        report["data_training"] = training
    files: dict[str, str] = {}
    figures = sum(1 if mode == "data" else 2 for mode in runs)
    with progress(figures, "sanity figures", "figure") as bar:
        for mode, results in runs.items():
            files |= _write_figures(out, mode, results, item, settings.cmap, bar)
    files["json"] = "sanity.json"
    write_json(out / files["json"], report)
    manifest = Manifest(
        command="sanity",
        model=model_record(loaded),
        method=",".join(settings.methods),
        layer=settings.layer,
        items=({**report, "files": files},),
        extra={"seed": settings.seed},
    )
    write_manifest(out, manifest)
    return manifest.to_dict()


def _load_image(loaded: LoadedModel, image: Path) -> LoadedImage:
    """The decoded, preprocessed image (:class:`~cnnviz.errors.ImageLoadError` if unreadable)."""
    display, tensor, notes = decode_input(image, loaded.preprocessing)
    return LoadedImage(0, image, safe_stem(image.stem), display, tensor, tuple(notes))


def _randomize(
    loaded: LoadedModel, item: LoadedImage, settings: SanitySettings
) -> tuple[dict[str, dict[str, SanityResult]], dict[str, float] | None]:
    """The results per mode (``data`` last, if asked) and the random-label training metrics."""
    x = item.tensor.unsqueeze(0)
    runs = {
        mode: parameter_randomization(
            loaded.module,
            x,
            settings.methods,
            mode=mode,
            layer=settings.layer,
            target=settings.target,
            class_names=loaded.class_names,
            seed=settings.seed,
        )
        for mode in settings.modes
    }
    if not settings.data_randomization:
        return runs, None
    random_model, metrics = train_random_labels(seed=settings.seed)
    runs["data"] = compare_models(
        loaded.module,
        random_model,
        x,
        settings.methods,
        layer=settings.layer,
        target=settings.target,
        class_names=loaded.class_names,
    )
    return runs, metrics


def _mode_record(results: dict[str, SanityResult]) -> dict[str, Any]:
    """``sanity.json``'s entry of one mode: the steps, and per method its layer and the
    similarities of the image at each step (``None`` where undefined)."""
    first = next(iter(results.values()))
    return {
        "steps": list(first.steps),
        "methods": {
            name: {
                "layer": result.layer,
                "similarity": {
                    metric: [float(v) if math.isfinite(v) else None for v in values[0]]
                    for metric, values in result.similarity.items()
                },
            }
            for name, result in results.items()
        },
    }


def _write_figures(
    out: Path,
    mode: str,
    results: dict[str, SanityResult],
    item: LoadedImage,
    cmap: str,
    bar: Bar,
) -> dict[str, str]:
    """Write the figures of one mode, a step of ``bar`` each; returns their names
    (``{mode}_plot``, ``{mode}_maps``)."""
    files: dict[str, str] = {}
    if mode != "data":  # one step: nothing to plot against depth
        files[f"{mode}_plot"] = f"sanity-{mode}.png"
        bar.note(files[f"{mode}_plot"])
        figure = similarity_figure(results, title=f"{mode} randomisation — {item.path.name}")
        atomic_write_bytes(out / files[f"{mode}_plot"], figure_to_png_bytes(figure))
        bar.update()
    files[f"{mode}_maps"] = f"maps-{mode}.png"
    bar.note(files[f"{mode}_maps"])
    maps = sanity_maps_figure(results, cmap=cmap)
    atomic_write_bytes(out / files[f"{mode}_maps"], figure_to_png_bytes(maps))
    bar.update()
    return files
