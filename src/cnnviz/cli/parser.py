"""The ``cnnviz`` argument parser: one small function per command or group of commands.

Import-light (no torch): the handlers' heavy imports happen when they run, and the choices of
closed option sets are read from the enums in :mod:`cnnviz.options`. A parsing error is a
:class:`~cnnviz.errors.UsageError` (one ``cnnviz: error: …`` line, exit 2); ``--help`` exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from cnnviz import __version__
from cnnviz.cli.audit_command import add_audit_command
from cnnviz.cli.commands import (
    cmd_activations,
    cmd_explain,
    cmd_filters,
    cmd_layers,
    cmd_methods,
    cmd_models,
    cmd_report,
    cmd_summary,
)
from cnnviz.cli.evaluate_commands import cmd_evaluate, cmd_sanity
from cnnviz.cli.exemplar_command import add_exemplars_command
from cnnviz.cli.feature_command import add_features_command
from cnnviz.cli.serve_command import add_serve_command
from cnnviz.cli.shared import add_nproc_option
from cnnviz.cli.values import (
    comma_choices,
    crop_fraction,
    fraction,
    input_size,
    non_negative_int,
    numbers,
    outlier_percent,
    positive_int,
)
from cnnviz.errors import UsageError
from cnnviz.models.defaults import DEFAULT_MODEL
from cnnviz.options import (
    INTERPOLATIONS,
    SANITY_MODES,
    SIGNS,
    ChannelOrder,
    DeepFilterView,
    DeletionBaseline,
    FilterScale,
    MapStyle,
    values,
)

__all__ = ["CnnvizArgumentParser", "build_parser"]

Handler: TypeAlias = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[CnnvizArgumentParser]"

EPILOG = (
    "Start with `cnnviz report --demo --out demo`. Exit codes: 0 ok, 1 some inputs failed, "
    "2 bad input, 3 weights unavailable offline, 70 internal error (a bug), 130 interrupted "
    "(Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM)."
)


class CnnvizArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (an unknown flag, a missing or malformed value) raise
    :class:`UsageError`, so they reach the user like every other usage error: one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- options shared by several commands ------------------------------------------------------


def add_model_options(p: argparse.ArgumentParser, *, model_option: bool = True) -> None:
    """The options every command that loads a model shares: which model, its weights, classes,
    constructor arguments and preprocessing, the device, and ``--json``."""
    if model_option:
        p.add_argument(
            "--model",
            "-m",
            default=DEFAULT_MODEL,
            help=f"a name from `cnnviz models` (default {DEFAULT_MODEL}), torchvision:NAME, "
            "timm:NAME, your own path/file.py:Class or package.module:Class, "
            "torchscript:FILE or export:FILE.pt2",
        )
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint file (.pth/.pt/.safetensors), or 'random'; "
        "default: the model's pretrained weights",
    )
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument for building the model, repeatable: your class's constructor, "
        "torchvision's get_model or timm's create_model (e.g. --model-arg num_classes=10)",
    )
    p.add_argument(
        "--class-names",
        default=None,
        metavar="FILE",
        help="the class names: one per line, a JSON list, or a CSV of index,name",
    )
    _preprocessing_options(p)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def _preprocessing_options(p: argparse.ArgumentParser) -> None:
    """The preprocessing flags; each one left out keeps the model's own setting."""
    group = p.add_argument_group(
        "preprocessing", "default: the model's own (timm's pretrained_cfg, torchvision's weights)"
    )
    group.add_argument(
        "--input-size", type=input_size, default=None, metavar="N|HxW", help="model input size"
    )
    group.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        metavar="N",
        help="resize the shorter side to N before the centre crop to the input size",
    )
    group.add_argument(
        "--crop",
        type=crop_fraction,
        default=None,
        metavar="FRACTION",
        help="the centre crop as a fraction of the resized image (timm's crop_pct, e.g. 0.875)",
    )
    group.add_argument(
        "--mean", type=numbers, default=None, metavar="M[,M…]", help="one per input channel"
    )
    group.add_argument(
        "--std", type=numbers, default=None, metavar="S[,S…]", help="one per input channel"
    )
    group.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)


def _model_argument(p: argparse.ArgumentParser) -> None:
    """The model as an optional positional ``MODEL`` (``cnnviz layers vgg11``)."""
    p.add_argument("model_name", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    add_model_options(p, model_option=False)
    p.set_defaults(model=None)


def _drawing(p: argparse.ArgumentParser) -> None:
    """How maps are drawn: colours, opacity, sign, style and outlier clipping."""
    group = p.add_argument_group("drawing", "how the maps are drawn")
    group.add_argument(
        "--cmap", default="jet", help="matplotlib colormap for the maps (default jet; signed "
        "maps are always drawn in the diverging bwr)"
    )  # fmt: skip
    group.add_argument("--alpha", type=fraction, default=0.5, help="map opacity in [0, 1]")
    group.add_argument(
        "--sign",
        choices=SIGNS,
        default="auto",
        help="which evidence to show: the method's own (auto), for the class (positive), "
        "against it (negative), its magnitude (absolute), or both signs (all)",
    )
    group.add_argument(
        "--style",
        choices=values(MapStyle),
        default=MapStyle.OVERLAY.value,
        help="the map blended over the image (overlay), alone (heatmap), the image dimmed "
        "where the map is low (masked), or blended in proportion to the map (alpha)",
    )
    group.add_argument(
        "--outlier-percent",
        type=outlier_percent,
        default=None,
        metavar="P",
        help="saturate the brightest P %% of each map (default: the method's own, 2 for "
        "gradient maps, none for CAMs; 0: plain min-max)",
    )


def _targets(p: argparse.ArgumentParser, *, top_k: bool) -> None:
    p.add_argument(
        "--target",
        "-t",
        action="append",
        help="class index or name (default: the predicted class); "
        "repeat once per image for per-image targets",
    )
    if top_k:
        p.add_argument("--top-k", type=positive_int, default=None, help="explain the k best")


def _explaining(p: argparse.ArgumentParser, *, layer: bool, top_k: bool = True) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _targets(p, top_k=top_k)
    if layer:
        p.add_argument(
            "--layer",
            "-l",
            default=None,
            help="layer (dotted name or unique suffix; default: last spatial layer)",
        )
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="decoding processes (0: decode in the main process; default: automatic)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip images whose outputs in --out are complete and valid",
    )
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        metavar="N",
        help="explain with N processes on this machine, each a disjoint share of the batches "
        "(for several machines: torchrun --nnodes … -m cnnviz explain …)",
    )
    p.add_argument(
        "--store",
        choices=("files", "zarr"),
        default="files",
        help="files: PNG and NPY files per image (default); zarr: one chunked store "
        "OUT/results.zarr with results.csv, no files per image (read it with cnnviz.open_results)",
    )
    p.add_argument(
        "--store-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="the maps' dtype in the zarr store (default float16)",
    )
    p.add_argument(
        "--store-input-maps",
        action="store_true",
        help="also keep the maps upsampled to the input size in the zarr store",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option, repeatable: e.g. --option steps=256 for integrated-gradients, "
        "--option samples=50 for smoothgrad (numbers, true/false, or text)",
    )
    _drawing(p)


def _command(commands: Commands, name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
    p = commands.add_parser(name, help=text, description=text)
    p.set_defaults(func=handler)
    return p


# -- the commands ----------------------------------------------------------------------------


def _listing_commands(commands: Commands) -> None:
    """``models`` and ``methods``."""
    _command(commands, "models", cmd_models, "list the built-in models").add_argument(
        "--json", action="store_true"
    )
    _command(commands, "methods", cmd_methods, "list the explanation methods").add_argument(
        "--json", action="store_true"
    )


def _structure_commands(commands: Commands) -> None:
    """``layers`` and ``summary``."""
    text = "list every layer: name, alias, type, output shape, parameters"
    _model_argument(_command(commands, "layers", cmd_layers, text))
    text = "parameters, output shapes and mult-adds per module"
    p = _command(commands, "summary", cmd_summary, text)
    _model_argument(p)
    p.add_argument("--depth", type=non_negative_int, default=None, help="rows down to this depth")


def _filters_command(commands: Commands) -> None:
    p = _command(commands, "filters", cmd_filters, "draw a conv layer's filters (conv1 as RGB)")
    _model_argument(p)
    p.add_argument("--layer", "-l", default=None, help="conv layer (default: the first)")
    p.add_argument(
        "--scale",
        choices=values(FilterScale),
        default=FilterScale.PER_FILTER.value,
        help="stretch each filter to its own range, or all to one range",
    )
    p.add_argument(
        "--view",
        choices=values(DeepFilterView),
        default=DeepFilterView.CHANNEL_MEAN.value,
        help="deeper layers: channel-mean image or per-input-channel grid",
    )
    p.add_argument("--out", "-o", required=True)


def _activations_command(commands: Commands) -> None:
    text = "capture layers in one forward pass, draw channels"
    p = _command(commands, "activations", cmd_activations, text)
    p.add_argument("images", nargs="+")
    add_model_options(p)
    p.add_argument("--layers", required=True, help="comma-separated layer names")
    p.add_argument("--channels", type=positive_int, default=16, help="how many channels to draw")
    p.add_argument("--order", choices=values(ChannelOrder), default=ChannelOrder.FIRST.value)
    p.add_argument("--shared-scale", action="store_true", help="one colour scale for all")
    p.add_argument("--out", "-o", required=True)


def _explain_commands(commands: Commands) -> None:
    """``saliency``, ``gradcam`` and ``explain`` (any method)."""
    p = _command(commands, "saliency", cmd_explain, "gradient saliency (Simonyan et al. 2014)")
    add_model_options(p)
    _explaining(p, layer=False)
    p.add_argument("--signed", action="store_true", help="keep the gradient's sign")
    p.set_defaults(method="saliency")
    p = _command(commands, "gradcam", cmd_explain, "Grad-CAM (Selvaraju et al. 2017)")
    add_model_options(p)
    _explaining(p, layer=True)
    p.set_defaults(method="gradcam")
    p = _command(commands, "explain", cmd_explain, "any method from `cnnviz methods`")
    add_model_options(p)
    _explaining(p, layer=True)
    p.add_argument(
        "--method",
        default="gradcam",
        help="a name from `cnnviz methods`, or 'all' for every method and a "
        "comparison grid per image",
    )


def _report_command(commands: Commands) -> None:
    text = "the HTML report: predictions, structure, filters, activations, saliency, Grad-CAM"
    p = _command(commands, "report", cmd_report, text)
    p.add_argument("images", nargs="*")
    add_model_options(p)
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--demo", action="store_true", help="run on the bundled sample images")
    p.add_argument("--layers", default=None, help="activation layers (comma-separated)")
    p.add_argument(
        "--methods",
        default=None,
        help="methods compared side by side: comma-separated names, 'all' or 'none' "
        "(default: the fast CAM and gradient methods)",
    )
    p.add_argument(
        "--features", default=None, metavar="LAYER", help="add what LAYER's units want to see"
    )
    p.add_argument(
        "--feature-steps", type=positive_int, default=256, help="their optimisation steps"
    )
    _drawing(p)


def _evaluation_options(p: argparse.ArgumentParser) -> None:
    """The options ``evaluate`` and ``sanity`` share."""
    add_model_options(p)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--layer", "-l", default=None, help="layer for CAM methods (default: the last spatial)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap for the maps")


def _evaluate_command(commands: Commands) -> None:
    text = (
        "score explanation methods on a folder: deletion/insertion, Average Drop, ROAD, "
        "pointing games, sanity checks"
    )
    p = _command(commands, "evaluate", cmd_evaluate, text)
    p.add_argument("inputs", nargs="+", metavar="DIR", help="image folders or files")
    _evaluation_options(p)
    p.add_argument(
        "--methods",
        default="gradcam,saliency,random-map",
        help="comma-separated methods (see `cnnviz methods`), plus the references "
        "random-map, coarse-random-map and centre-map; every method is compared with "
        "random-map when it is among them (default gradcam,saliency,random-map)",
    )
    p.add_argument(
        "--boxes",
        default=None,
        help="ground truth (.json or .csv boxes or masks; docs/evaluation.md)",
    )
    p.add_argument(
        "--metrics",
        default="deletion,insertion,confidence,road,pointing,sanity",
        help="metric groups: deletion, insertion, confidence, road, pointing, sanity",
    )
    _evaluate_numbers(p)
    add_nproc_option(p, "evaluate", "images")


def _evaluate_numbers(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s numeric and closed-set options."""
    p.add_argument("--steps", type=positive_int, default=100, help="deletion/insertion steps")
    p.add_argument(
        "--baseline",
        choices=values(DeletionBaseline),
        default=DeletionBaseline.ZEROS.value,
        help="what deleted pixels become: zeros (model input), the image mean, or its blur",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance (px)")
    p.add_argument(
        "--road-percentages",
        default="10,30,50,70,90",
        help="ROAD removal percentages (default 10,30,50,70,90)",
    )
    p.add_argument(
        "--sanity-images",
        type=non_negative_int,
        default=2,
        help="images for the cascading randomisation test (default 2; 0: none)",
    )
    p.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=2000,
        help="bootstrap resamples for the 95 %% intervals (default 2000)",
    )


def _sanity_command(commands: Commands) -> None:
    text = "sanity checks on one image: parameter randomisation (cascading, independent)"
    p = _command(commands, "sanity", cmd_sanity, text)
    p.add_argument("image", help="one image file")
    _evaluation_options(p)
    p.add_argument(
        "--methods", default="gradcam,saliency", help="comma-separated methods (default both)"
    )
    p.add_argument(
        "--mode",
        type=comma_choices(SANITY_MODES),
        default=SANITY_MODES,
        help=f"{' or '.join(SANITY_MODES)}, or both comma-separated (default both)",
    )
    p.add_argument(
        "--target", "-t", default=None, help="class index or name (default: the predicted class)"
    )
    p.add_argument(
        "--data-randomization",
        action="store_true",
        help="also retrain on permuted labels and compare (shapes_vgg11 only)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept import-light so ``cnnviz --help`` is instant)."""
    parser = CnnvizArgumentParser(
        prog="cnnviz",
        description="See inside CNN image classifiers: structure, filters, activations, "
        "saliency and CAMs.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cnnviz {__version__}")
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="only warnings and errors, and the line per image explained: no progress bars",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _listing_commands,
        _structure_commands,
        _filters_command,
        _activations_command,
        _explain_commands,
        _report_command,
        _evaluate_command,
        _sanity_command,
    ):
        add(commands)
    add_features_command(commands, add_model_options)
    add_exemplars_command(commands, add_model_options)
    add_serve_command(commands, add_model_options)
    add_audit_command(commands)
    return parser
