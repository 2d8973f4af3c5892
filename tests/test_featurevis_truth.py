"""Known truth for feature visualisation: the pictures do what they claim, on real models.

* ``shapes_vgg11``: each shape's class visualisation (default moves) is classified as that shape
  on its 16 moved copies (median probability ≥ 0.9) for at least 5 of the 6 classes; at
  ``relu4_2`` at least 14 of 16 channels are driven at least as hard as by their best exemplar
  among 1,000 held-out shapes, with selectivity > 1.
* EfficientNet-Lite0 (ImageNet weights from a package): 16 channels of ``blocks.5`` at 128 px in
  one batch, at least 14 of 16 at least as strong as their best exemplar among the bundled photos
  and 200 crops of them; the class visualisation of "espresso" is still espresso (top-1) on the
  median moved copy.

Steps are fewer than the default 512 to keep the suite short on two cores (the pictures pass
with room; the figures are in docs/feature-visualisation.md).
"""

from __future__ import annotations

import pytest
import torch

import cnnviz
from cnnviz.data.samples import sample_crops
from cnnviz.data.shapes import SHAPE_CLASSES, heldout_shapes
from cnnviz.models.shapes_vgg11 import normalize_shapes


@pytest.fixture(scope="module")
def shapes_model() -> cnnviz.models.LoadedModel:  # type: ignore[name-defined]
    return cnnviz.load_model("shapes_vgg11")


def test_shape_class_visualisations_are_classified_as_their_shape(shapes_model) -> None:
    result = cnnviz.features(shapes_model, classes=range(6), steps=256, stability=False, seed=0)
    assert [u.label for u in result.units] == list(SHAPE_CLASSES)
    median = [c.copies_probability for c in result.checks]
    assert sum(p is not None and p >= 0.9 for p in median) >= 5, median
    assert sum(bool(c.copies_top1) for c in result.checks) >= 5


def test_relu4_2_channels_beat_their_best_heldout_exemplar(shapes_model) -> None:
    exemplars = normalize_shapes(heldout_shapes(1000).images)
    result = cnnviz.features(
        shapes_model, "relu4_2", range(16), steps=256, exemplars=exemplars, stability=False
    )
    ratios = [c.activation_ratio for c in result.checks]
    selective = [c.selectivity for c in result.checks]
    passed = sum(
        r is not None and r >= 1 and s is not None and s > 1
        for r, s in zip(ratios, selective, strict=True)
    )
    assert passed >= 14, (ratios, selective)
    # the exemplar scores are the channels' real best over the 1,000 images
    best = [c.exemplar_activation for c in result.checks]
    assert all(b is not None and b > 0 for b in best)


def test_efficientnet_blocks5_channels_in_one_batch_beat_the_photos() -> None:
    model = cnnviz.load_model("efficientnet_lite0")
    pictures = sample_crops(200, 128)
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    result = cnnviz.features(
        model,
        "blocks.5",
        range(16),
        size=128,
        steps=128,
        stability=False,
        exemplars=(pictures - mean) / std,
    )
    assert result.images.shape == (16, 3, 128, 128)
    ratios = [c.activation_ratio for c in result.checks]
    assert sum(r is not None and r >= 1 for r in ratios) >= 14, ratios


def test_efficientnet_espresso_is_espresso_on_the_median_moved_copy() -> None:
    model = cnnviz.load_model("efficientnet_lite0")
    result = cnnviz.features(model, classes=["espresso"], size=128, steps=128, stability=False)
    check = result.checks[0]
    assert result.units[0].label == "espresso"
    assert check.copies_top1, check
