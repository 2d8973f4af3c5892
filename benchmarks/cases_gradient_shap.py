"""Benchmark cases: GradientShap, Layer Conductance, Internal Influence and Neuron Integrated
Gradients, cnnviz against captum with the same samples, steps and rows per forward pass.

GradientShap: ``SHAP_SAMPLES`` samples towards ``SHAP_REFERENCES`` shared references with noise
of ``SHAP_STDEV``; captum's GradientShap has no internal batch size (its NoiseTunnel takes every
sample of the batch in one pass), so cnnviz's ``batch_size`` is the same ``samples × images``.
The layer methods: ``LAYER_STEPS`` Gauss-Legendre steps at the run's CAM layer from a zero
baseline, ``STREAM_ROWS`` rows per pass (captum's ``internal_batch_size``); the neuron is
position (0, 1, 1) of that layer.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module as load_module
from typing import Any

import torch
from bench_cases import STREAM_ROWS, Case, Runner, Setup

SHAP_SAMPLES, SHAP_REFERENCES, SHAP_STDEV = 16, 4, 0.1
LAYER_STEPS = 32
NEURON = (0, 1, 1)


def shap_references(s: Setup) -> torch.Tensor:
    """``SHAP_REFERENCES`` fixed references ``(B, C, H, W)``: zeros and noisy greys."""
    generator = torch.Generator().manual_seed(0)
    shape = (SHAP_REFERENCES, *s.x.shape[1:])
    refs = 0.3 * torch.randn(shape, generator=generator)
    refs[0] = 0
    return refs.to(s.x)


def cnnviz_case(method: str, layer: bool, **options: Any) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        explain = load_module("cnnviz.api").explain
        where = s.layer if layer else None
        extra = dict(options)
        if method == "gradientshap":
            extra.update(baseline=shap_references(s), batch_size=SHAP_SAMPLES * len(s.x))
        target = None if method == "neuron-integrated-gradients" else s.classes
        return lambda: explain(s.module, s.x, method, layer=where, target=target, **extra)

    return build


def captum_gradient_shap(s: Setup) -> Runner:
    shap = load_module("captum.attr").GradientShap(s.module)
    refs = shap_references(s)
    return lambda: shap.attribute(
        s.x, refs, n_samples=SHAP_SAMPLES, stdevs=SHAP_STDEV, target=s.classes
    )


def captum_layer(cls_name: str) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        method = getattr(load_module("captum.attr"), cls_name)(s.module, s.layer_module)
        options = {"n_steps": LAYER_STEPS, "internal_batch_size": STREAM_ROWS}
        if cls_name == "NeuronIntegratedGradients":
            return lambda: method.attribute(s.x, NEURON, torch.zeros_like(s.x), **options)
        return lambda: method.attribute(s.x, baselines=0.0, target=s.classes, **options)

    return build


LAYER_OPTIONS: dict[str, Any] = {"steps": LAYER_STEPS, "baseline": 0.0, "batch_size": STREAM_ROWS}
LAYER_NOTE = f"{LAYER_STEPS} steps, gausslegendre, {STREAM_ROWS} rows per pass"
CASES: list[Case] = [
    Case(
        "cnnviz",
        "gradientshap",
        cnnviz_case("gradientshap", False, samples=SHAP_SAMPLES, stdevs=SHAP_STDEV),
        slow=True,
        memory=False,
        note=f"{SHAP_SAMPLES} samples, {SHAP_REFERENCES} references, all rows in one pass",
    ),
    Case(
        "captum",
        "gradientshap",
        captum_gradient_shap,
        slow=True,
        memory=False,
        note=f"n_samples={SHAP_SAMPLES}, stdevs={SHAP_STDEV}",
    ),
    *(
        case
        for method, peer, options in (
            ("layer-conductance", "LayerConductance", LAYER_OPTIONS),
            ("internal-influence", "InternalInfluence", LAYER_OPTIONS),
            ("neuron-integrated-gradients", "NeuronIntegratedGradients", LAYER_OPTIONS),
        )
        for case in (
            Case(
                "cnnviz",
                method,
                cnnviz_case(
                    method,
                    True,
                    **options,
                    **({"neuron": NEURON} if peer.startswith("Neuron") else {}),
                ),
                slow=True,
                memory=False,
                note=LAYER_NOTE,
            ),
            Case("captum", method, captum_layer(peer), slow=True, memory=False, note=LAYER_NOTE),
        )
    ),
]
