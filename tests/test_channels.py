"""Models with 1, 2 and 4 input channels, end to end: every method, the metrics, image files read
in the model's mode, the report and the folder run, the filters of a grey first convolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.errors import ImageLoadError
from cnnviz.inputs.decode import decode_input, load_inputs, model_tensor
from cnnviz.inputs.images import (
    CHANNEL_MODES,
    image_mode,
    load_image,
    load_image_for,
    load_image_with_notes,
    numpy_to_tensor,
    rgb_picture,
    tensor_to_numpy,
)
from cnnviz.inputs.preprocess import Preprocessing, denormalize, preprocess_image
from cnnviz.inspect.filters import conv_weight, filter_tiles, first_conv_layer
from cnnviz.inspect.summary import layer_table
from cnnviz.methods.registry import method_names
from cnnviz.metrics import faithfulness as fa
from cnnviz.metrics import road as ro
from cnnviz.models import from_module
from cnnviz.models.loaded import LoadedModel
from cnnviz.options import DeletionBaseline
from cnnviz.render.figures import filters_figure
from cnnviz.runs.explain import ExplainSettings, explain_files
from cnnviz.runs.report import ReportSettings, build_report

SIZE = 32
GREEN = (0, 255, 0)
# Distinct means and stds per channel, so a baseline that mixes up channels gives other numbers.
MEANS = {1: (0.3,), 2: (0.3, 0.6), 4: (0.3, 0.6, 0.45, 0.5)}
STDS = {1: (0.2,), 2: (0.2, 0.4), 4: (0.2, 0.4, 0.25, 0.3)}
REFUSAL = (
    "the model takes 5 input channels; cnnviz reads image files as 1 (grey), 2 (grey+alpha), "
    "3 (RGB) or 4 (RGBA) channels; pass a tensor from Python: cnnviz.explain(model, x)"
)

# Small settings for the slow methods; CAM needs the layer right before the pooling (the ReLU).
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 4},
    "smoothgrad-sq": {"samples": 4},
    "vargrad": {"samples": 4},
    "integrated-gradients": {"steps": 16, "warn_incomplete": False},
    "occlusion": {"window": 8},
    "rise": {"masks": 16, "grid": 4},
}
LAYERS = {"cam": "3"}


def tiny_cnn(channels: int, seed: int = 0) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU-GAP-Linear with seeded random weights and ``channels`` inputs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        ).eval()


def prep_for(channels: int) -> Preprocessing:
    return Preprocessing(
        input_size=(SIZE, SIZE), crop_pct=1.0, mean=MEANS[channels], std=STDS[channels]
    )


def loaded_for(channels: int) -> LoadedModel:
    return from_module(tiny_cnn(channels), preprocessing=prep_for(channels))


def inputs(channels: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, SIZE, SIZE, generator=gen)


# -- every method ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("name", method_names())
def test_every_method_explains_a_model_of_this_many_channels(name: str, channels: int) -> None:
    x = inputs(channels)
    e = cnnviz.explain(
        loaded_for(channels), x, method=name, layer=LAYERS.get(name), **FAST_OPTIONS.get(name, {})
    )
    assert e.maps.shape[:2] == (2, 1)
    assert e.upsampled().shape == (2, 1, SIZE, SIZE)
    assert torch.isfinite(e.maps).all()
    if e.attributions is not None:  # input-space methods: one attribution per input channel
        assert e.attributions.shape == (2, 1, channels, SIZE, SIZE)
        assert torch.isfinite(e.attributions).all()


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_saliency_is_the_gradient_of_the_target_logit(channels: int) -> None:
    loaded, x = loaded_for(channels), inputs(channels)
    e = cnnviz.explain(loaded, x, "saliency", target=2)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loaded.module(leaf)[:, 2].sum(), leaf)
    assert e.attributions is not None
    torch.testing.assert_close(e.attributions[:, 0], grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.maps[:, 0], grad.abs().amax(dim=1), rtol=1e-5, atol=1e-7)
    assert grad.abs().sum() > 0  # the check is not between two zero tensors


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_integrated_gradients_completes_from_the_per_channel_black_baseline(channels: int) -> None:
    loaded, x = loaded_for(channels), inputs(channels)
    e = cnnviz.explain(loaded, x, "integrated-gradients", target=1, steps=64)
    mean = torch.tensor(MEANS[channels]).view(1, -1, 1, 1)
    std = torch.tensor(STDS[channels]).view(1, -1, 1, 1)
    black = (-mean / std).expand_as(x)  # the normalised black image, channel by channel
    with torch.no_grad():
        delta_f = loaded.module(x)[:, 1] - loaded.module(black)[:, 1]
    assert e.attributions is not None
    total = e.attributions.sum(dim=(2, 3, 4))[:, 0]
    torch.testing.assert_close(e.extras["delta_f"][:, 0], delta_f, rtol=1e-4, atol=1e-6)
    assert torch.all((total - delta_f).abs() <= 0.02 * delta_f.abs() + 1e-4)
    assert delta_f.abs().min() > 1e-3  # a real score change, not 0 ≈ 0


def test_integrated_gradients_on_a_grey_module_without_preprocessing() -> None:
    """The default preprocessing of from_module fits the first conv (ImageNet's mean and std
    averaged for one channel), so IG's black baseline fits a 1-channel model."""
    loaded = from_module(tiny_cnn(1))
    assert loaded.preprocessing.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert loaded.preprocessing.std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))
    x = inputs(1, n=1)
    e = cnnviz.explain(loaded, x, "integrated-gradients", steps=8, warn_incomplete=False)
    black = torch.full_like(x, -0.449 / 0.226)
    with torch.no_grad():
        scores = loaded.module(torch.cat([x, black]))
    target = int(scores[0].argmax())
    expected = scores[0, target] - scores[1, target]
    assert float(e.extras["delta_f"][0, 0]) == pytest.approx(float(expected), rel=1e-4)


def test_integrated_gradients_refuses_a_preprocessing_of_another_channel_count() -> None:
    loaded = from_module(tiny_cnn(1), preprocessing=Preprocessing(input_size=(SIZE, SIZE)))
    with pytest.raises(ValueError, match=r"3 channel\(s\) .* but the input has 1"):
        cnnviz.explain(loaded, inputs(1), "integrated-gradients", steps=4)


def test_occlusion_of_the_whole_grey_image_is_the_drop_to_zero() -> None:
    loaded, x = loaded_for(1), inputs(1)
    e = cnnviz.explain(loaded, x, "occlusion", target=0, window=SIZE)
    with torch.no_grad():
        drop = loaded.module(x)[:, 0] - loaded.module(torch.zeros_like(x))[:, 0]
    expected = drop.view(2, 1, 1).expand(2, SIZE, SIZE)
    torch.testing.assert_close(e.maps[:, 0], expected, rtol=1e-5, atol=1e-6)


# -- metrics on a 1-channel model ------------------------------------------------------------------


def _probability(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).softmax(dim=1).gather(1, classes.view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("baseline", list(DeletionBaseline))
def test_deletion_and_insertion_end_where_the_baseline_says(baseline: DeletionBaseline) -> None:
    loaded, x = loaded_for(1), inputs(1)
    model = loaded.module
    maps = fa.relevance_maps(cnnviz.explain(loaded, x, "saliency"))
    replaced = fa.make_baseline(x, baseline)
    assert replaced.shape == x.shape
    if baseline is DeletionBaseline.MEAN:  # the image's own mean, its one channel
        torch.testing.assert_close(replaced, x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    curve = fa.deletion(model, x, maps, steps=8, baseline=baseline)
    clean = _probability(model, x, curve.targets)
    torch.testing.assert_close(curve.probabilities[:, 0], clean, rtol=1e-5, atol=1e-6)
    end = _probability(model, replaced, curve.targets)
    torch.testing.assert_close(curve.probabilities[:, -1], end, rtol=1e-5, atol=1e-6)
    grown = fa.insertion(model, x, maps, steps=8)
    blurred = _probability(model, fa.rise_blur(x), grown.targets)
    torch.testing.assert_close(grown.probabilities[:, 0], blurred, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grown.probabilities[:, -1], clean, rtol=1e-5, atol=1e-6)


def test_road_on_a_grey_model() -> None:
    loaded, x = loaded_for(1), inputs(1)
    maps = fa.relevance_maps(cnnviz.explain(loaded, x, "saliency"))
    result = ro.road(loaded.module, x, maps, percentages=(0, 50), noise_std=0.0)
    clean = _probability(loaded.module, x, result.targets)
    torch.testing.assert_close(result.morf[:, 0], clean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.lerf[:, 0], clean, rtol=1e-5, atol=1e-6)
    assert result.morf.shape == result.lerf.shape == (2, 2)
    ramp = torch.arange(16.0).view(1, 4, 4)  # a linear ramp is imputed exactly
    removed = torch.zeros(4, 4, dtype=torch.bool)
    removed[1:3, 1:3] = True
    torch.testing.assert_close(ro.noisy_linear_impute(ramp, removed, noise_std=0.0), ramp)


# -- image files read in the model's mode ----------------------------------------------------------


@pytest.fixture
def colour_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    path = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), mode="RGB").save(path)
    return path


@pytest.fixture
def rgba_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 0)  # fully transparent
    pixels[0, 1] = (10, 20, 30, 255)  # opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def _pixels(tensor: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    """uint8 (C, H, W) pixels back from a normalised tensor."""
    return np.rint(denormalize(tensor, prep).numpy() * 255).astype(np.uint8)


def test_colour_png_is_read_as_pillows_luma_for_a_grey_model(colour_png: Path) -> None:
    with Image.open(colour_png) as opened:
        luma = np.asarray(opened.convert("L"))
    image, notes = load_image_for(colour_png, 1)
    assert image.mode == "L" and notes == []
    np.testing.assert_array_equal(np.asarray(image), luma)
    picture, tensor, _ = decode_input(colour_png, prep_for(1))
    assert tensor.shape == (1, SIZE, SIZE) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(_pixels(tensor, prep_for(1))[0], luma)
    assert picture.shape == (SIZE, SIZE, 3) and picture.dtype == np.uint8
    for c in range(3):  # drawn on in grey: the luma replicated
        np.testing.assert_array_equal(picture[..., c], luma)
    torch.testing.assert_close(tensor, model_tensor(luma, prep_for(1)), rtol=0, atol=0)


def test_rgba_png_keeps_its_alpha_for_a_four_channel_model(rgba_png: Path) -> None:
    with Image.open(rgba_png) as opened:
        file_pixels = np.asarray(opened.convert("RGBA"))
    image, _ = load_image_with_notes(rgba_png, keep_alpha=True)
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image), file_pixels)
    picture, tensor, _ = decode_input(rgba_png, prep_for(4))
    assert tensor.shape == (4, SIZE, SIZE)
    np.testing.assert_array_equal(_pixels(tensor, prep_for(4)).transpose(1, 2, 0), file_pixels)
    assert picture.shape == (SIZE, SIZE, 3)
    assert tuple(picture[0, 0]) == (255, 255, 255)  # transparent: white on display
    assert tuple(picture[0, 1]) == (10, 20, 30)  # opaque: its colour
    alpha = file_pixels[..., 3:].astype(np.float64) / 255
    on_white = file_pixels[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(picture - on_white).max() <= 1.0  # composited on white, to rounding
    assert load_image_with_notes(rgba_png)[0].mode == "RGB"  # the default still composites


def test_two_channels_are_grey_and_alpha(rgba_png: Path, colour_png: Path) -> None:
    with Image.open(rgba_png) as opened:
        rgba = opened.convert("RGBA")
        expected = np.asarray(rgba.convert("LA"))
    _, tensor, _ = decode_input(rgba_png, prep_for(2))
    pixels = _pixels(tensor, prep_for(2)).transpose(1, 2, 0)
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pixels[..., 1], np.asarray(rgba)[..., 3])  # alpha as in file
    _, opaque, _ = decode_input(colour_png, prep_for(2))  # no alpha in the file: 255
    assert np.all(_pixels(opaque, prep_for(2))[1] == 255)


def test_rgb_file_without_alpha_gets_alpha_255_as_rgba(colour_png: Path) -> None:
    image, _ = load_image_for(colour_png, 4)
    pixels = np.asarray(image)
    with Image.open(colour_png) as opened:
        np.testing.assert_array_equal(pixels[..., :3], np.asarray(opened))
    assert np.all(pixels[..., 3] == 255)
    np.testing.assert_array_equal(rgb_picture(image), pixels[..., :3])


def test_five_channels_are_refused_with_the_remedy(colour_png: Path) -> None:
    prep = Preprocessing(input_size=(SIZE, SIZE), mean=(0.5,) * 5, std=(0.5,) * 5)
    with pytest.raises(ImageLoadError) as caught:
        decode_input(colour_png, prep)
    assert str(caught.value) == REFUSAL
    failures: list[dict[str, Any]] = []
    loaded = from_module(tiny_cnn(5), preprocessing=prep)
    with pytest.raises(ImageLoadError, match="takes 5 input channels"):
        list(load_inputs(loaded, [colour_png, colour_png], failures))
    assert failures == []  # refused once for the model, not once per file
    with Image.open(colour_png) as opened, pytest.raises(ImageLoadError, match="5 input"):
        preprocess_image(opened, prep)
    with pytest.raises(ImageLoadError, match="takes 5 input channels"):
        explain_files(
            loaded, [colour_png], colour_png.parent / "o", ExplainSettings(), command="explain"
        )
    assert not (colour_png.parent / "o").exists()  # refused before any folder is made
    # A tensor from Python is explained all the same.
    e = cnnviz.explain(loaded, inputs(5, n=1), "saliency")
    assert e.attributions is not None and e.attributions.shape == (1, 1, 5, SIZE, SIZE)


# -- the Pillow modes of the channel counts --------------------------------------------------------


def test_keep_alpha_keeps_every_kind_of_transparency(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), value)
    rgba.save(tmp_path / "rgba.png")
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (100, 255))
    la.putpixel((1, 0), (100, 0))
    la.save(tmp_path / "la.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "pt.png", transparency=0)
    kept = {
        name: load_image_with_notes(tmp_path / name, keep_alpha=True)
        for name in ("rgba.png", "la.png", "pt.png")
    }
    assert all(image.mode == "RGBA" and notes == [] for image, notes in kept.values())
    assert [kept["rgba.png"][0].getpixel((x, 0)) for x in range(3)] == [
        (255, 0, 0, 0),
        (255, 0, 0, 255),
        (0, 0, 0, 128),
    ]
    assert [kept["la.png"][0].getpixel((x, 0)) for x in range(2)] == [
        (100, 100, 100, 255),
        (100, 100, 100, 0),
    ]
    assert kept["pt.png"][0].getpixel((1, 0)) == (200, 100, 50, 255)
    assert kept["pt.png"][0].getpixel((0, 0))[3] == 0
    # Drawn on: composited on white, as load_image does.
    np.testing.assert_array_equal(
        rgb_picture(kept["rgba.png"][0]), np.asarray(load_image(tmp_path / "rgba.png"))
    )


def test_keep_alpha_gives_opaque_alpha_to_files_without_it(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "16.png")
    Image.new("RGB", (2, 2), GREEN).save(tmp_path / "g.png")
    grey, _ = load_image_with_notes(tmp_path / "16.png", keep_alpha=True)
    assert [grey.getpixel((x, 0)) for x in range(3)] == [
        (0, 0, 0, 255),
        (128, 128, 128, 255),
        (255, 255, 255, 255),
    ]
    green, notes = load_image_with_notes(tmp_path / "g.png", keep_alpha=True)
    assert green.getpixel((1, 1)) == (*GREEN, 255)
    assert notes == []


def test_channel_counts_map_to_modes() -> None:
    assert dict(CHANNEL_MODES) == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    assert [image_mode(c) for c in (1, 2, 3, 4)] == ["L", "LA", "RGB", "RGBA"]
    for count in (0, 5, 6):
        with pytest.raises(ImageLoadError, match=f"takes {count} input channels"):
            image_mode(count)


def test_layout_helpers_take_two_channels() -> None:
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # grey + alpha
    array = tensor_to_numpy(t)
    assert array.shape == (3, 4, 2) and array[1, 2, 1] == t[1, 1, 2].item() == 18.0
    np.testing.assert_array_equal(numpy_to_tensor(array).numpy(), t.numpy())


# -- runs and inspection on a grey model -----------------------------------------------------------


def test_report_of_a_grey_module_writes_its_pages(colour_png: Path, tmp_path: Path) -> None:
    loaded = loaded_for(1)
    settings = ReportSettings(methods=("integrated-gradients", "gradxinput"))
    result = build_report(loaded, [colour_png], tmp_path / "r", settings, progress=False)
    assert (tmp_path / "r" / "index.html").is_file()
    assert (tmp_path / "r" / "colour.html").is_file()
    assert result["failures"] == [] and len(result["items"]) == 1
    html = (tmp_path / "r" / "colour.html").read_text(encoding="utf-8")
    assert "Integrated Gradients" in html and "Gradient × Input" in html
    assert result["model"]["preprocessing"]["mean"] == [0.3]


def test_folder_run_decodes_grey_inputs(colour_png: Path, rgba_png: Path, tmp_path: Path) -> None:
    settings = ExplainSettings(method="saliency", num_workers=0)
    manifest = explain_files(
        loaded_for(1),
        [colour_png, rgba_png],
        tmp_path / "o",
        settings,
        command="explain",
        progress=False,
    )
    assert manifest["failures"] == [] and len(manifest["items"]) == 2
    maps = sorted((tmp_path / "o").glob("colour.saliency.*.input.npy"))
    assert len(maps) == 1
    _, tensor, _ = decode_input(colour_png, prep_for(1))
    e = cnnviz.explain(loaded_for(1), tensor[None], "saliency")
    expected = e.upsampled()[0, 0].numpy()  # alone, not in a batch of 2: float rounding apart
    np.testing.assert_allclose(np.load(maps[0]), expected, rtol=1e-4, atol=1e-9)
    overlays = sorted((tmp_path / "o").glob("rgba.saliency.*.png"))
    with Image.open(overlays[0]) as shown:
        assert shown.mode == "RGB" and shown.size == (SIZE, SIZE)


def test_filters_of_a_grey_first_conv_are_drawn_in_grey() -> None:
    model = tiny_cnn(1)
    weight = conv_weight(model, first_conv_layer(model))
    assert weight.shape == (4, 1, 3, 3)
    tiles = filter_tiles(weight)
    assert tiles.shape == (4, 3, 3) and tiles.dtype == np.uint8  # grey, one tile per filter
    w = weight[:, 0].double().numpy()
    low, high = w.min(axis=(1, 2), keepdims=True), w.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(tiles, np.floor(255 * (w - low) / (high - low) + 0.5))
    assert filters_figure(tiles, title="conv 0").axes  # drawn
    four = filter_tiles(conv_weight(tiny_cnn(4), "0"))
    assert four.shape == (4, 3, 3)  # 4 input channels: not "RGB", the channel mean


def test_summary_and_layers_take_the_model_channel_count() -> None:
    loaded = loaded_for(2)
    assert loaded.preprocessing.input_shape == (2, SIZE, SIZE)
    rows = layer_table(loaded.module, loaded.preprocessing.input_shape)
    assert rows[0].name == "0" and rows[0].output_shape == (1, 4, SIZE, SIZE)
