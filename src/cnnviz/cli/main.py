"""The ``cnnviz`` command line: ``main(argv) -> int``; heavy imports happen inside commands.

Exit codes (also in the README):

* 0 — everything asked for was written;
* 1 — the run finished but some inputs failed (listed on stderr and in the manifest);
* 2 — bad input or usage: the message names the problem and the remedy;
* 3 — pretrained weights are needed but not available offline;
* 70 — an internal error (a bug: please report it; ``--debug`` shows the traceback);
* 130 — interrupted by Ctrl-C (``SIGINT``); 143 — stopped by ``SIGTERM``. Either way every file
  already written is complete, and ``--resume`` carries on where the run stopped.

Every message is one line on stderr starting with ``cnnviz:``; control characters in names
(a newline in a file name) are shown escaped, so one problem is always one line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from cnnviz.cli.commands import (
    EXIT_OK,
    cmd_activations,
    cmd_explain,
    cmd_filters,
    cmd_layers,
    cmd_methods,
    cmd_models,
    cmd_report,
    cmd_summary,
)
from cnnviz.errors import one_line

logger = logging.getLogger("cnnviz")

DEFAULT_MODEL = "efficientnet_lite0"
EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 70, 130  # 0 and 1: cnnviz.cli.commands
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the shell's convention for a SIGTERM'd process

Handler = Callable[[argparse.Namespace], int]

# -- parser ----------------------------------------------------------------------------------


def add_model_options(p: argparse.ArgumentParser, *, model_option: bool = True) -> None:
    """``--model``, ``--weights``, ``--device`` and ``--json``: the options every command shares."""
    if model_option:
        p.add_argument(
            "--model",
            "-m",
            default=DEFAULT_MODEL,
            help=f"model name (see `cnnviz models`; default {DEFAULT_MODEL})",
        )
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint file (.pth/.pt/.safetensors), or 'random'; "
        "default: the model's pretrained weights",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def _drawing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cmap", default="jet", help="matplotlib colormap for overlays (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")


def _explaining(p: argparse.ArgumentParser, *, layer: bool, top_k: bool = True) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument(
        "--target",
        "-t",
        action="append",
        help="class index or name (default: the predicted class); "
        "repeat once per image for per-image targets",
    )
    if top_k:
        p.add_argument("--top-k", type=int, default=None, help="explain the k best classes")
    if layer:
        p.add_argument(
            "--layer",
            "-l",
            default=None,
            help="layer (dotted name or unique suffix; default: last spatial layer)",
        )
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (0: decode in the main process; default: automatic)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip images whose outputs in --out are complete and valid",
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept import-light so ``cnnviz --help`` is instant)."""
    parser = argparse.ArgumentParser(
        prog="cnnviz",
        description="See inside CNN image classifiers: structure, filters, activations, "
        "saliency and CAMs.",
        epilog="Start with `cnnviz report --demo --out demo`. Exit codes: 0 ok, 1 some inputs "
        "failed, 2 bad input, 3 weights unavailable offline, 70 internal error, 130 interrupted "
        "(Ctrl-C), 143 terminated (SIGTERM).",
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
        add_model_options(p, model_option=False)
        p.set_defaults(model=None)
        if name == "summary":
            p.add_argument("--depth", type=int, default=None, help="rows down to this depth")
    p = add("filters", cmd_filters, "draw a conv layer's filters (conv1 as RGB)")
    p.add_argument("model_name", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    add_model_options(p, model_option=False)
    p.add_argument("--layer", "-l", default=None, help="conv layer (default: the first)")
    p.add_argument("--scale", choices=["per-filter", "global"], default="per-filter")
    p.add_argument(
        "--view",
        choices=["mean", "per-input"],
        default="mean",
        help="deeper layers: channel-mean image or per-input-channel grid",
    )
    p.add_argument("--out", "-o", required=True)
    p = add("activations", cmd_activations, "capture layers in one forward pass, draw channels")
    p.add_argument("images", nargs="+")
    add_model_options(p)
    p.add_argument("--layers", required=True, help="comma-separated layer names")
    p.add_argument("--channels", type=int, default=16, help="how many channels to draw")
    p.add_argument("--order", choices=["first", "top"], default="first")
    p.add_argument("--shared-scale", action="store_true", help="one colour scale for all")
    p.add_argument("--out", "-o", required=True)
    p = add("saliency", cmd_explain, "gradient saliency (Simonyan et al. 2014)")
    add_model_options(p)
    _explaining(p, layer=False)
    p.add_argument("--signed", action="store_true", help="keep the gradient's sign")
    p.set_defaults(method="saliency")
    p = add("gradcam", cmd_explain, "Grad-CAM (Selvaraju et al. 2017)")
    add_model_options(p)
    _explaining(p, layer=True)
    p.set_defaults(method="gradcam")
    p = add("explain", cmd_explain, "any method from `cnnviz methods`")
    add_model_options(p)
    _explaining(p, layer=True)
    p.add_argument(
        "--method",
        default="gradcam",
        help="a name from `cnnviz methods`, or 'all' for every method and a "
        "comparison grid per image",
    )
    p = add(
        "report",
        cmd_report,
        "the HTML report: predictions, structure, filters, activations, saliency, Grad-CAM",
    )
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
    _drawing(p)
    from cnnviz.cli.evaluate_commands import add_commands

    add_commands(sub)
    return parser


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "cnnviz: " + one_line(record.getMessage())


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
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
        with _sigterm_as_interrupt():
            return int(args.func(args))
    except _Terminated:
        _say("terminated (SIGTERM); files written so far are complete, --resume continues")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _say("interrupted; files written so far are complete, --resume continues")
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):
            _say(e.code.removeprefix("cnnviz: "))
            return EXIT_USAGE
        return int(e.code or 0)
    except Exception as e:
        return _report_error(e, debug=args.debug)


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so it unwinds (and cleans up) like Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(text: str) -> None:
    print("cnnviz: " + one_line(text), file=sys.stderr)


def _report_error(error: Exception, *, debug: bool) -> int:
    from cnnviz.errors import CnnvizError

    if isinstance(error, CnnvizError):
        _say(f"error: {error}")
        return error.exit_code
    if isinstance(error, (ValueError, TypeError, OSError)) and not debug:
        _say(f"error: {error}")
        return EXIT_USAGE
    if debug:
        raise error
    _say(
        f"internal error: {type(error).__name__}: {error} "
        "(please report it; rerun with --debug for the traceback)"
    )
    return EXIT_INTERNAL


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
