"""What the command line writes while a run is live: log lines and one line per image explained.

Every line goes through :func:`write_line`, which is ``tqdm.write``: a live progress bar (cnnviz
draws them on stderr with tqdm) is cleared, the line written, and the bar redrawn below it, so a
message never lands inside a bar. :func:`cli_logging` routes logging that way for the length of a
command: ``cnnviz``'s own records as ``cnnviz: message`` (INFO and up, WARNING with ``-q``), other
libraries' as ``cnnviz: library: message`` (WARNING and up; ERROR with ``-q``, which also turns
off the Hugging Face hub's progress bars and cnnviz's own, :mod:`cnnviz.progress`). Everything is
restored afterwards, so ``main(argv)`` called in-process leaves logging as it found it.

:func:`image_line` is the line an explain run prints on stdout for each image it wrote — also with
``-q`` and when stderr is not a terminal, where no bar is drawn (it is what was written, not
progress); not with ``--json``, whose stdout is the JSON alone. It names the input, the targets
with their softmax probability, the method (and its layer), and the main file written::

    coffee.jpg → espresso 95.4 % · Grad-CAM @ bn2 → out/coffee.gradcam.0-espresso.png

With ``--top-k 5`` three targets are named and the rest counted, and so are the other overlays;
with ``--method all`` the methods are counted and the comparison grid named::

    coffee.jpg → espresso 95.4 %, cup 1.4 %, consomme 0.9 % (+2 more) · Grad-CAM @ bn2
        → out/coffee.gradcam.0-espresso.png (+4 more)       [one line, wrapped here]
    coffee.jpg → espresso 95.4 % · 20 methods (CAMs @ bn2) → out/coffee.grid.png
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from cnnviz.errors import one_line
from cnnviz.progress import disabled

THIRD_PARTY_LOGGERS = ("huggingface_hub", "timm", "urllib3", "filelock", "matplotlib", "PIL")
"""Libraries whose warnings ``-q`` silences (their errors still show)."""

_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_VERBOSITY": "error"}
_SHOWN_TARGETS = 3  # targets named on an image's line; more are counted


def write_line(text: str, file: TextIO) -> None:
    """``text`` and a newline on ``file``; a live tqdm bar is cleared first and redrawn after."""
    # lazy: `cnnviz --help` stays instant; a bar can only be live once a command imported tqdm
    from tqdm import tqdm

    tqdm.write(text, file=file)
    file.flush()


class OneLineFormatter(logging.Formatter):
    """``cnnviz: message`` for cnnviz's records, ``cnnviz: library: message`` for the others;
    control characters escaped, so one record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        library = record.name.partition(".")[0]
        if library != "cnnviz":
            message = f"{library}: {message}"
        return "cnnviz: " + one_line(message)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """A stream handler that writes through :func:`write_line`, around any live progress bar."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(OneLineFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record), self.stream)
        except RecursionError:  # logging's own rule: never swallow a recursion error
            raise
        except Exception:  # a failing console must not stop the run (logging's convention)
            self.handleError(record)


@contextmanager
def cli_logging(quiet: bool, stream: TextIO | None = None) -> Iterator[None]:
    """Route logging to ``stream`` (default: stderr) as one-line records for the block; with
    ``quiet`` no progress bar is drawn either (:func:`cnnviz.progress.disabled`)."""
    handler = ConsoleHandler(stream or sys.stderr)
    ours, root = logging.getLogger("cnnviz"), logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate)
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    environment = {name: os.environ.get(name) for name in _QUIET_ENV}
    ours.handlers[:] = [handler]
    ours.setLevel(logging.WARNING if quiet else logging.INFO)
    ours.propagate = False
    others = ConsoleHandler(stream or sys.stderr)
    others.setLevel(logging.WARNING)
    root.addHandler(others)
    if quiet:
        os.environ.update(_QUIET_ENV)  # read when huggingface_hub is imported
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with disabled(quiet):
            yield
    finally:
        root.removeHandler(others)
        ours.handlers[:], ours.level, ours.propagate = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def print_line(text: str) -> None:
    """One line on stdout (control characters escaped), around any live progress bar."""
    write_line(one_line(text), sys.stdout)


def _percent(probability: float | None) -> str:
    return "" if probability is None else f" {100 * probability:.1f} %"


def _targets(items: Sequence[Mapping[str, Any]]) -> str:
    """``espresso 90.4 %, cup 3.1 %`` for the first method's targets (all methods share them)."""
    first = [item for item in items if item["method"] == items[0]["method"]]
    named = [f"{item['target_name']}{_percent(item['probability'])}" for item in first]
    more = len(named) - _SHOWN_TARGETS
    return ", ".join(named[:_SHOWN_TARGETS]) + (f" (+{more} more)" if more > 0 else "")


def _methods(items: Sequence[Mapping[str, Any]]) -> str:
    """``Grad-CAM @ bn2`` for one method; ``18 methods (CAMs @ bn2)`` for several."""
    # lazy: the method registry loads torch; `cnnviz --help` must stay instant
    from cnnviz.methods.registry import get_method

    methods = list(dict.fromkeys(item["method"] for item in items))
    layers = list(dict.fromkeys(item["layer"] for item in items if item["layer"] is not None))
    if len(methods) == 1:
        title = get_method(methods[0]).title
        return f"{title} @ {layers[0]}" if layers else title
    at = f" (CAMs @ {', '.join(layers)})" if layers else ""
    return f"{len(methods)} methods{at}"


def image_line(items: Sequence[Mapping[str, Any]], out: Path) -> str:
    """The line for one image from its manifest items (one per method and target), e.g.
    ``coffee.jpg → espresso 90.4 % · Grad-CAM @ bn2 → out/coffee.gradcam.0-espresso.png``.

    Several targets are listed (three at most, then counted); several methods are counted, with
    their CAM layer. The file named is the comparison grid when there is one, else the first
    overlay, followed by ``(+N more)`` when the image has N other overlays.
    """
    if not items:
        raise ValueError("an image line needs the image's items; got none")
    files = items[0]["files"]
    main = files.get("grid") or files["overlay"]
    more = 0 if "grid" in files else len(items) - 1
    where = f"{out / main}" + (f" (+{more} more)" if more else "")
    name = Path(items[0]["input"]).name
    return f"{name} → {_targets(items)} · {_methods(items)} → {where}"
