"""Token models (ViT, DeiT, Swin): every CAM method refuses their layers, saying why and what to
use instead; CNNs (squeeze-excitation, CBAM, ECA, ConvNeXt) and a hybrid's convolutions before
its first self-attention are explained as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from cnnviz import explain
from cnnviz.api import TOKEN_MODEL_METHODS
from cnnviz.capture.token_models import is_self_attention, token_layer_problem, token_model_kind
from cnnviz.cli import main
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import LayerError, NotApplicableError
from cnnviz.methods.registry import get_method, method_names
from hook_leaks import hooked_modules

CAM_METHODS = [name for name in method_names() if get_method(name).needs_layer]
WHY_AND_INSTEAD = "there is meaningless. Use an input-space method instead: saliency, "


def _x(size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    return vit.eval()


def _tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=12,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=[2, 2],
        num_classes=10,
    ).eval()


def _refusal(model: nn.Module, x: torch.Tensor, layer: str | None, method: str = "gradcam") -> str:
    with pytest.raises(NotApplicableError) as caught:
        explain(model, x, method, layer=layer)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_cam_method_refuses_a_vit_naming_the_patch_embedding() -> None:
    vit, x = _tiny_vit(), _x()
    assert len(CAM_METHODS) >= 9  # the CAM family, Score-CAM, Ablation-CAM, Guided Grad-CAM
    for method in CAM_METHODS:
        message = _refusal(vit, x, None, method)
        title = get_method(method).title
        assert message.startswith(
            "VisionTransformer is a Vision Transformer: its layer conv_proj (the automatic "
            "choice) is the patch embedding, and the maps after it are token grids, not CNN "
            f"feature maps, so {title} {WHY_AND_INSTEAD}"
        ), message
    assert "(the automatic choice)" not in _refusal(vit, x, "conv_proj")
    assert "conv_proj is the patch embedding" in _refusal(vit, x, "conv_proj")
    assert hooked_modules(vit) == []
    assert not vit.training


def test_vit_layers_after_the_patch_embedding_are_token_maps() -> None:
    vit, x = _tiny_vit(), _x()
    attention = "encoder.layers.encoder_layer_0.self_attention"
    assert f"encoder.ln runs after the self-attention {attention}:" in _refusal(vit, x, "ln")
    assert f"layer encoder contains the self-attention {attention}:" in _refusal(vit, x, "encoder")
    message = _refusal(vit, x, "ln_1")  # a unique suffix, resolved as everywhere
    assert "encoder.layers.encoder_layer_0.ln_1 outputs (1, 17, 16), a sequence of tokens" in (
        message
    )


def test_saliency_still_explains_a_vit() -> None:
    vit, x = _tiny_vit(), _x()
    e = explain(vit, x, "saliency")
    assert e.layer is None
    assert e.maps.shape == (1, 1, 32, 32)
    assert torch.isfinite(e.maps).all()
    assert e.maps.abs().sum() > 0


@pytest.mark.slow
def test_method_all_on_a_vit_skips_exactly_the_cam_methods(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from cnnviz.inputs.preprocess import Preprocessing
    from cnnviz.models import from_module
    from cnnviz.runs.explain import ExplainSettings, explain_files

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    prep = Preprocessing(input_size=(32, 32), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    loaded = from_module(_tiny_vit(), preprocessing=prep)
    settings = ExplainSettings(method="all", num_workers=0)
    manifest = explain_files(
        loaded, [tmp_path / "a.png"], tmp_path / "o", settings, command="e", progress=False
    )
    skipped = manifest["extra"]["skipped_methods"]
    assert sorted(skipped) == sorted(CAM_METHODS)
    assert all("is the patch embedding" in reason for reason in skipped.values())
    assert [i["method"] for i in manifest["items"]] == [
        m for m in method_names() if m not in CAM_METHODS
    ]
    assert manifest["failures"] == []


def test_the_suggested_methods_are_input_space_methods_of_the_registry() -> None:
    for name in TOKEN_MODEL_METHODS:
        assert not get_method(name).needs_layer, name


def test_swin_patch_embedding_and_channels_last_maps_are_refused() -> None:
    swin, x = _tiny_swin(), _x()
    message = _refusal(swin, x, None)
    assert message.startswith(
        "SwinTransformer is a Swin Transformer: its layer permute (the automatic choice) runs "
        "after the self-attention features.1.0.attn: its maps are token grids"
    ), message
    assert "features.0.0 is the patch embedding" in _refusal(swin, x, "features.0.0")
    for layer in ("features.0.1", "features.0.2", "features.0"):  # Permute, LayerNorm, both
        assert f"{layer} outputs (1, 8, 8, 12), a channels-last (N, H, W, C) token grid" in (
            _refusal(swin, x, layer, "layercam")
        )


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vit_and_deit_are_refused(name: str) -> None:
    model = timm.create_model(name, pretrained=False, img_size=32, num_classes=10).eval()
    x = _x()
    for layer in (None, "patch_embed.proj"):
        message = _refusal(model, x, layer)
        assert "is a Vision Transformer: its layer patch_embed.proj" in message
        assert "is the patch embedding" in message
    assert "is part of the self-attention blocks.0.attn:" in _refusal(model, x, "blocks.0.attn.qkv")


def test_timm_swin_is_refused() -> None:
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    torch.manual_seed(0)
    model = TimmSwin(
        img_size=32, patch_size=4, window_size=2, embed_dim=12, depths=(1, 1), num_heads=(1, 1)
    ).eval()
    x = _x()
    assert "patch_embed.proj is the patch embedding" in _refusal(model, x, "patch_embed.proj")
    assert "patch_embed outputs (1, 8, 8, 12), a channels-last" in _refusal(model, x, "patch_embed")
    assert "runs after the self-attention layers.0.blocks.0.attn" in _refusal(model, x, None)


@pytest.mark.slow
def test_a_hybrid_keeps_its_cnn_layers_before_the_first_attention() -> None:
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10).eval()
    x = _x(64)
    e = explain(model, x, "gradcam", layer="stages.1")
    assert e.layer == "stages.1"
    assert e.maps.shape == (1, 1, 16, 16)
    assert e.maps.abs().sum() > 0
    message = _refusal(model, x, None)  # the automatic choice, final_conv, is after attention
    assert "ByobNet is a model with transformer self-attention: its layer final_conv" in message
    assert "runs after the self-attention stages.2.1.transformer.0.attn" in message
    assert "before the first self-attention (the last one is stages.2.1.conv_1x1)" in message
    assert "contains the self-attention" in _refusal(model, x, "stages.2.1")


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet18", "layer4"), ("efficientnet_b0", "features"), ("convnext_tiny", "features")],
)
def test_cnns_are_not_token_models(name: str, layer: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    assert token_model_kind(model) is None  # squeeze-excitation and ConvNeXt's LayerNorm too
    e = explain(model, _x(64), "gradcam")
    assert e.layer == layer
    assert e.maps.shape == (1, 1, 2, 2)


@pytest.mark.parametrize(("attn_layer", "module"), [("cbam", "CbamModule"), ("eca", "EcaModule")])
def test_timm_channel_attention_is_not_self_attention(attn_layer: str, module: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", pretrained=False, num_classes=10, block_args={"attn_layer": attn_layer}
    ).eval()
    assert any(type(m).__name__ == module for m in model.modules())
    assert token_model_kind(model) is None
    assert explain(model, _x(64), "gradcam").layer == "layer4"


def test_what_counts_as_self_attention() -> None:
    class FusedQKV(nn.Module):
        def __init__(self, qkv: nn.Module) -> None:
            super().__init__()
            self.qkv = qkv

    assert is_self_attention(nn.MultiheadAttention(8, 2))
    assert is_self_attention(FusedQKV(nn.Linear(8, 24)))
    assert not is_self_attention(FusedQKV(nn.Conv2d(8, 24, 1)))  # a conv "attention" (BoTNet)
    assert not is_self_attention(torchvision.ops.SqueezeExcitation(8, 2))


def test_the_check_costs_no_forward_for_a_cnn_and_one_per_shape_for_a_token_model() -> None:
    calls: list[int] = []

    def count(_module: nn.Module, _inputs: object) -> None:
        calls.append(1)

    torch.manual_seed(0)
    cnn = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    handle = cnn.register_forward_pre_hook(count)
    assert token_layer_problem(cnn, "layer4", _x(64)) is None
    handle.remove()
    assert calls == []
    vit = _tiny_vit()
    handle = vit.register_forward_pre_hook(count)
    try:
        for layer in ("conv_proj", "encoder.ln", "conv_proj"):
            assert token_layer_problem(vit, layer, _x()) is not None
    finally:
        handle.remove()
    assert calls == [1]


def test_a_layer_error_is_still_a_layer_error() -> None:
    with pytest.raises(LayerError, match="Unknown layer 'no_such_layer'"):
        explain(_tiny_vit(), _x(), "gradcam", layer="no_such_layer")


@pytest.mark.slow
def test_cli_gradcam_on_vit_b_16_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(next(p for p in bundled_samples() if p.name == "coffee.jpg"))
    argv = ["-q", "gradcam", image, "--model", "torchvision:vit_b_16", "--weights", "random"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cnnviz: error: torchvision:vit_b_16 is a Vision Transformer: its layer conv_proj (the "
        "automatic choice) is the patch embedding, and the maps after it are token grids, not CNN "
        "feature maps, so Grad-CAM there is meaningless. Use an input-space method instead: "
        "saliency, integrated-gradients, smoothgrad, occlusion or rise (CAMs of token maps are "
        "not supported yet)."
    ]
    assert not (tmp_path / "out").exists()  # refused before any folder is made
