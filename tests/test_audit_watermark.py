"""The audit against known truth: ``shapes_vgg11_watermark`` learned a corner tag for one class.

The held-out watermark shapes (half of the triangles carry the tag) are written as PNG files,
explained with Grad-CAM at the conv4 block into a ``--store zarr`` run, and audited with the
objects' boxes and the true labels, from the command line as a user would. One flagged cluster of
the tag's class must hold ≥ 90 % of the tagged images (recall) with ≥ 90 % of its members tagged
(purity), and no other cluster may be flagged. ``shapes_vgg11``, trained without the tag and
audited on the same images, is the negative control: none of its clusters may be flagged.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnviz.cli.main import main
from cnnviz.data.shapes import SHAPE_CLASSES
from cnnviz.data.watermark import WATERMARK_CLASS, heldout_watermark_shapes

pytestmark = pytest.mark.slow

N_IMAGES = 480
LAYER = "conv4_2"


@pytest.fixture(scope="module")
def watermark_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The held-out images as PNGs, with boxes.csv and labels.csv beside them; the tag flags."""
    root = tmp_path_factory.mktemp("watermark")
    batch = heldout_watermark_shapes(N_IMAGES)
    images = root / "images"
    images.mkdir()
    pixels = (batch.shapes.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    boxes = [["image", "x0", "y0", "x1", "y1"]]
    labels = [["image", "label"]]
    for i, picture in enumerate(pixels):
        name = f"w{i:04d}.png"
        Image.fromarray(picture).save(images / name)
        boxes.append([name, *(str(int(v)) for v in batch.shapes.boxes[i].tolist())])
        labels.append([name, SHAPE_CLASSES[int(batch.shapes.labels[i])]])
    for name, rows in (("boxes.csv", boxes), ("labels.csv", labels)):
        with open(root / name, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root, batch.watermarked.numpy()


def _audit(root: Path, model: str, boxes: bool = True) -> dict[str, list[dict[str, str]]]:
    maps = root / f"maps-{model}"
    if not maps.exists():
        code = main(["-q", "explain", str(root / "images"), "--model", model, "--method",
                     "gradcam", "--layer", LAYER, "--store", "zarr", "--batch-size", "64",
                     "--out", str(maps)])  # fmt: skip
        assert code == 0
    out = root / f"audit-{model}-{boxes}"
    truth = ["--boxes", str(root / "boxes.csv")] if boxes else []
    code = main(["-q", "audit", str(maps), *truth, "--labels", str(root / "labels.csv"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    tables = {}
    for name in ("audit.csv", "clusters.csv"):
        with open(out / name, newline="") as handle:
            tables[name] = list(csv.DictReader(handle))
    assert (out / "index.html").stat().st_size > 10_000
    return tables


def _tagged_cluster(
    tables: dict[str, list[dict[str, str]]], watermarked: np.ndarray, *, flagged_only: bool = True
) -> tuple[float, float, list[dict[str, str]]]:
    """Recall and purity of the best (flagged) cluster of the tag's class, and its flagged rows."""
    label = SHAPE_CLASSES[WATERMARK_CLASS]
    clusters = [r for r in tables["clusters.csv"] if r["class"] == label]
    flagged = [r for r in clusters if r["flags"]]
    tagged = {f"w{i:04d}.png" for i in np.flatnonzero(watermarked).tolist()}
    best = (0.0, 0.0)
    for cluster in flagged if flagged_only else clusters:
        members = {
            Path(r["image"]).name
            for r in tables["audit.csv"]
            if r["class"] == label and r["cluster"] == cluster["cluster"]
        }
        hits = len(members & tagged)
        best = max(best, (hits / len(tagged), hits / len(members)))
    return best[0], best[1], flagged


def test_the_audit_finds_the_watermark_cluster(watermark_folder: tuple[Path, np.ndarray]) -> None:
    root, watermarked = watermark_folder
    assert 30 <= watermarked.sum() <= 60  # about half of the ~80 triangles
    tables = _audit(root, "shapes_vgg11_watermark")
    recall, purity, flagged = _tagged_cluster(tables, watermarked)
    print(f"watermark cluster: recall {recall:.3f}, purity {purity:.3f}, flagged {flagged}")
    assert recall >= 0.9 and purity >= 0.9
    assert len(flagged) == 1 and flagged[0]["flags"] == "off-object;corner (bottom-right)"
    lifts = {
        (r["class"], r["cluster"]): float(r["on_object"]) / float(r["coverage"])
        for r in tables["clusters.csv"]
    }
    tagged_lift = lifts.pop((flagged[0]["class"], flagged[0]["cluster"]))
    print(f"lift: tagged cluster {tagged_lift:.2f}, the others ≥ {min(lifts.values()):.2f}")
    assert tagged_lift < 0.8 and min(lifts.values()) > 1.5  # far from the boundary, 1
    assert [r for r in tables["clusters.csv"] if r["flags"]] == flagged  # no other class
    assert len(tables["audit.csv"]) == N_IMAGES


def test_without_boxes_the_clusters_still_isolate_the_tag(
    watermark_folder: tuple[Path, np.ndarray],
) -> None:
    """The clustering needs no boxes; the flag does: this model's maps hold 25–34 % of their mass
    in a corner in several classes (it checks the corner for the tag everywhere), so a corner
    share alone cannot single out the tagged cluster, and none is flagged."""
    root, watermarked = watermark_folder
    tables = _audit(root, "shapes_vgg11_watermark", boxes=False)
    recall, purity, _ = _tagged_cluster(tables, watermarked, flagged_only=False)
    assert recall >= 0.9 and purity >= 0.9
    assert [r for r in tables["clusters.csv"] if r["flags"]] == []


def test_the_model_trained_without_the_tag_has_no_flagged_cluster(
    watermark_folder: tuple[Path, np.ndarray],
) -> None:
    root, _ = watermark_folder
    tables = _audit(root, "shapes_vgg11")
    assert len({r["class"] for r in tables["clusters.csv"]}) == len(SHAPE_CLASSES)
    assert [r for r in tables["clusters.csv"] if r["flags"]] == []


@pytest.mark.browser
def test_the_audit_page_renders_in_headless_chromium(
    watermark_folder: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """Every picture of the page decodes, nothing is requested from anywhere, no error is
    logged (the page's Content-Security-Policy allows data: images only), and the flagged
    cluster is drawn first in its class. ``CNNVIZ_SCREENSHOTS=DIR`` keeps a screenshot."""
    import os
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed and could not be installed (make test tries)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    root, _ = watermark_folder
    _audit(root, "shapes_vgg11_watermark")
    page_file = root / "audit-shapes_vgg11_watermark-True" / "index.html"
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            counts = page.evaluate(
                "() => { const all = [...document.images];"
                " return [all.length, all.filter(i => i.complete && i.naturalWidth > 0).length]; }"
            )
            first = page.locator(".cluster").first
            assert "flagged" in (first.get_attribute("class") or "")
            assert "off-object" in first.inner_text()
            page.screenshot(path=str(tmp_path / "audit.png"), full_page=False)
            folder = os.environ.get("CNNVIZ_SCREENSHOTS")
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp_path / "audit.png", Path(folder) / "audit-watermark.png")
        finally:
            browser.close()
    assert counts[0] >= 2 + 2 * 6 and counts[0] == counts[1]  # 6 classes: plot, mean, clusters
    assert problems == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
