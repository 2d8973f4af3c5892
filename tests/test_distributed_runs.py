"""`cnnviz evaluate` and `cnnviz exemplars` sharded over two gloo ranks (CPU, one torch thread
each): every image counted exactly once, and what rank 0 writes equals a single process's
outputs bit for bit (the ranks run the batches one process runs, so no number depends on how
the images were shared). A file that cannot be read lies in the middle of the folder, so the
gathered failures are checked to come back in input order; a one-process partial exemplars
state resumed by two ranks equals one pass."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnviz.featurevis.exemplar_collector import ExemplarCollector
from cnnviz.runs.distributed import Ranks, in_order, leader_writes
from shape_folders import seeded_checkpoint, write_shapes

N_IMAGES = 48
BROKEN = "shape-20x.png"  # sorts between shape-20 and shape-21

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """48 PNGs and one broken file, and a seeded shapes_vgg11 checkpoint (64 px inputs)."""
    root = tmp_path_factory.mktemp("distributed-runs")
    inputs = root / "inputs"
    write_shapes(inputs, N_IMAGES, seed=11)
    (inputs / BROKEN).write_bytes(b"not a PNG")
    seeded_checkpoint(root / "shapes.safetensors", seed=3)
    return {"root": root, "inputs": inputs, "weights": root / "shapes.safetensors"}


@pytest.fixture(scope="module")
def twins(world: dict[str, Path]) -> dict[str, Path]:
    """20 shapes, each with a byte-for-byte twin (``twin-NN.png``), and the broken file: equal
    activations, so the top-k lists hold ties, many of them between the ranks' shares."""
    inputs = world["root"] / "twins"
    write_shapes(inputs, 20, seed=11)
    for i in range(20):
        shutil.copyfile(inputs / f"shape-{i:02d}.png", inputs / f"twin-{i:02d}.png")
    (inputs / BROKEN).write_bytes(b"not a PNG")
    return {**world, "inputs": inputs}


def run_cnnviz(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cnnviz", "-q", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def both(world: dict[str, Path], argv: list[str]) -> tuple[Path, Path]:
    """Run ``argv`` (with ``--out``) in one process and as two ranks; the two folders."""
    outs = world["root"] / f"{argv[0]}-one", world["root"] / f"{argv[0]}-two"
    for out, extra in zip(outs, ([], ["--nproc", "2"]), strict=True):
        done = run_cnnviz(*argv, "--out", str(out), *extra)
        assert done.returncode == 1, done.stderr  # 1: the broken file was skipped
        assert ("launching 2 processes" in done.stderr) == bool(extra)
    return outs


def manifest(out: Path) -> dict[str, object]:
    data = json.loads((out / "manifest.json").read_text())
    data.pop("created", None)
    return dict(data)


def test_evaluate_two_ranks_equal_one_process(world: dict[str, Path]) -> None:
    argv = [
        "evaluate", str(world["inputs"]), "--model", "shapes_vgg11",
        "--weights", str(world["weights"]), "--methods", "gradcam,random-map",
        "--metrics", "deletion,insertion,confidence,road,sanity", "--steps", "8",
        "--road-percentages", "20,60", "--sanity-images", "2", "--bootstrap", "200",
    ]  # fmt: skip
    one, two = both(world, argv)
    for name in ("results.csv", "summary.csv", "curves.png", "road.png", "sanity.png"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name  # bit for bit
    ours, theirs = manifest(two), manifest(one)
    assert ours["items"] == theirs["items"] and ours["failures"] == theirs["failures"]
    assert ours["extra"] == theirs["extra"]  # settings, files and every summary number
    rows = json.loads((two / "results.json").read_text())["rows"]
    assert rows == json.loads((one / "results.json").read_text())["rows"]
    # every readable image exactly once: one item, and one row per method × metric
    images = [item["input"] for item in ours["items"]]  # type: ignore[attr-defined]
    assert len(images) == len(set(images)) == N_IMAGES
    assert images == sorted(images)  # input order, not rank order
    per_image = Counter(r["image"] for r in rows if not r["metric"].startswith("cascading"))
    assert set(per_image) == set(images) and set(per_image.values()) == {2 * 6}
    assert {r["image"] for r in rows if r["metric"].startswith("cascading")} == set(images[:2])
    assert [f["input"] for f in ours["failures"]] == [  # type: ignore[attr-defined]
        str(world["inputs"] / BROKEN)
    ]


def exemplar_args(twins: dict[str, Path], *inputs: Path) -> list[str]:
    return [
        "exemplars", "shapes_vgg11", *(str(i) for i in inputs or [twins["inputs"]]),
        "--weights", str(twins["weights"]), "--layer", "backbone.relu4_2", "--channels", "0-31",
        "--k", "5", "--batch-size", "4",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def exemplar_runs(twins: dict[str, Path]) -> tuple[Path, Path]:
    return both(twins, exemplar_args(twins))


def test_exemplars_two_ranks_equal_one_process(exemplar_runs: tuple[Path, Path]) -> None:
    one, two = exemplar_runs
    ours, theirs = (json.loads((out / "exemplars.json").read_text()) for out in (two, one))
    assert ours == theirs  # every score, peak, position and source, ties included
    crops = sorted(p.relative_to(one) for p in one.glob("channel-*/*.png"))
    assert crops == sorted(p.relative_to(two) for p in two.glob("channel-*/*.png"))
    assert len(crops) == 32 * 5
    for crop in crops:
        assert (two / crop).read_bytes() == (one / crop).read_bytes(), crop
    assert (two / "exemplars.png").read_bytes() == (one / "exemplars.png").read_bytes()
    m_two, m_one = manifest(two), manifest(one)
    assert m_two["items"] == m_one["items"] and m_two["failures"] == m_one["failures"]
    assert m_two["extra"]["images"] == 40  # type: ignore[index]  # each counted once
    state = [json.loads((out / "exemplars-state.json").read_text()) for out in (two, one)]
    assert state[0]["collector"] == state[1]["collector"]  # rank 0 saved the merged state
    assert state[0]["collector"]["seen"] == 40
    assert state[0]["processed"].keys() == state[1]["processed"].keys()

    # twins tie; a tie is broken by the lower id, also between the ranks' shares
    def rank(i: int) -> int:
        return (i // 4) % 2  # batch i // 4 of --batch-size 4, to rank batch mod 2

    across = 0
    for channel in ours["channels"]:
        for listed, value in (("top", "score"), ("peaks", "value")):
            entries = channel[listed]
            for a, b in itertools.pairwise(entries):
                assert a[value] > b[value] or (a[value] == b[value] and a["id"] < b["id"])
                across += a[value] == b[value] and rank(a["id"]) != rank(b["id"])
    assert across > 0


def test_merged_collectors_equal_one_collector() -> None:
    """Disjoint shares of the batches (round robin, as the ranks take them), merged, equal one
    collector that saw every batch: values in few levels, so most of them tie."""
    generator = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 3, (40, 6, 3, 3), generator=generator).double()
    acts[5, 2] = torch.nan
    batches = [list(range(s, min(s + 4, 40))) for s in range(0, 40, 4)]
    whole = ExemplarCollector(6, 7)
    for batch in batches:
        whole.update(acts[batch], batch)
    shares = []
    for rank in range(3):
        collector = ExemplarCollector(6, 7)
        for batch in batches[rank::3]:
            collector.update(acts[batch], batch)
        shares.append(collector)
    merged = ExemplarCollector.merged(shares)
    assert merged.seen == whole.seen == 40
    for name, value in whole.arrays().items():
        np.testing.assert_array_equal(merged.arrays()[name], value, err_msg=name)
    with pytest.raises(ValueError, match="one \\(channels, k\\)"):
        ExemplarCollector.merged([whole, ExemplarCollector(6, 3)])


def test_exemplars_resumed_by_two_ranks(
    twins: dict[str, Path], exemplar_runs: tuple[Path, Path]
) -> None:
    """One process reads the first 12 files; two ranks resume: rank 0 alone carries the saved
    collector on (else its images would count twice), and the result is one pass's."""
    out = twins["root"] / "resumed"
    first = sorted(twins["inputs"].iterdir())[:12]
    assert run_cnnviz(*exemplar_args(twins, *first), "--out", str(out)).returncode == 0
    done = run_cnnviz(*exemplar_args(twins), "--out", str(out), "--resume", "--nproc", "2")
    assert done.returncode == 1, done.stderr
    one = exemplar_runs[0]
    assert (out / "exemplars.json").read_text() == (one / "exemplars.json").read_text()
    state = json.loads((out / "exemplars-state.json").read_text())
    assert state["collector"]["seen"] == 40 and len(state["processed"]) == 40
    assert manifest(out)["extra"]["images"] == 40  # type: ignore[index]


def test_in_order_merges_by_index_and_keeps_each_index_order() -> None:
    pairs = [(2, "c"), (0, "a1"), (1, "b"), (0, "a2")]
    assert in_order(Ranks(), pairs) == ["a1", "a2", "b", "c"]
    assert leader_writes(Ranks(), lambda: "written", lambda: "read") == "written"
