"""Runs over folders never lose work: kills leave complete files, --resume finishes identically.

The CLI runs as a real subprocess so SIGKILL, SIGTERM and SIGINT are real. The model is
``shapes_vgg11`` with a seeded random checkpoint (deterministic, nothing to train), on 64
synthetic 64×64 JPEGs.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.models import from_module
from cnnviz.runs.explain import ExplainSettings, explain_files

N_IMAGES = 64
TEMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
# One thread: the same arithmetic in every run, and no thread contention on a busy machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 JPEGs, a seeded shapes_vgg11 checkpoint, and an uninterrupted reference run."""
    from cnnviz.data.shapes import make_shapes
    from cnnviz.models.shapes_vgg11 import build_shapes_vgg11

    root = tmp_path_factory.mktemp("resume")
    inputs = root / "inputs"
    inputs.mkdir()
    batch = make_shapes(N_IMAGES, seed=11)
    for i in range(N_IMAGES):
        pixels = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(inputs / f"shape-{i:02d}.jpg", quality=92)
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in build_shapes_vgg11().state_dict().items()}
    save_file(state, str(root / "shapes.safetensors"))
    world = {"root": root, "inputs": inputs, "weights": root / "shapes.safetensors"}
    reference = root / "reference"
    done = subprocess.run(
        _command(world, reference), capture_output=True, text=True, timeout=300, env=ENV
    )
    assert done.returncode == 0, done.stderr
    world["reference"] = reference
    return world


def _command(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cnnviz.cli", "-q", "explain", str(world["inputs"]),
        "--model", "shapes_vgg11", "--weights", str(world["weights"]), "--method", "gradcam",
        "--top-k", "2", "--batch-size", "8", "--out", str(out), *extra,
    ]  # fmt: skip


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
    return len(list((out / "records").glob("*.json"))) if (out / "records").is_dir() else 0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _written_since(entry: os.DirEntry[str], since: int) -> bool:
    """Whether ``entry`` is a file modified at or after ``since`` (False once it has vanished:
    temporary files are renamed away while we look)."""
    try:
        return entry.is_file() and entry.stat().st_mtime_ns >= since
    except FileNotFoundError:
        return False


def _wait_for_output(proc: subprocess.Popen[Any], out: Path, since: int) -> None:
    """Until this process has written something into ``out`` (or ended)."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir():
            with os.scandir(out) as entries:
                if any(_written_since(entry, since) for entry in entries):
                    return
        time.sleep(0.002)


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


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_identical(world: dict[str, Path]) -> None:
    rng = random.Random(20240607)
    out = world["root"] / "killed"
    # Aim the kills at the writing phase of an uninterrupted run: first output to last record.
    reference = world["reference"]
    first = min(p.stat().st_mtime for p in reference.iterdir() if p.suffix in (".png", ".npy"))
    window = max(p.stat().st_mtime for p in (reference / "records").iterdir()) - first
    window = max(window, 0.02)
    kills, partial = 0, set()
    for _ in range(25):
        if kills >= 5:
            break
        done = _check_readable(out)
        if done == N_IMAGES:  # nothing left to interrupt: start the set again
            for path in out.iterdir():
                if path.is_file():
                    path.unlink()
            for path in (out / "records").iterdir():
                path.unlink()
            done = 0
        start = time.time_ns()
        proc = subprocess.Popen(
            _command(world, out, "--resume"), stderr=subprocess.DEVNULL, env=ENV
        )
        _wait_for_output(proc, out, start)
        time.sleep(rng.uniform(0.0, window * (N_IMAGES - done) / N_IMAGES))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL)
        records = _check_readable(out)
        if proc.returncode == -signal.SIGKILL and 0 < records < N_IMAGES:
            partial.add(records)
    print(f"{kills} SIGKILLs; complete images after each partial kill: {sorted(partial)}")
    assert kills >= 5, kills
    assert len(partial) >= 2, partial  # kills landed at different points of the writing
    finish = subprocess.run(
        _command(world, out, "--resume"), capture_output=True, text=True, timeout=300, env=ENV
    )
    assert finish.returncode == 0, finish.stderr
    _check_readable(out)
    assert not list(out.rglob(".*.tmp"))  # left-overs of killed runs are cleaned up
    _assert_same_results(out, world["reference"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_sigterm_and_ctrl_c_stop_cleanly(
    world: dict[str, Path], sig: signal.Signals, code: int, word: str
) -> None:
    out = world["root"] / f"stopped-{sig.name}"
    for _ in range(3):  # retry in the unlikely case the run ends before the signal lands
        start = time.time_ns()
        proc = subprocess.Popen(
            _command(world, out, "--batch-size", "1"),
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            # A suite started in the background inherits SIGINT ignored, and Python then keeps
            # it ignored: give the child the default disposition, as a terminal would.
            preexec_fn=_default_sigint,
        )
        _wait_for_output(proc, out, start)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert word in lines[0]
    assert "--resume" in lines[0]
    records = _check_readable(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert 2 * records == len(manifest["items"]) < 2 * N_IMAGES  # what is complete, only
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
            env=ENV,
        )
        for half in halves
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _check_readable(out) == N_IMAGES
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["items"]) == 2 * N_IMAGES
    assert {Path(i["input"]).parent for i in manifest["items"]} == set(halves)


# -- the library: what --resume trusts ---------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.conv(x).relu().mean(dim=(2, 3)))
        return logits


PREP = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


def _images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".npy")}


def test_resume_redoes_exactly_the_damaged_images(tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 12)
    loaded = from_module(_Net().eval(), preprocessing=PREP)
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
    _images(tmp_path / "a", 3, seed=1)
    (tmp_path / "a" / "zz-broken.png").write_text("no")
    b = _images(tmp_path / "b", 2, seed=2)
    for i, path in enumerate(b):
        path.rename(path.with_name(f"other{i}.png"))
    b = sorted((tmp_path / "b").iterdir())
    loaded = from_module(_Net().eval(), preprocessing=PREP)
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
    paths = _images(tmp_path / "in", 10)
    loaded = from_module(_Net().eval(), preprocessing=PREP)
    runs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        settings = ExplainSettings(batch_size=3, num_workers=workers)
        runs.append((explain_files(loaded, paths, out, settings, command="t"), _snapshot(out)))
    assert runs[0][0]["items"] == runs[1][0]["items"]
    assert runs[0][1] == runs[1][1]
    assert len(runs[0][1]) == 30
