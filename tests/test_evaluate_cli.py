"""``cnnviz evaluate`` and ``cnnviz sanity`` end to end on shapes_vgg11, bad files included."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cnnviz.cli import main
from cnnviz.metrics.statistics import bootstrap_ci, summarize_metrics

METHODS = ("gradcam", "saliency", "random-map")


def _write_shapes(folder: Path, n: int) -> dict[str, list[list[int]]]:
    from PIL import Image

    from cnnviz.data.shapes import heldout_shapes

    batch = heldout_shapes(n)
    boxes = {}
    for i in range(n):
        pixels = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"shape{i}.png")
        boxes[f"shape{i}.png"] = [[int(v) for v in batch.boxes[i]]]
    return boxes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, list[list[int]]]]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    boxes = _write_shapes(folder, 3)
    (folder / "truth.json").write_text(json.dumps({"images": boxes}))
    jpeg = folder / "broken.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # truncated
    (folder / "notes.jpg").write_text("this is text, not a JPEG\n")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "tiny.png")
    return folder, tmp_path_factory.mktemp("evaluate"), boxes


def test_evaluate_survives_bad_files(
    run: tuple[Path, Path, dict[str, list[list[int]]]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, out, _ = run
    code = main(
        [
            "evaluate",
            str(folder),
            "--model",
            "shapes_vgg11",
            "--methods",
            ",".join(METHODS),
            "--boxes",
            str(folder / "truth.json"),
            "--out",
            str(out),
            "--steps",
            "8",
            "--road-percentages",
            "20,60",
            "--sanity-images",
            "1",
            "--bootstrap",
            "200",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    for name in ("broken.jpg", "notes.jpg", "tiny.png"):
        assert f"skipped {folder / name}" in err
    assert "1×1 pixels" in err

    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(f["input"]).name for f in manifest["failures"]) == [
        "broken.jpg",
        "notes.jpg",
        "tiny.png",
    ]
    assert [Path(i["input"]).name for i in manifest["items"]] == [
        "shape0.png",
        "shape1.png",
        "shape2.png",
    ]

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_map = {
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
        "road_morf",
        "road_lerf",
        "pointing_game",
        "energy_pointing_game",
    }
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method and r["metric"] in per_map]
        assert len(mine) == 3 * len(per_map)
    sanity_rows = [r for r in rows if r["metric"].startswith("cascading_")]
    assert {r["method"] for r in sanity_rows} == {"gradcam", "saliency"}  # not the reference
    assert len(sanity_rows) == 2 * 4  # one image × 4 similarities
    for r in rows:
        if r["metric"] in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"):
            assert 0.0 <= float(r["value"]) <= 1.0
        if r["metric"] in ("pointing_game", "increase_in_confidence"):
            assert float(r["value"]) in (0.0, 1.0, 100.0)

    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    results = json.loads(text)
    assert len(results["rows"]) == len(rows)
    for entry in results["summary"]:
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    deletion = {e["method"]: e for e in results["summary"] if e["metric"] == "deletion_auc"}
    values = [
        float(r["value"])
        for r in rows
        if r["method"] == "gradcam" and r["metric"] == "deletion_auc"
    ]
    assert deletion["gradcam"]["mean"] == pytest.approx(np.mean(values))
    assert deletion["gradcam"]["n"] == 3

    for name in ("curves.png", "road.png", "sanity.png", "sanity-maps.png", "summary.csv"):
        assert (out / name).stat().st_size > 0
    html = (out / "index.html").read_text()
    assert "Content-Security-Policy" in html and "http://" not in html and "https://" not in html
    assert "tiny.png" in html and "data:image/png;base64," in html


def test_bootstrap_interval_is_seeded_and_sane() -> None:
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([5.0]) == (5.0, 5.0, 5.0)
    values = list(np.linspace(0.0, 1.0, 41))
    first = bootstrap_ci(values, seed=3)
    assert first == bootstrap_ci(values, seed=3)
    mean, low, high = first
    assert mean == pytest.approx(0.5) and low < 0.5 < high
    # The standard error of the mean is ≈ 0.0466 here; a 95 % interval spans about ±1.96 of it.
    assert high - low == pytest.approx(2 * 1.96 * np.std(values) / math.sqrt(41), rel=0.15)
    rows = [{"method": "m", "metric": "deletion_auc", "value": v} for v in (0.1, 0.3, None)]
    (entry,) = summarize_metrics(rows, resamples=100, seed=0)
    assert entry["n"] == 2 and entry["mean"] == pytest.approx(0.2) and entry["better"] == "lower"


def test_evaluate_rejects_unknown_method_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            str(tmp_path),
            "--model",
            "shapes_vgg11",
            "--methods",
            "gradcma",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "gradcam" in err


def test_sanity_command_on_one_image(
    run: tuple[Path, Path, dict[str, list[list[int]]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _, _ = run
    out = tmp_path / "sanity"
    code = main(
        [
            "sanity",
            str(folder / "shape0.png"),
            "--model",
            "shapes_vgg11",
            "--methods",
            "gradcam,saliency",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads((out / "sanity.json").read_text())
    assert set(report["modes"]) == {"cascading", "independent"}
    cascading = report["modes"]["cascading"]
    assert cascading["steps"][0] == "classifier.6" and len(cascading["steps"]) == 11
    similarity = cascading["methods"]["gradcam"]["similarity"]
    assert set(similarity) == {"spearman_abs", "spearman", "ssim", "hog"}
    assert all(v is None or -1.0 <= v <= 1.0 for v in similarity["spearman_abs"])
    for name in ("sanity-cascading.png", "sanity-independent.png", "maps-cascading.png"):
        assert (out / name).stat().st_size > 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["command"] == "sanity" and printed["failures"] == []


def test_sanity_names_exactly_the_files_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = ["-q", "sanity", str(tmp_path / "a.png"), "--model", "shapes_vgg11"]
    argv += ["--weights", "random", "--methods", "saliency", "--mode", "independent"]
    assert main([*argv, "--out", str(out)]) == 0
    written = ["maps-independent.png", "sanity-independent.png", "sanity.json", "manifest.json"]
    assert capsys.readouterr().out == f"Wrote sanity checks to {out}/ ({', '.join(written)})\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # no index.html
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["items"][0]["files"] == {
        "independent_plot": "sanity-independent.png",
        "independent_maps": "maps-independent.png",
        "json": "sanity.json",
    }
