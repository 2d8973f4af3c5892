"""The seed's two methods: saliency and Grad-CAM, against hand computation and captum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz import explain
from cnnviz.methods.postprocess import for_display, minmax_normalize, relu, upsample
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules


class Quadratic(nn.Module):
    """s_c(x) = Σ a_c ⊙ x²  →  ∂s_c/∂x = 2 a_c ⊙ x."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a.unsqueeze(0) * x.unsqueeze(1) ** 2).flatten(2).sum(-1)


class GapNet(nn.Module):
    """conv → global average pool → linear: Grad-CAM = CAM / (h·w) exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_saliency_equals_analytic_gradient() -> None:
    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 5)
    x = torch.randn(2, 3, 4, 5)
    model = Quadratic(a)
    e = explain(model, x, "saliency", target=[1, 0])
    grad = torch.stack([2 * a[1] * x[0], 2 * a[0] * x[1]])  # (N, C, H, W)
    assert torch.allclose(e.attributions[:, 0], grad, atol=1e-6)
    assert torch.allclose(e.maps[:, 0], grad.abs().amax(dim=1), atol=1e-6)
    signed = explain(model, x, "saliency", target=[1, 0], signed=True)
    assert torch.allclose(signed.maps.abs(), e.maps, atol=1e-6)
    assert (signed.maps < 0).any()
    assert model.a.grad is None


def test_gradcam_on_gap_linear_head_equals_cam_over_hw() -> None:
    model = GapNet().eval()
    x = torch.randn(2, 3, 6, 6)
    e = explain(model, x, "gradcam", layer="features", target=1)
    A = model.features(x).detach()
    cam = torch.einsum("k,nkhw->nhw", model.fc.weight[1].detach(), A) / 36
    assert torch.allclose(e.maps[:, 0], cam, atol=1e-6)
    assert torch.allclose(e.scores[:, 0], model(x)[:, 1].detach(), atol=1e-6)


@pytest.fixture(scope="module")
def vgg_bn() -> VGG11:
    torch.manual_seed(0)
    return VGG11(batch_norm=True).eval()


def test_gradcam_matches_captum_on_random_vgg11_bn(vgg_bn: VGG11) -> None:
    from captum.attr import LayerGradCam

    torch.manual_seed(1)
    x = torch.randn(3, 3, 224, 224)
    targets = [1, 500, 999]
    e = explain(vgg_bn, x, "gradcam", target=targets)
    assert e.layer == "backbone.bn5_2"
    ref = LayerGradCam(vgg_bn, vgg_bn.backbone.bn5_2).attribute(
        x, target=targets, relu_attributions=True
    )
    assert relu(e.maps).shape == ref.shape == (3, 1, 14, 14)
    # 1e-5 of the map's range: convolutions round differently on other CPUs (oneDNN kernels)
    scale = float(ref.detach().abs().max())
    torch.testing.assert_close(relu(e.maps), ref.detach(), rtol=1e-5, atol=1e-5 * scale)
    assert hooked_modules(vgg_bn) == []


def test_saliency_matches_captum_on_random_vgg11_bn(vgg_bn: VGG11) -> None:
    from captum.attr import Saliency

    torch.manual_seed(2)
    x = torch.randn(2, 3, 224, 224)
    e = explain(vgg_bn, x, "saliency", target=[3, 7])
    ref = Saliency(vgg_bn).attribute(x.clone().requires_grad_(), target=[3, 7], abs=False)
    torch.testing.assert_close(e.attributions[:, 0], ref, rtol=1e-5, atol=1e-9)


def test_two_calls_give_each_image_its_own_map(vgg_bn: VGG11) -> None:
    torch.manual_seed(4)
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    both = explain(vgg_bn, torch.cat([x1, x2]), "gradcam", target=[5, 9])
    first = explain(vgg_bn, x1, "gradcam", target=5)
    second = explain(vgg_bn, x2, "gradcam", target=9)
    torch.testing.assert_close(first.maps[0], both.maps[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(second.maps[0], both.maps[1], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(first.maps, second.maps)
    assert hooked_modules(vgg_bn) == []
    assert all(p.grad is None for p in vgg_bn.parameters())


def test_gradcam_works_under_no_grad_and_in_float64() -> None:
    model = GapNet().double().train()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        e = explain(model, x, "gradcam", layer="features", target=0)
    assert e.maps.dtype == torch.float64
    assert model.training  # mode restored


def test_postprocessing_is_explicit_and_safe() -> None:
    maps = torch.tensor([[[[-1.0, 1.0], [3.0, 1.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    assert torch.equal(relu(maps)[0, 0], torch.tensor([[0.0, 1.0], [3.0, 1.0]]))
    normed = minmax_normalize(maps)
    assert torch.equal(normed[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.5]]))
    assert torch.equal(normed[1, 0], torch.zeros(2, 2))  # constant map → zeros, not NaN
    up = upsample(maps, (4, 4))
    assert up.shape == (2, 1, 4, 4) and up[0, 0, 0, 0].item() == pytest.approx(-1.0)
    from cnnviz.methods.postprocess import Display

    shown = for_display(maps, Display.POSITIVE, (4, 4))
    assert shown.min().item() == 0.0 and shown[0].max().item() == 1.0
    assert torch.isfinite(shown).all()
