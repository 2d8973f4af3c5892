"""Dataset exemplars: the running top-k against a brute-force sort, the state round trip, the
resumable folder run, the effective receptive field, the model left as found, and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
import cnnviz.runs.exemplars as run_module
from cnnviz.cli import main
from cnnviz.errors import ArgumentError, LayerError
from cnnviz.featurevis.exemplars import ExemplarCollector, Exemplars, collect_exemplars
from cnnviz.featurevis.receptive_field import receptive_field
from cnnviz.inputs.decode import model_tensor
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.outputs.files import to_json_text
from cnnviz.runs.exemplars import STATE_NAME, ExemplarSettings, exemplar_files
from hook_leaks import hooked_modules

RGB = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


def _brute(acts: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """The top-k of every channel by one sort over all images (ties: lower id)."""
    a = acts.double()
    count, channels = a.shape[:2]
    scores = a.flatten(2).mean(2) if a.dim() == 4 else a
    flat = a.flatten(2) if a.dim() == 4 else a[:, :, None]
    width = a.shape[3] if a.dim() == 4 else 1
    out: dict[str, list[list[object]]] = {n: [] for n in ("s", "si", "p", "pi", "pos")}
    for c in range(channels):
        order = sorted(range(count), key=lambda n: (-float(scores[n, c]), n))[:k]
        out["s"].append([float(scores[n, c]) for n in order])
        out["si"].append(order)
        peak = [(float(flat[n, c].max()), int(flat[n, c].argmax())) for n in range(count)]
        order = sorted(range(count), key=lambda n: (-peak[n][0], n))[:k]
        out["p"].append([peak[n][0] for n in order])
        out["pi"].append(order)
        out["pos"].append([[peak[n][1] // width, peak[n][1] % width] for n in order])
    return {key: np.array(value) for key, value in out.items()}


@pytest.mark.parametrize("batch", [1, 3, 7, 40])
@pytest.mark.parametrize("spatial", [True, False])
def test_collector_equals_a_brute_force_sort(batch: int, spatial: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    shape = (23, 5, 4, 6) if spatial else (23, 5)
    acts = torch.randn(shape, generator=generator)
    acts[4] = acts[9]  # exact ties: the lower id first
    acts[:, 2] = torch.round(acts[:, 2])  # many ties in one channel
    collector = ExemplarCollector(5, 4)
    for start in range(0, 23, batch):
        collector.update(acts[start : start + batch], range(start, min(start + batch, 23)))
    got, want = collector.arrays(), _brute(acts, 4)
    np.testing.assert_allclose(got["scores"], want["s"], rtol=1e-12)
    np.testing.assert_array_equal(got["score_sources"], want["si"])
    np.testing.assert_allclose(got["peaks"], want["p"], rtol=1e-12)
    np.testing.assert_array_equal(got["peak_sources"], want["pi"])
    np.testing.assert_array_equal(got["peak_positions"], want["pos"])


def test_collector_with_fewer_images_than_k_and_its_state_round_trip() -> None:
    collector = ExemplarCollector(3, 5)
    collector.update(torch.arange(24.0).view(2, 3, 2, 2), [7, 2])
    arrays = collector.arrays()
    assert arrays["score_sources"][0].tolist() == [2, 7, -1, -1, -1]
    assert np.isnan(arrays["scores"][0, 2:]).all()
    assert arrays["peak_positions"][0, 0].tolist() == [1, 1]
    text = to_json_text(collector.state())  # JSON-able (no NaN)
    again = ExemplarCollector.from_state(json.loads(text))
    for name, value in again.arrays().items():
        np.testing.assert_array_equal(value, arrays[name])
    assert again.seen == 2
    more = torch.randn(3, 3, 2, 2)
    collector.update(more, [0, 1, 3])
    again.update(more, [0, 1, 3])
    assert to_json_text(again.state()) == to_json_text(collector.state())
    with pytest.raises(ValueError, match="exemplar-collector state"):
        ExemplarCollector.from_state({"kind": "other"})
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        collector.update(torch.zeros(1, 4, 2, 2), [9])


def test_receptive_field_of_two_convs_and_of_a_strided_conv() -> None:
    two = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    field = receptive_field(two, "2", (3, 16, 16))
    assert (field.stride_y, field.stride_x) == (1.0, 1.0)
    top, left, bottom, right = field.box(8, 8)
    assert bottom - top <= 5 and right - left <= 5
    assert top <= 8 < bottom and left <= 8 < right  # centred on the position
    assert field.box(0, 0)[:2] == (0, 0)  # clipped to the image
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    field = receptive_field(strided, "0", (3, 16, 16))
    assert field.feature_size == (8, 8) and (field.stride_y, field.stride_x) == (2.0, 2.0)
    top, left, bottom, right = field.box(3, 3)
    assert bottom - top >= 2 and top <= 7 < bottom
    assert hooked_modules(two) == [] and hooked_modules(strided) == []


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def _pictures(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(count)]


def _folder(tmp_path: Path, pictures: list[np.ndarray]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for n, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{n:02d}.png")
    return folder


def test_collect_on_tensors_equals_collect_on_png_files(tmp_path: Path) -> None:
    pictures = _pictures(11)
    folder = _folder(tmp_path, pictures)
    model = _model()
    loaded = cnnviz.from_module(model, preprocessing=RGB)
    x = torch.stack([model_tensor(p, RGB) for p in pictures])
    a = collect_exemplars(loaded, x, "3", k=4, channels=[5, 1, 2], batch_size=4)
    b = collect_exemplars(loaded, folder, "3", k=4, channels=[5, 1, 2], batch_size=3)
    assert a.channels == b.channels == (5, 1, 2)
    for name in ("scores", "peaks"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    for name in ("score_sources", "peak_sources", "peak_positions", "boxes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.crops is not None and b.crops is not None
    assert a.crops[0].shape == (4, 64, 64, 3) and a.crops[0].dtype == np.uint8
    for ca, cb in zip(a.crops, b.crops, strict=True):
        np.testing.assert_array_equal(ca, cb)
    # the top score is the largest per-image mean of the channel, found by hand
    with torch.no_grad():
        means = model[:4](x).mean(dim=(2, 3))
    assert a.best(5) == pytest.approx(float(means[:, 5].max()), rel=1e-6)
    assert b.sources[0].endswith("00.png")
    with pytest.raises(ArgumentError, match="was not collected"):
        a.best(0)
    assert a._repr_png_().startswith(b"\x89PNG")


def test_the_model_is_left_as_found_and_errors_name_the_problem() -> None:
    model = _model()
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    x = torch.randn(5, 3, 16, 16)
    collect_exemplars(model, x, "4", k=2)
    assert [m.training for m in model.modules()] == flags
    assert hooked_modules(model) == []
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(LayerError, match="Unknown layer"):
        collect_exemplars(model, x, "nope")
    with pytest.raises(ArgumentError, match="has 8 channels"):
        collect_exemplars(model, x, "4", channels=[8])
    assert hooked_modules(model) == []
    linear = collect_exemplars(model, x, "7", k=2)  # a (B, C) layer: the whole image
    assert linear.peak_positions[0, 0].tolist() == [0, 0]
    assert linear.boxes[0, 0].tolist() == [0, 0, 16, 16]


def _same(a: Exemplars, b: Exemplars) -> None:
    assert a.sources == b.sources and a.channels == b.channels
    for name in ("scores", "score_sources", "peaks", "peak_sources", "peak_positions", "boxes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_folder_run_interrupted_then_resumed_equals_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path, _pictures(10))
    (folder / "broken.png").write_bytes(b"not an image")
    paths = sorted(folder.iterdir())
    loaded = cnnviz.from_module(_model(), preprocessing=RGB)
    settings = ExemplarSettings(layer="3", channels=(0, 2, 7), k=3, batch_size=4)
    whole, failures = exemplar_files(loaded, paths, tmp_path / "whole", settings)
    assert [f["input"] for f in failures] == [str(folder / "broken.png")]
    assert (tmp_path / "whole" / "channel-0007" / "02.png").is_file()
    written = json.loads((tmp_path / "whole" / "exemplars.json").read_text())
    assert [row["channel"] for row in written["channels"]] == [0, 2, 7]

    real = run_module.atomic_write_bytes
    calls = []

    def write_then_stop(path: Path, data: bytes, **kwargs: object) -> None:
        real(path, data)
        calls.append(path)
        if path.name == STATE_NAME:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    out.mkdir()
    monkeypatch.setattr(run_module, "atomic_write_bytes", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        exemplar_files(loaded, paths, out, settings)
    state = json.loads((out / STATE_NAME).read_text())
    assert len(state["processed"]) == 4 and state["collector"]["seen"] == 4
    monkeypatch.setattr(run_module, "atomic_write_bytes", real)
    decoded: list[Path] = []
    real_decode = run_module.decode_input

    def counting(path: Path, prep: Preprocessing) -> object:
        decoded.append(path)
        return real_decode(path, prep)

    monkeypatch.setattr(run_module, "decode_input", counting)
    resumed, _ = exemplar_files(loaded, paths, out, dataclasses.replace(settings, resume=True))
    _same(resumed, whole)
    streamed = decoded[: len(paths) - 4]
    assert {p.name for p in streamed}.isdisjoint({p.name for p in paths[:4]})
    # other settings do not resume: the run starts afresh and still gives one pass's answer
    other = ExemplarSettings(layer="3", channels=(0, 2), k=3, batch_size=4, resume=True)
    fresh, _ = exemplar_files(loaded, paths, out, other)
    assert fresh.channels == (0, 2)
    np.testing.assert_array_equal(fresh.scores, whole.scores[:2])


def test_cli_on_a_folder_with_shapes_vgg11(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    out = tmp_path / "out"
    argv = ["exemplars", "shapes_vgg11", str(folder), "--layer", "relu4_2", "--channels", "0-3"]
    code = main([*argv, "--k", "3", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    written = json.loads((out / "exemplars.json").read_text())
    loaded = cnnviz.load_model("shapes_vgg11")
    want = collect_exemplars(loaded, folder, "relu4_2", k=3, channels=range(4))
    assert written["layer"] == want.layer == "backbone.relu4_2"
    for r, row in enumerate(written["channels"]):
        assert [t["id"] for t in row["top"]] == want.score_sources[r].tolist()
        np.testing.assert_allclose([t["score"] for t in row["top"]], want.scores[r], rtol=1e-5)
        assert [p["box"] for p in row["peaks"]] == want.boxes[r].tolist()
        crop = np.asarray(Image.open(out / row["peaks"][0]["crop"]))
        assert want.crops is not None
        np.testing.assert_array_equal(crop, want.crops[r][0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "exemplars" and len(manifest["items"]) == 4
    assert (out / "exemplars.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "relu4_9"], "Unknown layer 'relu4_9'"),
        (["--layer", "relu4_2", "--channels", "60-70"], "channel 64 is out of range"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "a.png")
    code = main(["exemplars", "shapes_vgg11", str(folder), *extra, "--out", str(tmp_path / "o")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_without_images_and_with_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["exemplars", "shapes_vgg11", str(empty), "--layer", "relu4_2", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "no image files found" in capsys.readouterr().err
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"broken")
    out = tmp_path / "o"
    argv = ["exemplars", "shapes_vgg11", str(folder), "--layer", "relu4_2", "--channels", "0"]
    assert main([*argv, "--out", str(out)]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["input"] for f in manifest["failures"]] == [str(folder / "b.png")]


def test_features_check_a_reads_the_best_score_of_collected_exemplars() -> None:
    from cnnviz.featurevis.visualise import features  # lazy: only this test optimises

    loaded = cnnviz.from_module(_model(), preprocessing=RGB)
    x = torch.stack([model_tensor(p, RGB) for p in _pictures(6)])
    ex = collect_exemplars(loaded, x, "3", k=2, channels=[1, 4])
    result = features(loaded, "3", [4, 1], steps=2, stability=False, exemplars=ex)
    assert [c.exemplar_activation for c in result.checks] == [ex.best(4), ex.best(1)]
    with pytest.raises(ArgumentError, match="exemplars are of layer"):
        features(loaded, "0", [1], steps=2, stability=False, exemplars=ex)


def test_cli_resume_after_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(6)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    real = run_module.atomic_write_bytes

    def write_then_stop(path: Path, data: bytes, **kwargs: object) -> None:
        real(path, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "atomic_write_bytes", write_then_stop)
    out = tmp_path / "out"
    argv = ["exemplars", "shapes_vgg11", str(folder), "--layer", "relu4_2", "--channels", "0-1"]
    argv += ["--k", "2", "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(run_module, "atomic_write_bytes", real)
    assert main([*argv, "--resume"]) == 0
    resumed = json.loads((out / "exemplars.json").read_text())
    assert main([*argv[:-1], str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "exemplars.json").read_text()) == resumed
