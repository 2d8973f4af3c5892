"""The ``cnnviz`` command line: ``main(argv) -> int``; heavy imports happen inside commands.

Exit codes (also in the README):

* 0 — everything asked for was written;
* 1 — the run finished but some inputs failed (listed on stderr and in the manifest);
* 2 — bad input or usage: the message names the problem and the remedy;
* 3 — pretrained weights are needed but not available offline;
* 70 — an internal error (a bug: please report it; ``--debug`` shows the traceback);
* 130 — interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnviz.models import LoadedModel

logger = logging.getLogger("cnnviz")

DEFAULT_MODEL = "efficientnet_lite0"
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130

Handler = Callable[[argparse.Namespace], int]


# -- shared helpers --------------------------------------------------------------------------


def _load(args: argparse.Namespace, name: str | None = None) -> LoadedModel:
    from cnnviz.models import load_model

    return load_model(name or args.model, weights=args.weights, device=args.device)


def _emit_json(obj: object) -> None:
    from cnnviz.outputs import to_json_text

    sys.stdout.write(to_json_text(obj) + "\n")


def _inputs(raw: Sequence[str]) -> list[Path]:
    from cnnviz.errors import ImageLoadError
    from cnnviz.images import find_images

    paths: list[Path] = []
    for entry in raw:
        found = find_images(entry)
        if not found:
            raise ImageLoadError(f"{entry}: no image files found there (looked for common types).")
        paths.extend(found)
    return paths


def _target(args: argparse.Namespace) -> Any:
    from cnnviz.targets import TopK

    if getattr(args, "top_k", None):
        if args.target:
            raise SystemExit("cnnviz: error: give --target or --top-k, not both")
        return TopK(args.top_k)
    targets: list[str] = args.target or []
    if not targets:
        return None
    return targets[0] if len(targets) == 1 else list(targets)


def _finish(manifest: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    failures = manifest.get("failures", [])
    if args.json:
        _emit_json(manifest)
    else:
        print(f"Wrote {len(manifest.get('items', []))} result(s) to {out}/ (manifest.json)")
    for failure in failures:
        print(f"cnnviz: skipped {failure['input']}: {failure['error']}", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


# -- commands --------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from cnnviz.models import list_models

    infos = list_models()
    if args.json:
        _emit_json([info.__dict__ for info in infos])
        return EXIT_OK
    header = ("name", "architecture", "weights", "classes", "input", "offline")
    rows = [
        (
            i.name,
            i.architecture,
            i.weights_source,
            str(i.num_classes),
            "×".join(map(str, i.input_size)),
            "yes" if i.offline else "no",
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        "\nAlso: torchvision:NAME (any torchvision classifier), timm:NAME (any timm model), "
        "--weights FILE for your own checkpoint."
    )
    return EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    from cnnviz.methods.base import get_method, method_names

    methods = [get_method(n) for n in method_names()]
    if args.json:
        _emit_json(
            [
                {"name": m.name, "title": m.title, "paper": m.paper, "summary": m.summary,
                 "needs_layer": m.needs_layer}
                for m in methods
            ]
        )
        return EXIT_OK
    width = max(len(m.name) for m in methods)
    for m in methods:
        print(f"{m.name.ljust(width)}  {m.summary} ({m.paper})")
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    from cnnviz.summary import format_layer_table, layer_table

    loaded = _load(args, args.model_name)
    rows = layer_table(loaded.module, (3, *loaded.preprocessing.input_size))
    if args.json:
        _emit_json([row.__dict__ for row in rows])
    else:
        print(format_layer_table(rows))
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnviz.summary import format_summary, summarize

    loaded = _load(args, args.model_name)
    summary = summarize(loaded.module, (3, *loaded.preprocessing.input_size), depth=args.depth)
    if args.json:
        _emit_json(summary.to_dict())
    else:
        print(f"{loaded.name}: {loaded.architecture}; weights: {loaded.weights}")
        print(format_summary(summary))
    return EXIT_OK


def cmd_filters(args: argparse.Namespace) -> int:
    from cnnviz.filters import DeepFilterView, FilterScale, conv_weight, filter_tiles
    from cnnviz.layers import resolve_layer
    from cnnviz.outputs import Manifest, safe_stem, write_manifest, write_npy, write_png
    from cnnviz.pipeline import model_record
    from cnnviz.render import figure_to_png_bytes, filters_figure

    loaded = _load(args, args.model_name)
    layer = resolve_layer(loaded.module, args.layer) if args.layer else None
    if layer is None:
        from cnnviz.filters import first_conv_layer

        layer = first_conv_layer(loaded.module)
    weight = conv_weight(loaded.module, layer)
    scale, view = FilterScale(args.scale), DeepFilterView(args.view)
    tiles = filter_tiles(weight, scale=scale, view=view)
    out = Path(args.out)
    stem = safe_stem(layer)
    title = f"Filters of {layer} {tuple(weight.shape)} — {loaded.name}"
    fig = filters_figure(tiles, title=title, caption=f"{scale.value} scale, {view.value} view")
    from cnnviz.outputs import atomic_write_bytes

    atomic_write_bytes(out / f"{stem}.filters.png", figure_to_png_bytes(fig))
    write_png(out / f"{stem}.tiles.png", _tile_sheet(tiles))
    write_npy(out / f"{stem}.weight.npy", weight.float().numpy())
    files = {"figure": f"{stem}.filters.png", "tiles": f"{stem}.tiles.png",
             "weight": f"{stem}.weight.npy"}
    manifest = Manifest(
        command="filters",
        model=model_record(loaded),
        layer=layer,
        items=({"layer": layer, "weight_shape": list(weight.shape), "files": files,
                "scale": scale.value, "view": view.value},),
    )
    write_manifest(out, manifest)
    return _finish(manifest.to_dict(), out, args)


def _tile_sheet(tiles: Any) -> Any:
    from cnnviz.render import image_grid

    n = tiles.shape[0]
    cols = max(1, int(round(n**0.5)))
    return image_grid(list(tiles), ncols=cols, pad=1)


def cmd_activations(args: argparse.Namespace) -> int:
    from cnnviz.activations import ChannelOrder, capture_activations, select_channels
    from cnnviz.outputs import Manifest, atomic_write_bytes, safe_stem, write_manifest, write_npy
    from cnnviz.pipeline import load_inputs, model_record
    from cnnviz.render import activations_figure, figure_to_png_bytes

    loaded = _load(args)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    out = Path(args.out)
    failures: list[dict[str, Any]] = []
    items = []
    for item in load_inputs(loaded, _inputs(args.images), failures):
        captured = capture_activations(loaded.module, item.tensor.unsqueeze(0), layers)
        for name, act in captured.items():
            ids, chosen = select_channels(act[0], args.channels, ChannelOrder(args.order))
            stem = f"{item.stem}.{safe_stem(name)}"
            fig = activations_figure(
                chosen.float().cpu().numpy(),
                title=f"Activations of {name} {tuple(act.shape)} — {item.path.name}",
                channel_ids=ids,
                shared_scale=args.shared_scale,
            )
            atomic_write_bytes(out / f"{stem}.activations.png", figure_to_png_bytes(fig))
            write_npy(out / f"{stem}.activations.npy", act[0].float().cpu().numpy())
            items.append({"input": str(item.path), "layer": name, "shape": list(act.shape),
                          "channels": ids, "files": {"figure": f"{stem}.activations.png",
                                                     "raw": f"{stem}.activations.npy"}})
    manifest = Manifest(command="activations", model=model_record(loaded), items=tuple(items),
                        failures=tuple(failures),
                        extra={"order": args.order, "shared_scale": args.shared_scale})
    write_manifest(out, manifest)
    return _finish(manifest.to_dict(), out, args)


def cmd_explain(args: argparse.Namespace) -> int:
    from cnnviz.pipeline import ExplainSettings, explain_files

    loaded = _load(args)
    options: dict[str, Any] = {}
    if getattr(args, "signed", False):
        options["signed"] = True
    settings = ExplainSettings(
        method=args.method,
        layer=getattr(args, "layer", None),
        target=_target(args),
        options=options,
        cmap=args.cmap,
        alpha=args.alpha,
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    manifest = explain_files(
        loaded, _inputs(args.images), out, settings, command=args.command,
        progress=not args.quiet,
    )
    return _finish(manifest, out, args)


def cmd_report(args: argparse.Namespace) -> int:
    from cnnviz.report import ReportSettings, build_report

    out = Path(args.out)
    settings = ReportSettings(
        layers=[n.strip() for n in args.layers.split(",")] if args.layers else None,
        cmap=args.cmap,
        alpha=args.alpha,
    )
    loaded = _load(args)
    if args.demo:
        from cnnviz.report import demo_inputs

        paths, boxes = demo_inputs(loaded, out)
    else:
        if not args.images:
            raise SystemExit("cnnviz: error: give image files or folders, or --demo")
        paths, boxes = _inputs(args.images), {}
    result = build_report(loaded, paths, out, settings, boxes=boxes, progress=not args.quiet)
    if args.json:
        _emit_json(result)
    else:
        print(f"Report: {result['index']}")
    for failure in result.get("failures", []):
        print(f"cnnviz: skipped {failure['input']}: {failure['error']}", file=sys.stderr)
    return EXIT_PARTIAL if result.get("failures") else EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, model_option: bool = True) -> None:
    if model_option:
        p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                       help=f"model name (see `cnnviz models`; default {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None,
                   help="checkpoint file (.pth/.pt/.safetensors), or 'random'; "
                        "default: the model's pretrained weights")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def _drawing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cmap", default="jet", help="matplotlib colormap for overlays (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")


def _explaining(p: argparse.ArgumentParser, *, layer: bool, top_k: bool = True) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--target", "-t", action="append",
                   help="class index or name (default: the predicted class); "
                        "repeat once per image for per-image targets")
    if top_k:
        p.add_argument("--top-k", type=int, default=None, help="explain the k best classes")
    if layer:
        p.add_argument("--layer", "-l", default=None,
                       help="layer (dotted name or unique suffix; default: last spatial layer)")
    p.add_argument("--batch-size", type=int, default=8)
    _drawing(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept import-light so ``cnnviz --help`` is instant)."""
    parser = argparse.ArgumentParser(
        prog="cnnviz",
        description="See inside CNN image classifiers: structure, filters, activations, "
        "saliency and CAMs.",
        epilog="Start with `cnnviz report --demo --out demo`. Exit codes: 0 ok, 1 some inputs "
        "failed, 2 bad input, 3 weights unavailable offline, 70 internal error, 130 interrupted.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=handler)
        return p

    p = add("models", cmd_models, "list the built-in models")
    p.add_argument("--json", action="store_true")
    p = add("methods", cmd_methods, "list the explanation methods")
    p.add_argument("--json", action="store_true")
    for name, handler, text in (
        ("layers", cmd_layers, "list every layer: name, alias, type, output shape, parameters"),
        ("summary", cmd_summary, "parameters, output shapes and mult-adds per module"),
    ):
        p = add(name, handler, text)
        p.add_argument("model_name", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
        _common(p, model_option=False)
        p.set_defaults(model=None)
        if name == "summary":
            p.add_argument("--depth", type=int, default=None, help="rows down to this depth")
    p = add("filters", cmd_filters, "draw a conv layer's filters (conv1 as RGB)")
    p.add_argument("model_name", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    _common(p, model_option=False)
    p.add_argument("--layer", "-l", default=None, help="conv layer (default: the first)")
    p.add_argument("--scale", choices=["per-filter", "global"], default="per-filter")
    p.add_argument("--view", choices=["mean", "per-input"], default="mean",
                   help="deeper layers: channel-mean image or per-input-channel grid")
    p.add_argument("--out", "-o", required=True)
    p = add("activations", cmd_activations, "capture layers in one forward pass, draw channels")
    p.add_argument("images", nargs="+")
    _common(p)
    p.add_argument("--layers", required=True, help="comma-separated layer names")
    p.add_argument("--channels", type=int, default=16, help="how many channels to draw")
    p.add_argument("--order", choices=["first", "top"], default="first")
    p.add_argument("--shared-scale", action="store_true", help="one colour scale for all")
    p.add_argument("--out", "-o", required=True)
    p = add("saliency", cmd_explain, "gradient saliency (Simonyan et al. 2014)")
    _common(p)
    _explaining(p, layer=False)
    p.add_argument("--signed", action="store_true", help="keep the gradient's sign")
    p.set_defaults(method="saliency")
    p = add("gradcam", cmd_explain, "Grad-CAM (Selvaraju et al. 2017)")
    _common(p)
    _explaining(p, layer=True)
    p.set_defaults(method="gradcam")
    p = add("explain", cmd_explain, "any method from `cnnviz methods`")
    _common(p)
    _explaining(p, layer=True)
    p.add_argument("--method", default="gradcam")
    p = add("report", cmd_report, "the HTML report: predictions, structure, filters, "
            "activations, saliency, Grad-CAM")
    p.add_argument("images", nargs="*")
    _common(p)
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--demo", action="store_true", help="run on the bundled sample images")
    p.add_argument("--layers", default=None, help="activation layers (comma-separated)")
    _drawing(p)
    from cnnviz.evaluate_cli import add_commands

    add_commands(sub)
    return parser


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cnnviz: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if args.version:
        from cnnviz import __version__

        print(f"cnnviz {__version__}")
        return EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    for flag in ("quiet",):
        setattr(args, flag, getattr(args, flag, False))
    _configure_logging(args.quiet)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("cnnviz: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_USAGE
        return int(e.code or 0)
    except Exception as e:
        return _report_error(e, debug=args.debug)


def _report_error(error: Exception, *, debug: bool) -> int:
    from cnnviz.errors import CnnvizError

    if isinstance(error, CnnvizError):
        print(f"cnnviz: error: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, (ValueError, TypeError, FileNotFoundError)) and not debug:
        print(f"cnnviz: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if debug:
        raise error
    print(
        f"cnnviz: internal error: {type(error).__name__}: {error} "
        "(please report it; rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
