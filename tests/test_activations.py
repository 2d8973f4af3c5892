"""Activation capture: hand values, in-place ReLU, no_grad, hook clean-up, channel choice."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.capture.hooks import ForwardError
from cnnviz.cli import main
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import LayerError, NonFiniteError
from cnnviz.inspect.activations import (
    ChannelOrder,
    capture_activations,
    select_channels,
)
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules


def _tiny() -> nn.Sequential:
    """conv(1→2, 2×2) → in-place ReLU → flatten → linear, with hand-set weights."""
    conv = nn.Conv2d(1, 2, kernel_size=2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, -2.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]))
        conv.bias.copy_(torch.tensor([0.0, -1.0]))  # type: ignore[union-attr]  # bias=True
    fc = nn.Linear(8, 2)
    with torch.no_grad():
        fc.weight.fill_(1.0)
        fc.bias.zero_()
    return nn.Sequential(
        OrderedDict(conv=conv, relu=nn.ReLU(inplace=True), flat=nn.Flatten(), fc=fc)
    )


X = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
# Channel 0: x[i, j] − 2·x[i+1, j+1]; channel 1: sum of the 2×2 window − 1.
CONV = torch.tensor([[[[-8.0, -9.0], [-11.0, -12.0]], [[7.0, 11.0], [19.0, 23.0]]]])


def test_capture_equals_hand_computation_pre_relu() -> None:
    model = _tiny()
    acts = capture_activations(model, X, ["conv", "relu", "fc"])
    assert list(acts) == ["conv", "relu", "fc"]
    # The in-place ReLU runs right after the conv; the captured conv output keeps its negatives.
    assert torch.equal(acts["conv"], CONV)
    assert torch.equal(acts["relu"], CONV.clamp(min=0))
    # fc: every weight 1, so each logit is the sum of the ReLU output: 7 + 11 + 19 + 23 = 60.
    assert torch.equal(acts["fc"], torch.tensor([[60.0, 60.0]]))
    assert not acts["conv"].requires_grad
    assert hooked_modules(model) == []


def test_capture_under_no_grad_and_inference_mode() -> None:
    model = _tiny()
    with torch.no_grad():
        assert torch.equal(capture_activations(model, X, ["conv"])["conv"], CONV)
    with torch.inference_mode():
        assert torch.equal(capture_activations(model, X[0], ["conv"])["conv"], CONV)  # (C, H, W)
    assert hooked_modules(model) == []


def test_capture_restores_mode_and_converts_dtype() -> None:
    model = _tiny().double().train()
    acts = capture_activations(model, X, [model.get_submodule("conv")])  # module object → its name
    assert acts["conv"].dtype == torch.float64
    assert torch.equal(acts["conv"], CONV.double())
    assert model.training
    assert all(m.training for m in model.modules())


def test_no_hooks_left_when_forward_raises() -> None:
    model = _tiny()
    with pytest.raises(ForwardError, match="Sequential"):
        capture_activations(model, torch.zeros(1, 2, 3, 3), ["conv"])  # wrong channel count
    assert hooked_modules(model) == []
    with pytest.raises(LayerError, match="Unknown layer"):
        capture_activations(model, X, ["cnv"])
    assert hooked_modules(model) == []


def _reference_backbone(model: VGG11, x: torch.Tensor, stop: str) -> dict[str, torch.Tensor]:
    """Run the backbone by hand, module by module, keeping the outputs until ``stop``."""
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.backbone.named_children():
            x = module(x)
            outputs[name] = x.clone()
            if name == stop:
                break
    return outputs


def test_vgg_conv1_and_bn4_1_in_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = VGG11(batch_norm=True, width=1 / 8)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]  # tracked
            module.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]  # tracked
    model.train()  # capture must use eval mode and restore this
    x = torch.randn(2, 3, 32, 32)

    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        acts = capture_activations(model, x, ["bn4_1", "conv1"])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert list(acts) == ["backbone.bn4_1", "backbone.conv1"]
    assert model.training
    assert hooked_modules(model) == []

    model.eval()
    reference = _reference_backbone(model, x, "bn4_1")
    model.train()
    first = model.get_submodule("backbone.conv1")
    assert isinstance(first, nn.Conv2d)
    conv1 = F.conv2d(x, first.weight, first.bias, padding=1)
    torch.testing.assert_close(acts["backbone.conv1"], conv1)
    assert (acts["backbone.conv1"] < 0).any()  # the raw, signed conv output
    assert acts["backbone.bn4_1"].shape == (2, 64, 4, 4)
    torch.testing.assert_close(acts["backbone.bn4_1"], reference["bn4_1"])


def test_select_channels_top_and_first() -> None:
    act = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 5.0), torch.full((2, 2), 3.0)])
    act[0, 0, 0] = 9.0  # channel 0 mean: (9 + 1 + 1 + 1) / 4 = 3, ties with channel 2
    ids, chosen = select_channels(act, 2, ChannelOrder.TOP)
    assert ids == [1, 0]  # mean 5 first; the tie at 3 goes to the lower index
    assert torch.equal(chosen, act[[1, 0]])
    ids, chosen = select_channels(act, 2, ChannelOrder.FIRST)
    assert ids == [0, 1]
    assert torch.equal(chosen, act[:2])
    assert select_channels(act, 10, ChannelOrder.TOP)[0] == [1, 0, 2]
    with pytest.raises(ValueError, match=r"act\[0\]"):
        select_channels(act.unsqueeze(0), 2, ChannelOrder.TOP)
    with pytest.raises(ValueError, match=r"must be a whole number >= 1, got 0"):
        select_channels(act, 0, ChannelOrder.TOP)
    act[2, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError):
        select_channels(act, 1, ChannelOrder.TOP)


def test_select_channels_of_a_layer_without_a_spatial_output_speaks_python() -> None:
    with pytest.raises(ValueError, match=r"got \(1000,\)") as caught:
        select_channels(torch.zeros(1000), 4)
    message = str(caught.value)
    assert message == (
        "Expected one image's activation of shape (C, H, W), got (1000,): a layer without a "
        "spatial output (a linear layer, a transformer's tokens) has no channels to draw; "
        "capture a convolutional layer."
    )
    assert "act[0]" not in message  # the batch is already indexed: that advice would be wrong
    assert "--layers" not in message  # a Python caller has no command-line flags


def test_cli_activations_of_the_classifier_speaks_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coffee = next(p for p in bundled_samples() if p.name == "coffee.jpg")
    out = tmp_path / "out"
    argv = ["-q", "activations", str(coffee), "--layers", "classifier", "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "cnnviz: error: layer classifier outputs (1, 1000): no spatial channels to draw; pick a "
        "conv layer from `cnnviz layers efficientnet_lite0` with --layers."
    ]
    assert [p for p in out.rglob("*") if p.is_file()] == []
