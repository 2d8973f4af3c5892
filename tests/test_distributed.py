"""`cnnviz explain` sharded over processes with torch.distributed (gloo, CPU): every image
exactly once, the merged results equal a single process's bit for bit, and a rank killed with
SIGKILL leaves a folder that a rerun with another number of processes completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cnnviz.runs.distributed import Ranks, current_ranks, without_option
from shape_folders import seeded_checkpoint, write_shapes

N_IMAGES = 64

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 PNGs, a seeded shapes_vgg11 checkpoint and a single-process reference run."""
    root = tmp_path_factory.mktemp("distributed")
    inputs = root / "inputs"
    write_shapes(inputs, N_IMAGES, seed=5)
    seeded_checkpoint(root / "shapes.safetensors", seed=7)
    world = {"root": root, "inputs": inputs, "weights": root / "shapes.safetensors"}
    reference = root / "reference"
    done = run_cnnviz(world, reference)
    assert done.returncode == 0, done.stderr
    world["reference"] = reference
    return world


def cli_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "-q", "explain", str(world["inputs"]), "--model", "shapes_vgg11",
        "--weights", str(world["weights"]), "--method", "gradcam", "--batch-size", "4",
        "--workers", "0", "--out", str(out), *extra,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cnnviz(world: dict[str, Path], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cnnviz", *cli_args(world, out, *extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env())


def maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def assert_same_as_reference(world: dict[str, Path], out: Path) -> dict[str, object]:
    """Every image exactly once: one record each, one manifest item each, the maps bit for bit."""
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == N_IMAGES
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = [item["input"] for item in manifest["items"]]
    assert len(inputs) == len(set(inputs)) == N_IMAGES
    reference = json.loads((world["reference"] / "manifest.json").read_text())
    assert sorted(inputs) == sorted(item["input"] for item in reference["items"])
    ours, theirs = maps(out), maps(world["reference"])
    assert ours.keys() == theirs.keys() and len(ours) == 2 * N_IMAGES  # layer and input maps
    for name, value in theirs.items():
        assert np.array_equal(ours[name], value), name  # the same batches: bit for bit
    return dict(manifest)


def test_two_ranks_equal_one_process(world: dict[str, Path], tmp_path: Path) -> None:
    """`--nproc 2` launches two gloo ranks that meet through a file (nothing listens on the
    network; torchrun's own stores listen on every interface, which tests may not do)."""
    out = tmp_path / "two"
    done = run_cnnviz(world, out, "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert "launching 2 processes" in done.stderr
    manifest = assert_same_as_reference(world, out)
    assert manifest["extra"]["run"] == {  # type: ignore[index]
        "inputs": N_IMAGES,
        "already_complete": 0,
        "written": N_IMAGES,  # gathered from both ranks
        "failed": 0,
    }


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def kill_a_rank(argv: list[str], ready: Callable[[], bool]) -> list[int]:
    """Run ``cnnviz ARGV`` (``--nproc 2``), SIGKILL its second rank once ``ready()`` holds, and
    wait: the launcher fails and stops the other rank. Returns the ranks' pids."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cnnviz", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and launcher.poll() is None and not ready():
            time.sleep(0.01)
        ranks = children(launcher.pid)
        assert len(ranks) == 2 and launcher.poll() is None, "the run ended before the kill"
        os.kill(ranks[1], signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0  # the dead rank's status (and the other one stopped)
    return ranks


def test_a_killed_rank_then_a_rerun_with_one_process(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    records = out / "records"
    ranks = kill_a_rank(cli_args(world, out, "--nproc", "2"), lambda: _files(records) >= 4)
    assert all(not Path(f"/proc/{pid}").exists() for pid in ranks)
    before = len(list((out / "records").glob("*.json")))
    assert 4 <= before < N_IMAGES
    done = run_cnnviz(world, out, "--resume")  # one process now
    assert done.returncode == 0, done.stderr
    manifest = assert_same_as_reference(world, out)
    run = manifest["extra"]["run"]  # type: ignore[index]
    assert run["already_complete"] == before and run["written"] == N_IMAGES - before


def test_ranks_share_disjointly_and_completely() -> None:
    chunks = list(range(10))
    shares = [Ranks(rank, 3).share(chunks) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(c for share in shares for c in share) == chunks


def test_ranks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ranks = current_ranks()
    assert ranks == Ranks(2, 4, 0) and not ranks.leader
    assert ranks.device("cuda") == "cuda:0" and ranks.device("cpu") == "cpu"
    monkeypatch.delenv("WORLD_SIZE")
    assert current_ranks() == Ranks() and current_ranks().leader


def test_the_relaunch_drops_nproc() -> None:
    argv = ["explain", "d", "--nproc", "2", "--out", "o", "--nproc=3"]
    assert without_option(argv, "--nproc") == ["explain", "d", "--out", "o"]


def test_a_killed_rank_of_a_store_run_then_a_rerun_with_one_process(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """``--store zarr`` over 2 ranks, one SIGKILLed mid-run: the store still opens, every image
    it calls complete equals a single process's, and ``--resume`` in one process completes
    exactly the rest, bit for bit (float32 store, the same batches)."""
    from cnnviz.outputs.results import open_results

    store = ("--store", "zarr", "--store-dtype", "float32", "--batch-size", "2")
    reference = tmp_path / "reference"
    assert run_cnnviz(world, reference, *store).returncode == 0
    out = tmp_path / "killed"
    status = out / "results.zarr" / "status"  # 4 of the 32 chunks written (and zarr.json):
    kill_a_rank(cli_args(world, out, *store, "--nproc", "2"), lambda: _files(status) >= 4)
    killed, whole = open_results(out), open_results(reference)
    done = killed.complete
    assert 0 < done.sum() < N_IMAGES and whole.complete.all()
    ours, theirs = np.asarray(killed.maps()[...]), np.asarray(whole.maps()[...])
    assert np.array_equal(ours[done], theirs[done])
    before = int(done.sum())
    rerun = run_cnnviz(world, out, *store, "--resume")  # one process now
    assert rerun.returncode == 0, rerun.stderr
    resumed = open_results(out)
    assert resumed.complete.all()
    assert np.array_equal(np.asarray(resumed.maps()[...]), theirs)
    assert np.array_equal(resumed.scores(), whole.scores())
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    run = json.loads((out / "manifest.json").read_text())["extra"]["run"]
    assert run["already_complete"] == before and run["written"] == N_IMAGES - before
