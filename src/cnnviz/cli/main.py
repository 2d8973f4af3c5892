"""The ``cnnviz`` command line: ``main(argv) -> int``; heavy imports happen inside commands.

Exit codes (:class:`~cnnviz.cli.exit_codes.ExitCode`, also in the README), by intent:

* 0 — everything asked for was written;
* 1 — the run finished but some inputs failed (listed on stderr and in the manifest);
* 2 — bad input or usage, a :class:`~cnnviz.errors.CnnvizError` (argparse's own errors
  included): the one-line message names the problem and the remedy;
* 3 — pretrained weights are needed but not available offline;
* 70 — any other exception: a bug in cnnviz (``--debug`` re-raises it for the traceback);
* 130 — interrupted by Ctrl-C (``SIGINT``); 143 — stopped by ``SIGTERM``. Either way every file
  already written is complete, and ``--resume`` carries on where the run stopped.

Every message is one line on stderr starting with ``cnnviz:``; control characters in names
(a newline in a file name) are shown escaped, so one problem is always one line. Log records are
written around a live progress bar, never inside it (:mod:`cnnviz.cli.console`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cnnviz.cli.console import cli_logging
from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.parser import build_parser
from cnnviz.cli.shared import say
from cnnviz.errors import CnnvizError, UsageError, speaking_cli

__all__ = ["build_parser", "main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or --version printed (argparse's errors raise UsageError)
        return e.code if isinstance(e.code, int) else ExitCode.OK
    except UsageError as e:
        return _report_error(e, debug=False)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for a relaunch (--nproc)
    try:
        with cli_logging(args.quiet), _sigterm_as_interrupt(), speaking_cli():
            return int(args.func(args))
    except _Terminated:
        say("terminated (SIGTERM); files written so far are complete, --resume continues")
        return ExitCode.TERMINATED
    except KeyboardInterrupt:
        say("interrupted; files written so far are complete, --resume continues")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.PIPE_CLOSED
    except Exception as e:
        return _report_error(e, debug=args.debug)


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing it at exit (to a reader that
    is gone) raises nothing more (the recipe of Python's ``signal`` documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test's StringIO)
        pass


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


def _report_error(error: Exception, *, debug: bool = False) -> int:
    """One line on stderr and the exit code: a :class:`CnnvizError`'s own (a problem with what
    the user handed cnnviz), else 70 (a bug; ``debug`` re-raises it for the traceback)."""
    if isinstance(error, CnnvizError):
        say(f"error: {error}")
        return error.exit_code
    if debug:
        raise error
    say(
        f"internal error: {type(error).__name__}: {error} — this is a bug in cnnviz; "
        "rerun with --debug for the traceback"
    )
    return ExitCode.INTERNAL


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
