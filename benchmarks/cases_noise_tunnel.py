"""Benchmark cases of the noise tunnel: cnnviz's around saliency and Grad-CAM against captum's
NoiseTunnel around Saliency and LayerGradCam, same samples, σ and rows per pass."""

from __future__ import annotations

from typing import Any

from bench_cases import (
    SMOOTHGRAD_SAMPLES,
    STREAM_ROWS,
    Case,
    Runner,
    Setup,
    _import,
    cnnviz_method,
    smoothgrad_sigma,
)


def cnnviz_tunnel(around: str) -> Any:
    def build(s: Setup) -> Runner:
        options = {"samples": SMOOTHGRAD_SAMPLES, "sigma": smoothgrad_sigma(s)}
        make = cnnviz_method(
            "noise-tunnel",
            layer=around != "saliency",
            around=around,
            batch_size=STREAM_ROWS,
            **options,
        )
        return make(s)

    return build


def captum_tunnel(around: str) -> Any:
    def build(s: Setup) -> Runner:
        attr = _import("captum.attr")
        if around == "saliency":
            method, extra = attr.Saliency(s.module), {"abs": False}
        else:
            method, extra = attr.LayerGradCam(s.module, s.layer_module), {}
        tunnel = attr.NoiseTunnel(method)
        sigma = smoothgrad_sigma(s)
        return lambda: tunnel.attribute(
            s.x,
            nt_type="smoothgrad",
            nt_samples=SMOOTHGRAD_SAMPLES,
            stdevs=sigma,
            nt_samples_batch_size=STREAM_ROWS,
            target=s.classes,
            **extra,
        )

    return build


NOTE = f"{SMOOTHGRAD_SAMPLES} samples, {STREAM_ROWS} rows per pass"
CASES: list[Case] = [
    Case(tool, f"noise-tunnel-{around}", build(around), slow=True, memory=False, note=NOTE)
    for around in ("saliency", "gradcam")
    for tool, build in (("cnnviz", cnnviz_tunnel), ("captum", captum_tunnel))
]
