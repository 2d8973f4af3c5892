"""``cnnviz serve``: the explorer, a local web app on the model of your choice.

``cnnviz serve [IMAGES…|DIR] [--model M] [--weights W] [--class-names F] [--port P] [--open]``
prints the URL with its access token (as Jupyter does) and serves until Ctrl-C. Every model
option of the other commands works; the bundled photos are always offered too.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.shared import input_paths, load, say
from cnnviz.cli.values import non_negative_int

if TYPE_CHECKING:
    from cnnviz.serve.server import Explorer


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_serve_command(commands: Any, add_model_options: Callable[..., None]) -> None:
    """Register ``serve`` on the parser's sub-commands (``add_model_options`` is the parser's,
    passed in so that this module does not import the parser that imports it)."""
    text = "the explorer: a local web page to ask the model the next question at once"
    p = commands.add_parser("serve", help=text, description=text)
    p.set_defaults(func=cmd_serve)
    p.add_argument(
        "images", nargs="*", metavar="IMAGES", help="image files or folders (default: none; "
        "the bundled photos are always there)"
    )  # fmt: skip
    add_model_options(p)
    p.add_argument("--port", "-p", type=non_negative_int, default=8765, help="0: a free port")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; another address "
        "makes the explorer reachable from the network, protected by its token only)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument(
        "--cache-mb", type=_megabytes, default=512.0, help="memory for cached results (MB)"
    )
    p.add_argument("--max-upload-mb", type=_megabytes, default=20.0, help="largest upload (MB)")
    p.add_argument(
        "--max-upload-mp", type=_megabytes, default=40.0, help="most pixels of an upload (millions)"
    )
    p.add_argument(
        "--no-samples", action="store_true", help="offer only the given images, not the bundled"
    )


def explorer_from_args(args: argparse.Namespace) -> Explorer:
    """The explorer the command line asks for: its images, model (every model option) and
    settings, bound to its port but not yet serving."""
    # lazy: the stages load torch, uvicorn and Starlette; `cnnviz --help` must stay instant
    from cnnviz.serve.server import ServeSettings, make_explorer

    paths = input_paths(args.images)
    loaded = load(args)
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        cache_mb=args.cache_mb,
        max_upload_mb=args.max_upload_mb,
        max_upload_mp=args.max_upload_mp,
        samples=not args.no_samples,
    )
    return make_explorer(loaded, paths, settings)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, bind the port, print the URL, serve until Ctrl-C."""
    explorer = explorer_from_args(args)
    count = len(explorer.session.images())
    say(f"explorer of {explorer.session.loaded.name} on {count} image(s); Ctrl-C stops it. Open:")
    print(f"    {explorer.url}", flush=True)
    if args.open:
        # lazy: a browser is opened only when asked
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(explorer.url,)).start()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has shut down and passes it on
        explorer.serve_forever()
    say("explorer stopped")
    return ExitCode.OK
