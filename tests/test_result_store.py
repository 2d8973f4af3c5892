"""`--store zarr`: one chunked Zarr v3 store per folder run, equal to the file layout's maps and
values; O(chunks) files; 2 ranks write the same store as one process; a SIGKILLed run opens with
a strict subset complete and `--resume` finishes exactly the rest; `cnnviz.open_results` reads
both layouts."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnviz
from cnnviz.errors import CnnvizError
from cnnviz.models import from_module
from cnnviz.runs.explain import ExplainSettings, explain_files
from shape_folders import TINY_PREP, TinyNet, random_images, seeded_checkpoint, write_shapes

N_IMAGES = 32
BATCH = 4  # 8 chunks
TOP_K = 2

DRIVER = """
import runpy, sys, time

import cnnviz.api

n, ready = int(sys.argv[1]), sys.argv[2]
sys.argv = ["cnnviz", *sys.argv[3:]]
real, calls = cnnviz.api.explain, 0


def explain(*args, **kwargs):
    global calls
    calls += 1
    if calls == n:  # call 1 probes the shapes; call k + 1 explains batch k
        open(ready, "x").close()
        time.sleep(300)  # ended by the test's SIGKILL
    return real(*args, **kwargs)


cnnviz.api.explain = explain
runpy.run_module("cnnviz.cli", run_name="__main__", alter_sys=True)
"""


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "-q", "explain", str(world["inputs"]), "--model", "shapes_vgg11",
        "--weights", str(world["weights"]), "--method", "gradcam", "--top-k", str(TOP_K),
        "--batch-size", str(BATCH), "--workers", "0", "--out", str(out), *extra,
    ]  # fmt: skip


def run_cnnviz(world: dict[str, Path], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cnnviz", *cli_args(world, out, *extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env())


ZARR32 = ("--store", "zarr", "--store-dtype", "float32", "--store-input-maps")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """32 PNGs, a seeded checkpoint, a files-layout run and a float32 zarr run of them."""
    root = tmp_path_factory.mktemp("store")
    inputs = root / "inputs"
    write_shapes(inputs, N_IMAGES, seed=5)
    seeded_checkpoint(root / "shapes.safetensors", seed=7)
    world = {"root": root, "inputs": inputs, "weights": root / "shapes.safetensors"}
    for name, extra in (("files", ()), ("zarr32", ZARR32)):
        done = run_cnnviz(world, root / name, *extra)
        assert done.returncode == 0, done.stderr
        world[name] = root / name
    return world


def file_maps(folder: Path, key: str) -> np.ndarray:
    """(N, T, h, w) from the files layout's manifest and .npy files."""
    items = json.loads((folder / "manifest.json").read_text())["items"]
    inputs = sorted({item["input"] for item in items})
    maps: list[list[np.ndarray]] = [[] for _ in inputs]
    for item in sorted(items, key=lambda i: (i["input"], i["target_rank"])):
        maps[inputs.index(item["input"])].append(np.load(folder / item["files"][key]))
    return np.stack([np.stack(m) for m in maps])


def store_arrays(folder: Path) -> dict[str, np.ndarray]:
    results = cnnviz.open_results(folder)
    arrays = {"status": np.asarray(results.complete)}
    for res in ("layer", "input"):
        if results.has("gradcam", res):
            arrays[res] = np.asarray(results.maps("gradcam", res)[:])
    for name in ("targets", "scores", "probabilities"):
        arrays[name] = getattr(results, name)("gradcam")
    return arrays


def test_zarr_equals_the_file_layout(world: dict[str, Path]) -> None:
    files = cnnviz.open_results(world["files"])
    results = cnnviz.open_results(world["zarr32"])
    assert results.layout == "zarr" and files.layout == "files"
    assert results.paths == files.paths == [str(p) for p in sorted(world["inputs"].iterdir())]
    assert results.complete.all() and len(results) == N_IMAGES
    for res, key in (("layer", "raw_layer"), ("input", "raw_input")):
        stored = np.asarray(results.maps("gradcam", res)[:])
        assert stored.dtype == np.float32 and stored.shape[:2] == (N_IMAGES, TOP_K)
        assert np.array_equal(stored, file_maps(world["files"], key))  # bit for bit
    assert results.maps("gradcam").chunks == (BATCH, TOP_K, 4, 4)
    for name in ("targets", "scores", "probabilities"):
        assert np.array_equal(getattr(results, name)(), getattr(files, name)()), name
    assert results.labels() == files.labels()
    with (world["zarr32"] / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_IMAGES * TOP_K
    items = json.loads((world["files"] / "manifest.json").read_text())["items"]
    assert [
        (r["input"], int(r["target_rank"]), int(r["target_index"]), r["label"]) for r in rows
    ] == [(i["input"], i["target_rank"], i["target_index"], i["target_name"]) for i in items]
    assert [float(r["score"]) for r in rows] == [i["score"] for i in items]
    assert [float(r["probability"]) for r in rows] == [i["probability"] for i in items]
    for row in rows:
        assert row["sha256"] == hashlib.sha256(Path(row["input"]).read_bytes()).hexdigest()
        assert row["status"] == "done" and row["method"] == "gradcam"


def test_float16_store_is_the_maps_rounded_and_few_files(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "zarr16"
    done = run_cnnviz(world, out, "--store", "zarr")
    assert done.returncode == 0, done.stderr
    assert "results.zarr (32 of 32 image(s) complete)" in done.stdout
    results = cnnviz.open_results(out)
    stored = np.asarray(results.maps("gradcam")[:])
    assert stored.dtype == np.float16
    assert np.array_equal(stored, file_maps(world["files"], "raw_layer").astype(np.float16))
    assert not results.has("gradcam", "input")
    with pytest.raises(CnnvizError, match="--store-input-maps"):
        results.maps("gradcam", "input")
    chunks = N_IMAGES // BATCH
    counted = sum(1 for p in out.rglob("*") if p.is_file())
    per_image = sum(1 for p in world["files"].rglob("*") if p.is_file())
    # status, sha256 and the method's layer, targets, scores, probabilities: 6 per chunk, plus
    # each array's and group's zarr.json, the table and the manifest
    assert counted <= 6 * chunks + 12, counted
    assert per_image >= N_IMAGES * (3 * TOP_K + 1) and counted < per_image / 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["items"] == [] and manifest["extra"]["store"]["done"] == N_IMAGES


def test_two_ranks_write_the_same_store(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "two"
    done = run_cnnviz(world, out, *ZARR32, "--nproc", "2")
    assert done.returncode == 0, done.stderr
    ours, theirs = store_arrays(out), store_arrays(world["zarr32"])
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert np.array_equal(ours[name], value, equal_nan=True), name
    assert (out / "results.csv").read_text() == (world["zarr32"] / "results.csv").read_text()
    run = json.loads((out / "manifest.json").read_text())["extra"]["run"]
    assert run == {"inputs": N_IMAGES, "already_complete": 0, "written": N_IMAGES, "failed": 0}


def test_sigkill_then_resume_completes_exactly_the_rest(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    driver, ready = tmp_path / "driver.py", tmp_path / "ready"
    driver.write_text(DRIVER)
    args = [sys.executable, str(driver), "4", str(ready), *cli_args(world, out, *ZARR32)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "batch 2 never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    partial = cnnviz.open_results(out)
    assert partial.complete.tolist() == [True] * 2 * BATCH + [False] * (N_IMAGES - 2 * BATCH)
    assert "8 of 32 images complete" in repr(partial)
    whole = store_arrays(world["zarr32"])
    done = partial.complete
    assert np.array_equal(np.asarray(partial.maps("gradcam")[:])[done], whole["layer"][done])
    assert np.isnan(np.asarray(partial.maps("gradcam")[:])[~done]).all()
    first_chunk = out / "results.zarr" / "gradcam" / "layer" / "c" / "0" / "0" / "0" / "0"
    left = out / "results.zarr" / "status" / "c" / ".2.0123abcd.partial"  # as zarr names them
    left.write_bytes(b"half")
    before = first_chunk.stat().st_mtime_ns
    finish = run_cnnviz(world, out, *ZARR32, "--resume")
    assert finish.returncode == 0, finish.stderr
    assert first_chunk.stat().st_mtime_ns == before  # a done chunk is not written again
    assert not left.exists()
    run = json.loads((out / "manifest.json").read_text())["extra"]["run"]
    assert run == {"inputs": N_IMAGES, "already_complete": 8, "written": 24, "failed": 0}
    ours = store_arrays(out)
    for name, value in whole.items():
        assert np.array_equal(ours[name], value, equal_nan=True), name
    assert (out / "results.csv").read_text() == (world["zarr32"] / "results.csv").read_text()
    refused = run_cnnviz(world, out, "--store", "zarr", "--resume")  # float16 now
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "other settings" in refused.stderr and "drop --resume" in refused.stderr
    assert (out / "manifest.json").is_file() and (out / "results.csv").is_file()  # kept


def test_open_results_reads_the_file_layout_lazily(world: dict[str, Path]) -> None:
    results = cnnviz.open_results(world["files"])
    maps = results.maps("gradcam", "input")
    assert maps.shape == (N_IMAGES, TOP_K, 64, 64) and len(results) == N_IMAGES
    expected = file_maps(world["files"], "raw_input")
    assert np.array_equal(maps[3], expected[3]) and np.array_equal(maps[2:5, 1], expected[2:5, 1])
    assert np.array_equal(np.asarray(maps), expected)
    assert results.complete.all() and results.methods == ["gradcam"]
    assert len(results.rows()) == N_IMAGES * TOP_K
    assert "32 of 32 images complete" in results._repr_html_()


def test_a_folder_without_results_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CnnvizError, match=r"holds no cnnviz results: expected results\.zarr"):
        cnnviz.open_results(tmp_path)


# -- the library: failures and every method ------------------------------------------------------


def test_failed_images_and_every_method(tmp_path: Path) -> None:
    paths = random_images(tmp_path / "in", 5)
    paths[2].write_bytes(b"not a png")
    loaded = from_module(TinyNet().eval(), preprocessing=TINY_PREP)
    settings = ExplainSettings(method="all", batch_size=2, num_workers=0, store="zarr")
    manifest = explain_files(loaded, paths, tmp_path / "out", settings, command="t")
    assert [Path(f["input"]).name for f in manifest["failures"]] == ["img02.png"]
    results = cnnviz.open_results(tmp_path / "out")
    assert results.status.tolist() == ["done", "done", "failed", "done", "done"]
    assert len(results.methods) >= 3 and "gradcam" in results.methods
    for method in results.methods:
        maps = np.asarray(results.maps(method)[:])
        assert maps.shape[0] == 5 and np.isnan(maps[2]).all() and np.isfinite(maps[[0, 1, 3]]).all()
    failed = [row for row in results.rows() if row["status"] == "failed"]
    assert len(failed) == len(results.methods) and failed[0]["target_index"] is None
    assert cnnviz.open_results(tmp_path / "out" / "results.zarr").paths == results.paths


def test_a_killed_file_layout_run_opens_from_its_records(tmp_path: Path) -> None:
    paths = random_images(tmp_path / "in", 4)
    loaded = from_module(TinyNet().eval(), preprocessing=TINY_PREP)
    out = tmp_path / "out"
    explain_files(loaded, paths, out, ExplainSettings(num_workers=0), command="t")
    whole = cnnviz.open_results(out)
    (out / "manifest.json").unlink()
    (out / "records" / "img03.gradcam.json").unlink()  # as if killed before its record
    partial = cnnviz.open_results(out)
    assert partial.paths == [str(p) for p in paths[:3]] and partial.complete.all()
    assert np.array_equal(np.asarray(partial.maps()), np.asarray(whole.maps())[:3])
    assert repr(partial).startswith("<cnnviz results (files)") and "3 of 3 images" in repr(partial)


def test_float16_overflow_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = random_images(tmp_path / "in", 2)
    net = TinyNet().eval()
    with torch.no_grad():
        net.conv.weight.mul_(1e4)
        net.fc.weight.mul_(1e4)
    loaded = from_module(net, preprocessing=TINY_PREP)
    settings = ExplainSettings(num_workers=0, store="zarr")
    with caplog.at_level(logging.WARNING, logger="cnnviz"):
        explain_files(loaded, paths, tmp_path / "out", settings, command="t")
    assert "exceed the float16 range" in caplog.text
    assert np.isinf(np.asarray(cnnviz.open_results(tmp_path / "out").maps()[:])).any()
