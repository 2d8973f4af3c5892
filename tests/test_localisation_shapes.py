"""Known-truth localisation on held-out synthetic shapes with the seed's VGG-11 (`shapes_vgg11`).

Pointing game: the usual 15-px tolerance at 224×224, scaled to the 64×64 input (15 · 64/224 ≈ 4 px);
a hit when the map's maximum lies within it of the object's box. The conv4 block is 8×8 at this
input size (its output, ``relu4_2``, is where the CAM tests look), the conv5 block 4×4 — each test
names its layer. Figures measured on the cached model are in docs/shapes-benchmark.md.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cnnviz import explain, load_model
from cnnviz.data.shapes import heldout_shapes
from cnnviz.methods.postprocess import for_display
from cnnviz.methods.registry import get_method, method_names
from cnnviz.metrics.localisation import boxes_to_mask, energy_pointing_game, pointing_game
from cnnviz.models import LoadedModel
from cnnviz.models.shapes_vgg11 import normalize_shapes

TOLERANCE = 15 * 64 / 224
CONV4 = "relu4_2"
N_IMAGES = 200
TRUTH_OPTIONS: dict[str, dict[str, Any]] = {}
"""Cheaper settings for the methods whose defaults cost minutes on 100 images (the figures at
the defaults are in docs/shapes-benchmark.md)."""


@pytest.fixture(scope="module")
def shapes() -> tuple[LoadedModel, torch.Tensor, torch.Tensor]:
    loaded = load_model("shapes_vgg11")
    batch = heldout_shapes(N_IMAGES)
    boxes = torch.stack([boxes_to_mask([box.tolist()], (64, 64)) for box in batch.boxes])
    return loaded, normalize_shapes(batch.images), boxes


def _maps(loaded: LoadedModel, x: torch.Tensor, method: str, layer: str | None) -> torch.Tensor:
    e = explain(loaded, x, method, layer=layer)
    return for_display(e.maps, e.display, (64, 64))[:, 0]


def _centre_baseline(boxes: torch.Tensor) -> float:
    centre = torch.zeros(boxes.shape[0], 64, 64)
    centre[:, 31:33, 31:33] = 1.0
    return pointing_game(centre, boxes, tolerance=TOLERANCE).accuracy


def test_gradcam_points_at_the_object(
    shapes: tuple[LoadedModel, torch.Tensor, torch.Tensor],
) -> None:
    loaded, x, boxes = shapes
    conv4 = pointing_game(_maps(loaded, x, "gradcam", CONV4), boxes, tolerance=TOLERANCE)
    conv5 = pointing_game(_maps(loaded, x, "gradcam", "conv5_1"), boxes, tolerance=TOLERANCE)
    centre = _centre_baseline(boxes)
    assert centre < 0.45, centre  # measured 0.37: the data keep the centre a weak guess
    assert conv4.accuracy >= 0.85, conv4.accuracy  # measured 0.97
    assert conv5.accuracy >= 2 * centre, (conv5.accuracy, centre)  # measured 0.825


@pytest.mark.parametrize(("method", "layer"), [("gradcam", CONV4), ("saliency", None)])
def test_map_mass_concentrates_in_the_box(
    shapes: tuple[LoadedModel, torch.Tensor, torch.Tensor], method: str, layer: str | None
) -> None:
    loaded, x, boxes = shapes
    maps = _maps(loaded, x, method, layer)
    inside = energy_pointing_game(maps, boxes).nanmean().item()
    box_share = boxes.float().mean().item()
    assert inside >= 3 * box_share, (inside, box_share)  # measured 0.62 and 0.39 against 0.108


@pytest.fixture(scope="module")
def truth() -> tuple[LoadedModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The protocol of benchmarks/shapes_truth.py: exact masks, true classes, 100 images."""
    loaded = load_model("shapes_vgg11")
    batch = heldout_shapes(100)
    return loaded, normalize_shapes(batch.images), batch.masks, batch.labels


def _truth_pointing(
    truth: tuple[LoadedModel, torch.Tensor, torch.Tensor, torch.Tensor], method: str
) -> float:
    loaded, x, masks, labels = truth
    layer = CONV4 if get_method(method).needs_layer else None
    options = TRUTH_OPTIONS.get(method, {})
    e = explain(loaded, x, method, layer=layer, target=labels.tolist(), **options)
    maps = for_display(e.maps, e.display, (64, 64))[:, 0]
    return pointing_game(maps, masks, tolerance=4.0).accuracy


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_cams_at_the_conv4_block_hit_the_object(
    truth: tuple[LoadedModel, torch.Tensor, torch.Tensor, torch.Tensor], method: str
) -> None:
    """Issue #4's bar for the known-truth table: ≥ 85 % at the conv4 block."""
    assert _truth_pointing(truth, method) >= 0.85


@pytest.mark.parametrize("method", [m for m in method_names() if m != "cam"])
def test_every_method_beats_the_centre_point(
    truth: tuple[LoadedModel, torch.Tensor, torch.Tensor, torch.Tensor], method: str
) -> None:
    """Every method points at the object more often than a map peaked at the image centre.

    CAM (Zhou et al.) needs global average pooling straight into one linear layer, which this
    VGG's classifier is not; it is refused with a LayerError (tested in test_methods_cam).
    """
    _, _, masks, _ = truth
    centre = torch.zeros(masks.shape[0], 64, 64)
    centre[:, 31:33, 31:33] = 1.0
    baseline = pointing_game(centre, masks, tolerance=4.0).accuracy
    assert _truth_pointing(truth, method) > baseline + 0.1


def test_gradcam_beats_its_random_weights_control(
    truth: tuple[LoadedModel, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """RandomCAM weighs the same relu4_2 maps at random: the activations alone already point at
    the object often (measured 0.69), Grad-CAM's gradient weights far more often (0.98)."""
    control = _truth_pointing(truth, "randomcam")
    assert 0.5 < control < 0.85, control
    assert _truth_pointing(truth, "gradcam") >= control + 0.2
