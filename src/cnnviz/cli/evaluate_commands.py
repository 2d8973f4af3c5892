"""CLI wiring for the evaluation commands (``evaluate``, ``sanity``); import-light.

``cnnviz evaluate DIR --model M --methods a,b,c [--boxes FILE] --out OUT`` scores every method on
every image (:mod:`cnnviz.runs.evaluate`); ``cnnviz sanity IMAGE --model M --methods a,b --out OUT``
runs the randomisation tests on one image (:mod:`cnnviz.metrics.sanity`). Both exit with 0 when
everything was written and 1 when some inputs were skipped (listed on stderr and in
``manifest.json``); bad options raise :class:`~cnnviz.errors.CnnvizError` (exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from cnnviz.errors import CnnvizError

EXIT_OK, EXIT_PARTIAL = 0, 1


class EvaluateOptionError(CnnvizError, ValueError):
    """A bad option of ``cnnviz evaluate`` or ``cnnviz sanity``."""


def _split(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise EvaluateOptionError(f"--{what} is empty; give a comma-separated list.")
    return items


def _methods(text: str, *, references: bool) -> tuple[str, ...]:
    from cnnviz.methods.base import get_method
    from cnnviz.metrics.localisation import REFERENCE_MAPS

    names = []
    for name in _split(text, "methods"):
        if references and name in REFERENCE_MAPS:
            names.append(name)
        else:
            names.append(get_method(name).name)  # MethodNotFoundError names close matches
    return tuple(dict.fromkeys(names))


def _percentages(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in _split(text, "road-percentages"))
    except ValueError as e:
        raise EvaluateOptionError(f"--road-percentages must be numbers ({e}).") from e
    if any(not 0 <= p <= 100 for p in values):
        raise EvaluateOptionError("--road-percentages must lie in [0, 100].")
    return values


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise EvaluateOptionError(f"{flag} must be at least 1, got {value}.")
    return value


def _load(args: argparse.Namespace) -> Any:
    from cnnviz.models import load_model

    return load_model(args.model, weights=args.weights, device=args.device)


def _finish(result: dict[str, Any], out: Path, args: argparse.Namespace, what: str) -> int:
    from cnnviz.outputs.files import to_json_text

    failures = result.get("failures", [])
    if args.json:
        sys.stdout.write(to_json_text(result) + "\n")
    else:
        print(f"Wrote {what} to {out}/ (index.html, manifest.json)")
    for failure in failures:
        method = f" ({failure['method']})" if failure.get("method") else ""
        print(f"cnnviz: skipped {failure['input']}{method}: {failure['error']}", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``cnnviz evaluate``: metrics for each method on each image of the inputs."""
    from cnnviz.errors import ImageLoadError
    from cnnviz.inputs.images import find_images
    from cnnviz.metrics.statistics import METRIC_GROUPS
    from cnnviz.runs.evaluate import EvaluateSettings, evaluate_files

    metrics = tuple(_split(args.metrics, "metrics"))
    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise EvaluateOptionError(
            f"Unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_GROUPS)}."
        )
    if args.baseline not in ("zeros", "mean", "blur"):
        raise EvaluateOptionError(f"--baseline must be zeros, mean or blur, got {args.baseline!r}.")
    settings = EvaluateSettings(
        methods=_methods(args.methods, references=True),
        metrics=metrics,
        layer=args.layer,
        steps=_positive(args.steps, "--steps"),
        baseline=args.baseline,
        batch_size=_positive(args.batch_size, "--batch-size"),
        tolerance=args.tolerance,
        road_percentages=_percentages(args.road_percentages),
        sanity_images=max(args.sanity_images, 0),
        bootstrap=max(args.bootstrap, 0),
        seed=args.seed,
        cmap=args.cmap,
    )
    paths = []
    for entry in args.inputs:
        found = find_images(entry)
        if not found:
            raise ImageLoadError(f"{entry}: no image files found there (looked for common types).")
        paths.extend(found)
    root = Path(args.inputs[0]) if len(args.inputs) == 1 and Path(args.inputs[0]).is_dir() else None
    truth = Path(args.boxes) if args.boxes else None
    loaded = _load(args)
    out = Path(args.out)
    result = evaluate_files(
        loaded, paths, out, settings, truth_file=truth, root=root, progress=not args.quiet
    )
    return _finish(result, out, args, f"{len(result.get('items', []))} evaluated image(s)")


def cmd_sanity(args: argparse.Namespace) -> int:
    """``cnnviz sanity``: parameter (and optionally data) randomisation on one image."""
    from cnnviz.errors import ImageLoadError
    from cnnviz.inputs.decode import load_inputs
    from cnnviz.metrics import sanity
    from cnnviz.outputs.files import atomic_write_bytes, write_json
    from cnnviz.outputs.manifest import Manifest, model_record, write_manifest
    from cnnviz.render.figures import figure_to_png_bytes

    methods = list(_methods(args.methods, references=False))
    modes = _split(args.mode, "mode")
    for mode in modes:
        if mode not in sanity.MODES:
            raise EvaluateOptionError(f"--mode takes {', '.join(sanity.MODES)}, got {mode!r}.")
    loaded = _load(args)
    if args.data_randomization and loaded.name != "shapes_vgg11":
        raise EvaluateOptionError(
            "--data-randomization retrains the model on permuted labels and is available for "
            "--model shapes_vgg11 only."
        )
    failures: list[dict[str, Any]] = []
    items = list(load_inputs(loaded, [Path(args.image)], failures))
    if not items:
        raise ImageLoadError(failures[0]["error"] if failures else f"Cannot read {args.image}.")
    item = items[0]
    x = item.tensor.unsqueeze(0)
    target = args.target
    out = Path(args.out)
    files: dict[str, str] = {}
    report: dict[str, Any] = {"input": str(item.path), "methods": methods, "modes": {}}
    runs: dict[str, dict[str, sanity.SanityResult]] = {}
    for mode in modes:
        runs[mode] = sanity.parameter_randomization(
            loaded.module,
            x,
            methods,
            mode=mode,
            layer=args.layer,
            target=target,
            class_names=loaded.class_names,
            seed=args.seed,
        )
    if args.data_randomization:
        random_model, metrics = sanity.train_random_labels(seed=args.seed)
        runs["data"] = sanity.compare_models(
            loaded.module,
            random_model,
            x,
            methods,
            layer=args.layer,
            target=target,
            class_names=loaded.class_names,
        )
        report["data_training"] = metrics
    for mode, results in runs.items():
        first = next(iter(results.values()))
        figure = (
            sanity.similarity_figure(results, title=f"{mode} randomisation — {item.path.name}")
            if mode != "data"
            else None
        )
        if figure is not None:
            files[f"{mode}_plot"] = f"sanity-{mode}.png"
            atomic_write_bytes(out / files[f"{mode}_plot"], figure_to_png_bytes(figure))
        files[f"{mode}_maps"] = f"maps-{mode}.png"
        atomic_write_bytes(
            out / files[f"{mode}_maps"],
            figure_to_png_bytes(sanity.maps_figure(results, cmap=args.cmap)),
        )
        report["modes"][mode] = {
            "steps": list(first.steps),
            "methods": {
                n: {
                    "layer": r.layer,
                    "similarity": {
                        m: [float(v) if math.isfinite(v) else None for v in r.similarity[m][0]]
                        for m in r.similarity
                    },
                }
                for n, r in results.items()
            },
        }
    files["json"] = "sanity.json"
    write_json(out / files["json"], report)
    manifest = Manifest(
        command="sanity",
        model=model_record(loaded),
        method=",".join(methods),
        layer=args.layer,
        items=({**report, "files": files},),
        failures=tuple(failures),
        extra={"seed": args.seed},
    )
    write_manifest(out, manifest)
    return _finish(manifest.to_dict(), out, args, "sanity checks")


def _common(p: argparse.ArgumentParser) -> None:
    from cnnviz.cli.main import add_model_options

    add_model_options(p)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--layer",
        "-l",
        default=None,
        help="layer for CAM methods (default: the last spatial layer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap for the maps")


def add_commands(sub: Any) -> None:
    """Add the evaluation sub-commands to the ``cnnviz`` parser's sub-parsers."""
    text = (
        "score explanation methods on a folder: deletion/insertion, Average Drop, ROAD, "
        "pointing games, sanity checks"
    )
    p = sub.add_parser("evaluate", help=text, description=text)
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("inputs", nargs="+", metavar="DIR", help="image folders or files")
    _common(p)
    p.add_argument(
        "--methods",
        default="gradcam,saliency",
        help="comma-separated methods (see `cnnviz methods`), plus the references "
        "random-map, coarse-random-map and centre-map (default gradcam,saliency)",
    )
    p.add_argument(
        "--boxes",
        default=None,
        help="ground truth (.json or .csv boxes or masks; see docs/evaluation.md)",
    )
    p.add_argument(
        "--metrics",
        default="deletion,insertion,confidence,road,pointing,sanity",
        help="metric groups: deletion, insertion, confidence, road, pointing, sanity",
    )
    p.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (default 100)")
    p.add_argument(
        "--baseline",
        default="zeros",
        help="what deleted pixels become: zeros (model input), mean or blur",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--tolerance",
        type=float,
        default=15.0,
        help="pointing-game tolerance in pixels (default 15)",
    )
    p.add_argument(
        "--road-percentages",
        default="10,30,50,70,90",
        help="ROAD removal percentages (default 10,30,50,70,90)",
    )
    p.add_argument(
        "--sanity-images",
        type=int,
        default=2,
        help="images for the cascading randomisation test (default 2; 0: none)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="bootstrap resamples for the 95 %% intervals (default 2000)",
    )

    text = "sanity checks on one image: parameter randomisation (cascading, independent)"
    p = sub.add_parser("sanity", help=text, description=text)
    p.set_defaults(func=cmd_sanity)
    p.add_argument("image", help="one image file")
    _common(p)
    p.add_argument(
        "--methods",
        default="gradcam,saliency",
        help="comma-separated methods (default gradcam,saliency)",
    )
    p.add_argument(
        "--mode",
        default="cascading,independent",
        help="cascading, independent or both (default both)",
    )
    p.add_argument(
        "--target", "-t", default=None, help="class index or name (default: the predicted class)"
    )
    p.add_argument(
        "--data-randomization",
        action="store_true",
        help="also retrain on permuted labels and compare (shapes_vgg11 only)",
    )
