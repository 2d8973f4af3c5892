"""Pictures people can read: outlier clipping and sign modes by hand, then measured on the
bundled photos with the real EfficientNet-Lite0 (offline, packaged weights).

Without clipping a gradient map's picture is nearly all dark (0.0-0.3 % of the pixels above half
of the colour scale); with the default 2 % clipping at least 5 % are, and Grad-CAM (not clipped)
keeps the 20 % and more it has always had.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import explain, load_model
from cnnviz.cli import main
from cnnviz.data.samples import bundled_samples
from cnnviz.inputs.decode import decode_input
from cnnviz.methods.base import Explanation
from cnnviz.methods.postprocess import (
    GRADIENT_OUTLIER_PERCENT,
    Display,
    for_display,
    parse_sign,
    percentile_normalize,
    signed_percentile_normalize,
    to_unit_range,
)
from cnnviz.models.loaded import LoadedModel

# -- by hand ---------------------------------------------------------------------------------


def test_percentile_normalize_saturates_the_brightest_percent() -> None:
    m = torch.arange(100.0).reshape(1, 10, 10)
    out = percentile_normalize(m, 2.0)
    # 2 % of 100 pixels: the cut is the sorted map's element ⌈0.98·100⌉ − 1 = 97, value 97;
    # lo = 0, so out = min(m / 97, 1): the two largest (98, 99) are clipped to 1.
    torch.testing.assert_close(out, (m / 97).clamp(max=1.0))
    assert int((m / 97 > 1).sum()) == 2 and int((out == 1).sum()) == 3
    assert float(out.flatten()[50]) == pytest.approx(50 / 97)
    plain = percentile_normalize(m, 0)  # 0 (and None): plain min-max
    torch.testing.assert_close(plain, m / 99)
    torch.testing.assert_close(percentile_normalize(m, None), m / 99)
    # A map with one bright pixel: the 98th percentile is its minimum, so the max is used.
    sparse = torch.zeros(1, 10, 10)
    sparse[0, 3, 4] = 5.0
    torch.testing.assert_close(percentile_normalize(sparse, 2.0), sparse / 5)
    assert (percentile_normalize(torch.full((2, 3, 3), 7.0), 2.0) == 0).all()  # constant: 0
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        percentile_normalize(m, 50.0)


def test_signed_percentile_normalize_keeps_zero_and_clips_both_signs() -> None:
    m = torch.arange(-50.0, 50.0).reshape(1, 10, 10)
    out = signed_percentile_normalize(m, 2.0)
    # |m| sorted: 0, 1, 1, …, 49, 49, 50; element 97 is 49, so out = clamp(m / 49, −1, 1).
    torch.testing.assert_close(out, (m / 49).clamp(-1, 1))
    assert float(out.flatten()[0]) == -1.0  # −50 clipped
    assert float(out.flatten()[50]) == 0.0  # zero stays zero
    torch.testing.assert_close(signed_percentile_normalize(m, 0), m / 50)


def test_negative_sign_shows_the_evidence_against() -> None:
    raw = torch.tensor([[[[-2.0, 0.0], [1.0, -1.0]]]])
    negative = for_display(raw, Display.NEGATIVE)
    torch.testing.assert_close(negative, torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]]))
    positive = for_display(raw, Display.POSITIVE)
    torch.testing.assert_close(positive, torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]]))
    signed = to_unit_range(raw, Display.SIGNED)  # (s + 1) / 2 with s = raw / 2
    torch.testing.assert_close(signed, torch.tensor([[[[0.0, 0.5], [0.75, 0.25]]]]))
    assert parse_sign("negative") is Display.NEGATIVE
    assert parse_sign("all") is Display.SIGNED and parse_sign(" Absolute ") is Display.ABSOLUTE
    with pytest.raises(ValueError, match="positive, negative, absolute, all"):
        parse_sign("both")


# -- measured on the bundled photos ----------------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model("efficientnet_lite0")


def _photo(loaded: LoadedModel, name: str) -> torch.Tensor:
    path = next(p for p in bundled_samples() if p.name == name)
    return decode_input(path, loaded.preprocessing)[1].unsqueeze(0)


def _bright(e: Explanation, **shown: object) -> float:
    """The share of the displayed map's pixels above half of the colour scale."""
    return float((e.shown(**shown) > 0.5).float().mean())  # type: ignore[arg-type]


PHOTOS = ("coffee.jpg", "chelsea.jpg")


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "guided-backprop"])
def test_gradient_maps_are_readable_by_default(lite0: LoadedModel, method: str, photo: str) -> None:
    e = explain(lite0, _photo(lite0, photo), method)
    assert e.outlier_percent == GRADIENT_OUTLIER_PERCENT
    clipped, plain = _bright(e), _bright(e, outlier_percent=0)
    print(f"{method} on {photo}: {100 * clipped:.1f} % > 0.5 ({100 * plain:.2f} % unclipped)")
    assert clipped >= 0.05, clipped  # measured 7.6 % at the least
    assert plain < 0.01, plain  # why clipping is needed: 0.0-0.3 % without it


@pytest.mark.parametrize("photo", PHOTOS)
def test_gradcam_is_unchanged_in_kind(lite0: LoadedModel, photo: str) -> None:
    e = explain(lite0, _photo(lite0, photo), "gradcam")
    assert e.outlier_percent is None  # CAMs are smooth: no clipping
    bright = _bright(e)
    print(f"gradcam on {photo}: {100 * bright:.1f} % > 0.5")
    assert bright >= 0.20, bright
    torch.testing.assert_close(e.shown(), to_unit_range(e.maps, Display.POSITIVE, e.input_size))


def test_explain_cli_draws_saliency_readably_in_gray(tmp_path: Path) -> None:
    """``--cmap gray --alpha 1``: the picture is the map itself, no longer almost black; the
    drawing options are recorded in the manifest and each item."""
    coffee = str(next(p for p in bundled_samples() if p.name == "coffee.jpg"))
    bright = {}
    for percent in ("auto", "0"):
        out = tmp_path / percent
        argv = ["-q", "explain", coffee, "--method", "saliency", "--out", str(out)]
        argv += ["--cmap", "gray", "--alpha", "1", "--sign", "absolute", "--style", "overlay"]
        assert main(argv + ([] if percent == "auto" else ["--outlier-percent", "0"])) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        extra = {k: manifest["extra"][k] for k in ("cmap", "alpha", "sign", "style")}
        assert extra == {"cmap": "gray", "alpha": 1.0, "sign": "absolute", "style": "overlay"}
        assert manifest["extra"]["outlier_percent"] == ("auto" if percent == "auto" else 0.0)
        (item,) = manifest["items"]
        assert item["display"] == "absolute"
        assert item["outlier_percent"] == (2.0 if percent == "auto" else None)
        picture = np.asarray(Image.open(out / item["files"]["overlay"]).convert("L"))
        bright[percent] = float((picture > 127).mean())
    assert bright["auto"] >= 0.05 and bright["0"] < 0.01, bright


def test_drawing_options_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coffee = str(next(p for p in bundled_samples() if p.name == "coffee.jpg"))
    argv = ["explain", coffee, "--out", str(tmp_path / "o"), "--model", "no_such_model"]
    for extra, message in (
        (["--outlier-percent", "60"], "argument --outlier-percent: must be a percentage in"),
        (["--sign", "both"], "argument --sign: invalid choice: 'both'"),
        (["--style", "blend"], "argument --style: invalid choice: 'blend'"),
    ):
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
