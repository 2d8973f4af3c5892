"""Feature visualisation: cnnviz against lucent (torch-lucent 0.1.8), in one process (issue 15).

For each case, both tools render the same 16 channels of the same layer of the same model, at
the same image size, for the same number of Adam steps (learning rate 0.05), from a Fourier
image with decorrelated colour and Lucid's standard random moves, on CPU with the same thread
count and the model in eval mode:

* **cnnviz**: one call, ``cnnviz.features(model, layer, channels=range(16), size=S, steps=N,
  lr=0.05, stability=False, seed=0)``: all 16 channels are one batch of 16 images.
* **lucent**: 16 calls of ``lucent.optvis.render.render_vis(model, "<layer>:<c>", ...)`` (it
  renders one objective per call; its layer names use ``_`` for ``.``, e.g. ``blocks_5``), with
  ``param.image(S)`` (its default: fft + decorrelate), ``transform.standard_transforms`` and
  ``torch.optim.Adam(params, lr=0.05)``, which is render_vis's own default optimiser (read in
  ``lucent/optvis/render.py``: ``optimizer = lambda params: torch.optim.Adam(params, lr=5e-2)``).

Cases: A, the real EfficientNet-Lite0 (``cnnviz.load_model("efficientnet_lite0")``, weights
from its package, offline), layer ``blocks.5``, size 128; B, torchvision ``resnet18(weights=
None)`` with ``torch.manual_seed(0)`` weights (no download), layer ``layer3``, size 224
(``--quick`` drops B). Each tool first runs untimed for ``--warmup-steps`` steps; then each is
timed once with ``time.perf_counter`` (lucent: the sum of its 16 calls).

**Final activation**: each channel's mean activation on its final image (no moves, at size S),
through the model's own normalisation, measured the same way for both tools with
``cnnviz.featurevis.checks.layer_outputs`` and ``unit_scores`` (lucent's images come back as
``(1, H, W, 3)`` NumPy arrays in [0, 1] and are converted to ``(1, 3, H, W)`` tensors).

What lucent does differently, and what this script sets so both see the same thing:

* *Upsampling*: render_vis appends ``Upsample(224, bilinear)`` to the moves for images smaller
  than 224, and for larger ones feeds the model the padded image (S + 24 pixels and the random
  scale's change). ``fixed_image_size=S`` is passed in both cases, so lucent's model input is
  always S×S, as cnnviz's is (cnnviz's moves keep the image's size; lucent's resize the padded,
  moved image back to S, which shrinks the content by about S / (S + 24)).
* *Normalisation*: with ``preprocess=True`` render_vis appends torchvision's ImageNet
  normalisation whatever the model; EfficientNet-Lite0 expects mean = std = 0.5. So
  ``preprocess=False`` is passed and the model's own ``(x − mean) / std`` is appended to the
  moves instead (for resnet18 that is ImageNet's, i.e. what lucent would have done; it comes
  before lucent's resize rather than after, which is the same, as both are linear per pixel
  and the resize's weights sum to 1).
* *Moves*: lucent's are in pixels for 224-pixel images (pad 12, jitter 8 and 4) at every size;
  cnnviz scales them to the image (see ``cnnviz.featurevis.transforms``). Each tool keeps its own.
* *Hooks*: render_vis hooks every module of the model and never removes the hooks
  (``hook_model``'s ``ModuleHook.close`` is never called), so on one model the 16th call would
  run 16 hooks on every module. Each lucent call therefore gets a fresh ``copy.deepcopy`` of the
  model, made outside the timing; the user's model is never given to lucent.
* *Seeds*: lucent draws from the global NumPy and torch generators; both are seeded with the
  channel's index before its call.

Compatibility with torch 2.14: lucent 0.1.8 and kornia 0.5.11 import and run unchanged (no
shim is needed; importing lucent only warns that ``torch.jit.script`` is deprecated, which this
script silences). They are benchmark-only dependencies, installed with

    pip install --no-deps torch-lucent==0.1.8 kornia==0.5.11 decorator ipython

``OMP_WAIT_POLICY`` is set to ``PASSIVE`` (unless already set) before torch is imported: on a
shared machine, OpenMP threads that spin while waiting made 2-thread CPU passes 30–80× slower
than 1-thread ones here, which would have measured the neighbours rather than the tools.

The batch-16 against 16 × batch-1 forward + backward timing at the end explains the time
ratio: it is what batching alone buys on this CPU, for the whole model (what lucent runs each
step) and up to the layer (where cnnviz stops the forward pass).

    python benchmarks/features.py                    # both cases, 128 steps
    python benchmarks/features.py --quick            # case A only
    python benchmarks/features.py --steps 64 --json features.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning. On a shared 2-core
# machine spinning threads made one 2-thread forward of EfficientNet-Lite0 at 128 px take
# 0.7–2 s instead of 25 ms; it applies to both tools alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

import cnnviz
from cnnviz.api import model_preprocessing
from cnnviz.featurevis.checks import layer_outputs, unit_scores
from cnnviz.featurevis.optimise import normaliser

CHANNELS = 16
LR = 0.05
TIME_GOAL = 0.7
"""Issue 15: cnnviz's time ÷ lucent's time for the 16 channels at most this."""
WIN_GOAL = 12
"""Issue 15: channels (of 16) where cnnviz's final activation is at least lucent's."""
PASS_REPEATS = 3


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    layer: str
    size: int


CASES = (
    Case("A", "efficientnet_lite0", "blocks.5", 128),
    Case("B", "resnet18", "layer3", 224),
)


@dataclass
class Result:
    case: str
    model: str
    layer: str
    size: int
    steps: int
    cnnviz_s: float
    lucent_s: float
    time_ratio: float
    cnnviz_activation: list[float]
    lucent_activation: list[float]
    channels_won: int
    pass_batch16_s: float
    pass_16x1_s: float
    pass_ratio: float
    pass_to_layer_batch16_s: float
    pass_to_layer_16x1_s: float
    pass_to_layer_ratio: float
    notes: list[str] = field(default_factory=list)


# -- the models --------------------------------------------------------------------------------


def load(case: Case) -> tuple[nn.Module | Any, nn.Module]:
    """``(what cnnviz is given, the module)``, the module in eval mode."""
    if case.model == "efficientnet_lite0":
        loaded = cnnviz.load_model("efficientnet_lite0")
        return loaded, loaded.module.eval()
    if case.model == "resnet18":
        from torchvision.models import resnet18

        torch.manual_seed(0)
        module = resnet18(weights=None).eval()
        return module, module  # cnnviz assumes ImageNet preprocessing for a bare module
    raise ValueError(f"unknown model {case.model!r}")


# -- the two tools -----------------------------------------------------------------------------


def run_cnnviz(model: Any, case: Case, steps: int) -> torch.Tensor:
    result = cnnviz.features(
        model,
        case.layer,
        channels=range(CHANNELS),
        size=case.size,
        steps=steps,
        lr=LR,
        stability=False,
        seed=0,
    )
    images: torch.Tensor = result.images  # (16, C, H, W) in [0, 1]
    return images


def run_lucent(
    module: nn.Module,
    case: Case,
    steps: int,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    *,
    channels: int = CHANNELS,
) -> tuple[float, torch.Tensor]:
    """Seconds for the calls of channels ``0 … channels − 1`` (each on a fresh copy of the
    model), and their ``(channels, 3, S, S)`` images."""
    from lucent.optvis import param, render, transform

    lucent_layer = case.layer.replace(".", "_")
    seconds = 0.0
    images = []
    for c in range(channels):
        model = copy.deepcopy(module).eval()
        np.random.seed(c)
        torch.manual_seed(c)
        start = time.perf_counter()
        out = render.render_vis(
            model,
            f"{lucent_layer}:{c}",
            param_f=lambda: param.image(case.size),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            transforms=[*transform.standard_transforms, normalise],
            thresholds=(steps,),
            preprocess=False,
            show_image=False,
            progress=False,
            fixed_image_size=case.size,
        )
        seconds += time.perf_counter() - start
        images.append(torch.from_numpy(np.ascontiguousarray(out[-1])).permute(0, 3, 1, 2))
        del model
    return seconds, torch.cat(images).float()


def final_activation(
    module: nn.Module,
    layer: str,
    images: torch.Tensor,
    normalise: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """Image ``i``'s mean activation of channel ``i``, on the image as it is (no moves)."""
    with torch.no_grad():
        acts = layer_outputs(module, layer, normalise(images))
    scores = unit_scores(acts).float()
    return [float(scores[i, i]) for i in range(images.shape[0])]


# -- what batching buys ------------------------------------------------------------------------


class _ReachedLayerError(Exception):
    """Raised by the hook to stop the forward pass after the layer."""


def pass_seconds(module: nn.Module, layer: str, batch: int, size: int, *, to_layer: bool) -> float:
    """One forward + backward (the gradient of the layer's mean activation for the input), of
    the whole model or stopped after ``layer``."""
    target = dict(module.named_modules())[layer]
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, output: torch.Tensor) -> None:
        captured.append(output)
        if to_layer:
            raise _ReachedLayerError

    x = torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    handle = target.register_forward_hook(hook)
    try:
        start = time.perf_counter()
        with contextlib.suppress(_ReachedLayerError):
            module(x)
        torch.autograd.grad(captured[0].mean(), x)
        return time.perf_counter() - start
    finally:
        handle.remove()


def batching(module: nn.Module, layer: str, size: int, *, to_layer: bool) -> tuple[float, float]:
    """Median seconds of one batch-16 pass and of sixteen batch-1 passes."""
    pass_seconds(module, layer, CHANNELS, size, to_layer=to_layer)  # warm-up
    pass_seconds(module, layer, 1, size, to_layer=to_layer)
    one, sixteen = [], []
    for _ in range(PASS_REPEATS):
        one.append(pass_seconds(module, layer, CHANNELS, size, to_layer=to_layer))
        sixteen.append(
            sum(pass_seconds(module, layer, 1, size, to_layer=to_layer) for _ in range(CHANNELS))
        )
    return statistics.median(one), statistics.median(sixteen)


# -- one case ----------------------------------------------------------------------------------


def run_case(case: Case, steps: int, warmup_steps: int) -> Result:
    model, module = load(case)
    prep = model_preprocessing(model, module)
    normalise = normaliser(prep, torch.device("cpu"))
    print(
        f"case {case.name}: {case.model} {case.layer}, {CHANNELS} channels, {case.size}px, "
        f"{steps} steps (mean {prep.mean}, std {prep.std})",
        flush=True,
    )

    run_cnnviz(model, case, warmup_steps)
    run_lucent(module, case, warmup_steps, normalise, channels=1)

    start = time.perf_counter()
    ours = run_cnnviz(model, case, steps)
    cnnviz_s = time.perf_counter() - start
    print(f"  cnnviz {cnnviz_s:.1f} s", flush=True)
    lucent_s, theirs = run_lucent(module, case, steps, normalise)
    print(f"  lucent {lucent_s:.1f} s", flush=True)

    if ours.shape != theirs.shape:
        raise RuntimeError(f"image shapes differ: cnnviz {ours.shape}, lucent {theirs.shape}")
    a_ours = final_activation(module, case.layer, ours, normalise)
    a_theirs = final_activation(module, case.layer, theirs, normalise)
    won = sum(o >= t for o, t in zip(a_ours, a_theirs, strict=True))

    full_16, full_1 = batching(module, case.layer, case.size, to_layer=False)
    part_16, part_1 = batching(module, case.layer, case.size, to_layer=True)
    return Result(
        case=case.name,
        model=case.model,
        layer=case.layer,
        size=case.size,
        steps=steps,
        cnnviz_s=cnnviz_s,
        lucent_s=lucent_s,
        time_ratio=cnnviz_s / lucent_s,
        cnnviz_activation=a_ours,
        lucent_activation=a_theirs,
        channels_won=won,
        pass_batch16_s=full_16,
        pass_16x1_s=full_1,
        pass_ratio=full_16 / full_1,
        pass_to_layer_batch16_s=part_16,
        pass_to_layer_16x1_s=part_1,
        pass_to_layer_ratio=part_16 / part_1,
    )


# -- output ------------------------------------------------------------------------------------


def environment(threads: int) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cnnviz": version("cnnviz"),
        "torch-lucent": version("torch-lucent"),
        "kornia": version("kornia"),
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table(results: list[Result]) -> str:
    lines = [
        "| case | model · layer · size · steps | cnnviz s | lucent s | cnnviz ÷ lucent "
        f"(goal ≤ {TIME_GOAL}) | channels cnnviz ≥ lucent (goal ≥ {WIN_GOAL}) "
        "| median activation cnnviz / lucent | batch 16 ÷ 16 × batch 1 (whole / to layer) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.model} · {r.layer} · {r.size} · {r.steps} | {r.cnnviz_s:.1f} "
            f"| {r.lucent_s:.1f} | {r.time_ratio:.2f} | {r.channels_won} / {CHANNELS} "
            f"| {statistics.median(r.cnnviz_activation):.3g} / "
            f"{statistics.median(r.lucent_activation):.3g} "
            f"| {r.pass_ratio:.2f} / {r.pass_to_layer_ratio:.2f} |"
        )
    return "\n".join(lines)


def per_channel(r: Result) -> str:
    rows = [f"case {r.case} per channel (final mean activation; ratio cnnviz ÷ lucent):"]
    for c, (o, t) in enumerate(zip(r.cnnviz_activation, r.lucent_activation, strict=True)):
        ratio = o / t if t != 0 else float("nan")
        rows.append(f"  {c:2d}  cnnviz {o:8.3f}  lucent {t:8.3f}  ratio {ratio:6.2f}")
    return "\n".join(rows)


def verdicts(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        time_ok = "ok" if r.time_ratio <= TIME_GOAL else "MISSED"
        win_ok = "ok" if r.channels_won >= WIN_GOAL else "MISSED"
        out.append(
            f"case {r.case}: time {r.time_ratio:.2f} ≤ {TIME_GOAL}: {time_ok}; "
            f"activation {r.channels_won} ≥ {WIN_GOAL} of {CHANNELS}: {win_ok}"
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=128, help="Adam steps (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="case A only")
    parser.add_argument(
        "--cases", nargs="+", choices=[c.name for c in CASES], help="a subset of the cases"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=4, help="steps of each tool's untimed warm-up"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1 or args.threads < 1:
        parser.error("--steps, --warmup-steps and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    torch.set_num_threads(args.threads)
    names = args.cases or (["A"] if args.quick else [c.name for c in CASES])
    env = environment(args.threads)
    print(
        f"torch {env['torch']}, lucent {env['torch-lucent']}, kornia {env['kornia']}, "
        f"{args.threads} threads, load {env['load_average']}",
        flush=True,
    )
    results = [run_case(c, args.steps, args.warmup_steps) for c in CASES if c.name in names]
    print()
    print(table(results))
    print()
    for r in results:
        print(per_channel(r))
        print(
            f"  one forward+backward, whole model: batch 16 {r.pass_batch16_s * 1e3:.0f} ms, "
            f"16 × batch 1 {r.pass_16x1_s * 1e3:.0f} ms ({r.pass_ratio:.2f}×); up to "
            f"{r.layer}: {r.pass_to_layer_batch16_s * 1e3:.0f} ms, "
            f"{r.pass_to_layer_16x1_s * 1e3:.0f} ms ({r.pass_to_layer_ratio:.2f}×)"
        )
    print()
    for line in verdicts(results):
        print(line)
    print(f"load average at the end: {list(os.getloadavg())}")
    if args.json:
        payload = {
            "environment": env | {"load_average_end": list(os.getloadavg())},
            "results": [asdict(r) for r in results],
        }
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
