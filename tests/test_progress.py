"""The one progress mechanism (:mod:`cnnviz.progress`): drawn on a terminal, nothing off it or
when disabled, tqdm's widget in a notebook with ipywidgets and plain text without (and never the
"IProgress not found" warning), nested bars cleared, delayed bars silent until due, and a bar
redrawn while one step is long."""

from __future__ import annotations

import io
import sys
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from tqdm import tqdm

import cnnviz.progress as progress_module
from cnnviz.cli.console import cli_logging
from cnnviz.progress import (
    Drawing,
    batch_progress,
    batches,
    disabled,
    drawing,
    progress,
    status,
    track,
)
from terminal import Terminal, screen


def on_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """stderr replaced by a terminal, outside any notebook (set in the test itself: pytest puts
    its own capture back on ``sys.stderr`` after a fixture's set-up)."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress_module, "in_notebook", lambda: False)
    return stream


@pytest.fixture(autouse=True)
def _no_bar_left_open() -> Iterator[None]:
    yield
    assert not tqdm._instances, "a bar was left open"


def test_screen_follows_carriage_returns_and_cursor_up() -> None:
    assert screen("a 0%\ra 50%\n\rb 1/2\x1b[A\ra done\n\rb 2/2\n") == ["a done", "b 2/2"]


def test_off_a_terminal_nothing_is_drawn_but_steps_are_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert drawing() is Drawing.OFF  # pytest's captured stderr is not a terminal
    with progress(3, "evaluate", "img") as bar:
        bar.update(2)
        bar.note("s0.png · gradcam: deletion")
        bar.describe("evaluate again")
        bar.set_total(4)
        assert not bar.drawn and bar.n == 2
    assert list(track([1, 2, 3], "items")) == [1, 2, 3]
    assert capsys.readouterr().err == ""


def test_a_terminal_bar_with_a_nested_bar_that_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    assert drawing() is Drawing.TERMINAL
    with progress(3, "sanity cascading", "map") as outer:
        assert outer.drawn
        outer.note("conv5_2 random · Grad-CAM")
        outer.update()
        for _ in track(range(4), "Score-CAM", "batch"):
            pass
        outer.update(2)
    shown = screen(terminal.getvalue())
    assert len(shown) == 1, shown  # the nested bar is gone, the outer one stays, finished
    assert shown[0].startswith("sanity cascading: 100%|")
    assert "| 3/3 [" in shown[0] and shown[0].endswith(", conv5_2 random · Grad-CAM]")
    assert "Score-CAM:   0%|" in terminal.getvalue()  # drawn below, then cleared


def test_disabled_draws_nothing_in_its_block_and_restores_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = on_terminal(monkeypatch)
    with disabled():
        assert drawing() is Drawing.OFF
        with progress(2, "report", "img") as bar:
            bar.update(2)
            assert not bar.drawn
        with disabled(False):  # turning it "off" for no reason keeps the block off
            assert drawing() is Drawing.OFF
    assert terminal.getvalue() == ""
    assert drawing() is Drawing.TERMINAL
    with disabled(False):
        assert drawing() is Drawing.TERMINAL


def test_a_status_line_shows_the_time_and_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    with status("loading shapes_vgg11") as line:
        line.note("weights")
    assert "loading shapes_vgg11: 00:00, weights" in terminal.getvalue()
    assert screen(terminal.getvalue()) == []


class _Clock:
    """``time.time`` shifted by ``offset`` seconds (``sleep`` stays real, for the refresher)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


def test_a_delayed_bar_is_made_only_once_due_and_counts_from_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = on_terminal(monkeypatch)
    log = "a log line written around the live bars\n"
    clock = _Clock(offset=-2.5)  # the bar starts 2.5 s "ago"
    monkeypatch.setattr(progress_module, "time", clock)
    with progress(10, "Occlusion", "batch", leave=False, delay=2.0) as bar:
        bar.update(3)
        bar.note("quick")
        tqdm.write(log.strip(), file=sys.stderr)  # redraws live bars: there is none yet
        assert terminal.getvalue() == log
        clock.offset = 0.0
        bar.update(1)
        drawn = terminal.getvalue().removeprefix(log)
        assert "Occlusion:  40%|" in drawn and "| 4/10 [00:02<" in drawn and "quick]" in drawn
    with progress(10, "RISE", "batch", leave=False, delay=2.0) as quick:
        quick.update(10)
    assert "RISE" not in terminal.getvalue()  # finished within its delay: never drawn
    assert screen(terminal.getvalue()) == [log.strip()]


def test_a_bar_is_redrawn_while_one_step_is_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = on_terminal(monkeypatch)
    monkeypatch.setattr(progress_module, "REFRESH_SECONDS", 0.02)
    with progress(2, "sanity figures", "figure") as bar:
        bar.note("maps-cascading.png")
        drawn = terminal.getvalue().count("\r")
        deadline = time.monotonic() + 30
        while terminal.getvalue().count("\r") < drawn + 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # one long step: no update, no note
        assert terminal.getvalue().count("\r") >= drawn + 3
    deadline = time.monotonic() + 30
    while progress_module._REFRESHER._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert progress_module._REFRESHER._thread is None  # it stops with the last bar
    after = terminal.getvalue()
    time.sleep(0.1)
    assert terminal.getvalue() == after


def _fake_ipython(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    shell = types.SimpleNamespace(config=config)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)


def test_in_notebook_is_a_jupyter_kernel_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress_module.in_notebook()  # a script; IPython is not imported to find out
    assert "IPython" not in sys.modules
    _fake_ipython(monkeypatch, {"IPKernelApp": {"connection_file": "kernel.json"}})
    assert not progress_module.in_notebook()  # IPython loaded, but no kernel
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert progress_module.in_notebook()
    _fake_ipython(monkeypatch, {"TerminalInteractiveShell": {}})
    assert not progress_module.in_notebook()  # the terminal IPython


@pytest.mark.parametrize("ipywidgets", ["missing", "without IProgress"])
def test_a_notebook_without_ipywidgets_gets_plain_text_and_no_warning(
    ipywidgets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a kernel stderr is no terminal, yet the bar is drawn, as text, with no TqdmWarning:
    ipywidgets missing, or present but too old for tqdm's widget (``IProgress`` is ``None``)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    found = None if ipywidgets == "missing" else object()
    monkeypatch.setattr(progress_module.importlib.util, "find_spec", lambda name: found)
    monkeypatch.setattr("tqdm.notebook.IProgress", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert drawing() is Drawing.TEXT
        with progress(2, "explain", "img") as bar:
            bar.update(2)
    assert caught == []
    assert screen(stream.getvalue())[0].startswith("explain: 100%|")
    assert "2/2" in stream.getvalue()


class _Widget:
    """Stands in for ``tqdm.notebook.tqdm`` (ipywidgets is not installed here)."""

    made: ClassVar[list[_Widget]] = []

    def __init__(self, **options: Any) -> None:
        self.made.append(self)
        self.options = options
        self.n, self.postfix, self.closed = options.get("initial", 0), "", False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        self.closed = True


def test_a_notebook_with_ipywidgets_gets_tqdms_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    monkeypatch.setattr(progress_module, "widgets_available", lambda: True)
    monkeypatch.setattr("tqdm.notebook.tqdm", _Widget)
    monkeypatch.setattr(_Widget, "made", [])
    assert drawing() is Drawing.WIDGET
    with progress(3, "sanity cascading", "map") as bar:
        bar.update(2)
        bar.note("conv1 random · Saliency")
        assert progress_module._REFRESHER._bars == []  # the widget shows its own time
    (widget,) = _Widget.made
    assert (widget.n, widget.postfix, widget.closed) == (2, "conv1 random · Saliency", True)
    assert widget.options["desc"] == "sanity cascading" and widget.options["total"] == 3
    assert "file" not in widget.options  # the widget draws itself in the cell
    assert stream.getvalue() == ""


def test_widgets_available_is_false_here_and_warns_nothing() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = progress_module.widgets_available()
    assert available is (progress_module.importlib.util.find_spec("ipywidgets") is not None)
    assert caught == []


def test_track_closes_its_bar_when_the_loop_is_left_early(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    for item in track(["a", "b", "c"], "methods", "method"):
        if item == "b":
            break
    assert not tqdm._instances
    assert screen(terminal.getvalue()) == []  # nested by default: cleared


def test_a_methods_batches_show_only_when_several_and_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = on_terminal(monkeypatch)
    assert list(batches([range(4), range(4, 8)], "RISE")) == [range(4), range(4, 8)]
    assert terminal.getvalue() == ""  # quicker than INNER_DELAY_SECONDS: never drawn
    monkeypatch.setattr(progress_module, "INNER_DELAY_SECONDS", 0.0)
    with batch_progress(1, "Score-CAM") as one:
        one.update()
        assert not one.drawn  # a single batch has no bar
    for _ in batches(["a", "b"], "Occlusion"):
        pass
    assert "Occlusion:   0%|" in terminal.getvalue() and "0/2" in terminal.getvalue()
    assert screen(terminal.getvalue()) == []


def test_quiet_command_line_logging_turns_progress_off(monkeypatch: pytest.MonkeyPatch) -> None:
    on_terminal(monkeypatch)
    for quiet in (False, True):
        with cli_logging(quiet, stream=io.StringIO()):
            assert drawing() is (Drawing.OFF if quiet else Drawing.TERMINAL)
    assert drawing() is Drawing.TERMINAL
