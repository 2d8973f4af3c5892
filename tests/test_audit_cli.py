"""``cnnviz audit`` from the command line on a small run of the default file layout: its faults
(too few maps per class, files that name no image, several methods, an interrupted run) are one
line each with the remedy, and a small audit writes its page and tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnviz.cli.main import main
from cnnviz.data.shapes import SHAPE_CLASSES, heldout_shapes

N_IMAGES = 36


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 held-out shapes explained with Grad-CAM and saliency by shapes_vgg11 (file layout)."""
    root = tmp_path_factory.mktemp("audit-cli")
    images = root / "images"
    images.mkdir()
    batch = heldout_shapes(N_IMAGES)
    pixels = (batch.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for i, picture in enumerate(pixels):
            Image.fromarray(picture).save(images / f"s{i:02d}.png")
            writer.writerow([f"s{i:02d}.png", SHAPE_CLASSES[int(batch.labels[i])]])
    for method in ("gradcam", "saliency"):
        code = main(["-q", "explain", str(images), "--model", "shapes_vgg11", "--method", method,
                     "--out", str(root / "maps"), "--json"])  # fmt: skip
        assert code == 0
    return root


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_too_few_maps_per_class_says_how_many(
    small_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, ["audit", str(small_run / "maps"), "--method", "gradcam", "--out",
                          str(small_run / "a")])  # fmt: skip
    assert "needs at least 20 maps of a class" in err and "explain more images" in err


def test_several_methods_need_one_chosen(
    small_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, ["audit", str(small_run / "maps"), "--out", str(small_run / "b")])
    assert "2 methods (gradcam, saliency); choose one with --method" in err


def test_labels_naming_unknown_images_are_listed(
    small_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = small_run / "bad-labels.csv"
    labels.write_text("image,label\ns00.png,circle\nnot-there.png,ring\n")
    argv = ["audit", str(small_run / "maps"), "--method", "gradcam", "--labels", str(labels)]
    err = _error(capsys, [*argv, "--neighbours", "1", "--out", str(small_run / "c")])
    assert "1 label row(s) name no image of the results (not-there.png)" in err


def test_a_small_audit_of_the_file_layout(
    small_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_run / "d"
    labels = str(small_run / "labels.csv")
    argv = ["audit", str(small_run / "maps"), "--method", "gradcam", "--labels", labels]
    code = main([*argv, "--neighbours", "1", "--out", str(out)])
    assert code == 0
    assert "audited" in capsys.readouterr().err
    with open(out / "audit.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N_IMAGES
    record = json.loads((out / "audit.json").read_text())
    assert record["settings"]["min_images"] == 2 and record["layer"]
    audited = {c["class"]: c["maps"] for c in record["classes"]}
    assert sum(audited.values()) == sum(r["cluster"] != "-1" for r in rows)
    for row in rows:  # the model is right on these: the true label is the explained class
        assert row["true_label"] in SHAPE_CLASSES
    assert sum(r["true_label"] == r["class"] for r in rows) >= 0.9 * N_IMAGES
    page = (out / "index.html").read_text()
    assert page.count('class="cluster') == sum(len(c["clusters"]) for c in record["classes"])


def test_an_interrupted_run_without_its_manifest_is_refused(
    small_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = small_run / "killed"
    shutil.copytree(small_run / "maps", copy)
    (copy / "manifest.json").unlink()
    err = _error(capsys, ["audit", str(copy), "--method", "gradcam", "--out",
                          str(small_run / "e")])  # fmt: skip
    assert "finish it with cnnviz explain … --resume" in err


def test_maps_are_read_block_by_block(small_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit never holds the run's raw maps at once: blocks of 7 images give the same mass
    distributions as all of them together, and a drawn map is read on demand."""
    import cnnviz.runs.audit as audit_run
    from cnnviz.audit.spray import mass_grids
    from cnnviz.outputs.results import open_results

    results = open_results(small_run / "maps")
    whole = audit_run.run_maps(results, "gradcam")
    monkeypatch.setattr(audit_run, "READ_BLOCK", 7)
    blocks = audit_run.run_maps(results, "gradcam")
    every = np.asarray(results.maps("gradcam")[...], dtype=np.float32)[results.complete, 0]
    np.testing.assert_array_equal(blocks.grids, whole.grids)
    np.testing.assert_array_equal(blocks.grids, mass_grids(every, 8))
    np.testing.assert_array_equal(blocks.raw_map(5), every[5])
    assert blocks.grids.shape == (N_IMAGES, 4, 4)  # bn5_2: a 4 × 4 map keeps its size
