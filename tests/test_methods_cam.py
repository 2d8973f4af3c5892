"""The CAM family against hand computation, pytorch-grad-cam (a test-only oracle) and each other.

How the reference is read: pytorch-grad-cam returns ReLU'd, min-max normalised, resized NumPy
maps, so we compare *before* that, at the layer's resolution. For the gradient methods and
Eigen-CAM we run one reference forward/backward with its own hooks (``ActivationsAndGradients``,
loss = Σ_images target(output), as its ``BaseCAM.forward`` does) and call each reference class's
``get_cam_image`` on those activations and gradients; for Score-CAM and Ablation-CAM we run its
whole ``__call__`` and keep what ``get_cam_image`` returned. pytorch-grad-cam stores
``output.detach()``, which an in-place ReLU after the layer overwrites, so the reference runs with
``inplace=False`` (cnnviz copies the activation and needs no such care).

Tolerances are relative to the largest magnitude of the reference map: ``max|ours − ref| ≤
rel · max|ref|`` (``assert_rel``), stated at each call.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import pytorch_grad_cam as pgc  # a dev dependency: the reference, never skipped
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cnnviz import explain, load_model
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import LayerError, NonFiniteError, TargetError
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import preprocess_image
from cnnviz.models import LoadedModel
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
}
EQUAL_TO_REFERENCE = ("gradcam", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam")
EIGEN = ("eigencam", "eigengradcam")  # a singular vector's sign is arbitrary: aligned first
# float32 rounding (cnnviz feeds convolutions channels-last on CPU, the reference does not).
# XGrad-CAM divides by Σ_ij A^k, which is 0.002 for a BN channel of the random VGG where a
# typical |Σ_ij A^k| is 7: that channel's weight is ill-conditioned in float32 (cnnviz float32
# vs float64: 1.6e-4), so the VGG comparison allows 2e-3; on efficientnet (ReLU6 → positive
# sums) the same comparison holds to 1e-5.
TOLERANCE = {
    "gradcam": 1e-5,
    "layercam": 1e-5,
    "hirescam": 1e-5,
    "eigencam": 1e-5,
    "eigengradcam": 1e-5,
}
VGG_TOLERANCE = {**TOLERANCE, "xgradcam": 2e-3}
# EigenGrad-CAM on the tiger cat: the first two singular values of ∂y/∂A ⊙ A are 0.0960 and
# 0.0951, so the first component amplifies the float32 differences of the two passes (cnnviz's
# runs channels-last) about 100×, to 1.3e-5; on the same pass the maps agree to 3e-8
# (test_eigengradcam_is_the_reference_projection_on_the_same_pass).
LITE0_TOLERANCE = {**TOLERANCE, "xgradcam": 1e-5, "eigengradcam": 5e-5}
ALL_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "eigengradcam",
    "cam",
    "scorecam",
    "ablationcam",
)


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> float:
    """Assert ``max|ours − ref| ≤ rel · max|ref|``; return the relative error."""
    assert ours.shape == ref.shape
    error = float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())
    assert error <= rel, f"relative error {error:.3g} > {rel:g}"
    return error


def eigen_sign(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """±1 per map aligning the reference's arbitrary SVD sign with ours, shape (N, 1, 1)."""
    return torch.sign((ours * ref).sum(dim=(-2, -1), keepdim=True))


# -- reference plumbing -------------------------------------------------------------------------


@contextmanager
def reference_friendly(model: nn.Module) -> Iterator[None]:
    """No in-place activations for pytorch-grad-cam's aliased copies; clear the ``.grad`` that
    its ``backward()`` leaves; restore everything afterwards."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
    flags = [m.inplace for m in modules]
    for m in modules:
        m.inplace = False
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.inplace = flag
        for p in model.parameters():
            p.grad = None


def reference_pass(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's own activations and gradients at ``layer`` (one class per image)."""
    with reference_friendly(model), pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        outputs = cam.activations_and_grads(x)
        loss = sum(ClassifierOutputTarget(c)(o) for c, o in zip(classes, outputs, strict=True))
        loss.backward()
        store = cam.activations_and_grads
        return store.activations[0].numpy(), store.gradients[0].numpy()


def reference_map(
    name: str,
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    classes: list[int],
    pass_: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """The reference's raw map ``(N, h, w)``: before its ReLU, min-max and resize."""
    targets = [ClassifierOutputTarget(c) for c in classes]
    if pass_ is not None:  # gradient methods and Eigen-CAM: get_cam_image on its own pass
        with REFERENCE[name](model=model, target_layers=[layer]) as cam:
            raw = cam.get_cam_image(x, layer, targets, pass_[0], pass_[1], False)
        return torch.from_numpy(np.asarray(raw))

    class Raw(REFERENCE[name]):  # type: ignore[misc, valid-type]
        def get_cam_image(self, *args: Any, **kwargs: Any) -> Any:
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    with reference_friendly(model), Raw(model=model, target_layers=[layer]) as cam:
        cam(input_tensor=x, targets=targets)
        return torch.from_numpy(np.asarray(cam.raw))


def align_corners_false(size: Any) -> Any:
    """Stand-in for ``nn.UpsamplingBilinear2d`` (``align_corners=True``) in pytorch-grad-cam's
    Score-CAM: the bilinear upsampling of the authors' code and cnnviz."""
    return functools.partial(F.interpolate, size=size, mode="bilinear", align_corners=False)


# -- models ---------------------------------------------------------------------------------


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (a fresh BN is the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


class Scaled(nn.Module):
    """``model``'s logits × ``factor``: larger gradients, same maps up to scale for most CAMs."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor


class Identity2x2(nn.Module):
    """A = conv(x) with identity weights, so A = x; y_c = Σ V_c ⊙ A + b_c, so ∂y_0/∂A = V."""

    V = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.5, 1.0], [-1.0, 0.0]]])

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel_size=1, bias=False)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.stack([self.V.flatten(), -self.V.flatten()]))
            self.fc.bias.copy_(torch.tensor([1.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class GapNet(nn.Module):
    """conv → BN → ReLU → conv (the CAM layer) → global average pool → linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.features = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, classes)
        randomise_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.act(self.bn(self.stem(x)))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def vgg_bn() -> VGG11:
    torch.manual_seed(0)
    return randomise_batchnorm(VGG11(batch_norm=True)).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def small_vgg() -> VGG11:
    torch.manual_seed(0)
    model = VGG11(batch_norm=True, width=1 / 8, hidden=64, pool_size=2, num_classes=6)
    return randomise_batchnorm(model).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(lite0: LoadedModel) -> torch.Tensor:
    paths = {p.name: p for p in bundled_samples()}
    images = [load_image(paths[n]) for n in ("coffee.jpg", "chelsea.jpg")]
    return torch.stack([preprocess_image(image, lite0.preprocessing) for image in images])


# -- hand-computed values -------------------------------------------------------------------


A0 = [[1.0, 2.0], [0.0, 1.0]]  # ΣA0 = 4
A1 = [[2.0, 0.0], [0.0, 2.0]]  # ΣA1 = 4;  V⊙A summed: (1 − 2) + 1 = 0, so y_0 = b_0 = 1
E3 = math.exp(3.0)
_LAMBDA = (5.5 + math.sqrt(22.25)) / 2
_V = (1.0, (_LAMBDA - 4.75) / 1.25)
EV0, EV1 = (v / math.hypot(*_V) for v in _V)  # EigenGrad-CAM's first component, by hand
HAND = {
    # mean V0 = 0.5, mean V1 = 0.125
    "gradcam": [[0.75, 1.0], [0.0, 0.75]],
    # α = V²/(2V² + 4V³): channel 0 → 1/6, −1/2, 1/10, 0; w0 = 1/6·1 + 1/10·2 = 11/30
    # channel 1 → 1/4, 1/6, −1/2, 0; w1 = 1/4·0.5 + 1/6·1 = 7/24;  map = 11/30 A0 + 7/24 A1
    "gradcam++": [[11 / 30 + 14 / 24, 22 / 30], [0.0, 11 / 30 + 14 / 24]],
    # w0 = Σ A0 V0 / 4 = −1/4, w1 = Σ A1 V1 / 4 = 1/4
    "xgradcam": [[0.25, -0.5], [0.0, 0.25]],
    # ReLU(V0)⊙A0 + ReLU(V1)⊙A1 = [[1, 0], [0, 0]] + [[1, 0], [0, 0]]
    "layercam": [[2.0, 0.0], [0.0, 0.0]],
    # V0⊙A0 + V1⊙A1 = [[1, −2], [0, 0]] + [[1, 0], [0, 0]]
    "hirescam": [[2.0, -2.0], [0.0, 0.0]],
    # centred rows (1,2),(2,0),(0,0),(1,2) − (1,1); MᵀM = diag(2, 4) → v₁ = (0, 1);
    # projection (1, −1, −1, 1) correlates +4 with ΣA = (3, 2, 0, 3): sign kept
    "eigencam": [[1.0, -1.0], [-1.0, 1.0]],
    # M = V⊙A: pixels (1, 1), (−2, 0), (0, 0), (0, 0), centred − (−1/4, 1/4); MᵀM =
    # [[19/4, 5/4], [5/4, 3/4]], λ₁ = (11/2 + √(89/4))/2, v₁ ∝ (1, (λ₁ − 19/4)/(5/4)); the
    # projection correlates positively with ΣM = (2, −2, 0, 0): sign kept
    "eigengradcam": [
        [1.25 * EV0 + 0.75 * EV1, -1.75 * EV0 - 0.25 * EV1],
        [0.25 * (EV0 - EV1), 0.25 * (EV0 - EV1)],
    ],
    # y = 1; zeroing A0 gives y = 0 + 1 + 1 = 2, zeroing A1 gives −1 + 0 + 1 = 0: w = (−1, 1)
    "ablationcam": [[1.0, -2.0], [0.0, 1.0]],
    # masks A0/2, A1/2 (min 0, max 2): scores 0 and 3 → w = softmax(0, 3)
    "scorecam": [
        [(1 + 2 * E3) / (1 + E3), 2 / (1 + E3)],
        [0.0, (1 + 2 * E3) / (1 + E3)],
    ],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_computed_values_on_a_two_channel_layer(name: str, dtype: torch.dtype) -> None:
    model = Identity2x2().to(dtype)
    x = torch.tensor([[A0, A1]], dtype=dtype)
    e = explain(model, x, name, layer="conv", target=0)
    assert e.maps.dtype == dtype
    assert e.maps.shape == (1, 1, 2, 2)
    expected = torch.tensor(HAND[name], dtype=dtype)
    torch.testing.assert_close(e.maps[0, 0], expected, rtol=1e-6, atol=1e-6)  # float rounding
    assert e.scores[0, 0].item() == pytest.approx(1.0)


def test_cam_is_gradcam_times_hw_on_a_gap_linear_model() -> None:
    model = GapNet().eval()
    x = torch.randn(2, 3, 6, 6)
    cam = explain(model, x, "cam", layer="features", target=TopK(2))
    grad = explain(model, x, "gradcam", layer="features", target=TopK(2))
    torch.testing.assert_close(cam.maps, grad.maps * 36, rtol=1e-5, atol=1e-6)
    A = model.features(model.act(model.bn(model.stem(x)))).detach()
    assert cam.targets.indices is not None
    weight = model.fc.weight.detach()[cam.targets.indices]  # (N, T, K)
    torch.testing.assert_close(cam.maps, torch.einsum("ntk,nkhw->nthw", weight, A))


def test_cam_refuses_models_without_a_gap_linear_head(small_vgg: VGG11) -> None:
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(LayerError, match="gradcam"):  # 64 channels, last Linear takes 64 hidden
        explain(small_vgg, x, "cam", layer="backbone.bn4_2")
    with pytest.raises(LayerError, match="channels"):
        explain(small_vgg, x, "cam", layer="backbone.bn3_1")  # 32 channels

    class MaxHead(GapNet):  # right channel count, but max pooling: the logits check catches it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(self.act(self.bn(self.stem(x)))).amax(dim=(2, 3)))

    with pytest.raises(LayerError, match="spatial mean"):
        explain(MaxHead().eval(), torch.randn(1, 3, 6, 6), "cam", layer="features")
    with pytest.raises(TargetError, match="callable"):
        explain(GapNet().eval(), torch.randn(1, 3, 6, 6), "cam", target=lambda out: out[:, 0])


# -- pytorch-grad-cam: random VGG-11-BN and efficientnet_lite0 --------------------------------


@pytest.fixture(scope="module")
def vgg_case(vgg_bn: VGG11) -> dict[str, Any]:
    """Two 64×64 images, a different class for each; one reference forward/backward."""
    torch.manual_seed(1)
    x, classes = torch.randn(2, 3, 64, 64), [1, 500]
    return {
        "x": x,
        "classes": classes,
        "pass": reference_pass(vgg_bn, vgg_bn.backbone.bn5_2, x, classes),
    }


@pytest.mark.parametrize("name", EQUAL_TO_REFERENCE)
def test_matches_pytorch_grad_cam_on_random_vgg11_bn(
    name: str, vgg_bn: VGG11, vgg_case: dict[str, Any]
) -> None:
    x, classes = vgg_case["x"], vgg_case["classes"]
    e = explain(vgg_bn, x, name, layer="bn5_2", target=classes)
    assert e.maps.shape == (2, 1, 4, 4)
    ref = reference_map(name, vgg_bn, vgg_bn.backbone.bn5_2, x, classes, vgg_case["pass"])
    ours = e.maps[:, 0]
    if name in EIGEN:
        ref = eigen_sign(ours, ref) * ref
    assert_rel(ours, ref, VGG_TOLERANCE[name])
    assert all(p.grad is None for p in vgg_bn.parameters())
    assert hooked_modules(vgg_bn) == []


@pytest.fixture(scope="module")
def lite0_case(lite0: LoadedModel, photos: torch.Tensor) -> dict[str, Any]:
    classes = [967, 282]  # espresso, tiger cat: the top-1 of each photo
    module = lite0.module
    return {"classes": classes, "pass": reference_pass(module, module.bn2, photos, classes)}


@pytest.mark.parametrize("name", EQUAL_TO_REFERENCE)
def test_matches_pytorch_grad_cam_on_efficientnet_lite0(
    name: str, lite0: LoadedModel, photos: torch.Tensor, lite0_case: dict[str, Any]
) -> None:
    module, classes = lite0.module, lite0_case["classes"]
    e = explain(lite0, photos, name, target=classes)
    assert e.layer == "bn2"
    assert e.maps.shape == (2, 1, 7, 7)
    ref = reference_map(name, module, module.bn2, photos, classes, lite0_case["pass"])
    ours = e.maps[:, 0]
    if name in EIGEN:
        ref = eigen_sign(ours, ref) * ref
    assert_rel(ours, ref, LITE0_TOLERANCE[name])
    assert hooked_modules(module) == []


def test_eigengradcam_is_the_reference_projection_on_the_same_pass(
    lite0_case: dict[str, Any],
) -> None:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from cnnviz.methods.cam import first_component

    A, G = (torch.from_numpy(v).double() for v in lite0_case["pass"])
    M = G * A
    ours = first_component(M, M.sum(dim=1))
    ref = torch.from_numpy(np.asarray(get_2d_projection(M.numpy())))
    assert_rel(ours, eigen_sign(ours, ref) * ref, 1e-6)


def test_gradcam_plus_plus_is_the_paper_formula_without_epsilon(
    lite0: LoadedModel, photos: torch.Tensor, lite0_case: dict[str, Any]
) -> None:
    """pytorch-grad-cam adds ε = 1e-6 to α's denominator 2g² + ΣA·g³; the paper has none. On
    efficientnet_lite0 g ≈ 1e-3, so g² ≈ ε and the maps differ by ~14 %; with the logits × 1e4
    (g² ≈ 1e2 ≫ ε) the two agree to float rounding."""
    module, classes = lite0.module, lite0_case["classes"]
    plain = explain(lite0, photos, "gradcam++", target=classes).maps[:, 0]
    ref = reference_map("gradcam++", module, module.bn2, photos, classes, lite0_case["pass"])
    error = float((plain - ref).abs().max() / ref.abs().max())
    assert 0.05 < error < 0.5  # the ε effect (observed 0.139)
    scaled = Scaled(module, 1e4)
    big = explain(scaled, photos, "gradcam++", layer=module.bn2, target=classes).maps[:, 0]
    big_pass = reference_pass(scaled, module.bn2, photos, classes)
    assert_rel(big, reference_map("gradcam++", scaled, module.bn2, photos, classes, big_pass), 1e-5)


def test_cam_and_ablationcam_on_efficientnet_lite0_closed_forms(
    lite0: LoadedModel, photos: torch.Tensor
) -> None:
    """bn2 → global average pool → Linear (timm's ``classifier``): CAM = Σ_k w_ck A_k, and
    zeroing channel k lowers the score by w_ck · mean(A_k), so Ablation-CAM's weights are
    w_ck · mean(A_k) / y."""
    module, classes = lite0.module, [967, 282]
    cam = explain(lite0, photos, "cam", target=classes)
    ablation = explain(lite0, photos, "ablationcam", target=classes, batch_size=320)
    w = module.classifier.weight.detach()[classes]  # (N, K)
    with torch.no_grad():
        A = module.forward_features(photos)  # timm: conv_stem … bn2, (N, 1280, 7, 7)
    assert_rel(cam.maps[:, 0], torch.einsum("nk,nkhw->nhw", w, A), 1e-5)  # observed 3e-7
    y = cam.scores[:, 0]
    weights = w * A.mean(dim=(2, 3)) / y[:, None]
    expected = torch.einsum("nk,nkhw->nhw", weights, A)
    assert_rel(ablation.maps[:, 0], expected, 1e-4)  # y − y_k in float32: observed 1.1e-5
    assert hooked_modules(module) == []


# -- Score-CAM and Ablation-CAM on the small VGG ----------------------------------------------


def test_scorecam_matches_pytorch_grad_cam(
    small_vgg: VGG11, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(2)
    x, classes = torch.randn(2, 3, 32, 32), [1, 4]
    layer = small_vgg.backbone.bn5_2
    ours = explain(small_vgg, x, "scorecam", layer=layer, target=classes).maps[:, 0]
    ref_true = reference_map("scorecam", small_vgg, layer, x[:1], classes[:1])  # align_corners=True
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", align_corners_false)
    ref = reference_map("scorecam", small_vgg, layer, x, classes)
    agreement = assert_rel(ours, ref, 1e-5)  # observed 3e-7
    difference = float((ours[:1] - ref_true).abs().max() / ref_true.abs().max())
    assert difference > 10 * agreement  # the upsampling convention shows (observed 2.4e-5)


@pytest.mark.parametrize("layer", ["bn5_2", "relu5_2"])
def test_ablationcam_matches_pytorch_grad_cam(small_vgg: VGG11, layer: str) -> None:
    """pytorch-grad-cam zeroes a channel when the layer's minimum is 0 (after ReLU) and
    otherwise sets it to min − 1e7; before a ReLU both are 0 after it, so the maps agree."""
    torch.manual_seed(2)
    x, classes = torch.randn(2, 3, 32, 32), [1, 4]
    module = small_vgg.get_submodule(f"backbone.{layer}")
    ours = explain(small_vgg, x, "ablationcam", layer=module, target=classes).maps[:, 0]
    # float32 rounding of y and y_k (cnnviz runs convolutions channels-last), amplified by the
    # difference y − y_k: observed ≤ 7e-6
    assert_rel(ours, reference_map("ablationcam", small_vgg, module, x, classes), 5e-5)


def test_ablationcam_zeroes_where_pytorch_grad_cam_uses_min_minus_1e7(small_vgg: VGG11) -> None:
    """At conv5_2 (a BN with a non-zero shift follows) the two ablations differ; cnnviz's is the
    paper's zeroing, checked by running the rest of the network on each ablated activation."""
    torch.manual_seed(2)
    x, classes = torch.randn(1, 3, 64, 64), [1]
    module = small_vgg.backbone.conv5_2
    ours = explain(small_vgg, x, "ablationcam", layer=module, target=classes).maps[0, 0]
    ref = reference_map("ablationcam", small_vgg, module, x, classes)[0]
    assert float((ours - ref).abs().max() / ref.abs().max()) > 0.1  # observed 0.28
    children = list(small_vgg.backbone.children())
    cut = [n for n, _ in small_vgg.backbone.named_children()].index("conv5_2") + 1
    before, after = nn.Sequential(*children[:cut]), nn.Sequential(*children[cut:])

    def rest(a: torch.Tensor) -> torch.Tensor:
        return small_vgg.classifier(torch.flatten(small_vgg.avgpool(after(a)), 1))[:, 1]

    with torch.no_grad():
        A = before(x)  # (1, 64, 4, 4)
        ablated = A.repeat(64, 1, 1, 1)
        ablated[torch.arange(64), torch.arange(64)] = 0
        y = rest(A.clone())
        weights = (y - rest(ablated)) / y
    assert_rel(ours, torch.einsum("k,khw->hw", weights, A[0]), 5e-5)  # as above: 2e-6


def count_rows(module: nn.Module) -> tuple[list[int], Any]:
    """Rows of every call of ``module`` (a forward pre-hook; remove the handle afterwards)."""
    rows: list[int] = []
    handle = module.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    return rows, handle


def test_perturbation_forwards_serve_every_target(small_vgg: VGG11) -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    for name in ("scorecam", "ablationcam"):
        rows, handle = count_rows(small_vgg)
        try:
            top3 = explain(small_vgg, x, name, layer="bn5_2", target=TopK(3))
            forwards_top3 = sum(rows)
            rows.clear()
            assert top3.targets.indices is not None
            for t in range(3):
                classes = top3.targets.indices[:, t].tolist()
                one = explain(small_vgg, x, name, layer="bn5_2", target=classes)
                torch.testing.assert_close(top3.maps[:, t], one.maps[:, 0], rtol=1e-5, atol=1e-7)
                assert sum(rows) == forwards_top3  # one target costs as much as three
                rows.clear()
        finally:
            handle.remove()
    assert hooked_modules(small_vgg) == []


def test_scorecam_scores_the_shared_zero_mask_once(
    small_vgg: VGG11, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer with 16 all-zero channels (of 64): they all mask the image to zero, scored once."""
    model = copy.deepcopy(small_vgg)
    with torch.no_grad():
        model.backbone.bn5_2.weight[:16] = 0.0
        model.backbone.bn5_2.bias[:16] = -1.0  # → relu5_2 channels 0…15 are exactly 0
    torch.manual_seed(6)
    x, classes = torch.randn(2, 3, 32, 32), [0, 3]
    rows, handle = count_rows(model)
    try:
        e = explain(model, x, "scorecam", layer="relu5_2", target=classes, batch_size=40)
    finally:
        handle.remove()
    with torch.no_grad():
        A = model.backbone.relu5_2(
            model.backbone.bn5_2(
                model.backbone.conv5_2(nn.Sequential(*list(model.backbone.children())[:-4])(x))
            )
        )
    varying = (A.flatten(2).amax(2) > A.flatten(2).amin(2)).sum(dim=1).tolist()
    assert max(varying) <= 48  # 16 zeroed channels per image (and a few dead ones)
    # capture (2 rows), the zero image (1 row), then each image's varying channels by 40
    assert rows == [2, 1] + [r for v in varying for r in ([40, v - 40] if v > 40 else [v])]
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", align_corners_false)
    ref_rows, handle = count_rows(model)
    try:
        ref = reference_map("scorecam", model, model.backbone.relu5_2, x, classes)
    finally:
        handle.remove()
    assert sum(ref_rows) == 2 + 2 * 64  # its forward + every channel of every image
    assert_rel(e.maps[:, 0], ref, 1e-5)
    assert hooked_modules(model) == []


def test_ablationcam_runs_the_pre_layer_part_once(small_vgg: VGG11) -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 3, 64, 64)
    first, handle = count_rows(small_vgg.backbone.conv1)
    after, handle_after = count_rows(small_vgg.backbone.relu5_2)
    try:
        e = explain(small_vgg, x, "ablationcam", layer="bn5_2", target=[1, 4], batch_size=32)
    finally:
        handle.remove()
        handle_after.remove()
    # capture: 2 images; the check (2 unablated rows after the layer, an empty batch before
    # it); then 64 channels × 2 images in batches of 32: the part before the layer does no work
    assert first == [2, 0, 0, 0, 0, 0]
    assert after == [2, 2, 32, 32, 32, 32]
    assert torch.isfinite(e.maps).all()


class SkipNet(nn.Module):
    """stem → layer → (layer + stem | cat[layer, stem]) → GAP → linear: a skip around the layer."""

    def __init__(self, join: str) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.join = join
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 if join == "add" else 8, 3)

    def head(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        z = a + s if self.join == "add" else torch.cat([a, s], dim=1)
        return self.fc(torch.relu(z).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.layer(s), s)


@pytest.mark.parametrize("join", ["add", "cat"])
def test_ablationcam_is_right_with_a_skip_connection_around_the_layer(join: str) -> None:
    """``add`` broadcasts one image's skip over the batch (fast path); ``cat`` cannot, and
    cnnviz falls back to repeating the image. Both equal the definition, computed by hand."""
    model = SkipNet(join).eval()
    x = torch.randn(2, 3, 5, 5)
    rows, handle = count_rows(model.stem)
    try:
        e = explain(model, x, "ablationcam", layer="layer", target=[0, 2], batch_size=3)
    finally:
        handle.remove()
    # capture, the failed empty feed, the one-image check, then 4 channels × 2 images by 3
    assert rows == ([2, 0, 1, 1, 1, 1, 1] if join == "add" else [2, 0, 1, 3, 1, 3, 1])
    with torch.no_grad():
        s = model.stem(x)
        A = model.layer(s)
        y = model.head(A, s)[[0, 1], [0, 2]]
        maps = []
        for n, c in enumerate([0, 2]):
            drops = []
            for k in range(4):
                ablated = A[n : n + 1].clone()
                ablated[:, k] = 0
                drops.append((y[n] - model.head(ablated, s[n : n + 1])[0, c]) / y[n])
            maps.append(torch.einsum("k,khw->hw", torch.stack(drops), A[n]))
    torch.testing.assert_close(e.maps[:, 0], torch.stack(maps), rtol=1e-5, atol=1e-6)
    assert hooked_modules(model) == []


# -- the model is left as found, for every method -------------------------------------------


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode", "float64"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_model_left_as_found(name: str, mode: str) -> None:
    model = GapNet()
    model.train()
    model.bn.eval()  # a frozen BN inside a model in training mode
    model.stem.weight.requires_grad_(False)
    if mode == "float64":
        model = model.double()
    x = torch.randn(2, 3, 6, 6)
    context: Any = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(
        mode, torch.enable_grad
    )
    options = {"batch_size": 4} if name in ("scorecam", "ablationcam") else {}
    with context():
        e = explain(model, x, name, layer="features", target=TopK(2), **options)
    assert e.maps.shape == (2, 2, 6, 6)
    assert torch.isfinite(e.maps).all()
    assert e.maps.dtype == (torch.float64 if mode == "float64" else torch.float32)
    assert e.maps.is_inference() == (mode == "inference_mode")  # only the caller's own mode
    assert not e.maps.requires_grad
    assert hooked_modules(model) == []
    assert model.training
    assert not model.bn.training
    assert model.fc.training
    assert all(p.grad is None for p in model.parameters())
    assert not model.stem.weight.requires_grad
    assert model.fc.weight.requires_grad


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_hooks_removed_when_a_perturbation_forward_fails(name: str) -> None:
    class Fragile(GapNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            if out.shape[0] > 2:
                raise RuntimeError("no batches larger than 2")
            return out

    model = Fragile().eval()
    with pytest.raises(RuntimeError, match="larger than 2"):
        explain(model, torch.randn(1, 3, 6, 6), name, layer="features", batch_size=4)
    assert hooked_modules(model) == []


def test_bad_options_and_layers() -> None:
    model, x = GapNet().eval(), torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="at least 1"):
        explain(model, x, "scorecam", layer="features", batch_size=0)
    with pytest.raises(TypeError, match="int"):
        explain(model, x, "ablationcam", layer="features", batch_size=2.5)
    for name in ("xgradcam", "eigencam", "scorecam"):
        with pytest.raises(LayerError, match="spatial"):
            explain(model, x, name, layer="fc")
    zero_score = Identity2x2()
    with torch.no_grad():
        zero_score.fc.bias.zero_()  # y_0 = Σ V ⊙ A = 0 for the hand-computed A
    with pytest.raises(NonFiniteError, match="exactly 0"):
        explain(zero_score, torch.tensor([[A0, A1]]), "ablationcam", layer="conv", target=0)
