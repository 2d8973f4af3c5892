"""The audit's parts on maps whose truth is known by construction: SpRAy's pooling, spectrum and
eigengap, where the evidence lies, the flags, and the labels and boxes files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnviz.audit.clusters import AuditSettings, audit_maps
from cnnviz.audit.placement import Placement, PlacementSummary, cell_coverage, placement
from cnnviz.audit.spray import (
    affinity_graph,
    eigengap_count,
    laplacian_spectrum,
    mass_grids,
    spectral_clusters,
)
from cnnviz.audit.truth import read_labels
from cnnviz.errors import AuditError


def _two_strategies(
    n_object: int = 60, n_corner: int = 25, seed: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """8×8 maps of one class: evidence on a 16-px object somewhere in the middle, or (the last
    ``n_corner``) in the bottom-right cell and none on the object; with the objects' 64×64 masks."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_object + n_corner):
        m = rng.random((8, 8)) * 0.05
        y, x = (int(v) for v in rng.integers(8, 40, size=2))
        mask = np.zeros((64, 64), dtype=bool)
        mask[y : y + 16, x : x + 16] = True
        strength = 1.0 if i < n_object else 0.0  # the shortcut: nothing on the object
        m[y // 8 : (y + 16) // 8, x // 8 : (x + 16) // 8] += strength
        if i >= n_object:
            m[7, 7] += 2.0
        maps.append(m)
        masks.append(mask)
    return np.stack(maps), masks


def test_mass_grids_sum_pool_the_positive_part_to_unit_mass() -> None:
    maps = np.zeros((2, 16, 16))
    maps[0, :2, :2] = 1.0  # one 8×8 cell: all the mass
    maps[0, 4:6, 4:6] = -5.0  # negative evidence is dropped
    maps[1, 0, 0], maps[1, 15, 15] = 1.0, 3.0
    grids = mass_grids(maps, 8)
    assert grids.shape == (2, 8, 8)
    assert grids[0, 0, 0] == pytest.approx(1.0) and grids[0].sum() == pytest.approx(1.0)
    assert grids[1, 0, 0] == pytest.approx(0.25) and grids[1, 7, 7] == pytest.approx(0.75)
    # a map without positive mass points nowhere: uniform; a small map keeps its size
    assert np.allclose(mass_grids(-np.ones((1, 4, 4)), 8), 1 / 16)


def test_spectrum_of_two_disconnected_groups_has_two_zero_eigenvalues() -> None:
    features = np.concatenate([np.zeros((12, 2)), np.full((12, 2), 10.0)])
    features += np.random.default_rng(0).normal(0, 0.01, features.shape)
    graph = affinity_graph(features, 5)
    assert np.array_equal(graph, graph.T) and graph.diagonal().sum() == 0
    assert graph[:12, 12:].sum() == 0  # no edge between the groups
    values = laplacian_spectrum(graph, 6)
    assert values[:2] == pytest.approx([0.0, 0.0], abs=1e-9) and values[2] > 0.1
    assert eigengap_count(values, 5) == 2
    assert eigengap_count(np.array([0.0, 0.1, 0.3, 0.9]), 2) == 2  # gaps after the cap ignored
    assert eigengap_count(np.array([0.0, 0.3, 0.55, 0.9]), 8) == 1  # 0.3 ≥ 0.8 × 0.35: the first
    assert eigengap_count(np.array([0.0, 0.9, 1.0]), 8) == 1


def test_spray_separates_corner_evidence_from_object_evidence() -> None:
    maps, _ = _two_strategies()
    clusters = spectral_clusters(maps)
    corner = [c for c in range(clusters.count) if clusters.prototypes[c, 7, 7] > 0.2]
    assert len(corner) == 1
    members = clusters.members(corner[0])
    assert set(members.tolist()) == set(range(60, 85))  # exactly the corner maps
    assert clusters.labels.tolist() == spectral_clusters(maps).labels.tolist()  # seeded
    sizes = [clusters.members(c).size for c in range(clusters.count)]
    assert sizes == sorted(sizes, reverse=True)  # numbered by size


def test_placement_shares_by_hand() -> None:
    grids = np.zeros((2, 8, 8))
    grids[0, 0:2, 0:2] = 0.25  # all in the top-left corner square
    grids[1, 3:5, 3:5] = 0.25  # all in the middle
    mask = np.zeros((64, 64), dtype=bool)
    mask[24:40, 24:40] = True  # exactly the middle 2×2 cells
    where = placement(grids, [None, mask])
    assert where.corner.tolist() == pytest.approx([1.0, 0.0])
    assert where.corner_name[0] == "top-left"
    assert where.border.tolist() == pytest.approx([0.75, 0.0])  # 3 of the 4 cells in the band
    assert where.centre.tolist() == pytest.approx([0.0, 1.0])
    assert np.isnan(where.on_object[0]) and where.on_object[1] == pytest.approx(1.0)
    assert where.coverage[1] == pytest.approx(4 / 64)
    assert where.centre_x.tolist() == pytest.approx([0.125, 0.5])
    assert (
        cell_coverage(mask, (8, 8))[3, 3] == 1.0
        and cell_coverage(mask & (np.arange(64) < 28), (8, 8))[3, 3] == 0.5
    )


def _summary(
    on_object: float | None, corner: float = 0.0, border: float = 0.0, coverage: float = 0.2
) -> PlacementSummary:
    covered = None if on_object is None else coverage
    return PlacementSummary(corner, "bottom-right", border, 0.0, on_object, covered, 0.5, 0.5)


def test_flags_off_object_with_masks_corner_and_border_without() -> None:
    assert _summary(0.25, corner=0.9).flags() == []  # on the object: a corner is no shortcut
    assert _summary(0.25, corner=0.9).lift == pytest.approx(1.25)
    assert _summary(0.15, corner=0.9).flags() == ["off-object", "corner (bottom-right)"]
    assert _summary(0.15, corner=0.2).flags() == ["off-object", "corner (bottom-right)"]
    assert _summary(0.15, corner=0.19).flags() == ["off-object"]
    assert _summary(0.5, coverage=0.6).flags() == ["off-object"]  # a large object: chance is 0.6
    assert _summary(None, corner=0.5).flags() == ["corner (bottom-right)"]
    assert _summary(None, corner=0.5).lift is None
    assert _summary(None, border=0.85).flags() == ["border"]
    assert _summary(None, corner=0.2, border=0.5).flags() == []


def test_audit_flags_the_corner_cluster_with_and_without_boxes() -> None:
    maps, masks = _two_strategies()
    classes = np.zeros(len(maps), dtype=np.int64)
    truth = np.where(np.arange(len(maps)) % 5 == 0, -1, 0)  # every fifth image unlabelled
    for given in (masks, None):
        audit = audit_maps(maps, classes, ["horse"], masks=given, labels=truth)
        (audited,) = audit.classes
        (flagged,) = audited.flagged
        assert set(flagged.members.tolist()) == set(range(60, 85))
        assert "corner (bottom-right)" in flagged.flags
        assert ("off-object" in flagged.flags) == (given is not None)
        assert flagged.labelled == 20 and flagged.correct == 20
        assert (audit.image_cluster[60:] == flagged.index).all()
    # the object maps alone: nothing is flagged
    audit = audit_maps(maps[:60], classes[:60], ["horse"], masks=masks[:60])
    assert audit.flagged_count == 0


def test_audit_needs_enough_maps_per_class_and_says_how_many() -> None:
    maps, _ = _two_strategies(15, 5)
    classes = np.array([0] * 19 + [1])
    with pytest.raises(AuditError, match=r"at least 20 maps of a class.*most any class has is 19"):
        audit_maps(maps, classes, ["a", "b"])
    audit = audit_maps(maps, classes, ["a", "b"], settings=AuditSettings(neighbours=5))
    assert [c.label for c in audit.classes] == ["a"] and audit.skipped == {"b": 1}
    assert audit.image_cluster[19] == -1
    with pytest.raises(AuditError, match="at least 30"):
        audit_maps(maps, classes, ["a", "b"], settings=AuditSettings(min_images=30))


def test_labels_file_names_its_unknown_images(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    paths = [folder / "a.png", folder / "sub" / "b.png", folder / "c.png"]
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\na.png,cat\nsub/b.png,1\nc.png,zebra\n")
    found = read_labels(labels, paths, {"cat": 0, "dog": 1})
    assert found[:2].tolist() == [0, 1] and found[2] < -1  # zebra: never an explained class
    labels.write_text("image,label\na.png,cat\nnope.png,dog\nalso-missing.png,dog\n")
    with pytest.raises(
        AuditError, match=r"2 label row\(s\) name no image.*also-missing.png, nope.png"
    ):
        read_labels(labels, paths, {"cat": 0})
    labels.write_text("file,class\na.png,cat\n")
    with pytest.raises(AuditError, match="header must be exactly image,label"):
        read_labels(labels, paths, {"cat": 0})


def test_placement_mean_of_members() -> None:
    where = Placement(
        corner=np.array([0.2, 0.6]),
        corner_name=("top-left", "bottom-right"),
        border=np.array([0.1, 0.3]),
        centre=np.array([0.5, 0.1]),
        on_object=np.array([np.nan, 0.4]),
        coverage=np.array([np.nan, 0.1]),
        centre_x=np.array([0.2, 0.8]),
        centre_y=np.array([0.4, 0.6]),
    )
    summary = where.mean(np.array([0, 1]))
    assert summary.corner == pytest.approx(0.4) and summary.on_object == pytest.approx(0.4)
    assert summary.coverage == pytest.approx(0.1) and summary.lift == pytest.approx(4.0)
    assert where.mean(np.array([0])).on_object is None


def test_audit_page_draws_every_cluster_and_its_flags() -> None:
    from cnnviz.render.audit_page import audit_page

    maps, masks = _two_strategies()
    audit = audit_maps(maps, np.zeros(len(maps), dtype=np.int64), ["horse"], masks=masks)
    pictures = {i: np.full((64, 64, 3), 40 * (i % 5), dtype=np.uint8) for i in range(len(maps))}
    page = audit_page(
        audit,
        lambda i: maps[i],
        lambda i: None if i == 0 else pictures[i],
        [f"img{i}.png" for i in range(len(maps))],
        context={"model": {"name": "m", "architecture": "a"}, "method": "gradcam",
                 "layer": "conv4_2", "source": "maps/", "files": ["audit.csv"],
                 "with_boxes": True},
    )  # fmt: skip
    assert page.count('class="cluster') == len(audit.classes[0].clusters)
    assert page.count('class="cluster flagged"') == 1 and "off-object" in page
    assert page.count("data:image/png;base64,") == 2 + 2 * len(audit.classes[0].clusters)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert "Audit of 1 class(es), 1 flagged" in repr(audit)
    assert "<b>1</b> flagged" in audit._repr_html_()
