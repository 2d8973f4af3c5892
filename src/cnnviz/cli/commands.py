"""The ``cnnviz`` commands: one handler per sub-command, composing the library's stages.

Each handler takes the parsed arguments and returns the exit code; heavy imports happen inside
the handlers, so building the parser (:mod:`cnnviz.cli`) stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from cnnviz.cli.console import image_line, print_line
from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import (
    emit_json,
    finish,
    input_paths,
    load,
    make_out_dir,
    out_path,
    parse_key_values,
    relaunched,
    split_list,
    writing_into,
)
from cnnviz.errors import LayerError, UsageError
from cnnviz.options import ChannelOrder, DeepFilterView, FilterScale


def _target(args: argparse.Namespace) -> Any:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.capture.targets import TopK

    if getattr(args, "top_k", None) is not None:
        if args.target:
            raise UsageError("give --target or --top-k, not both.")
        return TopK(args.top_k)
    targets: list[str] = args.target or []
    if not targets:
        return None
    return targets[0] if len(targets) == 1 else list(targets)


# -- commands --------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.models import list_models

    infos = list_models()
    if args.json:
        emit_json([info.__dict__ for info in infos])
        return ExitCode.OK
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
        "your own class as path/file.py:Class or package.module:Class (--model-arg KEY=VALUE), "
        "torchscript:FILE, export:FILE.pt2; --weights FILE for your checkpoint (a new head or "
        "stem is read from it), --class-names FILE for its classes."
    )
    return ExitCode.OK


def cmd_methods(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.methods.registry import get_method, method_names

    methods = [get_method(n) for n in method_names()]
    if args.json:
        emit_json(
            [
                {
                    "name": m.name,
                    "title": m.title,
                    "paper": m.paper,
                    "summary": m.summary,
                    "needs_layer": m.needs_layer,
                }
                for m in methods
            ]
        )
        return ExitCode.OK
    width = max(len(m.name) for m in methods)
    for m in methods:
        print(f"{m.name.ljust(width)}  {m.summary} ({m.paper})")
    return ExitCode.OK


def cmd_layers(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.inspect.summary import layer_table
    from cnnviz.inspect.tables import format_layer_table

    loaded = load(args, args.model_name, data=False, structure_only=True)
    rows = layer_table(loaded.module, loaded.preprocessing.input_shape)
    if args.json:
        emit_json([row.__dict__ for row in rows])
    else:
        print(format_layer_table(rows))
    return ExitCode.OK


def cmd_summary(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.inspect.summary import summarize
    from cnnviz.inspect.tables import format_summary

    loaded = load(args, args.model_name, data=False, structure_only=True)
    summary = summarize(loaded.module, loaded.preprocessing.input_shape, depth=args.depth)
    if args.json:
        emit_json(summary.to_dict())
    else:
        print(f"{loaded.name}: {loaded.architecture}; weights: {loaded.weights}")
        print(format_summary(summary))
    return ExitCode.OK


def cmd_filters(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.capture.layers import resolve_layer
    from cnnviz.inspect.filters import conv_weight, filter_tiles, tiles_per_filter
    from cnnviz.outputs.files import atomic_write_bytes, safe_stem, write_npy, write_png
    from cnnviz.outputs.manifest import Manifest, model_record, write_manifest
    from cnnviz.render.figures import figure_to_png_bytes, filters_figure
    from cnnviz.render.grids import tile_sheet

    loaded = load(args, args.model_name)
    layer = resolve_layer(loaded.module, args.layer) if args.layer else None
    if layer is None:
        # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
        from cnnviz.inspect.filters import first_conv_layer

        layer = first_conv_layer(loaded.module)
    weight = conv_weight(loaded.module, layer)
    scale, view = FilterScale(args.scale), DeepFilterView(args.view)
    tiles = filter_tiles(weight, scale=scale, view=view)
    out = make_out_dir(args)
    stem = safe_stem(layer)
    title = f"Filters of {layer} {tuple(weight.shape)} — {loaded.name}"
    per_filter = tiles_per_filter(weight, view)
    caption = f"{scale.value} scale" + (f", {view.value} view" if weight.shape[1] != 3 else "")
    total = int(weight.shape[0])
    fig = filters_figure(
        tiles, title=title, caption=caption, total=total, tiles_per_filter=per_filter
    )
    files = {
        "figure": f"{stem}.filters.png",
        "tiles": f"{stem}.tiles.png",
        "weight": f"{stem}.weight.npy",
    }
    with writing_into(out):
        atomic_write_bytes(out / files["figure"], figure_to_png_bytes(fig))
        write_png(out / files["tiles"], tile_sheet(tiles))
        write_npy(out / files["weight"], weight.float().numpy())
    manifest = Manifest(
        command="filters",
        model=model_record(loaded),
        layer=layer,
        items=(
            {
                "layer": layer,
                "weight_shape": list(weight.shape),
                "filters_shown": len(tiles) // per_filter,
                "filters_total": total,
                "files": files,
                "scale": scale.value,
                "view": view.value,
            },
        ),
    )
    with writing_into(out):
        write_manifest(out, manifest)
    return finish(manifest.to_dict(), out, args)


def _check_drawable(captured: dict[str, Any], model_name: str) -> None:
    """Refuse, in the command line's terms, a ``--layers`` layer whose output has no channels of
    an (H, W) map to draw (a classifier's (1, 1000), a transformer's tokens)."""
    for name, act in captured.items():
        if act.dim() != 4:
            raise LayerError(
                f"layer {name} outputs {tuple(act.shape)}: no spatial channels to draw; pick a "
                f"conv layer from `cnnviz layers {model_name}` with --layers."
            )


def cmd_activations(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.inputs.decode import load_inputs
    from cnnviz.inspect.activations import capture_activations, select_channels
    from cnnviz.outputs.files import atomic_write_bytes, safe_stem, write_npy
    from cnnviz.outputs.manifest import Manifest, model_record, write_manifest
    from cnnviz.render.figures import activations_figure, figure_to_png_bytes

    layers = split_list(args.layers, "--layers")
    paths = input_paths(args.images)
    loaded = load(args)
    out = make_out_dir(args)
    failures: list[dict[str, Any]] = []
    items = []
    for item in load_inputs(loaded, paths, failures):
        captured = capture_activations(loaded.module, item.tensor.unsqueeze(0), layers)
        _check_drawable(captured, loaded.name)
        for name, act in captured.items():
            ids, chosen = select_channels(act[0], args.channels, ChannelOrder(args.order))
            stem = f"{item.stem}.{safe_stem(name)}"
            fig = activations_figure(
                chosen.float().cpu().numpy(),
                title=f"Activations of {name} {tuple(act.shape)} — {item.path.name}",
                channel_ids=ids,
                shared_scale=args.shared_scale,
            )
            with writing_into(out):
                atomic_write_bytes(out / f"{stem}.activations.png", figure_to_png_bytes(fig))
                write_npy(out / f"{stem}.activations.npy", act[0].float().cpu().numpy())
            items.append(
                {
                    "input": str(item.path),
                    "layer": name,
                    "shape": list(act.shape),
                    "channels": ids,
                    "files": {
                        "figure": f"{stem}.activations.png",
                        "raw": f"{stem}.activations.npy",
                    },
                }
            )
    manifest = Manifest(
        command="activations",
        model=model_record(loaded),
        items=tuple(items),
        failures=tuple(failures),
        extra={"order": args.order, "shared_scale": args.shared_scale},
    )
    with writing_into(out):
        write_manifest(out, manifest)
    return finish(manifest.to_dict(), out, args)


def parse_method_options(items: Sequence[str]) -> dict[str, Any]:
    """``--option`` values: ``["steps=256", "signed=true"]`` → ``{"steps": 256, "signed": True}``
    (see :func:`~cnnviz.cli.shared.parse_key_values`)."""
    return parse_key_values(items, "--option", example="steps=256")


def cmd_explain(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    import torch.multiprocessing

    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.runs.distributed import current_ranks, process_group

    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.runs.explain import ALL_METHODS, ExplainSettings, explain_files

    # Decoding workers hand tensors over through shared-memory files rather than passed file
    # descriptors, so a SIGTERM mid-run cannot leave the descriptor-sharing thread printing a
    # traceback. This is the CLI's own process, so the global setting is ours to choose.
    torch.multiprocessing.set_sharing_strategy("file_system")  # type: ignore[no-untyped-call]  # untyped in torch

    options = parse_method_options(getattr(args, "option", []))
    if getattr(args, "signed", False):
        options["signed"] = True
    if args.method.strip().lower() != ALL_METHODS:
        # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
        from cnnviz.methods.registry import make_method

        make_method(args.method, **options)  # bad names and options fail before loading
    elif options:
        raise UsageError("--option applies to one method; drop it or choose one with --method.")
    status = relaunched(args)  # --nproc N: as N ranks, each a share of the batches
    if status is not None:
        return status
    ranks = current_ranks()
    paths = input_paths(args.images)
    loaded = load(args)
    settings = ExplainSettings(
        method=args.method,
        layer=getattr(args, "layer", None),
        target=_target(args),
        options=options,
        cmap=args.cmap,
        alpha=args.alpha,
        sign=args.sign,
        style=args.style,
        outlier_percent=args.outlier_percent,
        batch_size=args.batch_size,
        num_workers=args.workers,
        resume=args.resume,
        store=args.store,
        store_dtype=args.store_dtype,
        store_input_maps=args.store_input_maps,
    )
    out = out_path(args)

    def say_image(items: list[dict[str, Any]]) -> None:
        print_line(image_line(items, out))

    # One line per image on stdout, with -q too (what was written, not progress); not with
    # --json (stdout holds the JSON only, which lists the same items).
    with writing_into(out), process_group(ranks, args.device):
        manifest = explain_files(
            loaded,
            paths,
            out,
            settings,
            command=args.command,
            progress=not args.quiet,
            on_image=None if args.json else say_image,
            ranks=ranks,
        )
    if not ranks.leader:  # rank 0 prints the run's summary; the exit code is each rank's
        failed = manifest.get("extra", {}).get("run", {}).get("failed", 0)
        return ExitCode.PARTIAL if failed else ExitCode.OK
    if args.store == "zarr":
        store = manifest.get("extra", {}).get("store", {})
        done = f"{store.get('done', 0)} of {store.get('images', 0)} image(s) complete"
        what = f"results.zarr ({done})"
        return finish(manifest, out, args, what=what, files=("results.csv", "manifest.json"))
    return finish(manifest, out, args)


def _compared_methods(text: str | None) -> tuple[str, ...]:
    """The report's "methods compared": default set, ``none``, ``all`` or a comma list."""
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.methods.registry import get_method, method_names
    from cnnviz.runs.report import COMPARED_METHODS

    if text is None:
        return COMPARED_METHODS
    if text.strip().lower() == "none":
        return ()
    if text.strip().lower() == "all":
        return tuple(method_names())
    return tuple(get_method(name).name for name in text.split(",") if name.strip())


def cmd_report(args: argparse.Namespace) -> int:
    # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
    from cnnviz.runs.report import ReportSettings, build_report

    if not args.demo and not args.images:
        raise UsageError("give image files or folders, or --demo.")
    settings = ReportSettings(
        layers=split_list(args.layers, "--layers") if args.layers is not None else None,
        cmap=args.cmap,
        alpha=args.alpha,
        sign=args.sign,
        style=args.style,
        outlier_percent=args.outlier_percent,
        methods=_compared_methods(args.methods),
        features=args.features,
        feature_steps=args.feature_steps,
    )
    paths = [] if args.demo else input_paths(args.images)
    loaded = load(args)
    out = make_out_dir(args)
    with writing_into(out):
        if args.demo:
            # lazy: the stages load torch and NumPy; `cnnviz --help` must stay instant
            from cnnviz.runs.report import demo_inputs

            paths, boxes = demo_inputs(loaded, out)
        else:
            boxes = {}
        result = build_report(loaded, paths, out, settings, boxes=boxes, progress=not args.quiet)
    if args.json:
        emit_json(result)
    else:
        print(f"Report: {result['index']}")
    return ExitCode.PARTIAL if result.get("failures") else ExitCode.OK
