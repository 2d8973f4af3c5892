"""Folder pipeline throughput: ``cnnviz explain DIR --method gradcam`` vs the model's plain forward.

Both are timed in one process, with the same thread count, on the same 64 JPEGs (made from the
bundled sample photos: random crops, flips and sizes, 300–600 px wide, so decoding and resizing
cost what they cost on real photos):

* **forward** (the yardstick): the model's plain forward under ``torch.no_grad()``, in batches,
  over the 64 images already decoded and preprocessed in memory;
* **pipeline**: :func:`cnnviz.runs.explain.explain_files` from the JPEG files on disk to overlays,
  raw maps, records and manifest in a fresh output folder (what the CLI command runs);
* **pipeline (zarr)**: the same into one chunked result store (``--store zarr``: float16 maps
  at the layer's resolution, ``results.csv``; no overlays or files per image);
* for reference, **forward + decoding**: the same forward fed by the same DataLoader.

Repeats alternate between the cases (so a busy machine slows all of them alike); medians are
reported, with the ratio ``pipeline images/s ÷ forward images/s`` (target ≥ 0.7). CPU time per
image (this process's threads plus the decoding workers) is reported too: on a machine shared
with other work it is steadier than wall time, and it shows what the overlap has to hide.

    python benchmarks/pipeline.py                 # efficientnet_lite0, 2 threads, batch 8
    python benchmarks/pipeline.py --json --repeats 7 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs cut from the bundled photos: random crops, flips and sizes."""
    import numpy as np
    from PIL import Image

    from cnnviz.data.samples import bundled_samples
    from cnnviz.inputs.images import load_image

    rng = np.random.default_rng(seed)
    sources = [load_image(p) for p in bundled_samples()]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        width = int(rng.integers(300, 601))
        crop = crop.resize((width, max(1, round(width * ch / cw))), Image.Resampling.BILINEAR)
        path = folder / f"img{i:03d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def _cpu() -> float:
    """CPU seconds used so far by this process's threads and its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(run: Any) -> tuple[float, float]:
    """Wall and CPU seconds of ``run()``."""
    wall, cpu = time.perf_counter(), _cpu()
    run()
    return time.perf_counter() - wall, _cpu() - cpu


def run_forward(module: Any, batches: list[Any]) -> None:
    import torch

    with torch.no_grad():
        for x in batches:
            module(x)


def run_loader_forward(loaded: Any, paths: list[Path], batch: int, workers: int) -> None:
    import torch

    from cnnviz.runs.decoding import ImageFiles, collate

    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, loaded.preprocessing, "bench"),
        batch_size=batch,
        collate_fn=collate,
        num_workers=workers,
    )
    with torch.no_grad():
        for decoded in loader:
            loaded.module(decoded.tensors)


def run_pipeline(
    loaded: Any, paths: list[Path], out: Path, batch: int, workers: int, store: str = "files"
) -> None:
    from cnnviz.runs.explain import ExplainSettings, explain_files

    settings = ExplainSettings(method="gradcam", batch_size=batch, num_workers=workers, store=store)
    manifest = explain_files(loaded, paths, out, settings, command="explain", progress=False)
    written = manifest["extra"]["run"]["written"]
    if manifest["failures"] or written != len(paths):
        raise RuntimeError(f"the pipeline run failed: {manifest['failures'][:3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="default: cnnviz's choice")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from cnnviz.inputs.decode import decode_input
    from cnnviz.models import load_model
    from cnnviz.runs.decoding import auto_workers

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    batches_count = -(-args.images // args.batch_size)
    workers = auto_workers(batches_count) if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="cnnviz-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        paths = make_jpegs(root / "in", args.images)
        tensors = torch.stack([decode_input(p, loaded.preprocessing)[1] for p in paths])
        batches = list(torch.split(tensors, args.batch_size))
        run_forward(loaded.module, batches[:1])  # warm-up (allocator, kernels)
        run_pipeline(loaded, paths[: args.batch_size], root / "warm", args.batch_size, 0)
        cases: dict[str, Any] = {
            "forward": lambda k: run_forward(loaded.module, batches),
            "pipeline": lambda k: run_pipeline(
                loaded, paths, root / f"out{k}", args.batch_size, workers
            ),
            "pipeline (zarr)": lambda k: run_pipeline(
                loaded, paths, root / f"zarr{k}", args.batch_size, workers, "zarr"
            ),
            "forward+decoding": lambda k: run_loader_forward(
                loaded, paths, args.batch_size, workers
            ),
        }
        times: dict[str, list[float]] = {case: [] for case in cases}
        cpu: dict[str, list[float]] = {case: [] for case in cases}
        for k in range(args.repeats):
            for case, run in cases.items():
                wall, used = _timed(lambda: run(k))  # noqa: B023  (called at once)
                times[case].append(wall)
                cpu[case].append(used)
    rates = {case: args.images / statistics.median(t) for case, t in times.items()}
    result = {
        "model": args.model,
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "workers": workers,
        "repeats": args.repeats,
        "images_per_second": rates,
        "seconds": times,
        "cpu_ms_per_image": {
            case: 1000 * statistics.median(c) / args.images for case, c in cpu.items()
        },
        "ratio_pipeline_to_forward": rates["pipeline"] / rates["forward"],
        "ratio_pipeline_to_forward_with_decoding": rates["pipeline"] / rates["forward+decoding"],
        "ratio_zarr_to_files_pipeline": rates["pipeline (zarr)"] / rates["pipeline"],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{args.model}, {args.images} JPEGs, batch {args.batch_size}, {args.threads} threads, "
        f"{workers} decoding workers, median of {args.repeats}; torch {torch.__version__}"
    )
    for case, rate in rates.items():
        spread = ", ".join(f"{args.images / t:.1f}" for t in times[case])
        used = result["cpu_ms_per_image"][case]
        print(f"  {case:<18} {rate:7.1f} images/s  {used:6.1f} CPU ms/image  (runs: {spread})")
    print(f"  pipeline ÷ forward: {result['ratio_pipeline_to_forward']:.2f} (target ≥ 0.70)")
    print(
        "  pipeline ÷ (forward + decoding): "
        f"{result['ratio_pipeline_to_forward_with_decoding']:.2f}"
    )
    print(f"  pipeline (--store zarr) ÷ pipeline: {result['ratio_zarr_to_files_pipeline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
