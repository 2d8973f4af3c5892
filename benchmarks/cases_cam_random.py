"""Benchmark cases of RandomCAM: cnnviz against pytorch-grad-cam's RandomCAM."""

from __future__ import annotations

from bench_cases import Case, cnnviz_method, pgc_method

CASES: list[Case] = [
    Case("cnnviz", "randomcam", cnnviz_method("randomcam"), batches=(1, 8), memory=False),
    Case("pytorch-grad-cam", "randomcam", pgc_method("RandomCAM"), batches=(1, 8), memory=False),
]
