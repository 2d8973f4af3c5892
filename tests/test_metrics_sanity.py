"""Sanity checks (Adebayo et al. 2018) on shapes_vgg11: the user's model stays untouched, the
similarities are what they claim, and the paper's qualitative finding is measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnviz.methods.postprocess import Display
from cnnviz.metrics import sanity
from cnnviz.render import figures
from cnnviz.runs import randomization

N_IMAGES = 8


@pytest.fixture(scope="module")
def shapes() -> tuple[torch.nn.Module, torch.Tensor]:
    from cnnviz.data.shapes import heldout_shapes
    from cnnviz.models import load_model
    from cnnviz.models.shapes_vgg11 import normalize_shapes

    model = load_model("shapes_vgg11").module
    return model, normalize_shapes(heldout_shapes(N_IMAGES).images)


@pytest.fixture(scope="module")
def cascading(shapes: tuple[torch.nn.Module, torch.Tensor]) -> dict[str, sanity.SanityResult]:
    model, x = shapes
    methods = ["saliency", "gradcam", "guided-backprop"]  # an unregistered one raises here
    return randomization.parameter_randomization(model, x, methods, mode="cascading", seed=0)


def test_similarity_of_known_pairs() -> None:
    torch.manual_seed(0)
    a = torch.randn(32, 32)
    same = sanity.similarity(a, a, Display.ABSOLUTE)
    assert same == pytest.approx({"spearman_abs": 1.0, "spearman": 1.0, "ssim": 1.0, "hog": 1.0})
    flipped = sanity.similarity(a, -a, Display.ABSOLUTE)
    assert flipped["spearman"] == pytest.approx(-1.0)
    assert flipped["spearman_abs"] == pytest.approx(1.0)
    assert flipped["ssim"] == pytest.approx(1.0)  # |a| is what is drawn
    ramp = torch.arange(32.0).expand(32, 32)
    assert sanity.similarity(ramp, -ramp, Display.SIGNED)["spearman"] == pytest.approx(-1.0)
    flat = sanity.similarity(a, torch.zeros(32, 32), Display.POSITIVE)
    assert all(math.isnan(v) for v in flat.values())  # undefined, never a made-up number
    small = sanity.similarity(a[:8, :8], a[:8, :8], Display.ABSOLUTE)
    assert small["ssim"] == pytest.approx(1.0) and math.isnan(small["hog"])  # HOG needs 16 px


def test_groups_follow_execution_order_and_join_batchnorm(
    shapes: tuple[torch.nn.Module, torch.Tensor],
) -> None:
    model, x = shapes
    groups = randomization.randomization_groups(model, x)
    assert [g.label for g in groups][:3] == ["backbone.conv1", "backbone.conv2", "backbone.conv3_1"]
    assert groups[0].modules == ("backbone.conv1", "backbone.bn1")
    assert [g.label for g in groups][-3:] == ["classifier.0", "classifier.3", "classifier.6"]
    assert len(groups) == 11


def test_users_model_is_untouched(shapes: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = shapes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    bn1, conv1 = model.get_submodule("backbone.bn1"), model.get_submodule("backbone.conv1")
    bn1.eval()  # a mixed state must survive too
    rng = torch.get_rng_state()
    try:
        results = randomization.parameter_randomization(
            model, x[:2], ["gradcam"], mode="independent", metrics=("spearman",)
        )
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert model.training and not bn1.training and conv1.training
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        model.eval()
    steps = results["gradcam"].steps
    assert steps[0] == "backbone.conv1" and steps[-1] == "classifier.6"
    # Each layer gets the same random weights in both modes: randomising only the logits layer
    # is cascading's first step and independent's last.
    first = randomization.parameter_randomization(
        model, x[:2], ["gradcam"], mode="cascading", metrics=("spearman",)
    )
    np.testing.assert_allclose(
        first["gradcam"].similarity["spearman"][:, 0],
        results["gradcam"].similarity["spearman"][:, -1],
        atol=1e-9,
    )


def test_cascading_randomisation_against_the_paper(
    cascading: dict[str, sanity.SanityResult],
) -> None:
    """Adebayo et al.: under full cascading randomisation the rank correlation of |map| with the
    original falls below 0.3 for gradients and Grad-CAM and stays above it for guided backprop.

    On shapes_vgg11 (these 8 images, seed 0; more in docs/evaluation.md) the first half
    reproduces: saliency 0.19, Grad-CAM 0.06. The second does not: guided backprop falls to
    0.20 once the first convolutions are random too. What does reproduce is its insensitivity to
    the upper layers: with the whole classifier random it still correlates 0.99 with the
    original (saliency 0.65, Grad-CAM 0.47), and over the whole cascade it stays the highest
    (mean 0.69 against 0.45 and 0.27).
    """
    assert set(cascading) == {"saliency", "gradcam", "guided-backprop"}
    full = {name: float(np.nanmean(r.full_depth("spearman_abs"))) for name, r in cascading.items()}
    assert full["saliency"] < 0.3, full
    assert full["gradcam"] < 0.3, full
    curve = {name: r.mean("spearman_abs") for name, r in cascading.items()}
    assert curve["saliency"].mean() > curve["gradcam"].mean() + 0.1, curve
    # Guided backprop: the paper's > 0.3 at full depth does not reproduce here (0.20) ...
    assert full["guided-backprop"] == pytest.approx(0.20, abs=0.05), full
    # ... but its blindness to the classifier does: 0.99 with classifier.0 … 6 all random.
    classifier_random = {name: float(c[2]) for name, c in curve.items()}
    assert classifier_random["guided-backprop"] > 0.95, classifier_random
    assert classifier_random["saliency"] < 0.9 and classifier_random["gradcam"] < 0.9
    assert curve["guided-backprop"].mean() == pytest.approx(0.69, abs=0.05), curve
    assert curve["guided-backprop"].mean() > curve["saliency"].mean() + 0.1, curve


def test_cascading_result_shapes_and_figures(cascading: dict[str, sanity.SanityResult]) -> None:
    result = cascading["gradcam"]
    assert result.steps[0] == "classifier.6" and result.steps[-1] == "backbone.conv1"
    assert result.layer == "backbone.bn5_2"
    for metric in sanity.SIMILARITIES:
        assert result.similarity[metric].shape == (N_IMAGES, 11)
    assert result.pictures.shape == (12, N_IMAGES, 64, 64)
    assert result.pictures.min() >= 0.0 and result.pictures.max() <= 1.0
    fig = figures.similarity_figure(cascading)
    assert len(fig.axes) == 4
    assert len(fig.axes[0].lines) == len(cascading) + 1  # one per method, plus the zero line
    maps = figures.sanity_maps_figure(cascading)
    # 12 maps per method, and a colour bar per row: Grad-CAM is drawn ReLU'd, the others |map|.
    assert len(maps.axes) == len(cascading) * 12 + len(cascading)
    bars = [ax.get_ylabel().replace("\n", " ") for ax in maps.axes if not ax.images]
    expected = {
        "gradcam": "red: more evidence · blue: none",
        "saliency": "red: more influence, for or against · blue: none",
        "guided-backprop": "red: more influence, for or against · blue: none",
    }
    assert bars == [expected[name] for name in cascading]
    shown = result.shown()  # Grad-CAM: not clipped, so the pictures as they are
    np.testing.assert_array_equal(shown, result.pictures)
    clipped = cascading["saliency"].shown()
    assert (clipped >= cascading["saliency"].pictures).all() and clipped.max() == 1.0


def test_data_randomisation_changes_the_maps(shapes: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = shapes
    random_model, metrics = randomization.train_random_labels(seed=1, n_train=256, epochs=3)
    assert metrics["heldout_accuracy"] < 0.35  # the labels carried no information
    results = randomization.compare_models(model, random_model, x, ["saliency", "gradcam"])
    for result in results.values():
        assert result.similarity["spearman_abs"].shape == (N_IMAGES, 1)
    gradcam = float(np.nanmean(results["gradcam"].similarity["spearman_abs"]))
    saliency = float(np.nanmean(results["saliency"].similarity["spearman_abs"]))
    assert gradcam < 0.5 and saliency < 0.5, (gradcam, saliency)
