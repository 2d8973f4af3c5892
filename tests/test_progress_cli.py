"""Progress on the command line, as a user sees it.

* ``cnnviz sanity`` and ``cnnviz evaluate`` run in a pseudo-terminal (a child process whose
  stdout and stderr are the terminal) write something at least every 5 s from their first line to
  their last, and say what they are doing (the randomised layer and method, the image, method and
  metric, the phases after the maps).
* Off a terminal and under ``-q`` no bar is drawn, but ``explain`` still prints its line per image.
* ``--method all`` draws a bar over the methods, described by the one running, and clears it.
* Every final message names only files that exist.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cnnviz.cli import main
from terminal import Terminal, screen

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_SILENCE_SECONDS = 5.0
BAR_TEXT = re.compile(r"\d+%\||\d+/\d+ \[|it/s|img/s|map/s")


@dataclass(frozen=True)
class TerminalRun:
    """What a child wrote to its terminal: ``(seconds after the start, bytes)`` per read."""

    code: int
    chunks: list[tuple[float, bytes]]
    exited: float

    @property
    def text(self) -> str:
        return b"".join(data for _, data in self.chunks).decode("utf-8", errors="replace")

    def longest_silence(self) -> tuple[float, float]:
        """The longest time between two writes, from the first write to the last; and when it
        began (the start, torch's import, is not the run's work and is not counted)."""
        times = [t for t, _ in self.chunks]
        gaps = [(later - earlier, earlier) for earlier, later in itertools.pairwise(times)]
        return max(gaps, default=(0.0, 0.0))

    def last_line(self) -> str:
        return [line for line in re.split(r"[\r\n]+", self.text) if line.strip()][-1]


def run_on_terminal(argv: list[str], timeout: float = 540) -> TerminalRun:
    """``python -m cnnviz ARGV`` with a 160-column pseudo-terminal as its stdout and stderr, every
    read of the terminal timed (the environment is this session's: offline, its cache)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "cnnviz", *argv]
    start = time.monotonic()
    chunks: list[tuple[float, bytes]] = []
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": path},
    ) as child:
        os.close(slave)
        try:
            while time.monotonic() - start < timeout:
                if not select.select([master], [], [], 0.5)[0]:
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child and every copy of the terminal are gone
                    break
                if not data:
                    break
                chunks.append((time.monotonic() - start, data))
            else:
                child.kill()
                raise AssertionError(f"{command} ran past {timeout} s")
        finally:
            os.close(master)
        code = child.wait(timeout=60)
    return TerminalRun(code, chunks, time.monotonic() - start)


def named_files(message: str) -> tuple[Path, list[str]]:
    """The folder and the files a ``Wrote … to DIR/ (a, b, c)`` message names."""
    found = re.fullmatch(r"Wrote .* to (.+)/(?: \((.*)\))?(?:; .*)?", message.strip())
    assert found is not None, message
    return Path(found.group(1)), (found.group(2) or "").split(", ")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two held-out shapes, with shapes_vgg11 trained into the session cache first
    (so no child process trains it)."""
    from PIL import Image

    from cnnviz.data.shapes import heldout_shapes
    from cnnviz.models import load_model

    load_model("shapes_vgg11")
    folder = tmp_path_factory.mktemp("shapes")
    batch = heldout_shapes(2)
    for i in range(2):
        pixels = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"shape{i}.png")
    return folder


def never_silent(argv: list[str]) -> TerminalRun:
    """``cnnviz ARGV`` on a terminal, checked to succeed and never to be silent for more than
    :data:`MAX_SILENCE_SECONDS` between its first write and its last; the timings are printed."""
    run = run_on_terminal(argv)
    silence, at = run.longest_silence()
    first = run.chunks[0][0] if run.chunks else float("nan")
    print(
        f"{argv[0]}: first write after {first:.1f} s, longest silence {silence:.2f} s (at "
        f"{at:.1f} s), last write at {run.chunks[-1][0]:.1f} s, exit at {run.exited:.1f} s"
    )
    assert run.code == 0, run.text
    assert silence <= MAX_SILENCE_SECONDS, f"silent for {silence:.1f} s from {at:.1f} s"
    return run


@pytest.mark.slow
def test_sanity_on_a_terminal_says_what_it_does_at_least_every_5_s(
    shapes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["sanity", str(shapes / "shape0.png"), "--model", "shapes_vgg11"]
    run = never_silent(
        [*argv, "--methods", "gradcam,saliency", "--mode", "cascading", "-o", str(out)]
    )
    text = run.text
    # 11 layer groups of shapes_vgg11 randomised, plus the trained model, for 2 methods
    assert "sanity cascading:" in text and "| 24/24 [" in text
    assert "trained · Grad-CAM" in text and "classifier.6 random · Saliency" in text
    assert "conv1 random · Grad-CAM" in text
    assert "sanity: reading the image" in text and "sanity figures:" in text
    folder, files = named_files(run.last_line())
    assert folder == out
    assert files == ["maps-cascading.png", "sanity-cascading.png", "sanity.json", "manifest.json"]
    assert sorted(files) == sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_evaluate_on_a_terminal_says_every_phase_at_least_every_5_s(
    shapes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["evaluate", str(shapes), "--model", "shapes_vgg11", "--methods", "gradcam,saliency"]
    argv += ["--steps", "20", "--bootstrap", "200", "--sanity-images", "1", "-o", str(out)]
    run = never_silent(argv)
    text = run.text
    assert "evaluate: 100%|" in text and "| 2/2 [" in text
    for step in ("map", "deletion", "insertion", "confidence", "ROAD", "pointing"):
        assert f"shape1.png · saliency: {step}" in text, step
    assert "sanity cascading:" in text and "| 24/24 [" in text  # 1 image, 2 methods, 11 groups
    assert "evaluate: bootstrap means (200 resamples)" in text
    assert "evaluate: plots, tables and page" in text
    folder, files = named_files(run.last_line())
    assert run.last_line().startswith("Wrote 2 evaluated image(s) to ")
    assert folder == out and "index.html" in files and "sanity.png" in files
    assert all((out / name).is_file() for name in files), files


def test_off_a_terminal_and_with_q_no_bar_but_a_line_per_image(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr is pytest's capture (no terminal): the log lines come, no bar; with -q stderr
    says nothing at all. Both times stdout has the line per image and the files it names exist."""
    argv = ["explain", str(shapes), "--model", "shapes_vgg11", "--method", "scorecam"]
    for quiet, out in ((False, tmp_path / "plain"), (True, tmp_path / "quiet")):
        assert main(["-q"] * quiet + [*argv, "--out", str(out)]) == 0
        printed = capsys.readouterr()
        assert not BAR_TEXT.search(printed.err), printed.err
        if quiet:
            assert printed.err == ""
        else:
            assert printed.err.splitlines()[-1] == "cnnviz: Automatic CAM layer: backbone.bn5_2"
        lines = printed.out.splitlines()
        assert len(lines) == 3, lines
        for line, name in zip(lines, ("shape0.png", "shape1.png"), strict=False):
            assert line.startswith(f"{name} → ") and " · Score-CAM @ backbone.bn5_2 → " in line
            assert Path(line.rpartition(" → ")[2]).is_file(), line
        assert named_files(lines[-1]) == (out, ["manifest.json"])
        assert (out / "manifest.json").is_file()


def test_method_all_draws_a_bar_over_the_methods_and_clears_it(
    shapes: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--method all`` (three methods here, to keep it short) on a terminal: below the bar over
    the images, one over the methods, described by the method running; both gone at the end."""
    monkeypatch.setattr(
        "cnnviz.runs.settings.method_names", lambda: ["gradcam", "saliency", "gradxinput"]
    )
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["explain", str(shapes / "shape0.png"), "--model", "shapes_vgg11", "--method", "all"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    raw = terminal.getvalue()
    for title in ("Grad-CAM", "Saliency", "Gradient × Input"):
        assert re.search(rf"\r{re.escape(title)}: +\d+%\|.*\| [0-2]/3 \[", raw), title
    assert "\rall:   0%|" in raw
    assert not any(BAR_TEXT.search(line) for line in screen(raw)), screen(raw)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("shape0.png → ") and out[0].endswith(f"→ {tmp_path}/shape0.grid.png")
    assert (tmp_path / "shape0.grid.png").is_file()


def test_report_names_the_page_it_wrote(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", str(shapes / "shape0.png"), "--model", "shapes_vgg11", "--methods", "none"]
    assert main(["-q", *argv, "--out", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line == f"Report: {tmp_path / 'index.html'}" and (tmp_path / "index.html").is_file()
