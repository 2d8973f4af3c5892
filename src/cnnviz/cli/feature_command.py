"""``cnnviz features``: what a layer's channels (or a model's classes) want to see; import-light.

``cnnviz features MODEL --layer L --channels 0-15 --out DIR`` optimises one image per channel in
one batch (:func:`cnnviz.features`), writes each picture, the grid with the checks under every
picture, the images at ``--thresholds`` steps, ``checks.json`` and ``manifest.json``. Ctrl-C
stops the optimisation and writes the images so far (exit 130); a run stopped by a non-finite
objective writes its last finite images and exits with 1.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import finish, input_paths, load, make_out_dir, say, split_list, writing_into
from cnnviz.cli.values import channel_list, non_negative_int, positive_int
from cnnviz.errors import UsageError
from cnnviz.models.defaults import DEFAULT_MODEL
from cnnviz.options import FeatureUnit, Parameterisation, values

logger = logging.getLogger(__name__)


def add_features_command(commands: Any, add_model_options: Callable[..., None]) -> None:
    """Register ``features`` on the parser's sub-commands (``add_model_options`` is the
    parser's, passed in so that this module does not import the parser that imports it)."""
    text = "what a layer's channels or the model's classes want to see (feature visualisation)"
    p = commands.add_parser("features", help=text, description=text)
    p.set_defaults(func=cmd_features, model=None)
    p.add_argument("model_name", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    add_model_options(p, model_option=False)
    p.add_argument(
        "--layer", "-l", default=None, help="dotted name or alias (default: the CAM layer)"
    )
    p.add_argument(
        "--channels", type=channel_list, default=None, help="e.g. 0-15 or 0,4,7-9 (default: 0-15)"
    )
    p.add_argument("--unit", choices=values(FeatureUnit), default=FeatureUnit.CHANNEL.value)
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names or indices (instead of --layer)",
    )
    group = p.add_argument_group("optimisation", "Lucid's defaults")
    group.add_argument("--steps", type=positive_int, default=512)
    group.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    group.add_argument(
        "--size", type=positive_int, default=None, help="image side (default: the model's)"
    )
    group.add_argument(
        "--thresholds", default="", help="also keep the images at these steps, e.g. 64,128,256"
    )
    group.add_argument(
        "--param", choices=values(Parameterisation), default=Parameterisation.FOURIER.value
    )
    group.add_argument("--no-transforms", action="store_true", help="no random moves (noisier)")
    group.add_argument("--l2", type=float, default=0.0, help="L2 regulariser weight")
    group.add_argument("--tv", type=float, default=0.0, help="total-variation weight")
    group.add_argument("--facets", type=positive_int, default=1, help="images per unit")
    group.add_argument(
        "--diversity", type=float, default=None, help="weight (default 10 with facets)"
    )
    group.add_argument("--seed", type=non_negative_int, default=0)
    checks = p.add_argument_group("checks", "computed beside every picture")
    checks.add_argument(
        "--exemplars",
        nargs="+",
        default=None,
        metavar="IMAGES",
        help="natural images (files or folders) to compare each unit's picture with",
    )
    checks.add_argument(
        "--no-stability", action="store_true", help="skip the three-start stability check"
    )
    p.add_argument("--out", "-o", required=True)


def _thresholds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in split_list(text, "--thresholds")) if text.strip() else ()
    except ValueError as e:
        raise UsageError(f"--thresholds must be step numbers like 64,128 ({e}).") from e


def cmd_features(args: argparse.Namespace) -> int:
    """``cnnviz features``: optimise, check, write."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.featurevis.result import image_names
    from cnnviz.featurevis.visualise import features
    from cnnviz.outputs.manifest import Manifest, model_record, write_manifest

    if args.classes is not None and (args.layer is not None or args.channels is not None):
        raise UsageError("--classes visualises classes; leave out --layer and --channels.")
    thresholds = _thresholds(args.thresholds)
    exemplars = [str(p) for p in input_paths(args.exemplars)] if args.exemplars else None
    loaded = load(args, args.model_name)
    out = make_out_dir(args)
    result = features(
        loaded,
        args.layer,
        args.channels,
        unit=args.unit,
        classes=split_list(args.classes, "--classes") if args.classes is not None else None,
        size=args.size,
        steps=args.steps,
        lr=args.lr,
        thresholds=thresholds,
        parameterisation=args.param,
        transforms=not args.no_transforms,
        l2=args.l2,
        tv=args.tv,
        facets=args.facets,
        diversity=args.diversity,
        seed=args.seed,
        stability=not args.no_stability,
        exemplars=exemplars,
    )
    with writing_into(out):
        result.save(out)
    names = image_names(result)
    items = [
        {"unit": row, "files": {"images": names[u * result.facets : (u + 1) * result.facets]}}
        for u, row in enumerate(result.checks_table())
    ]
    manifest = Manifest(
        command="features",
        model=model_record(loaded),
        items=tuple(items),
        failures=(),
        extra={
            "objective": result.objective,
            "steps": result.steps,
            "stopped": result.stopped,
            "settings": dict(result.settings),
        },
    )
    with writing_into(out):
        write_manifest(out, manifest)
    code = finish(
        manifest.to_dict(),
        out,
        args,
        what=f"{len(result.units)} unit picture(s)",
        files=("features.png", "checks.json", "manifest.json"),
    )
    if result.interrupted:
        say(f"interrupted: wrote the images of step {result.steps} of {args.steps}")
        return ExitCode.INTERRUPTED
    if result.stopped:
        say(f"stopped early: {result.stopped}; wrote the last finite images")
        return ExitCode.PARTIAL
    return code
