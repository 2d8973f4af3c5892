"""``cnnviz features`` end to end on shapes_vgg11: files, manifest, checks, errors, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnviz.cli import main
from cnnviz.featurevis import optimise


def test_features_writes_pictures_checks_and_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exemplars"
    folder.mkdir()
    for k in range(3):
        pixels = np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    out = tmp_path / "out"
    code = main(
        [
            "features", "shapes_vgg11", "--layer", "relu4_2", "--channels", "2-4",
            "--steps", "24", "--thresholds", "8", "--exemplars", str(folder), "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "Wrote 3 unit picture(s)" in capsys.readouterr().out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    names = [name for name in files if not name.startswith("exemplars/")]
    # the exemplars of the 3 channels: 3 crops each (the 3 images given), the figure, the data
    assert len(files) - len(names) == 3 * 3 + 2
    assert names == [
        "checks.json", "features.png", "manifest.json",
        "steps/0008/unit-00.png", "steps/0008/unit-01.png", "steps/0008/unit-02.png",
        "steps/0024/unit-00.png", "steps/0024/unit-01.png", "steps/0024/unit-02.png",
        "unit-00.png", "unit-01.png", "unit-02.png",
    ]  # fmt: skip
    checks = json.loads((out / "checks.json").read_text())
    units = checks["units"]
    assert [u["index"] for u in units] == [2, 3, 4]
    assert all(u["layer"] == "backbone.relu4_2" for u in units)
    for u in units:
        assert u["activation_ratio"] == pytest.approx(u["activation"] / u["exemplar_activation"])
        assert u["stability_activation"] is not None and 0 < u["stability_activation"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "features" and len(manifest["items"]) == 3
    assert [i["files"]["images"] for i in manifest["items"]] == [
        [f"unit-0{u}.png"] for u in range(3)
    ]
    assert Image.open(out / "unit-00.png").size == (64, 64)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layer", "relu4_3"], "Unknown layer 'relu4_3'"),
        (["--layer", "relu4_2", "--channels", "60-70"], "channel 64 is out of range"),
        (["--layer", "classifier.1", "--unit", "neuron"], "A neuron is a position"),
        (["--classes", "hexagon"], "Unknown class 'hexagon'"),
        (["--layer", "relu4_2", "--channels", "5-2"], "a channel range goes from"),
        (["--classes", "star", "--layer", "relu4_2"], "leave out --layer"),
    ],
)
def test_bad_requests_are_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["features", "shapes_vgg11", "--steps", "2", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_ctrl_c_writes_the_images_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = optimise._parameter_grads
    calls = {"n": 0}

    def interrupted_at_step_5(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(optimise, "_parameter_grads", interrupted_at_step_5)
    out = tmp_path / "out"
    code = main(
        ["features", "shapes_vgg11", "--classes", "star", "--steps", "50", "--out", str(out)]
    )
    assert code == 130
    assert "interrupted: wrote the images of step 4 of 50" in capsys.readouterr().err
    checks = json.loads((out / "checks.json").read_text())
    assert checks["steps"] == 4 and checks["stopped"] == "interrupted at step 5"
    assert (out / "unit-00.png").is_file()


def test_report_gains_what_the_units_want_to_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "report"
    argv = ["report", str(image), "--model", "shapes_vgg11", "--methods", "none", "--out"]
    code = main([*argv, str(out), "--features", "relu4_2", "--feature-steps", "6"])
    assert code == 0
    page = (out / "noise.html").read_text()
    assert 'id="features"' in page and 'href="#features"' in page
    section = page[page.index('id="features"') : page.index('id="filters"')]
    assert section.count("<tr><td>channel ") == 8
    assert "the best of this report's 1 image(s)" in section
    assert main([*argv, str(tmp_path / "bad"), "--features", "relu9"]) == 2
    assert "Unknown layer 'relu9'" in capsys.readouterr().err
