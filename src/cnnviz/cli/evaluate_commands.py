"""The evaluation commands (``evaluate``, ``sanity``); import-light.

``cnnviz evaluate DIR --model M --methods a,b,c [--boxes FILE] --out OUT`` scores every method on
every image (:mod:`cnnviz.runs.evaluate`) and prints each mean with its interval and its verdict
against random-map; ``cnnviz sanity IMAGE --model M --methods a,b --out OUT``
runs the randomisation tests on one image (:mod:`cnnviz.runs.sanity`). Both exit with 0 when
everything was written and 1 when some inputs were skipped (listed on stderr and in
``manifest.json``); bad options raise :class:`~cnnviz.errors.UsageError` (exit 2).
``evaluate --nproc N`` (or ``torchrun``) shares the images among N ranks; rank 0 writes and
prints (:mod:`cnnviz.runs.distributed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import (
    finish,
    input_paths,
    load,
    make_out_dir,
    relaunched,
    split_list,
    writing_into,
)
from cnnviz.errors import UsageError, one_line


def _methods(text: str, *, references: bool) -> tuple[str, ...]:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.methods.registry import get_method
    from cnnviz.metrics.localisation import REFERENCE_MAPS

    names = []
    for name in split_list(text, "--methods"):
        if references and name in REFERENCE_MAPS:
            names.append(name)
        else:
            names.append(get_method(name).name)  # MethodNotFoundError names close matches
    return tuple(dict.fromkeys(names))


def _percentages(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in split_list(text, "--road-percentages"))
    except ValueError as e:
        raise UsageError(f"--road-percentages must be numbers ({e}).") from e
    if any(not 0 <= p <= 100 for p in values):
        raise UsageError("--road-percentages must lie in [0, 100].")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``cnnviz evaluate``: metrics for each method on each image of the inputs."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.metrics.statistics import METRIC_GROUPS
    from cnnviz.runs.distributed import current_ranks, process_group
    from cnnviz.runs.evaluate import EvaluateSettings, evaluate_files
    from cnnviz.runs.evaluate_outputs import summary_lines

    metrics = tuple(split_list(args.metrics, "--metrics"))
    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise UsageError(
            f"Unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_GROUPS)}."
        )
    settings = EvaluateSettings(
        methods=_methods(args.methods, references=True),
        metrics=metrics,
        layer=args.layer,
        steps=args.steps,
        baseline=args.baseline,
        batch_size=args.batch_size,
        tolerance=args.tolerance,
        road_percentages=_percentages(args.road_percentages),
        sanity_images=args.sanity_images,
        bootstrap=args.bootstrap,
        seed=args.seed,
        cmap=args.cmap,
    )
    status = relaunched(args)  # --nproc N: as N ranks, each a share of the images
    if status is not None:
        return status
    ranks = current_ranks()
    paths = input_paths(args.inputs)
    root = Path(args.inputs[0]) if len(args.inputs) == 1 and Path(args.inputs[0]).is_dir() else None
    truth = Path(args.boxes) if args.boxes else None
    loaded = load(args)
    out = make_out_dir(args)
    with writing_into(out), process_group(ranks, args.device):
        result = evaluate_files(
            loaded,
            paths,
            out,
            settings,
            truth_file=truth,
            root=root,
            progress=not args.quiet,
            ranks=ranks,
        )
    if not ranks.leader:  # rank 0 prints the run's summary; the exit code is each rank's
        return ExitCode.PARTIAL if result.get("failures") else ExitCode.OK
    if not args.json:
        for line in summary_lines(result["extra"]["summary"], settings.methods):
            print(one_line(line))
    files = [*result.get("extra", {}).get("files", {}).values(), "manifest.json"]
    what = f"{len(result.get('items', []))} evaluated image(s)"
    return finish(result, out, args, what=what, files=files, list_failures=True)


def cmd_sanity(args: argparse.Namespace) -> int:
    """``cnnviz sanity``: parameter (and optionally data) randomisation on one image."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.runs.sanity import SanitySettings, sanity_files

    settings = SanitySettings(
        methods=_methods(args.methods, references=False),
        modes=tuple(args.mode),
        layer=args.layer,
        target=args.target,
        seed=args.seed,
        cmap=args.cmap,
        data_randomization=args.data_randomization,
    )
    loaded = load(args)
    out = make_out_dir(args)
    with writing_into(out):
        manifest = sanity_files(loaded, Path(args.image), out, settings)
    files = [*manifest["items"][0]["files"].values(), "manifest.json"]
    return finish(manifest, out, args, what="sanity checks", files=files, list_failures=True)
