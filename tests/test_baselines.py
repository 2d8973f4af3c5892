"""The shared baseline notion: names, numbers and tensors become the same x′ for every method,
and distributions of references have the shape GradientShap and DeepLiftShap average over."""

from __future__ import annotations

import pytest
import torch

from cnnviz import explain
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.baselines import (
    Baseline,
    BaselineContext,
    baseline_distribution,
    baseline_tensor,
    parse_baseline,
)
from test_methods_perturbation import Corner

PREP = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), input_size=(8, 8))


def test_named_numbers_and_tensors() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    black = baseline_tensor(Baseline.BLACK, x, BaselineContext(PREP))
    assert black[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.0]  # (0 − mean) / std per channel
    assert baseline_tensor(Baseline.BLACK, x).abs().sum() == 0  # no preprocessing: zeros
    assert baseline_tensor(Baseline.MEAN, x, BaselineContext(PREP)).abs().sum() == 0
    assert baseline_tensor(parse_baseline(0.5), x).unique().tolist() == [0.5]
    colour = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    assert baseline_tensor(colour, x)[1, :, 3, 3].tolist() == [1.0, 2.0, 3.0]
    uniform = baseline_tensor(Baseline.UNIFORM, x, BaselineContext(seed=4))
    again = baseline_tensor(Baseline.UNIFORM, x, BaselineContext(seed=4))
    assert torch.equal(uniform, again)
    assert uniform[0].min() >= 0 and uniform[0].max() <= 47  # image 0's own range
    assert uniform[1].min() >= 48 and uniform[1].max() <= 95
    blurred = baseline_tensor(Baseline.BLURRED, x, BaselineContext(blur_sigma=1.0))
    assert blurred.shape == x.shape and not torch.equal(blurred, x)


def test_refusals_name_the_choices() -> None:
    with pytest.raises(ValueError, match="one of black, mean, blurred, uniform"):
        parse_baseline("grey")
    with pytest.raises(TypeError, match="name, a number or a tensor"):
        parse_baseline(True)
    with pytest.raises(ValueError, match="finite"):
        parse_baseline(float("nan"))
    with pytest.raises(ValueError, match="does not broadcast"):
        baseline_tensor(torch.zeros(2, 5), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="blur_sigma"):
        BaselineContext(blur_sigma=0.0)


def test_distributions_are_shared_or_per_image() -> None:
    x = torch.zeros(2, 3, 4, 4)
    shared = baseline_distribution(torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 4, 4), x)
    assert shared.shape == (5, 2, 3, 4, 4) and shared[3, 1].unique().tolist() == [3.0]
    own = baseline_distribution(torch.ones(4, 2, 3, 4, 4), x)
    assert own.shape == (4, 2, 3, 4, 4)
    assert baseline_distribution(Baseline.MEAN, x).shape == (1, 2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 3, 4, 4\) references shared by all images"):
        baseline_distribution(torch.zeros(5, 3, 2, 2), x)


def test_perturbation_methods_take_the_named_baselines() -> None:
    """Occlusion and Feature Ablation fill with the same x′ as Integrated Gradients: "black"
    through the model's preprocessing, here −mean/std = −1 in every channel."""
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(8, 8))
    x = torch.rand(1, 3, 8, 8) + 0.5
    score = float(x[0, :, 2:4, 2:4].mean())
    e = explain(
        Corner(2, 2, 2),
        x,
        "feature-ablation",
        target=1,
        patch=4,
        baseline="black",
        preprocessing=prep,
    )
    assert torch.allclose(e.maps[0, 0, :4, :4], torch.full((4, 4), score + 1.0), atol=1e-6)
    o = explain(
        Corner(2, 2, 2), x, "occlusion", target=1, window=8, baseline="black", preprocessing=prep
    )
    assert torch.allclose(o.maps[0, 0], torch.full((8, 8), score + 1.0), atol=1e-6)
