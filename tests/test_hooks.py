"""The hook core: ownership, clean-up, in-place safety, grad modes, model left as found."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from cnnviz.capture.forward import as_model_input, autograd_enabled, model_state_guard
from cnnviz.capture.hooks import ForwardError, GradFrom, LayerCapture
from cnnviz.capture.layers import alias_of, auto_cam_layer, resolve_layer
from cnnviz.errors import LayerError
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules


class TinyNet(nn.Module):
    """conv(1→2, 1×1) → in-place ReLU → global mean → linear(2→2); weights set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x)).mean(dim=(1, 2, 3))


class Failing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.unused = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        raise RuntimeError("boom")


def _x() -> torch.Tensor:
    return torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])


def test_capture_values_are_pre_inplace_relu_copies() -> None:
    model = TinyNet()
    with LayerCapture(model, ["conv"]) as cap:
        out = cap.forward(_x())
    A = cap.activations["conv"]
    assert torch.equal(A[0, 0], _x()[0, 0])
    assert torch.equal(A[0, 1], -_x()[0, 0])  # negatives survive the in-place ReLU after it
    # relu'd channel means: ch0 = (1+3+0.5)/4 = 1.125, ch1 = 2/4 = 0.5
    assert torch.allclose(out, torch.tensor([[1.125 + 1.0, 3 * 1.125 - 0.5]]))
    assert hooked_modules(model) == []


def test_layer_gradients_match_hand_computation_and_leave_params_alone() -> None:
    model = TinyNet()
    with LayerCapture(model, ["conv"], grad=GradFrom.LAYERS) as cap:
        out = cap.forward(_x())
        A = cap.activations["conv"]
        (dA,) = torch.autograd.grad(out[0, 0], A)
    # d out0 / dA[c,i,j] = w0c * 1[A>0] / 4 with w0 = (1, 2)
    expected0 = (_x()[0, 0] > 0).float() * 1.0 / 4
    expected1 = (-_x()[0, 0] > 0).float() * 2.0 / 4
    assert torch.allclose(dA[0, 0], expected0)
    assert torch.allclose(dA[0, 1], expected1)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_grad_mode_works_inside_no_grad_and_inference_mode() -> None:
    model = TinyNet()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            x = _x()
            with autograd_enabled(), LayerCapture(model, ["conv"], grad=GradFrom.LAYERS) as cap:
                out = cap.forward(x)
                (dA,) = torch.autograd.grad(out[0, 1], cap.activations["conv"])
            assert not torch.is_grad_enabled()
        assert dA[0, 0, 0, 0].item() == pytest.approx(3.0 / 4)


def test_input_gradient_mode() -> None:
    model = TinyNet()
    with torch.no_grad(), autograd_enabled(), LayerCapture(model, [], grad=GradFrom.INPUT) as cap:
        out = cap.forward(_x())
        (dx,) = torch.autograd.grad(out[0, 0], cap.input)
    # out0 = mean(relu(x))*1 + mean(relu(-x))*2 → d/dx = 1[x>0]/4 - 2·1[x<0]/4
    x = _x()
    expected = (x > 0).float() / 4 - 2 * (x < 0).float() / 4
    assert torch.allclose(dx, expected)


def test_hooks_removed_when_forward_raises_and_errors_are_clear() -> None:
    model = Failing()
    model.train()
    with pytest.raises(ForwardError, match="boom"), LayerCapture(model, ["conv"]) as cap:
        cap.forward(_x())
    assert hooked_modules(model) == []
    assert model.training and model.conv.training


def test_layer_never_reached_and_run_twice() -> None:
    model = Failing()
    model.forward = lambda x: model.conv(x)  # type: ignore[method-assign]
    with pytest.raises(LayerError, match="never ran"), LayerCapture(model, ["unused"]) as cap:
        cap.forward(_x())
    assert hooked_modules(model) == []
    with pytest.raises(LayerError, match="more than once"), LayerCapture(Twice(), ["conv"]) as cap:
        cap.forward(_x())


def test_remove_is_idempotent_and_restores_mixed_training_flags() -> None:
    model = TinyNet()
    model.train()
    model.fc.eval()
    cap = LayerCapture(model, ["conv"])
    with cap:
        assert not model.training
        assert hooked_modules(model) == ["conv"]
    cap.remove()
    cap.remove()
    assert model.training and model.conv.training and not model.fc.training
    assert hooked_modules(model) == []


def test_model_state_guard_restores_flags_after_exception() -> None:
    model = TinyNet().train()
    seen: list[bool] = []

    def fail_inside() -> None:
        with model_state_guard(model):
            seen.append(model.training)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()
    assert seen == [False]
    assert model.training


def test_as_model_input_follows_model_dtype() -> None:
    model = TinyNet().double()
    x = as_model_input(model, _x()[0])
    assert x.dtype == torch.float64 and x.shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        as_model_input(model, torch.zeros(2, 2))


def test_layer_names_aliases_and_close_matches() -> None:
    model = VGG11(batch_norm=True, width=1 / 8, hidden=8, pool_size=1, num_classes=3)
    assert resolve_layer(model, "conv1") == "backbone.conv1"
    assert resolve_layer(model, "bn4_1") == "backbone.bn4_1"
    assert resolve_layer(model, model.backbone.conv5_2) == "backbone.conv5_2"
    assert alias_of(model, "backbone.conv3_1") == "conv3_1"
    with pytest.raises(LayerError, match="bn4_1"):
        resolve_layer(model, "bn4_l")
    with pytest.raises(LayerError, match="ambiguous"):
        resolve_layer(
            nn.ModuleDict(
                {"a": nn.ModuleDict({"act": nn.ReLU()}), "b": nn.ModuleDict({"act": nn.ReLU()})}
            ),
            "act",
        )


def test_auto_cam_layer_choices() -> None:
    import torchvision

    x = torch.zeros(1, 3, 64, 64)
    small_bn = VGG11(batch_norm=True, width=1 / 8, hidden=8, pool_size=1, num_classes=3)
    small = VGG11(width=1 / 8, hidden=8, pool_size=1, num_classes=3)
    assert auto_cam_layer(small_bn, x) == "backbone.bn5_2"
    assert auto_cam_layer(small, x) == "backbone.conv5_2"
    resnet = torchvision.models.resnet18(num_classes=4)
    assert auto_cam_layer(resnet, x) == "layer4"  # the block output, skip connection included
    assert hooked_modules(resnet) == []
    with pytest.raises(LayerError, match="spatial"):
        auto_cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2)), x)


class _ViewsItsFeatures(nn.Module):
    """Calls ``.view`` on a feature map: fails on a channels-last input, works in the standard
    layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        out: torch.Tensor = self.fc(features.view(features.shape[0], -1))
        return out


def test_a_model_that_fails_channels_last_runs_in_the_standard_layout() -> None:
    from cnnviz.capture.forward import channels_last_suits, forward_in_layout

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)

    def captured(model: nn.Module) -> torch.Tensor:
        with LayerCapture(model, ["conv"], grad=GradFrom.NONE) as capture:
            out: torch.Tensor = capture.forward(x)
        with torch.no_grad():
            torch.testing.assert_close(capture.activations["conv"], model.conv(x))
        return out

    for run in (lambda m: forward_in_layout(m, x), captured):
        model = _ViewsItsFeatures().eval()
        assert channels_last_suits(model, x)  # a CPU float32 batch and a Conv2d: worth trying
        with pytest.raises(RuntimeError, match="view"):
            model(x.contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            torch.testing.assert_close(run(model), model(x))
        assert not channels_last_suits(model, x)  # remembered: no second failed attempt


def test_a_model_in_training_mode_is_told_once_and_left_in_its_modes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two explanations of a model in training mode (one module kept in eval): one warning, the
    maps of eval mode (a dropout of 0.9 would change them), and every module's flag as it was.
    A model in eval mode is not told; nor is a model told before."""
    from cnnviz.api import explain

    model = nn.Sequential(nn.Dropout(p=0.9), TinyNet()).train()
    model[1].fc.eval()
    with caplog.at_level(logging.INFO, logger="cnnviz.capture.forward"):
        saliency = explain(model, _x(), "saliency", target=0)
        gradcam = explain(model, _x(), "gradcam", layer="1.conv", target=0)
    notices = [r for r in caplog.records if "training mode" in r.getMessage()]
    assert [r.levelno for r in notices] == [logging.WARNING]
    assert notices[0].getMessage() == (
        "the model (Sequential) was in training mode; cnnviz explains it in eval mode (dropout "
        "off, BatchNorm running statistics) and restores its modes afterwards"
    )
    # By hand, score 0 = mean(relu(x)) + 2·mean(relu(-x)): |∂/∂x| is 1/4 where x > 0, 1/2 where
    # x < 0; Grad-CAM weights the conv channels (x, -x) by 3/16 and 1/8: 1/16 · x.
    assert torch.equal(saliency.maps[0, 0], torch.tensor([[0.25, 0.5], [0.25, 0.25]]))
    assert torch.allclose(gradcam.maps[0, 0], _x()[0, 0] / 16)
    assert [m.training for m in model.modules()] == [True, True, True, True, True, False]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnviz.capture.forward"):
        explain(TinyNet().eval(), _x(), "saliency", target=0)
        explain(model, _x(), "saliency", target=0)  # told already
    assert not [r for r in caplog.records if "training mode" in r.getMessage()]
