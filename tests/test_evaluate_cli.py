"""``cnnviz evaluate`` and ``cnnviz sanity`` end to end on shapes_vgg11, bad files included."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

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
    captured = capsys.readouterr()
    err, out_text = captured.err, captured.out
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
    # 3 images are too few for a verdict against random-map (6 are needed); the interval is given
    assert deletion["gradcam"]["verdict"] == "undecided" and deletion["gradcam"]["n_paired"] == 3
    assert deletion["random-map"]["verdict"] == "baseline"
    assert "undecided against random-map (6 images needed)" in out_text

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


def _summary_csv(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}


def _page_cell(html: str, metric: str, column: int) -> str:
    """The HTML of one summary cell: the row of ``metric``, the ``column``-th method."""
    row = html.split(f"<tr><td>{metric}</td>", 1)[1].split("</tr>", 1)[0]
    return row.split('<td class="num')[1 + column]


def test_evaluate_flags_what_is_no_better_than_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 held-out shapes. ``centre-map`` is made to draw exactly the random map (its per-image
    values then equal the baseline's: Δ = 0 on every image, the interval [0, 0]), so it must be
    flagged "no better" on every metric; ``coarse-random-map``, noise on a 4×4 grid, keeps the
    least relevant pixels no better than chance and its ROAD LeRF is flagged "worse" (Δ ≈ −0.3
    on 12 images); Grad-CAM, whose ROAD MoRF is 0.20 against the noise's 0.94 and whose energy
    inside the box is 0.21 against 0.10, is "better" there and not flagged. (Its pointing game,
    8 hits of 8 against the noise's 6 at a 15-pixel tolerance on 64-pixel images, is not.)"""
    from cnnviz.runs import evaluate as evaluate_run

    real = evaluate_run.reference_map

    def centre_is_noise(name: str, size: tuple[int, int], index: int, seed: int) -> Any:
        return real("random-map" if name == "centre-map" else name, size, index, seed)

    monkeypatch.setattr(evaluate_run, "reference_map", centre_is_noise)
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "truth.json").write_text(json.dumps({"images": _write_shapes(folder, 8)}))
    out = tmp_path / "out"
    methods = ["gradcam", "centre-map", "coarse-random-map", "random-map"]
    argv = ["evaluate", str(folder), "--model", "shapes_vgg11", "--methods", ",".join(methods)]
    argv += ["--boxes", str(tmp_path / "truth.json"), "--out", str(out), "--steps", "8"]
    argv += ["--metrics", "deletion,road,pointing", "--road-percentages", "20,60"]
    assert main([*argv, "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out.splitlines()

    summary = _summary_csv(out)
    metrics = ("deletion_auc", "road_morf", "road_lerf", "pointing_game", "energy_pointing_game")
    for metric in metrics:
        same = summary["centre-map", metric]
        assert same["verdict"] == "no_better" and same["n_paired"] == "8"
        assert float(same["advantage"]) == 0.0
        assert float(same["advantage_ci_low"]) == float(same["advantage_ci_high"]) == 0.0
        assert summary["random-map", metric]["verdict"] == "baseline"
    assert summary["coarse-random-map", "road_lerf"]["verdict"] == "worse"
    assert float(summary["coarse-random-map", "road_lerf"]["advantage_ci_high"]) < 0.0
    for metric in ("road_morf", "energy_pointing_game"):
        mine = summary["gradcam", metric]
        assert mine["verdict"] == "better" and float(mine["advantage_ci_low"]) > 0.05

    html = (out / "index.html").read_text()
    same_cell = _page_cell(html, "road_morf", methods.index("centre-map"))
    assert same_cell.startswith(' flagged">')
    assert '<span class="verdict no_better">no better than random-map</span>' in same_cell
    assert "Δ +0.000 [+0.000, +0.000], n = 8" in same_cell
    assert "worse than random-map" in _page_cell(html, "road_lerf", 2)
    gradcam_cell = _page_cell(html, "road_morf", 0)
    assert not gradcam_cell.startswith(" flagged")
    assert '<span class="verdict better">better than random-map</span>' in gradcam_cell
    assert "random-map (baseline)</th>" in html and "No baseline" not in html

    def line(start: str) -> str:
        (found,) = [text for text in printed if text.startswith(start)]
        return found

    flagged = "— no better than random-map (Δ +0.000 [+0.000, +0.000], n = 8)"
    assert all(line(f"centre-map: {metric} ").endswith(flagged) for metric in metrics)
    assert "— better than random-map (Δ +" in line("gradcam: road_morf ↓ ")
    assert "— better than random-map (Δ +" in line("gradcam: energy_pointing_game ↑ ")
    assert "— worse than random-map (Δ −" in line("coarse-random-map: road_lerf ↑ ")
    assert printed[-1].startswith(f"Wrote 8 evaluated image(s) to {out}/")


def test_evaluate_without_the_baseline_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_shapes(tmp_path, 1)
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "shape0.png"), "--model", "shapes_vgg11"]
    argv += ["--methods", "gradcam,saliency", "--metrics", "deletion", "--steps", "4"]
    assert main([*argv, "--sanity-images", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("No baseline: random-map was not among the methods")
    assert printed[1].startswith("gradcam: deletion_auc ↓ ") and " — " not in printed[1]
    assert all(r["verdict"] == "" and r["baseline"] == "" for r in _summary_csv(out).values())
    assert (
        "<b>No baseline:</b> random-map was not among the methods"
        in (out / "index.html").read_text()
    )
