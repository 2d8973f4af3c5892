"""Progress on long work: the one place that decides whether, and how, a bar is drawn.

Every long operation of cnnviz (a folder explained, ``--method all``, the sanity checks, the
phases of ``evaluate``, the forward batches of Score-CAM, Ablation-CAM, occlusion, RISE and
Integrated Gradients, training ``shapes_vgg11``) reports through :func:`progress`, through
:func:`track` over an iterable, or through :func:`status` for a phase without counted steps::

    with progress(len(layers) * len(methods), "sanity cascading", unit="map") as bar:
        for layer in layers:
            for method in methods:
                bar.note(f"{layer} · {method}")
                ...
                bar.update()

How it is drawn (:func:`drawing`):

* in a Jupyter kernel: tqdm's notebook widget when ipywidgets is importable, else tqdm's plain
  text on stderr — never tqdm's "IProgress not found" warning (``tqdm.auto`` is not used);
* on a terminal (stderr is a TTY): tqdm on stderr, drawn at most every
  :data:`MIN_INTERVAL_SECONDS` and redrawn every :data:`REFRESH_SECONDS` by a small daemon thread,
  so the elapsed time keeps moving while one step is long;
* otherwise (stderr is a file or a pipe), or inside :func:`disabled` (``cnnviz -q``, the runs'
  ``progress=False``): nothing. What a run must say even then (the command line's line per image
  explained) is not progress and does not come through here.

Nested bars (a method's batches inside ``--method all`` inside a folder) take the next free line
and are cleared when they end (``leave=False``); a bar with a ``delay`` appears only once its work
has taken that long, so quick steps stay quiet. Torch-free; tqdm is imported on the first bar.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

__all__ = [
    "Bar",
    "Drawing",
    "batch_progress",
    "batches",
    "disabled",
    "drawing",
    "progress",
    "status",
    "track",
]

MIN_INTERVAL_SECONDS = 0.2
"""The shortest time between two draws of a bar that is updated quickly."""
REFRESH_SECONDS = 1.0
"""How often a live terminal bar is redrawn when nothing updates it."""
INNER_DELAY_SECONDS = 0.5
"""How long a method's own batches run before their bar appears (quick ones never show one)."""

_Item = TypeVar("_Item")


class Drawing(enum.Enum):
    """How progress is drawn in this process now."""

    OFF = "off"
    """Nothing: progress is disabled, or stderr is not a terminal outside a notebook."""
    TERMINAL = "terminal"
    """tqdm's text bar on stderr, a terminal."""
    WIDGET = "widget"
    """tqdm's notebook widget (a Jupyter kernel with ipywidgets)."""
    TEXT = "text"
    """tqdm's text bar on stderr in a Jupyter kernel without ipywidgets."""


class _Switch:
    """Whether progress may be drawn at all (:func:`disabled` turns it off for a block)."""

    enabled = True


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (notebook, JupyterLab, VS Code, Colab).

    Only looks at modules already imported: IPython is never imported here.
    """
    if "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def widgets_available() -> bool:
    """Whether tqdm's notebook widget can be drawn (ipywidgets importable), without a warning."""
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # lazy: only a notebook kernel asks; tqdm.notebook imports ipywidgets and IPython
        from tqdm import notebook
    return getattr(notebook, "IProgress", None) is not None


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(callable(isatty) and isatty())
    except (ValueError, OSError):  # a closed or detached stream is not a terminal
        return False


def drawing() -> Drawing:
    """How a bar opened now would be drawn (see the module docstring)."""
    if not _Switch.enabled:
        return Drawing.OFF
    if in_notebook():
        return Drawing.WIDGET if widgets_available() else Drawing.TEXT
    return Drawing.TERMINAL if _stderr_is_terminal() else Drawing.OFF


@contextmanager
def disabled(when: bool = True) -> Iterator[None]:
    """No bar is drawn inside the block (when ``when`` is true); the setting is restored after.

    Example (a notebook cell that should stay quiet)::

        from cnnviz.progress import disabled

        with disabled():
            cnnviz.explain(model, images, "scorecam")
    """
    saved = _Switch.enabled
    if when:
        _Switch.enabled = False
    try:
        yield
    finally:
        _Switch.enabled = saved


class Bar:
    """One progress bar, or none: every call costs next to nothing when progress is off.

    A bar with a ``delay`` is made (a tqdm instance) only once its work has taken that long, so
    nothing — not even a log line written around live bars — draws it before; its elapsed time
    still counts from the start of the work.
    """

    def __init__(self, kind: Drawing = Drawing.OFF, options: dict[str, Any] | None = None) -> None:
        self._kind = kind
        self._options = dict(options or {})
        self._delay = float(self._options.pop("delay", 0.0))
        self._start = time.time()
        self._bar: Any | None = None
        self._lock = threading.Lock()  # the refresher may make the bar while the run updates it
        self._closed = False
        self.n = 0
        """The steps done so far (counted when nothing is drawn too)."""
        if self._delay <= 0:
            self._make()

    @property
    def drawn(self) -> bool:
        """Whether this bar is drawn, or will be once its delay has passed."""
        return self._kind is not Drawing.OFF

    def _make(self) -> Any | None:
        """The tqdm instance, made now if it is due; ``None`` while it is not (or never is)."""
        if self._bar is not None or self._kind is Drawing.OFF or self._closed:
            return self._bar
        if time.time() < self._start + self._delay:
            return None
        with self._lock:
            if self._bar is None and not self._closed:
                bar = _tqdm(self._kind, {**self._options, "initial": self.n})
                if self._delay > 0:
                    bar.start_t = min(bar.start_t, self._start)  # elapsed since the work began
                    bar.refresh()
                self._bar = bar
        return self._bar

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        self.n += n
        bar = self._bar
        if bar is not None:
            bar.update(n)
        else:
            self._make()

    def set_total(self, total: int | None) -> None:
        """Say how many steps there are, once that is known."""
        self._options["total"] = total
        bar = self._make()
        if bar is not None:
            bar.total = total
            bar.refresh()

    def describe(self, text: str) -> None:
        """Set the bar's description (what it counts, e.g. the method running now)."""
        self._options["desc"] = text
        bar = self._make()
        if bar is not None:
            bar.set_description(text)

    def note(self, text: str) -> None:
        """Set the text after the counts (the step under way, e.g. ``conv5_2 · Grad-CAM``)."""
        self._options["postfix"] = text
        bar = self._make()
        if bar is not None:
            bar.set_postfix_str(text)

    def redraw(self) -> None:
        """Draw the bar now (and make it, once its delay has passed)."""
        bar = self._make()
        if bar is not None:
            bar.refresh()

    def close(self) -> None:
        """Finish the bar: left on screen with ``leave=True``, cleared otherwise."""
        self._closed = True
        with self._lock:
            if self._bar is not None:
                self._bar.close()


class _Refresher:
    """A daemon thread that redraws the live terminal bars every :data:`REFRESH_SECONDS`; it
    stops when none is left and starts again with the next."""

    def __init__(self) -> None:
        self._bars: list[Bar] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, bar: Bar) -> None:
        with self._lock:
            self._bars.append(bar)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cnnviz-progress", daemon=True
                )
                self._thread.start()

    def remove(self, bar: Bar) -> None:
        with self._lock:  # never while the thread draws it
            if bar in self._bars:
                self._bars.remove(bar)

    def _run(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            with self._lock:
                if not self._bars:
                    self._thread = None
                    return
                for bar in self._bars:
                    bar.redraw()


_REFRESHER = _Refresher()


def _tqdm(kind: Drawing, options: dict[str, Any]) -> Any:
    if kind is Drawing.WIDGET:
        # lazy: only a notebook kernel with ipywidgets draws the widget
        from tqdm.notebook import tqdm as widget

        return widget(**options)
    # lazy: `cnnviz --help` stays instant; tqdm is loaded with the first bar
    from tqdm import tqdm as text

    return text(**options, file=sys.stderr, dynamic_ncols=kind is Drawing.TERMINAL)


@contextmanager
def progress(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    leave: bool = True,
    delay: float = 0.0,
    show: bool = True,
    bar_format: str | None = None,
) -> Iterator[Bar]:
    """A progress bar over ``total`` steps (``None``: not known) for the block.

    Args:
        total: the steps the block will do.
        desc: what is counted, before the bar (``"sanity cascading"``).
        unit: what one step is (``"img"``, ``"map"``, ``"batch"``).
        leave: keep the finished bar on screen (``False`` for a bar nested in another).
        delay: draw nothing until the work has taken this many seconds.
        show: ``False`` draws nothing whatever :func:`drawing` says (e.g. a single batch).
        bar_format: tqdm's ``bar_format`` (default: tqdm's own).
    """
    kind = drawing() if show else Drawing.OFF
    if kind is Drawing.OFF:
        yield Bar()
        return
    options = {"total": total, "desc": desc, "unit": unit, "leave": leave, "delay": delay}
    options["mininterval"] = MIN_INTERVAL_SECONDS
    if bar_format is not None:
        options["bar_format"] = bar_format
    bar = Bar(kind, options)
    refreshed = kind is not Drawing.WIDGET  # the widget shows its own time
    if refreshed:
        _REFRESHER.add(bar)
    try:
        yield bar
    finally:
        if refreshed:
            _REFRESHER.remove(bar)
        bar.close()


def track(
    items: Iterable[_Item],
    desc: str,
    unit: str = "it",
    *,
    total: int | None = None,
    leave: bool = False,
    delay: float = 0.0,
    show: bool = True,
) -> Iterator[_Item]:
    """``items`` one by one, a step of a bar each (``total`` defaults to ``len(items)``).

    Nested by default (``leave=False``); the bar closes when the loop ends or is left early.
    """
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress(total, desc, unit, leave=leave, delay=delay, show=show) as bar:
        for item in items:
            yield item
            bar.update()


@contextmanager
def status(text: str, *, delay: float = 0.0, show: bool = True) -> Iterator[Bar]:
    """A phase without counted steps, drawn as ``text: 00:03`` and cleared when it ends;
    :meth:`Bar.note` adds what is under way (``loading shapes_vgg11: 00:03, weights``)."""
    with progress(
        None, text, leave=False, delay=delay, show=show, bar_format="{desc}: {elapsed}{postfix}"
    ) as bar:
        yield bar


def batch_progress(total: int, desc: str) -> AbstractContextManager[Bar]:
    """A method's own bar over its ``total`` forward batches: nested (cleared when done), drawn
    only once they have taken :data:`INNER_DELAY_SECONDS`, and never for a single batch."""
    return progress(total, desc, "batch", leave=False, delay=INNER_DELAY_SECONDS, show=total > 1)


def batches(spans: Sequence[_Item], desc: str) -> Iterator[_Item]:
    """``spans`` (a method's forward batches) one by one under :func:`batch_progress`."""
    with batch_progress(len(spans), desc) as bar:
        for span in spans:
            yield span
            bar.update()
