"""Benchmark cases: LIME, KernelSHAP and Shapley Value Sampling, cnnviz against captum.

Every tool gets the same SLIC segments (computed once, outside the timing, on the picture the
model saw) and the same sample counts; cnnviz streams ``STREAM_ROWS`` perturbed images per
forward pass, captum's ``perturbations_per_eval`` is set to the same for the fair case
(``captum``) and left at its default of 1 for ``captum-default``. captum is called once per
image, as its documentation recommends (and as it does internally for a batch).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module as load_module

import torch
from bench_cases import STREAM_ROWS, Case, Runner, Setup

SAMPLES = {"lime": 32, "kernelshap": 32, "shapley-sampling": 1}
N_SEGMENTS = 25
PEERS = {"lime": "Lime", "kernelshap": "KernelShap", "shapley-sampling": "ShapleyValueSampling"}


def _segments(s: Setup) -> tuple[torch.Tensor, list[int]]:
    """The SLIC segments ``(N, H, W)`` of the batch, and their counts."""
    superpixels = load_module("cnnviz.methods.superpixels").Superpixels
    prep = load_module("cnnviz.models.own").imagenet_preprocessing_for(s.module)
    groups: torch.Tensor
    counts: list[int]
    groups, counts = superpixels.parse("slic", None, n_segments=N_SEGMENTS).groups(s.x, prep)
    return groups, counts


def _forwards(method: str) -> Callable[[Setup], int]:
    """The perturbed images one call scores (the per-image forward floor)."""

    def count(s: Setup) -> int:
        _, counts = _segments(s)
        if method == "shapley-sampling":
            return sum(1 + SAMPLES[method] * f for f in counts)
        return SAMPLES[method] * len(counts)

    return count


def cnnviz_sampling(method: str) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        explain = load_module("cnnviz.api").explain
        groups, _ = _segments(s)
        return lambda: explain(
            s.module,
            s.x,
            method,
            target=s.classes,
            mask=groups,
            samples=SAMPLES[method],
            batch_size=STREAM_ROWS,
        )

    return build


def captum_sampling(method: str, per_eval: int) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        peer = getattr(load_module("captum.attr"), PEERS[method])(s.module)
        groups, _ = _segments(s)

        def run() -> object:
            return [
                peer.attribute(
                    s.x[i : i + 1],
                    target=c,
                    feature_mask=groups[i : i + 1].unsqueeze(1),
                    baselines=0.0,
                    n_samples=SAMPLES[method],
                    perturbations_per_eval=per_eval,
                )
                for i, c in enumerate(s.classes)
            ]

        return run

    return build


CASES: list[Case] = [
    case
    for method in SAMPLES
    for case in (
        Case(
            "cnnviz",
            method,
            cnnviz_sampling(method),
            slow=True,
            memory=False,
            forwards=_forwards(method),
            note=f"{SAMPLES[method]} samples, SLIC {N_SEGMENTS}, {STREAM_ROWS} rows per pass",
        ),
        Case(
            "captum",
            method,
            captum_sampling(method, STREAM_ROWS),
            slow=True,
            memory=False,
            forwards=_forwards(method),
            note=f"perturbations_per_eval={STREAM_ROWS}",
        ),
        Case(
            "captum-default",
            method,
            captum_sampling(method, 1),
            slow=True,
            memory=False,
            forwards=_forwards(method),
            note="perturbations_per_eval=1 (captum's default)",
        ),
    )
]
