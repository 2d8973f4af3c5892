"""Runs over folders never lose work: kills leave complete files, --resume finishes identically.

The CLI runs as a real subprocess so SIGKILL, SIGTERM and SIGINT are real. The model is
``shapes_vgg11`` with a seeded random checkpoint (deterministic, nothing to train), on 64
synthetic 64×64 JPEGs.

Where each signal lands is chosen, not timed: the child is the CLI started by a small driver
(:data:`DRIVER`, test code only) that stops the run at a known point and then says so by creating
a file: at the N-th rename of a temporary output file (that rename and every later one never
happen, so exactly N - 1 files are complete), or at the N-th batch (the model call sleeps until
the signal interrupts it). The test waits for that file, with a bounded timeout, then signals.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.models import from_module
from cnnviz.runs.explain import _WRITERS, ExplainSettings, explain_files
from shape_folders import TINY_PREP, TinyNet, random_images, seeded_checkpoint, write_shapes

N_IMAGES = 64
FILES_PER_IMAGE = 7  # per target (2): overlay, layer map, input map; then the image's record
TEMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
WAIT_S = 120.0  # the longest any step may take before the test fails (normally a few seconds)

DRIVER = """
import os, re, runpy, sys, threading, time

import cnnviz.api

mode, n, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv = ["cnnviz", *sys.argv[4:]]
temp = re.compile(TEMP_PATTERN)
lock = threading.Lock()
calls = 0


def reached():
    with open(ready, "x"):
        pass


def replace(src, dst, **kwargs):
    global calls
    if not temp.match(os.path.basename(os.fspath(src))):
        return real_replace(src, dst, **kwargs)
    with lock:  # one rename at a time, so exactly n - 1 happen
        calls += 1
        if calls == n:
            reached()
            threading.Event().wait()  # frozen for good, holding the lock: later renames wait too
        return real_replace(src, dst, **kwargs)


def explain(*args, **kwargs):
    global calls
    calls += 1
    if calls == n:
        reached()
        time.sleep(300)  # ended by the test's signal
    return real_explain(*args, **kwargs)


if mode == "rename":
    real_replace, os.replace = os.replace, replace
else:
    real_explain, cnnviz.api.explain = cnnviz.api.explain, explain
runpy.run_module("cnnviz.cli", run_name="__main__", alter_sys=True)
""".replace("TEMP_PATTERN", repr(TEMP.pattern))


def _env() -> dict[str, str]:
    """The session's environment (offline, isolated caches), read when a child starts."""
    # One thread: the same arithmetic in every run, and no thread contention on a busy machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 JPEGs, a seeded shapes_vgg11 checkpoint, the driver, and an uninterrupted reference."""
    root = tmp_path_factory.mktemp("resume")
    inputs = root / "inputs"
    write_shapes(inputs, N_IMAGES, seed=11, suffix=".jpg")
    seeded_checkpoint(root / "shapes.safetensors", seed=3)
    (root / "driver.py").write_text(DRIVER, encoding="utf-8")
    world = {"root": root, "inputs": inputs, "weights": root / "shapes.safetensors"}
    reference = root / "reference"
    done = subprocess.run(
        _command(world, reference), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert done.returncode == 0, done.stderr
    world["reference"] = reference
    return world


def _cli_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "-q", "explain", str(world["inputs"]),
        "--model", "shapes_vgg11", "--weights", str(world["weights"]), "--method", "gradcam",
        "--top-k", "2", "--batch-size", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def _command(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnnviz.cli", *_cli_args(world, out, *extra)]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _stopped_run(
    world: dict[str, Path], out: Path, mode: str, n: int, *extra: str
) -> Iterator[subprocess.Popen[str]]:
    """The CLI run into ``out``, stopped at the ``n``-th rename or batch (``mode``)."""
    ready = world["root"] / f"ready-{out.name}-{mode}-{n}"
    ready.unlink(missing_ok=True)
    driver = [sys.executable, str(world["root"] / "driver.py"), mode, str(n), str(ready)]
    proc = subprocess.Popen(
        [*driver, *_cli_args(world, out, *extra)],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # A suite started in the background inherits SIGINT ignored, and Python then keeps
        # it ignored: give the child the default disposition, as a terminal would.
        preexec_fn=_default_sigint,
    )
    try:
        _wait_until(proc, ready.exists, f"the {n}th {mode}")
        yield proc
    finally:
        if proc.returncode is None:  # the test failed before ending it
            proc.kill()
            proc.communicate(timeout=WAIT_S)


def _wait_until(proc: subprocess.Popen[str], done: Callable[[], bool], what: str) -> None:
    """Poll ``done`` until it holds; fail if the child ends first or after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {WAIT_S:.0f} s")
        time.sleep(0.01)


def _check_readable(out: Path) -> int:
    """Every output decodes; only temporary files may be incomplete. Returns #records."""
    for path in out.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith("."):
            assert path.name == ".manifest.lock" or TEMP.match(path.name), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".npy":
            assert np.isfinite(np.load(path, allow_pickle=False)).all()
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            raise AssertionError(f"unexpected file {path}")
    return _records(out)


def _records(out: Path) -> int:
    folder = out / "records"
    return sum(1 for p in folder.iterdir() if p.suffix == ".json") if folder.is_dir() else 0


def _assert_same_results(out: Path, reference: Path) -> None:
    got = json.loads((out / "manifest.json").read_text())
    want = json.loads((reference / "manifest.json").read_text())
    assert got["failures"] == want["failures"] == []
    assert got["items"] == want["items"]  # same inputs, files, targets, scores (bit for bit)
    assert len(got["items"]) == 2 * N_IMAGES
    for item in want["items"]:
        for key in ("raw_layer", "raw_input"):
            a, b = np.load(out / item["files"][key]), np.load(reference / item["files"][key])
            assert np.array_equal(a, b), item["files"][key]
        a = np.asarray(Image.open(out / item["files"]["overlay"]))
        assert np.array_equal(a, np.asarray(Image.open(reference / item["files"]["overlay"])))


# The n-th rename of each killed run (each resumes the one before): 1 kills before any file is
# complete; the others land ever later in the remaining work, which none of them finishes.
KILL_AT_RENAME = (1, 25, 60, 110, 170)


def _images_done_bounds(renames: int) -> tuple[int, int]:
    """How many images a run completes when it is frozen after ``renames`` renames.

    An image is complete with its record, its last rename of ``FILES_PER_IMAGE``; each writer
    thread may be part-way through one more image (up to ``FILES_PER_IMAGE - 1`` renames)."""
    partial = _WRITERS * (FILES_PER_IMAGE - 1)
    return max(0, math.ceil((renames - partial) / FILES_PER_IMAGE)), renames // FILES_PER_IMAGE


@pytest.mark.slow
def test_sigkill_mid_write_then_resume_is_identical(world: dict[str, Path]) -> None:
    out = world["root"] / "killed"
    records = 0
    for n in KILL_AT_RENAME:
        with _stopped_run(world, out, "rename", n, "--resume") as proc:
            # The n-th temporary file is whole but not yet renamed; others may be half-written.
            assert any(TEMP.match(p.name) for p in out.rglob(".*")), n
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == -signal.SIGKILL, err
        before, records = records, _check_readable(out)
        low, high = _images_done_bounds(n - 1)
        assert low <= records - before <= high, (n, before, records)
        assert not (out / "manifest.json").exists()  # a killed run writes none
    assert 40 < records < N_IMAGES, records  # the kills covered most of the work, not all
    finish = subprocess.run(
        _command(world, out, "--resume"), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert finish.returncode == 0, finish.stderr
    _check_readable(out)
    assert not list(out.rglob(".*.tmp"))  # left-overs of killed runs are cleaned up
    _assert_same_results(out, world["reference"])
    run = json.loads((out / "manifest.json").read_text())["extra"]["run"]
    assert run == {
        "inputs": N_IMAGES, "already_complete": records, "written": N_IMAGES - records,
        "failed": 0,
    }  # fmt: skip


STOP_AT_BATCH = 6  # with one image per batch, images 0 … 4 are complete when the signal lands


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_sigterm_and_ctrl_c_stop_cleanly(
    world: dict[str, Path], sig: signal.Signals, code: int, word: str
) -> None:
    out = world["root"] / f"stopped-{sig.name}"
    done = STOP_AT_BATCH - 1
    with _stopped_run(world, out, "batch", STOP_AT_BATCH, "--batch-size", "1") as proc:
        _wait_until(proc, lambda: _records(out) == done, f"{done} records")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert word in lines[0]
    assert "--resume" in lines[0]
    assert _check_readable(out) == done
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["stem"] for i in manifest["items"]] == [
        f"shape-{i:02d}" for i in range(done) for _ in range(2)
    ]
    for item in manifest["items"]:
        assert (out / item["files"]["overlay"]).is_file()


@pytest.mark.slow
def test_two_runs_into_one_folder_lose_nothing(world: dict[str, Path]) -> None:
    root = world["root"] / "concurrent"
    halves = [root / "a", root / "b"]
    for k, folder in enumerate(halves):
        folder.mkdir(parents=True)
        for i in range(k * 32, (k + 1) * 32):
            name = f"shape-{i:02d}.jpg"
            (folder / name).write_bytes((world["inputs"] / name).read_bytes())
    out = root / "out"
    procs = [
        subprocess.Popen(
            [*_command({**world, "inputs": half}, out), "--batch-size", "2"],
            stderr=subprocess.DEVNULL,
            env=_env(),
        )
        for half in halves
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _check_readable(out) == N_IMAGES
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["items"]) == 2 * N_IMAGES
    assert {Path(i["input"]).parent for i in manifest["items"]} == set(halves)


# -- the library: what --resume trusts ---------------------------------------------------------


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".npy")}


def test_resume_redoes_exactly_the_damaged_images(tmp_path: Path) -> None:
    paths = random_images(tmp_path / "in", 12)
    loaded = from_module(TinyNet().eval(), preprocessing=TINY_PREP)
    out = tmp_path / "out"
    settings = ExplainSettings(batch_size=4, num_workers=0, target=None)
    first = explain_files(loaded, paths, out, settings, command="t")
    before = _snapshot(out)
    by_stem = {i["stem"]: i["files"] for i in first["items"]}
    (out / by_stem["img01"]["overlay"]).write_bytes(b"\x89PNG\r\n")  # truncated
    (out / by_stem["img05"]["raw_layer"]).unlink()  # missing
    (out / "records" / "img09.gradcam.json").write_text("{")  # unreadable record
    Image.new("RGB", (16, 16), (9, 9, 9)).save(paths[10])  # the input changed
    resume = ExplainSettings(batch_size=4, num_workers=0, resume=True)
    second = explain_files(loaded, paths, out, resume, command="t")
    assert second["extra"]["run"] == {
        "inputs": 12, "already_complete": 8, "written": 4, "failed": 0
    }  # fmt: skip
    after = _snapshot(out)
    changed = {name for name in before if after[name] != before[name]}
    assert changed
    assert all(name.startswith("img10.") for name in changed)
    assert [i for i in second["items"] if i["stem"] != "img10"] == [
        i for i in first["items"] if i["stem"] != "img10"
    ]
    third = explain_files(loaded, paths, out, resume, command="t")
    assert third["extra"]["run"]["already_complete"] == 12
    assert third["items"] == second["items"]
    other = ExplainSettings(batch_size=4, num_workers=0, resume=True, alpha=0.3)
    assert explain_files(loaded, paths, out, other, command="t")["extra"]["run"]["written"] == 12
    with torch.no_grad():  # the same module object with other weights: nothing is trusted
        for parameter in loaded.module.parameters():
            parameter.add_(1.0)
    assert explain_files(loaded, paths, out, other, command="t")["extra"]["run"]["written"] == 12


def test_manifest_keeps_other_runs_items_and_failures(tmp_path: Path) -> None:
    random_images(tmp_path / "a", 3, seed=1)
    (tmp_path / "a" / "zz-broken.png").write_text("no")
    b = random_images(tmp_path / "b", 2, seed=2)
    for i, path in enumerate(b):
        path.rename(path.with_name(f"other{i}.png"))
    b = sorted((tmp_path / "b").iterdir())
    loaded = from_module(TinyNet().eval(), preprocessing=TINY_PREP)
    out = tmp_path / "out"
    settings = ExplainSettings(num_workers=0)
    first = explain_files(loaded, sorted((tmp_path / "a").iterdir()), out, settings, command="t")
    assert len(first["items"]) == 3
    assert len(first["failures"]) == 1
    second = explain_files(loaded, b, out, settings, command="t")
    assert sorted(i["stem"] for i in second["items"]) == ["img00", "img01", "img02", "other0",
                                                          "other1"]  # fmt: skip
    assert [Path(f["input"]).name for f in second["failures"]] == ["zz-broken.png"]


def test_workers_give_the_same_bytes_as_no_workers(tmp_path: Path) -> None:
    paths = random_images(tmp_path / "in", 10)
    loaded = from_module(TinyNet().eval(), preprocessing=TINY_PREP)
    runs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        settings = ExplainSettings(batch_size=3, num_workers=workers)
        runs.append((explain_files(loaded, paths, out, settings, command="t"), _snapshot(out)))
    assert runs[0][0]["items"] == runs[1][0]["items"]
    assert runs[0][1] == runs[1][1]
    assert len(runs[0][1]) == 30
