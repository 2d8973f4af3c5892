"""Feature Ablation: hand-computed drops, equality with captum's FeatureAblation (patches and a
custom segmentation, several targets in one batch, logits and probabilities) on a random VGG and
on EfficientNet-Lite0, batching and option checks.

Tolerances (float32): as for occlusion, rtol 1e-4 and atol 1e-4 · max|captum|.
"""

from __future__ import annotations

import pytest
import torch

from cnnviz import explain, load_model
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import CnnvizError
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import preprocess_image
from cnnviz.methods.region_ablation import patch_groups
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules
from test_methods_perturbation import Corner, RowCounter, Scaled, close, small_vgg


def test_patch_groups_cut_the_last_patches_at_the_edge() -> None:
    groups = patch_groups(5, 7, 3)  # rows 0-2, 3-4; columns 0-2, 3-5, 6
    assert groups.tolist() == [
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [3, 3, 3, 4, 4, 4, 5],
        [3, 3, 3, 4, 4, 4, 5],
    ]


def test_feature_ablation_by_hand() -> None:
    """Class 1 is the mean of the 2×2 square at (2, 2) of an 8×8 image; 4-px patches: only the
    patch (0, 0) holds that square, so its pixels get the whole score and the others nothing."""
    x = torch.rand(1, 3, 8, 8) + 0.5
    score = float(x[0, :, 2:4, 2:4].mean())
    e = explain(Corner(top=2, left=2, side=2), x, "feature-ablation", target=1, patch=4)
    expected = torch.zeros(8, 8)
    expected[:4, :4] = score
    close(e.maps[0, 0], expected, 1e-6)
    assert e.attributions is not None and e.attributions.shape == (1, 1, 3, 8, 8)
    # a baseline of 1 instead: the drop is score − 1
    shifted = explain(Corner(2, 2, 2), x, "feature-ablation", target=1, patch=4, baseline=1.0)
    close(shifted.maps[0, 0, :4, :4], torch.full((4, 4), score - 1.0), 1e-6)
    # the default grid: 14 patches of ⌈8 / 14⌉ = 1 px, so each pixel is its own group
    fine = explain(Corner(2, 2, 2), x, "feature-ablation", target=1)
    expected = torch.zeros(8, 8)
    expected[2:4, 2:4] = x[0, :, 2:4, 2:4].sum(dim=0) / 12  # one pixel's share of the mean
    close(fine.maps[0, 0], expected, 1e-5)


def test_matches_captum_with_patches_a_segmentation_and_probabilities() -> None:
    from captum.attr import FeatureAblation

    model = small_vgg()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    counted = RowCounter(model)
    e = explain(counted, x, "feature-ablation", target=TopK(2), patch=16, batch_size=10)
    assert max(counted.rows) <= 10 and len(counted.rows) == 1 + 4  # 16 patches, 5 per pass
    assert e.targets.indices is not None
    groups = patch_groups(64, 64, 16).expand(2, 1, 64, 64)
    for k in range(2):
        ref = FeatureAblation(model).attribute(
            x, target=e.targets.indices[:, k].tolist(), feature_mask=groups, baselines=0.0
        )
        close(e.attributions[:, k], ref)
    # a segmentation per image with arbitrary ids (here: rings around the centre, then halves)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    rings = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt().div(9).long() * 7 + 100
    halves = (xx >= 32).long() * 5 - 3
    mask = torch.stack([rings, halves])
    seg = explain(model, x, "feature-ablation", target=[1, 4], mask=mask)
    dense = torch.stack([torch.unique(m, return_inverse=True)[1] for m in mask]).unsqueeze(1)
    ref = FeatureAblation(model).attribute(x, target=[1, 4], feature_mask=dense, baselines=0.0)
    close(seg.attributions[:, 0], ref)
    sharp = Scaled(model, 300.0)  # the random VGG's logits are tiny: make probabilities move
    prob = explain(sharp, x, "feature-ablation", target=[1, 4], patch=16, score="probability")
    ref = FeatureAblation(lambda z: sharp(z).softmax(dim=1)).attribute(
        x, target=[1, 4], feature_mask=groups, baselines=0.0
    )
    close(prob.attributions[:, 0], ref)
    whole = explain(model, x, "feature-ablation", target=[1, 4], patch=16, batch_size=1000)
    chunked = explain(model, x, "feature-ablation", target=[1, 4], patch=16, batch_size=2)
    close(chunked.maps, whole.maps, 1e-5)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    loaded: LoadedModel = load_model("efficientnet_lite0")
    return loaded


def test_matches_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    from captum.attr import FeatureAblation

    paths = {p.name: p for p in bundled_samples()}
    x = torch.stack(
        [
            preprocess_image(load_image(paths[n]), lite0.preprocessing)
            for n in ("coffee.jpg", "chelsea.jpg")
        ]
    )
    e = explain(lite0, x, "feature-ablation", target=TopK(2), patch=56, batch_size=16)
    assert e.targets.indices is not None and e.targets.indices[:, 0].tolist() == [967, 282]
    groups = patch_groups(224, 224, 56).expand(2, 1, 224, 224)
    ref = FeatureAblation(lite0.module).attribute(
        x, target=[967, 282], feature_mask=groups, baselines=0.0
    )
    close(e.attributions[:, 0], ref)
    assert hooked_modules(lite0.module) == []


def test_options_are_checked_at_the_boundary() -> None:
    model, x = small_vgg(), torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="either patch or mask"):
        explain(model, x, "feature-ablation", patch=8, mask=torch.zeros(64, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="integer group ids"):
        explain(model, x, "feature-ablation", mask=torch.zeros(64, 64))
    with pytest.raises(ValueError, match=r"\(H, W\) = \(64, 64\)"):
        explain(model, x, "feature-ablation", mask=torch.zeros(32, 32, dtype=torch.long))
    with pytest.raises((ValueError, CnnvizError), match="patch"):
        explain(model, x, "feature-ablation", patch=0)
