"""Preprocessing: equal to timm's eval transform, hand-checked crops and values, exact inverse."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from cnnviz.inputs.preprocess import (
    Preprocessing,
    denormalize,
    preprocess_image,
    preprocess_images,
    resize_and_crop,
)


def _prep_from_timm(cfg: dict[str, object]) -> Preprocessing:
    _, height, width = cfg["input_size"]  # type: ignore[misc]
    return Preprocessing(
        input_size=(height, width),
        crop_pct=cfg["crop_pct"],  # type: ignore[arg-type]
        interpolation=cfg["interpolation"],  # type: ignore[arg-type]
        mean=cfg["mean"],  # type: ignore[arg-type]
        std=cfg["std"],  # type: ignore[arg-type]
    )


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")


@pytest.mark.parametrize(
    "arch",
    [
        "tf_efficientnet_lite0",  # bicubic, crop_pct 0.875, mean = std = 0.5
        "convnext_tiny",  # crop_pct 0.95: resize to floor(224 / 0.95) = 235, not 236
        "resnet18.tv_in1k",  # bilinear, crop_pct 0.875, ImageNet mean/std (torchvision's)
    ],
)
def test_equals_timm_eval_transform(arch: str, samples_dir: Path) -> None:
    cfg = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(arch).to_dict())
    reference = create_transform(**cfg)
    prep = _prep_from_timm(cfg)
    images = [
        Image.open(samples_dir / name).convert("RGB") for name in ("coffee.jpg", "chelsea.jpg")
    ]
    images.append(_noise_image(190, 300, seed=3))  # portrait, odd crop offsets
    for image in images:
        ours = preprocess_image(image, prep)
        assert ours.dtype == torch.float32
        assert ours.shape == (3, 224, 224)
        assert torch.allclose(ours, reference(image), atol=1e-6, rtol=0)


def test_resize_rule() -> None:
    assert Preprocessing(crop_pct=0.875).resize_size == (256,)
    assert Preprocessing(crop_pct=0.95).resize_size == (235,)  # timm floors 235.79
    assert Preprocessing(crop_pct=224 / 232).resize_size == (232,)  # torchvision's ratio
    assert Preprocessing(input_size=(48, 64), crop_pct=0.5).resize_size == (96, 128)


def test_centre_crop_takes_the_middle_columns() -> None:
    # 8 wide, 4 high, column c has value 30c; shorter side already 4 so no resampling happens.
    columns = torch.arange(8, dtype=torch.uint8) * 30
    pixels = columns.view(1, 8, 1).expand(4, 8, 3).contiguous()
    image = Image.fromarray(pixels.numpy(), mode="RGB")
    prep = Preprocessing(input_size=(4, 4), crop_pct=1.0, interpolation="nearest")
    shown = resize_and_crop(image, prep)
    assert shown.size == (4, 4)
    assert [shown.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in (60, 90, 120, 150)]
    x = preprocess_image(image, prep)
    expected_red = (torch.tensor([60.0, 90.0, 120.0, 150.0]) / 255 - 0.485) / 0.229
    assert torch.allclose(x[0, 2], expected_red, atol=1e-6)


def test_constant_image_gives_hand_computed_values() -> None:
    image = Image.new("RGB", (300, 200), (255, 0, 51))
    x = preprocess_image(image, Preprocessing(interpolation="bicubic"))
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(x[channel], torch.full((224, 224), value), atol=1e-5)


def test_display_image_is_what_the_model_sees_and_denormalize_inverts(samples_dir: Path) -> None:
    from torchvision.transforms.v2.functional import pil_to_tensor

    image = Image.open(samples_dir / "chelsea.jpg").convert("RGB")
    prep = Preprocessing(input_size=(48, 64), crop_pct=0.8, mean=(0.2, 0.5, 0.7), std=(0.5, 0.1, 2))
    shown = resize_and_crop(image, prep)
    assert shown.mode == "RGB"
    assert shown.size == (64, 48)  # PIL gives (width, height)
    pixels = pil_to_tensor(shown).float() / 255
    x = preprocess_image(image, prep)
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    assert torch.allclose(x, (pixels - mean) / std, atol=1e-6)
    assert torch.allclose(denormalize(x, prep), pixels, atol=1e-6)
    batch = torch.stack([x, x])
    assert torch.allclose(denormalize(batch, prep)[1], pixels, atol=1e-6)


def test_denormalize_clamps_and_checks_shape() -> None:
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.tensor([3.0, -3.0, 0.5]).view(3, 1, 1)
    assert denormalize(x, prep).flatten().tolist() == [1.0, 0.0, 0.75]
    with pytest.raises(ValueError, match=r"got shape \(4, 2, 2\)"):
        denormalize(torch.zeros(4, 2, 2), prep)


def test_batch_stacks_in_order_and_converts_grey(samples_dir: Path) -> None:
    prep = Preprocessing(input_size=(32, 32))
    grey = Image.new("L", (40, 50), 128)
    coffee = Image.open(samples_dir / "coffee.jpg").convert("RGB")
    batch = preprocess_images([grey, coffee], prep)
    assert batch.shape == (2, 3, 32, 32)
    assert torch.equal(batch[1], preprocess_image(coffee, prep))
    raw = denormalize(batch[0], prep)
    assert torch.allclose(raw, torch.full_like(raw, 128 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        preprocess_images([], prep)
    with pytest.raises(TypeError, match=r"PIL\.Image\.Image"):
        preprocess_image(torch.zeros(3, 8, 8), prep)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_pct": 0.0}, "crop_pct"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"input_size": (224, 0)}, "input_size"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be"),
        ({"mean": (0.5, 0.5)}, "got 2 mean and 3 std values"),
        ({"mean": (), "std": ()}, "got 0 mean and 0 std values"),
        ({"mean": (0.5,), "std": (0.2, 0.2)}, "one value per input channel"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)  # type: ignore[arg-type]


def test_to_dict_is_json_ready() -> None:
    assert Preprocessing().to_dict() == {
        "input_size": [224, 224],
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }


def test_one_channel_preprocessing_reads_grey() -> None:
    prep = Preprocessing(input_size=(4, 4), crop_pct=1.0, mean=(0.5,), std=(0.5,))
    assert prep.channels == 1 and prep.input_shape == (1, 4, 4)
    assert prep.to_dict()["mean"] == [0.5] and prep.to_dict()["std"] == [0.5]
    colour = Image.new("RGB", (4, 4), (200, 100, 50))
    assert resize_and_crop(colour, prep).mode == "L"
    x = preprocess_image(colour, prep)
    luma = colour.convert("L").getpixel((0, 0))  # 200·0.299 + 100·0.587 + 50·0.114 = 124.2
    assert luma == 124
    assert x.shape == (1, 4, 4)
    torch.testing.assert_close(x, torch.full((1, 4, 4), (124 / 255 - 0.5) / 0.5))
    torch.testing.assert_close(denormalize(x, prep), torch.full((1, 4, 4), 124 / 255))
    batch = preprocess_images([colour, colour], prep)
    assert batch.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\(1, H, W\) or \(N, 1, H, W\).*got shape \(3, 4, 4\)"):
        denormalize(torch.zeros(3, 4, 4), prep)


def test_four_channel_preprocessing_keeps_alpha() -> None:
    prep = Preprocessing(input_size=(2, 2), crop_pct=1.0).with_channels(4)
    image = Image.new("RGBA", (2, 2), (255, 0, 0, 51))
    x = preprocess_image(image, prep)
    assert x.shape == (4, 2, 2)
    alpha_mean, alpha_std = prep.mean[3], prep.std[3]
    torch.testing.assert_close(x[3], torch.full((2, 2), (51 / 255 - alpha_mean) / alpha_std))
    torch.testing.assert_close(x[0], torch.full((2, 2), (1.0 - 0.485) / 0.229))


def test_mean_and_std_are_stored_as_float_tuples() -> None:
    prep = Preprocessing(mean=[0, 1], std=[1, 2])  # type: ignore[arg-type]
    assert prep.mean == (0.0, 1.0) and prep.std == (1.0, 2.0)
    assert isinstance(prep.mean, tuple) and hash(prep) == hash(prep)
    with pytest.raises(TypeError, match="sequence of numbers"):
        Preprocessing(mean="abc", std=(1.0, 1.0, 1.0))  # type: ignore[arg-type]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("n", "mean", "std"),
    [
        (1, (0.449,), (0.226,)),  # the average of the three
        (2, (0.485, 0.456), (0.229, 0.224)),  # the first two
        (4, (0.485, 0.456, 0.406, 0.449), (0.229, 0.224, 0.225, 0.226)),  # + the average
        (5, (0.485, 0.456, 0.406, 0.449, 0.449), (0.229, 0.224, 0.225, 0.226, 0.226)),
    ],
)
def test_with_channels_follows_the_rule(
    n: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    prep = Preprocessing(input_size=(48, 64), crop_pct=0.9, interpolation="bicubic")
    fitted = prep.with_channels(n)
    assert fitted.channels == n
    assert fitted.mean == pytest.approx(mean, abs=1e-12)
    assert fitted.std == pytest.approx(std, abs=1e-12)
    assert (fitted.input_size, fitted.crop_pct, fitted.interpolation) == ((48, 64), 0.9, "bicubic")
    assert prep.with_channels(3) is prep


def test_with_channels_from_one_channel_repeats_it() -> None:
    grey = Preprocessing(mean=(0.5,), std=(0.25,))
    assert grey.with_channels(1) is grey
    assert grey.with_channels(3).mean == (0.5, 0.5, 0.5)
    assert grey.with_channels(3).std == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="whole number >= 1"):
        grey.with_channels(0)
