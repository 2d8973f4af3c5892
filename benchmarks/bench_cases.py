"""The cases of ``benchmarks/run.py``: the plain forward, cnnviz's methods and the peers'.

Each case is built once per model and batch (:class:`Setup`) into a no-argument callable that is
timed; a case that cannot run here raises :class:`CaseUnavailableError` with the reason.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODELS: dict[str, dict[str, Any]] = {
    "vgg11_bn": {"weights": "random"},
    "efficientnet_lite0": {},
}
SLOW_BATCH = 1  # IG, SmoothGrad, Score-CAM, Ablation-CAM, deletion/insertion run on one image
IG_STEPS, SMOOTHGRAD_SAMPLES, STREAM_ROWS, METRIC_STEPS = 64, 16, 32, 100
Runner = Callable[[], object]


class CaseUnavailableError(Exception):
    """A case that cannot run here (library or method missing); the message says why."""


@dataclass
class Setup:
    """One model and one input batch, shared by every case of a group."""

    model: str
    module: nn.Module
    x: torch.Tensor
    classes: list[int]
    layer: str
    device: torch.device

    @property
    def layer_module(self) -> nn.Module:
        return self.module.get_submodule(self.layer)


@dataclass(frozen=True)
class Case:
    """One thing timed: ``tool:method`` on a model and batch.

    ``forwards`` gives, for perturbation cases, how many plain forwards of one image the method
    needs at least (its floor); the ratio is then taken to that many per-image forwards.
    """

    tool: str
    method: str
    build: Callable[[Setup], Runner]
    batches: tuple[int, ...] | None = None  # None: every batch of the run
    slow: bool = False
    memory: bool = True
    forwards: Callable[[Setup], int] | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.tool}:{self.method}"


# -- the cases ----------------------------------------------------------------------------------


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CaseUnavailableError(f"{module} is not installed ({e})") from None


def plain_forward(s: Setup) -> Runner:
    def run() -> object:
        with torch.no_grad():
            return s.module(s.x)

    return run


def plain_forward_channels_last(s: Setup) -> Runner:
    x = s.x.contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.no_grad():
            return s.module(x)

    return run


def plain_forward_32(s: Setup) -> Runner:
    x = s.x[:1].expand(32, -1, -1, -1).contiguous()

    def run() -> object:
        with torch.no_grad():
            return s.module(x)

    return run


def cnnviz_method(*names: str, layer: bool = True, **options: Any) -> Callable[[Setup], Runner]:
    """A cnnviz ``explain`` call with the first of ``names`` that is registered."""

    def build(s: Setup) -> Runner:
        base = _import("cnnviz.methods.registry")
        try:
            registered = base.method_names()
        except Exception as e:  # another engineer's module may be mid-edit
            raise CaseUnavailableError(
                f"cnnviz methods failed to load: {type(e).__name__}: {e}"
            ) from None
        name = next((n for n in names if n in registered), None)
        if name is None:
            raise CaseUnavailableError(f"not registered in cnnviz (looked for {', '.join(names)})")
        explain = _import("cnnviz.api").explain
        where = s.layer if layer else None
        return lambda: explain(s.module, s.x, name, layer=where, target=s.classes, **options)

    return build


def pgc_method(cls_name: str) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        cam_cls = getattr(_import("pytorch_grad_cam"), cls_name)
        target_cls = _import("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
        targets = [target_cls(c) for c in s.classes]

        def run() -> object:
            with cam_cls(model=s.module, target_layers=[s.layer_module]) as cam:
                return cam(input_tensor=s.x, targets=targets)

        return run

    return build


def torchcam_method(cls_name: str) -> Callable[[Setup], Runner]:
    def build(s: Setup) -> Runner:
        cam_cls = getattr(_import("torchcam.methods"), cls_name)

        def run() -> object:
            with cam_cls(s.module, target_layer=s.layer) as extractor:
                return extractor(s.classes, s.module(s.x))

        return run

    return build


def captum_layer_gradcam(s: Setup) -> Runner:
    attr = _import("captum.attr")
    return lambda: attr.LayerGradCam(s.module, s.layer_module).attribute(s.x, target=s.classes)


def captum_saliency(s: Setup) -> Runner:
    attr = _import("captum.attr")
    return lambda: attr.Saliency(s.module).attribute(s.x, target=s.classes, abs=True)


ABLATION_PATCH = 32  # 7 × 7 patches on a 224 px input: 49 ablated copies per image


def captum_feature_ablation(s: Setup) -> Runner:
    attr = _import("captum.attr")
    groups = _import("cnnviz.methods.region_ablation").patch_groups
    h, w = s.x.shape[-2:]
    mask = groups(h, w, ABLATION_PATCH).expand(s.x.shape[0], 1, h, w)
    ablation = attr.FeatureAblation(s.module)
    return lambda: ablation.attribute(
        s.x, target=s.classes, feature_mask=mask, baselines=0.0, perturbations_per_eval=STREAM_ROWS
    )


def captum_ig(s: Setup) -> Runner:
    attr = _import("captum.attr")
    ig = attr.IntegratedGradients(s.module)
    baseline = torch.zeros_like(s.x)
    return lambda: ig.attribute(
        s.x,
        baselines=baseline,
        target=s.classes,
        n_steps=IG_STEPS,
        method="gausslegendre",
        internal_batch_size=STREAM_ROWS,
    )


def smoothgrad_sigma(s: Setup) -> float:
    return 0.15 * float(s.x.max() - s.x.min())


def cnnviz_smoothgrad(s: Setup) -> Runner:
    build = cnnviz_method(
        "smoothgrad",
        layer=False,
        samples=SMOOTHGRAD_SAMPLES,
        sigma=smoothgrad_sigma(s),
        batch_size=STREAM_ROWS,
    )
    return build(s)


def captum_smoothgrad(s: Setup) -> Runner:
    attr = _import("captum.attr")
    tunnel = attr.NoiseTunnel(attr.Saliency(s.module))
    sigma = smoothgrad_sigma(s)
    return lambda: tunnel.attribute(
        s.x,
        nt_type="smoothgrad",
        nt_samples=SMOOTHGRAD_SAMPLES,
        stdevs=sigma,
        nt_samples_batch_size=STREAM_ROWS,
        target=s.classes,
        abs=False,
    )


def layer_activation(s: Setup) -> torch.Tensor:
    """The first image's activation at the CAM layer, ``(K, h·w)``."""
    hooks = _import("cnnviz.capture.hooks")
    with hooks.LayerCapture(s.module, [s.layer], grad=hooks.GradFrom.NONE) as capture:
        capture.forward(s.x[:1])
    activation: torch.Tensor = capture.activations[s.layer][0].flatten(1).double()
    return activation


def distinct_score_masks(s: Setup) -> int:
    """Score-CAM's distinct masks: channels min-max normalised; constant channels are one mask."""
    A = layer_activation(s)
    low, high = A.amin(dim=1, keepdim=True), A.amax(dim=1, keepdim=True)
    varying = (high > low).squeeze(1)
    masks = (A[varying] - low[varying]) / (high[varying] - low[varying])
    return int(torch.unique(masks, dim=0).shape[0]) + int(bool((~varying).any()))


def distinct_ablations(s: Setup) -> int:
    """Ablation-CAM's distinct passes: the clean pass plus one per distinct non-zero channel."""
    A = layer_activation(s)
    nonzero = A.abs().amax(dim=1) > 0
    return int(torch.unique(A[nonzero], dim=0).shape[0]) + 1


def faithfulness_curve(kind: str) -> Callable[[Setup], Runner]:
    """cnnviz's deletion or insertion curve of the Grad-CAM map, ``METRIC_STEPS`` steps."""

    def build(s: Setup) -> Runner:
        metrics = _import("cnnviz.metrics.faithfulness")
        curve = getattr(metrics, kind, None)
        if not callable(curve):
            raise CaseUnavailableError(f"cnnviz.metrics.faithfulness has no {kind}()")
        explanation = _import("cnnviz.api").explain(s.module, s.x, "gradcam", layer=s.layer)
        maps = metrics.relevance_maps(explanation)
        return lambda: curve(s.module, s.x, maps, target=s.classes, steps=METRIC_STEPS)

    return build


def metric_forwards(s: Setup) -> int:
    return (METRIC_STEPS + 1) * s.x.shape[0]  # one forward per point of the curve and image


GRADIENT_CAMS = ("gradcam++", "xgradcam", "layercam", "hirescam")
CASES: list[Case] = [
    Case("plain", "forward", plain_forward),
    Case(
        "plain",
        "forward-channels-last",
        plain_forward_channels_last,
        memory=False,
        note="the same forward on a channels-last copy of the input (information)",
    ),
    Case("cnnviz", "gradcam", cnnviz_method("gradcam")),
    Case("pytorch-grad-cam", "gradcam", pgc_method("GradCAM")),
    Case("captum", "gradcam", captum_layer_gradcam),
    Case("torchcam", "gradcam", torchcam_method("GradCAM")),
    *(
        Case("cnnviz", name, cnnviz_method(name), batches=(1, 8), memory=False)
        for name in GRADIENT_CAMS
    ),
    Case("cnnviz", "eigengradcam", cnnviz_method("eigengradcam"), batches=(1, 8), memory=False),
    Case(
        "pytorch-grad-cam",
        "eigengradcam",
        pgc_method("EigenGradCAM"),
        batches=(1, 8),
        memory=False,
    ),
    Case("cnnviz", "saliency", cnnviz_method("saliency", layer=False), batches=(1, 8)),
    Case("captum", "saliency", captum_saliency, batches=(1, 8)),
    Case(
        "cnnviz",
        "feature-ablation",
        cnnviz_method(
            "feature-ablation", layer=False, patch=ABLATION_PATCH, batch_size=STREAM_ROWS
        ),
        batches=(1,),
        memory=False,
        note=f"{ABLATION_PATCH} px patches, {STREAM_ROWS} ablated images per pass",
    ),
    Case(
        "captum",
        "feature-ablation",
        captum_feature_ablation,
        batches=(1,),
        memory=False,
        note=f"perturbations_per_eval={STREAM_ROWS}",
    ),
    Case(
        "plain",
        "forward-x32",
        plain_forward_32,
        slow=True,
        memory=False,
        note="32 copies of the image: the per-image floor of perturbation methods",
    ),
    Case(
        "cnnviz",
        "integrated-gradients",
        cnnviz_method(
            "integrated-gradients",
            layer=False,
            steps=IG_STEPS,
            quadrature="gausslegendre",
            batch_size=STREAM_ROWS,
        ),
        slow=True,
        note=f"{IG_STEPS} steps, Gauss-Legendre (captum's rule), {STREAM_ROWS} rows per pass",
    ),
    Case(
        "cnnviz",
        "integrated-gradients-adaptive",
        cnnviz_method("integrated-gradients", layer=False, steps=IG_STEPS, batch_size=STREAM_ROWS),
        slow=True,
        note=f"{IG_STEPS} steps, adaptive trapezoid (the default), {STREAM_ROWS} rows per pass",
    ),
    Case(
        "captum",
        "integrated-gradients",
        captum_ig,
        slow=True,
        note=f"{IG_STEPS} steps, gausslegendre, internal_batch_size={STREAM_ROWS}",
    ),
    Case(
        "cnnviz",
        "smoothgrad",
        cnnviz_smoothgrad,
        slow=True,
        note=f"{SMOOTHGRAD_SAMPLES} samples, {STREAM_ROWS} rows per pass",
    ),
    Case(
        "captum",
        "smoothgrad",
        captum_smoothgrad,
        slow=True,
        note=f"NoiseTunnel(Saliency), {SMOOTHGRAD_SAMPLES} samples, batch {STREAM_ROWS}",
    ),
    Case(
        "cnnviz",
        "scorecam",
        cnnviz_method("scorecam", "score-cam"),
        slow=True,
        memory=False,
        forwards=distinct_score_masks,
    ),
    Case(
        "cnnviz",
        "ablationcam",
        cnnviz_method("ablationcam", "ablation-cam"),
        slow=True,
        memory=False,
        forwards=distinct_ablations,
    ),
    *(
        Case(
            "cnnviz",
            kind,
            faithfulness_curve(kind),
            slow=True,
            memory=False,
            forwards=metric_forwards,
            note=f"{METRIC_STEPS} steps",
        )
        for kind in ("deletion", "insertion")
    ),
]
SLOW_PEERS: list[Case] = [
    Case(tool, "scorecam", build, slow=True, memory=False, forwards=distinct_score_masks)
    for tool, build in (
        ("pytorch-grad-cam", pgc_method("ScoreCAM")),
        ("torchcam", torchcam_method("ScoreCAM")),
    )
]


# -- setup, timing and memory -------------------------------------------------------------------


def make_setup(model: str, batch: int, device: torch.device) -> Setup:
    """The model (random weights are fixed by seed) and the tiled sample photos."""
    from cnnviz.api import default_layer
    from cnnviz.data.samples import bundled_samples
    from cnnviz.inputs.images import load_image
    from cnnviz.inputs.preprocess import preprocess_images
    from cnnviz.models import load_model

    torch.manual_seed(0)
    loaded = load_model(model, device=device, **MODELS[model])
    photos = preprocess_images([load_image(p) for p in bundled_samples()], loaded.preprocessing)
    x = photos.repeat(math.ceil(batch / len(photos)), 1, 1, 1)[:batch]
    x = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).to(device)
    with torch.no_grad():
        classes = loaded.module(x).argmax(dim=1).tolist()
    return Setup(model, loaded.module, x, classes, default_layer(loaded.module, x), device)
