"""Whole-dataset throughput: ``cnnviz explain`` in one process and sharded over ranks.

Every case runs the installed command line in a fresh subprocess (``python -m cnnviz explain IN
--method gradcam -q``), as a user would, on the same JPEGs cut from the bundled photos
(:func:`pipeline.make_jpegs`, 300–600 px wide):

* **1 × 2 threads**: one process, two torch threads (``OMP_NUM_THREADS=2``);
* **2 × 1 thread**: ``--nproc 2``, two ranks of one thread each (gloo on loopback);
* **1 × 1 core**: one process of one thread pinned to one core with its decoding workers
  (``taskset -c 0``) — the single-process folder pipeline on a rank's share of the machine, which
  a rank is compared with: ``per-rank ratio = (2 × 1 images/s ÷ 2) ÷ (1 × 1 core images/s)``
  (goal ≥ 0.8). Unpinned, a one-thread process would decode on the other core for free, and the
  ratio would compare a rank with a process that has twice its share.

Each command's start (imports, model load, process group) is measured on one batch and taken
off, so the rates are the steady ones: ``(N − b) ÷ (t_N − t_b)``. The raw rates are printed too.

``--store-images 10000`` then explains that many 64 × 64 synthetic shapes with ``shapes_vgg11``
into ``--store zarr`` and counts the files it wrote (goal: O(chunks), not O(images)), next to the
count per image of the default layout (measured on ``--layout-images``).

    python benchmarks/distributed.py                      # efficientnet_lite0, 320 JPEGs
    python benchmarks/distributed.py --store-images 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import make_jpegs


def _explain(
    images: Path,
    out: Path,
    model: str,
    batch: int,
    threads: int,
    nproc: int,
    extra: list[str],
    pinned: bool = False,
) -> float:
    """Wall seconds of one ``cnnviz explain`` command in a subprocess (on core 0 if ``pinned``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CNNVIZ_OFFLINE": "1"}
    command = ["taskset", "-c", "0"] if pinned else []
    command += [sys.executable, "-m", "cnnviz", "-q", "explain", str(images), "--model", model]
    command += ["--method", "gradcam", "--batch-size", str(batch), "--out", str(out), *extra]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _files_under(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Images/s of the three cases (steady and raw) and the per-rank ratio."""
    (root / "all").mkdir()
    (root / "one").mkdir()
    paths = make_jpegs(root / "all", args.images)
    for path in paths[: args.batch_size * 2]:  # one batch per rank for the start-up runs
        (root / "one" / path.name).symlink_to(path)
    cases = {"1x2": (2, 1), "2x1": (1, 2), "1x1": (1, 1)}  # 1x1 pinned to one core
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    startup: dict[str, list[float]] = {case: [] for case in cases}
    for k in range(args.repeats):
        for case, (threads, nproc) in cases.items():
            pinned = case == "1x1"
            small = _explain(root / "one", root / f"s{case}{k}", args.model, args.batch_size,
                             threads, nproc, ["--workers", "0"], pinned)  # fmt: skip
            full = _explain(root / "all", root / f"f{case}{k}", args.model, args.batch_size,
                            threads, nproc, [], pinned)  # fmt: skip
            startup[case].append(small)
            seconds[case].append(full)
    small_count = args.batch_size * 2
    steady = {
        case: (args.images - small_count) / (min(seconds[case]) - min(startup[case]))
        for case in cases
    }
    raw = {case: args.images / min(seconds[case]) for case in cases}
    return {
        "images": args.images,
        "steady_images_per_second": steady,
        "raw_images_per_second": raw,
        "seconds": seconds,
        "startup_seconds": startup,
        "per_rank_ratio": steady["2x1"] / 2 / steady["1x1"],
        "two_ranks_over_two_threads": steady["2x1"] / steady["1x2"],
    }


def store_files(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Files written by a ``--store zarr`` run of ``--store-images`` shapes, and per image by the
    default layout."""
    from PIL import Image

    from cnnviz.data.shapes import make_shapes

    folder = root / "shapes"
    folder.mkdir()
    batch = make_shapes(args.store_images, seed=7)
    pixels = (batch.images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    for i, picture in enumerate(pixels):
        Image.fromarray(picture).save(folder / f"s{i:06d}.png", compress_level=1)
    zarr_out = root / "zarr-run"
    zarr_seconds = _explain(folder, zarr_out, "shapes_vgg11", args.store_batch, 2, 1,
                            ["--store", "zarr"])  # fmt: skip
    few = root / "few"
    few.mkdir()
    for i in range(args.layout_images):
        (few / f"s{i:06d}.png").symlink_to(folder / f"s{i:06d}.png")
    files_out = root / "files-run"
    files_seconds = _explain(few, files_out, "shapes_vgg11", args.store_batch, 2, 1, [])
    per_image = _files_under(files_out) / args.layout_images
    chunks = -(-args.store_images // args.store_batch)
    return {
        "images": args.store_images,
        "batch_size": args.store_batch,
        "chunks": chunks,
        "zarr_files": _files_under(zarr_out),
        "zarr_seconds": zarr_seconds,
        "zarr_images_per_second": args.store_images / zarr_seconds,
        "files_layout_files_per_image": per_image,
        "files_layout_estimate": round(per_image * args.store_images),
        "files_layout_images_per_second": args.layout_images / files_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of")
    parser.add_argument("--store-images", type=int, default=0, help="0: skip the store count")
    parser.add_argument("--store-batch", type=int, default=64)
    parser.add_argument("--layout-images", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "model": args.model,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="cnnviz-dist-bench-") as tmp:
        result["throughput"] = throughput(args, Path(tmp))
        if args.store_images:
            result["store"] = store_files(args, Path(tmp))
    result["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    t = result["throughput"]
    print(f"{args.model}, {args.images} JPEGs, batch {args.batch_size}, best of {args.repeats}")
    for case, label in (("1x2", "1 process × 2 threads"), ("2x1", "2 processes × 1 thread"),
                        ("1x1", "1 process × 1 core")):  # fmt: skip
        steady, raw = t["steady_images_per_second"][case], t["raw_images_per_second"][case]
        print(f"  {label:<24} {steady:6.1f} images/s steady ({raw:5.1f} with start-up)")
    print(f"  per-rank ratio (2×1 ÷ 2) ÷ (1×1): {t['per_rank_ratio']:.2f} (goal ≥ 0.80)")
    print(f"  2 × 1 ÷ 1 × 2: {t['two_ranks_over_two_threads']:.2f}")
    if "store" in result:
        s = result["store"]
        print(
            f"  --store zarr, {s['images']} images in {s['chunks']} chunks: {s['zarr_files']} "
            f"files in {s['zarr_seconds']:.0f} s ({s['zarr_images_per_second']:.0f} images/s); "
            f"the default layout: {s['files_layout_files_per_image']:.1f} files per image, "
            f"~{s['files_layout_estimate']} for as many"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
