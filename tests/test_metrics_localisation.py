"""Pointing game, energy pointing game and the ground-truth file formats, with hand-set numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.metrics import localisation as lo

BOX = (10, 10, 20, 20)  # x0, y0, x1, y1 (exclusive): rows and columns 10…19


def _peak(y: int, x: int, size: int = 32) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[0, y, x] = 1.0
    return m


def test_boxes_to_mask_is_exclusive_and_clipped() -> None:
    mask = lo.boxes_to_mask([BOX, (30, 30, 40, 40)], (32, 32))
    assert int(mask.sum()) == 100 + 4
    assert mask[10, 10] and mask[19, 19] and not mask[20, 19] and not mask[19, 20]


def test_pointing_game_inside_outside_and_tolerance() -> None:
    mask = lo.boxes_to_mask([BOX], (32, 32))[None]
    assert lo.pointing_game(_peak(15, 15), mask, tolerance=0).hits.tolist() == [True]
    far = lo.pointing_game(_peak(0, 0), mask, tolerance=5)
    assert far.hits.tolist() == [False]
    assert float(far.distances[0]) == pytest.approx(np.hypot(10, 10))
    assert lo.pointing_game(_peak(0, 0), mask, tolerance=15).hits.tolist() == [True]
    # (15, 25) is 6 px right of the box's last column 19.
    assert lo.pointing_game(_peak(15, 25), mask, tolerance=6).hits.tolist() == [True]
    assert lo.pointing_game(_peak(15, 25), mask, tolerance=5.9).hits.tolist() == [False]
    assert lo.pointing_game(_peak(15, 25), mask, tolerance=6).points.tolist() == [[15, 25]]


def test_pointing_game_batch_and_constant_map() -> None:
    masks = lo.boxes_to_mask([BOX], (32, 32)).expand(3, 32, 32)
    maps = torch.cat([_peak(12, 18), _peak(31, 31), torch.ones(1, 32, 32)])
    result = lo.pointing_game(maps, masks, tolerance=0)
    assert result.hits.tolist() == [True, False, False]  # a flat map points nowhere
    assert result.accuracy == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty"):
        lo.pointing_game(_peak(1, 1), torch.zeros(1, 32, 32, dtype=torch.bool))


def test_energy_pointing_game() -> None:
    mask = lo.boxes_to_mask([BOX], (32, 32))[None]
    assert float(lo.energy_pointing_game(torch.ones(1, 32, 32), mask)[0]) == 100 / 1024
    assert float(lo.energy_pointing_game(torch.full((1, 32, 32), 0.7), mask)[0]) == pytest.approx(
        100 / 1024, rel=1e-12
    )
    half = torch.zeros(1, 32, 32)
    half[0, 10:20, 10:20] = 1.0
    half[0, 0, :] = 1.0  # 32 px outside
    half[0, 5, :] = -50.0  # negative evidence is not energy
    assert float(lo.energy_pointing_game(half, mask)[0]) == pytest.approx(100 / 132)
    assert np.isnan(float(lo.energy_pointing_game(-torch.ones(1, 32, 32), mask)[0]))


def test_json_ground_truth_with_boxes_and_mask(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "masks").mkdir()
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:10, 50:55] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "b.png")
    spec = {
        "images": {
            "a.png": [[1, 2, 5, 6]],
            "sub/b.png": {"boxes": [[0, 0, 2, 2]], "mask": "masks/b.png"},
        }
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(spec))
    truth = lo.load_ground_truth(path)
    assert truth["a.png"].boxes == ((1, 2, 5, 6),)
    b = truth["sub/b.png"].mask((40, 60))
    assert int(b.sum()) == 4 + 25 and b[7, 52] and b[1, 1]
    root = tmp_path / "images"
    assert lo.lookup(truth, root / "sub" / "b.png", root) is truth["sub/b.png"]
    assert lo.lookup(truth, root / "a.png", root) is truth["a.png"]
    assert lo.lookup(truth, root / "c.png", root) is None
    with pytest.raises(lo.GroundTruthError, match="size"):
        truth["sub/b.png"].mask((40, 61))


def test_csv_ground_truth_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("# my boxes\nimage,x0,y0,x1,y1\ncat.jpg,10,20,110,140\ncat.jpg,0,0,1,1\n")
    truth = lo.load_ground_truth(path)
    assert truth["cat.jpg"].boxes == ((10, 20, 110, 140), (0, 0, 1, 1))
    path.write_text("name,x0,y0,x1,y1\ncat.jpg,1,1,2,2\n")
    with pytest.raises(lo.GroundTruthError, match="header"):
        lo.load_ground_truth(path)
    path.write_text("image,x0,y0,x1,y1\ncat.jpg,5,1,2,2\n")
    with pytest.raises(lo.GroundTruthError, match="x0 < x1"):
        lo.load_ground_truth(path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a.png": {"box": [1, 2, 3, 4]}}')
    with pytest.raises(lo.GroundTruthError, match="boxes"):
        lo.load_ground_truth(bad)
    other = tmp_path / "t.txt"
    other.write_text("x")
    with pytest.raises(lo.GroundTruthError, match="format"):
        lo.load_ground_truth(other)


def test_ground_truth_follows_resize_and_crop() -> None:
    truth = lo.GroundTruth(boxes=((0, 0, 32, 32),))
    prep = Preprocessing(input_size=(32, 32), crop_pct=1.0)
    model_mask = truth.model_mask((64, 64), prep)
    assert model_mask.shape == (32, 32)
    assert int(model_mask.sum()) == 256 and bool(model_mask[:16, :16].all())
    # A wide image is resized to height 32 and centre-cropped: the left 32 columns of a 64×128
    # image are cropped away entirely.
    left = lo.GroundTruth(boxes=((0, 0, 32, 64),)).model_mask((64, 128), prep)
    assert not left.any()
