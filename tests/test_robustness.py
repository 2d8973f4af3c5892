"""The bad-input matrix (docs/errors.md): every bad image, model and setting, library and CLI.

Each case either works (and the numbers say it worked right) or fails with one line that names
the problem, without a traceback, without writing a half or non-finite output, and without
stopping the rest of a folder run.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnviz.api import explain
from cnnviz.cli import main
from cnnviz.errors import (
    CheckpointError,
    ImageLoadError,
    LayerError,
    ModelNotFoundError,
    NonFiniteError,
    TargetError,
)
from cnnviz.inputs.decode import decode_input
from cnnviz.inputs.preprocess import Preprocessing, preprocess_image
from cnnviz.models import from_module, load_model
from cnnviz.render.colours import colormap_lut
from cnnviz.runs.explain import ExplainSettings, explain_files
from hook_leaks import hooked_modules

SHAPES = ["--model", "shapes_vgg11", "--weights", "random", "--workers", "0"]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
PREP = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


class TinyNet(nn.Module):
    """conv → BN → ReLU → dropout → GAP → linear (3 classes), seeded, with train-only parts."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        self.bn.register_buffer("running_mean", torch.full((4,), 0.1))
        self.bn.register_buffer("running_var", torch.full((4,), 2.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.drop(self.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TupleNet(TinyNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.features(x)
        return logits, logits.detach() * 0  # (logits, aux)


class DictNet(TinyNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"aux": torch.zeros(1), "logits": self.features(x)}


class TwiceNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn(self.conv(x)))
        logits: torch.Tensor = self.fc(self.unused(self.unused(a)).mean(dim=(2, 3)))
        return logits


def _x(seed: int = 1, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err.strip().splitlines()


# -- bad images -----------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _noise_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)


def _truncated(path: Path) -> None:
    _noise_jpeg(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _palette_transparent(path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.save(path, transparency=0)


def _frames(path: Path, duration: int | None = None) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    if duration is None:  # TIFF pages
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration)


def _exif_rotated(path: Path) -> None:
    # Stored: red top-left quadrant on blue; orientation 6 = "rotate 90° clockwise to display",
    # so the red quadrant is displayed top-right.
    stored = Image.new("RGB", (32, 32), BLUE)
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=95)


# name → (writer, refused?, words expected in the message or the notes)
BAD_IMAGES: dict[str, tuple[Callable[[Path], object], bool, str]] = {
    "text.jpg": (lambda p: p.write_text("this is not a picture\n"), True, "not an image file"),
    "truncated.jpg": (_truncated, True, "damaged or truncated"),
    "empty.png": (lambda p: p.write_bytes(b""), True, "empty (0 bytes)"),
    "bomb.png": (lambda p: p.write_bytes(_png_claiming(20_000, 20_000)), True, "bomb"),
    "one_pixel.png": (lambda p: Image.new("RGB", (1, 1), GREEN).save(p), False, ""),
    "grey.png": (lambda p: Image.new("L", (8, 8), 77).save(p), False, ""),
    "rgba.png": (
        lambda p: Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(p),
        False,
        "alpha composited on white",
    ),
    "palette.png": (_palette_transparent, False, "alpha composited on white"),
    "sixteen.png": (
        lambda p: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(p),
        False,
        "",
    ),
    "cmyk.jpg": (
        lambda p: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p),
        False,
        "CMYK converted",
    ),
    "animated.gif": (lambda p: _frames(p, duration=50), False, "animated GIF: first of 3 frames"),
    "pages.tiff": (_frames, False, "multi-page TIFF: first of 3 pages"),
    "rotated.jpg": (_exif_rotated, False, "EXIF orientation 6 applied"),
    "my photos ✓ ünïcødé 图像 (1).png": (
        lambda p: Image.new("RGB", (4, 4), BLUE).save(p),
        False,
        "",
    ),
}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad images")
    for name, (write, _, _) in BAD_IMAGES.items():
        write(folder / name)
    return folder


def test_bad_images_through_the_library(bad_folder: Path) -> None:
    for name, (_, refused, words) in BAD_IMAGES.items():
        path = bad_folder / name
        if refused:
            with pytest.raises(ImageLoadError) as info:
                decode_input(path, PREP)
            assert str(path) in str(info.value)
            assert "\n" not in str(info.value)
            assert words in str(info.value)
            continue
        display, tensor, notes = decode_input(path, PREP)
        assert display.shape == (16, 16, 3)
        assert display.dtype == np.uint8
        # decode_input's tensor is preprocess_image's, bit for bit
        assert torch.equal(tensor, preprocess_image(Image.fromarray(display), PREP))
        assert (words in " ".join(notes)) if words else notes == []
    grey, _, _ = decode_input(bad_folder / "grey.png", PREP)
    assert (grey == 77).all()
    sixteen, _, _ = decode_input(bad_folder / "sixteen.png", PREP)
    assert (sixteen == 255).all()  # 65535 scaled, not clipped
    rgba, _, _ = decode_input(bad_folder / "rgba.png", PREP)
    assert (rgba == 255).all()  # transparent red on white is white
    gif, _, _ = decode_input(bad_folder / "animated.gif", PREP)
    assert tuple(gif[8, 8]) == RED  # the first frame


def test_a_folder_of_bad_images_finishes_and_reports_each_once(
    bad_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(["gradcam", str(bad_folder), *SHAPES, "--out", str(tmp_path)], capsys)
    refused = sorted(n for n, (_, bad, _) in BAD_IMAGES.items() if bad)
    assert code == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(Path(f["input"]).name for f in manifest["failures"]) == refused
    assert len(manifest["items"]) == len(BAD_IMAGES) - len(refused)
    assert len(err) == len(refused)  # one line per bad file, nothing else
    for line, name in zip(sorted(err), refused, strict=True):
        assert line.startswith(f"cnnviz: skipped {bad_folder / name}: ")
    assert f"{len(refused)} input(s) failed" in out
    # A later good run into the same folder succeeds (exit 0); the earlier failures stay listed.
    good = bad_folder / "grey.png"
    code, out, err = _cli(["gradcam", str(good), *SHAPES, "--out", str(tmp_path)], capsys)
    assert code == 0
    assert err == []
    later = json.loads((tmp_path / "manifest.json").read_text())
    assert later["failures"] == manifest["failures"]
    # grey.png explained again (random weights: maybe another class), the others kept
    assert [i["input"] for i in later["items"]] == [i["input"] for i in manifest["items"]]
    notes = {Path(i["input"]).name: i["notes"] for i in manifest["items"]}
    assert notes["animated.gif"] == ["animated GIF: first of 3 frames used"]
    assert notes["pages.tiff"] == ["multi-page TIFF: first of 3 pages used"]


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_each_bad_image_through_the_cli(
    name: str, bad_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, refused, words = BAD_IMAGES[name]
    path = bad_folder / name
    code, _, err = _cli(["gradcam", str(path), *SHAPES, "--out", str(tmp_path)], capsys)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    if refused:
        assert code == 1
        assert manifest["items"] == []
        assert len(err) == 1, err
        assert str(path) in err[0]
        assert words in err[0]
        assert not list(tmp_path.glob("*.npy"))
        assert not list(tmp_path.glob("*.png"))
    else:
        assert code == 0
        assert err == []
        (item,) = manifest["items"]
        assert item["input"] == str(path)
        assert (words in " ".join(item["notes"])) if words else item["notes"] == []


def test_exif_rotated_photo_is_explained_upright(bad_folder: Path, tmp_path: Path) -> None:
    # alpha 0: the overlay is exactly the picture the model saw.
    argv = ["-q", "gradcam", str(bad_folder / "rotated.jpg"), *SHAPES, "--alpha", "0"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    (item,) = json.loads((tmp_path / "manifest.json").read_text())["items"]
    picture = np.asarray(Image.open(tmp_path / item["files"]["overlay"])).astype(int)
    assert picture.shape == (64, 64, 3)
    assert np.abs(picture[12, 52] - RED).max() < 40  # displayed top-right
    assert np.abs(picture[12, 12] - BLUE).max() < 40
    assert np.abs(picture[52, 52] - BLUE).max() < 40


def test_gif_first_frame_is_said_on_stderr(
    bad_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gradcam", str(bad_folder / "animated.gif"), *SHAPES, "--out", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "animated GIF: first of 3 frames used" in err
    assert "Traceback" not in err


def test_directory_where_a_file_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty folder"
    empty.mkdir()
    code, _, err = _cli(["gradcam", str(empty), *SHAPES, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert len(err) == 1
    assert "no image files found" in err[0]
    assert str(empty) in err[0]
    with pytest.raises(ImageLoadError, match="is a directory"):
        decode_input(empty, PREP)
    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)
    code, _, err = _cli(
        [
            "gradcam",
            str(image),
            "--model",
            "shapes_vgg11",
            "--weights",
            str(empty),
            "-o",
            str(empty),
        ],
        capsys,
    )
    assert code == 2
    assert len(err) == 1
    assert str(empty) in err[0]
    code, _, err = _cli(["gradcam", str(image), *SHAPES, "--out", str(image)], capsys)
    assert code == 2
    assert len(err) == 1
    assert "not a folder" in err[0]


def test_newline_in_a_file_name_stays_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad\nname.jpg"
    bad.write_text("not an image")
    code, _, err = _cli(["gradcam", str(bad), *SHAPES, "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert len(err) == 1
    assert "bad\\nname.jpg" in err[0]


# -- output safety ---------------------------------------------------------------------------------

ODD_NAMES = [
    "-rf.png",
    "a..b.png",
    "x .. y.png",
    "new\nline.png",
    "CON.png",
    "<b>&amp;.png",
    "x" * 200 + "1.png",
    "x" * 200 + "2.png",
    "ü" * 120 + ".png",
]


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_odd_file_names_and_hostile_labels_stay_inside_out(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, name in enumerate(ODD_NAMES):
        Image.new("RGB", (16, 16), (k * 20, 0, 0)).save(inputs / name, format="PNG")
    labels = ["../../evil", "a/../../b", "<script>alert(1)</script>" + "é" * 150]
    loaded = from_module(TinyNet().eval(), class_names=labels, preprocessing=PREP)
    before = _all_files(tmp_path)
    out = tmp_path / "deep" / "out"
    settings = ExplainSettings(target=[0, 1, 2] * 3, num_workers=0)
    manifest = explain_files(loaded, sorted(inputs.iterdir()), out, settings, command="t")
    created = _all_files(tmp_path) - before
    assert created
    assert all(out.resolve() in p.resolve().parents for p in created)
    assert len(manifest["items"]) == len(ODD_NAMES)
    assert manifest["failures"] == []
    names = [p.name for p in created]
    assert all(len(n.encode("utf-8")) <= 230 and "\n" not in n and "/" not in n for n in names)
    stems = [i["stem"] for i in manifest["items"]]
    assert len(set(stems)) == len(ODD_NAMES)
    assert not any(s.startswith(("-", ".")) for s in stems)
    for item in manifest["items"]:
        for name in item["files"].values():
            assert (out / name).is_file()
            assert Path(name).name == name


def test_hostile_class_name_is_escaped_in_the_report(tmp_path: Path) -> None:
    from cnnviz.runs.report import build_report

    Image.new("RGB", (16, 16), RED).save(tmp_path / "a.png")
    hostile = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "ok"]
    loaded = from_module(TinyNet().eval(), class_names=hostile, preprocessing=PREP)
    result = build_report(loaded, [tmp_path / "a.png"], tmp_path / "r", progress=False)
    html = (tmp_path / "r" / "a.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    shown = {p["name"] for p in result["items"][0]["predictions"]}
    assert shown == set(hostile)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- bad models and settings -----------------------------------------------------------------------


def _image(folder: Path) -> str:
    Image.new("RGB", (8, 8), GREEN).save(folder / "a.png")
    return str(folder / "a.png")


def test_unknown_model_suggests_close_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModelNotFoundError, match="shapes_vgg11"):
        load_model("shapes_vgg")
    argv = ["gradcam", _image(tmp_path), "--model", "shapes_vgg", "--out", str(tmp_path)]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    assert len(err) == 1
    assert "'shapes_vgg11'" in err[0]


def _shapes_state() -> dict[str, torch.Tensor]:
    from cnnviz.models.shapes_vgg11 import build_shapes_vgg11

    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_shapes_vgg11().state_dict().items()}


def test_checkpoint_with_wrong_keys_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _shapes_state()
    del state["backbone.conv1.bias"]
    state["backbone.conv9.weight"] = torch.zeros(1)
    state["classifier.6.weight"] = torch.zeros(7, 256)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model("shapes_vgg11", weights=tmp_path / "bad.safetensors")
    for key in ("backbone.conv1.bias", "backbone.conv9.weight", "classifier.6.weight"):
        assert key in str(info.value)
    argv = ["gradcam", _image(tmp_path), "--model", "shapes_vgg11", "-o", str(tmp_path)]
    code, _, err = _cli([*argv, "--weights", str(tmp_path / "bad.safetensors")], capsys)
    assert code == 2
    assert len(err) == 1
    assert all(k in err[0] for k in ("conv1.bias", "conv9.weight", "classifier.6.weight"))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_through_the_cli_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    with (tmp_path / "evil.pth").open("wb") as handle:
        pickle.dump({"weight": _Payload(marker)}, handle, protocol=2)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    argv = ["gradcam", str(tmp_path / "a.png"), "--model", "shapes_vgg11"]
    argv += ["-o", str(tmp_path / "o")]
    code, _, err = _cli([*argv, "--weights", str(tmp_path / "evil.pth")], capsys)
    assert code == 2
    assert len(err) == 1
    assert "refused to unpickle" in err[0]
    assert not marker.exists()


def test_nan_weights_are_refused_and_no_map_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _shapes_state()
    state["backbone.conv3_1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = ["gradcam", str(tmp_path / "a.png"), "--model", "shapes_vgg11", "-o", str(out)]
    code, _, err = _cli([*argv, "--weights", str(tmp_path / "nan.safetensors")], capsys)
    assert code == 2
    assert len(err) == 1
    assert "backbone.conv3_1.weight" in err[0]
    # The library: a module whose weights turn NaN after loading.
    net = TinyNet().eval()
    with torch.no_grad():
        net.fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        explain(net, _x(), "gradcam", layer="conv")
    loaded = from_module(net, preprocessing=PREP)
    with pytest.raises(NonFiniteError):
        explain_files(loaded, [tmp_path / "a.png"], out, ExplainSettings(), command="t")
    assert not list(out.rglob("*.npy"))
    assert not list(out.rglob("*.png"))


def test_non_finite_input_and_maps_are_refused(tmp_path: Path) -> None:
    from cnnviz.methods.postprocess import Display
    from cnnviz.outputs.image_files import ImageJob, MethodResult, write_image_outputs
    from cnnviz.render.drawing import MapDrawing

    x = _x()
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="input"):
        explain(TinyNet().eval(), x, "saliency")
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    maps[0, 1, 1] = np.nan
    result = MethodResult("gradcam", "conv", Display.POSITIVE, np.zeros((1, 16, 16)), maps,
                          np.zeros((1, 16, 16), np.float32), ("a",), [0], [1.0], [0.5])  # fmt: skip
    job = ImageJob(tmp_path, tmp_path / "a.png", "a", "gradcam", "k", {}, np.zeros((16, 16, 3),
                   np.uint8), (), [result], MapDrawing(), False, {})  # fmt: skip
    with pytest.raises(NonFiniteError, match="NaN"):
        write_image_outputs(job)
    assert list(tmp_path.rglob("*")) == []


def test_unknown_unreached_and_twice_run_layers() -> None:
    net = TinyNet().eval()
    with pytest.raises(LayerError, match="'conv'"):
        explain(net, _x(), "gradcam", layer="conv_")
    with pytest.raises(LayerError, match="never ran"):
        explain(net, _x(), "gradcam", layer="unused")
    with pytest.raises(LayerError, match="more than once"):
        explain(TwiceNet().eval(), _x(), "gradcam", layer="unused")
    assert hooked_modules(net) == []


def test_unknown_layer_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    argv = ["gradcam", str(tmp_path / "a.png"), *SHAPES, "--layer", "conv5_3", "-o", str(out)]
    code, _, err = _cli(argv, capsys)
    assert not out.exists()  # refused before anything is created
    assert code == 2
    assert len(err) == 1
    assert "conv5_2" in err[0]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (["--target", "6"], "out of range: this model has 6 classes"),
        (["--target", "hexagn"], "Unknown class name"),
        (["--top-k", "0"], "positive whole number"),
        (["--top-k", "7"], "top-7 asked, but the model has only 6 classes"),
    ],
)
def test_bad_targets(
    target: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    argv = ["gradcam", str(tmp_path / "a.png"), *SHAPES, *target, "-o", str(tmp_path)]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    assert len(err) == 1
    assert words in err[0]
    with pytest.raises(TargetError, match="out of range"):
        explain(TinyNet().eval(), _x(), "gradcam", layer="conv", target=3)


def test_training_mode_is_explained_in_eval_mode_and_restored(tmp_path: Path) -> None:
    net = TinyNet()
    expected = explain(net.eval(), _x(), "gradcam", layer="conv").maps
    net.train()
    net.bn.eval()  # a mixed state must come back exactly
    got = explain(net, _x(), "gradcam", layer="conv").maps
    assert torch.equal(got, expected)  # dropout off and BN running stats used: eval mode
    assert net.training
    assert net.conv.training
    assert not net.bn.training
    assert net.drop.training
    assert net.bn.running_mean is not None
    assert torch.equal(net.bn.running_mean, torch.full((4,), 0.1))  # BN statistics untouched
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("cls", [TupleNet, DictNet])
def test_models_returning_a_tuple_or_dict(cls: type[TinyNet], tmp_path: Path) -> None:
    plain = explain(TinyNet().eval(), _x(), "gradcam", layer="conv", target=2)
    other = explain(cls().eval(), _x(), "gradcam", layer="conv", target=2)
    assert torch.allclose(other.maps, plain.maps)
    assert torch.allclose(other.scores, plain.scores)
    Image.new("RGB", (16, 16), RED).save(tmp_path / "a.png")
    loaded = from_module(cls().eval(), preprocessing=PREP)
    settings = ExplainSettings(layer="conv", target=2, num_workers=0)
    manifest = explain_files(loaded, [tmp_path / "a.png"], tmp_path / "o", settings, command="t")
    (item,) = manifest["items"]
    assert item["target_index"] == 2
    assert np.isfinite(item["score"])


def test_caller_inside_no_grad_or_inference_mode() -> None:
    net = TinyNet().eval()
    expected = explain(net, _x(), "gradcam", layer="conv").maps
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            got = explain(net, _x(), "gradcam", layer="conv").maps  # x made inside, too
        assert torch.equal(got, expected)
    assert torch.is_grad_enabled()


def test_all_zero_maps_are_zeros_not_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnviz.methods.postprocess import to_unit_range

    net = TinyNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    e = explain(net, _x(), "gradcam", layer="conv")
    assert torch.equal(e.maps, torch.zeros_like(e.maps))
    assert (to_unit_range(e.maps, e.display, e.input_size) == 0).all()
    # Through the CLI: shapes_vgg11 with all-zero weights gives zero maps, written finite.
    save_file({k: torch.zeros_like(v) for k, v in _shapes_state().items()},
              str(tmp_path / "zeros.safetensors"))  # fmt: skip
    Image.new("RGB", (64, 64), (40, 80, 120)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = ["gradcam", str(tmp_path / "a.png"), "--model", "shapes_vgg11", "-o", str(out)]
    code, _, _ = _cli([*argv, "--weights", str(tmp_path / "zeros.safetensors")], capsys)
    assert code == 0
    (item,) = json.loads((out / "manifest.json").read_text())["items"]
    for key in ("raw_layer", "raw_input"):
        raw = np.load(out / item["files"][key])
        assert np.isfinite(raw).all()
        assert (raw == 0).all()
    picture = np.asarray(Image.open(out / item["files"]["overlay"])).astype(float)
    # overlay = round(0.5·pixel + 0.5·lut[0]) everywhere
    expected = np.floor(0.5 * np.array([40, 80, 120]) + 0.5 * colormap_lut("jet")[0] + 0.5)
    assert (picture == expected).all()


def test_method_options_and_settings_are_validated(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    loaded = from_module(TinyNet().eval(), preprocessing=PREP)
    for bad, match in (
        (ExplainSettings(batch_size=0), "batch size"),
        (ExplainSettings(num_workers=-1), "workers"),
        (ExplainSettings(alpha=1.5), "alpha"),
        (ExplainSettings(cmap="jett"), "jet"),
        (ExplainSettings(method="gradcamm"), "gradcam"),
        (ExplainSettings(target=[0, 1]), "2 targets given for 1 images"),
    ):
        with pytest.raises(ValueError, match=match):
            explain_files(loaded, [tmp_path / "a.png"], tmp_path / "o", bad, command="t")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.npy"))


def test_unwritable_out_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder without write permission, through the CLI: one line, exit 2. The permission
    answer is the operating system's for everyone but root (who may write anywhere), so the test
    has ``os.access`` say no for that folder, as it does for anyone else."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int, **kwargs: Any) -> bool:
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code, _, err = _cli(["gradcam", str(tmp_path / "a.png"), *SHAPES, "-o", str(locked)], capsys)
    assert code == 2
    assert err == [
        f"cnnviz: error: The output folder {locked} is not writable; choose another --out."
    ]
    assert list(locked.iterdir()) == []
