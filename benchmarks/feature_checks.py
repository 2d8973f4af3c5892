"""The checks of feature visualisation, measured on the known-truth set-ups (a script, not a test).

Prints, as a Markdown table, the four checks of :mod:`cnnviz.featurevis.checks` for:

* ``shapes_vgg11``: the six class visualisations (default moves, three starts), and the first 16
  channels of ``relu4_2`` against their best exemplar among 1,000 held-out shapes;
* EfficientNet-Lite0: 16 channels of ``blocks.5`` at 128 px against the bundled photos and 200
  seeded crops of them, and the class "espresso" at 128 px.

    python benchmarks/feature_checks.py                 # 512 steps (the default), ~5 min on 2 cores
    python benchmarks/feature_checks.py --steps 128     # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import cnnviz
from cnnviz.data.samples import sample_crops
from cnnviz.data.shapes import heldout_shapes
from cnnviz.models.shapes_vgg11 import normalize_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SAMPLES = Path(cnnviz.__file__).parent / "data" / "samples"


def _row(name: str, result: cnnviz.FeatureVisualization, seconds: float) -> str:
    checks = result.checks

    def median(values: list[float | None]) -> str:
        kept = [v for v in values if v is not None]
        return f"{statistics.median(kept):.2f}" if kept else "–"

    def count(values: list[bool]) -> str:
        return f"{sum(values)}/{len(values)}"

    ratios = [c.activation_ratio for c in checks]
    return " | ".join(
        [
            name,
            f"{seconds:.0f} s",
            count([r is not None and r >= 1 for r in ratios]) if ratios[0] is not None else "–",
            median(ratios),
            median([c.selectivity for c in checks]),
            median([c.stability_activation for c in checks]),
            median([c.stability_similarity for c in checks]),
            median([c.copies_probability for c in checks]),
            count([bool(c.copies_top1) for c in checks])
            if checks[0].copies_top1 is not None
            else "–",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    shapes = cnnviz.load_model("shapes_vgg11")
    start = time.perf_counter()
    result = cnnviz.features(shapes, classes=range(6), steps=args.steps)
    rows.append(_row("shapes_vgg11, 6 classes", result, time.perf_counter() - start))
    exemplars = normalize_shapes(heldout_shapes(1000).images)
    start = time.perf_counter()
    result = cnnviz.features(shapes, "relu4_2", range(16), steps=args.steps, exemplars=exemplars)
    rows.append(_row("shapes_vgg11 relu4_2, 16 channels", result, time.perf_counter() - start))
    lite = cnnviz.load_model("efficientnet_lite0")
    mean = torch.tensor(lite.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(lite.preprocessing.std).view(1, 3, 1, 1)
    photos = (sample_crops(200, 128) - mean) / std
    start = time.perf_counter()
    result = cnnviz.features(
        lite, "blocks.5", range(16), size=128, steps=args.steps, exemplars=photos
    )
    rows.append(
        _row(
            "EfficientNet-Lite0 blocks.5, 16 channels, 128 px", result, time.perf_counter() - start
        )
    )
    start = time.perf_counter()
    result = cnnviz.features(lite, classes=["espresso"], size=128, steps=args.steps)
    rows.append(_row("EfficientNet-Lite0 espresso, 128 px", result, time.perf_counter() - start))
    print(f"{args.steps} steps, three starts per unit, {args.threads} threads\n")
    print(
        "| set-up | time | ratio ≥ 1 | median ratio | median selectivity | median 3-start "
        "activation | median 3-start SSIM | median moved p | moved top-1 |"
    )
    print("|" + " --- |" * 9)
    for row in rows:
        print(f"| {row} |")


if __name__ == "__main__":
    main()
