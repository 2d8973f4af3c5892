"""Perturbation methods (Occlusion, RISE): hand-computed maps, equality with captum's Occlusion,
RISE's formula and localisation, batching, determinism and clean-up.

Tolerances (float32): equal to captum within rtol 1e-4 and atol 1e-4 · max|captum| (score
differences summed in another order); hand-computed values within 1e-5 relative.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnnviz import explain, load_model
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import preprocess_image
from cnnviz.methods.gradients import make_generator
from cnnviz.methods.perturbation import draw_rise_masks, window_starts
from cnnviz.methods.registry import method_names
from cnnviz.models import LoadedModel
from cnnviz.models.vgg import VGG11
from hook_leaks import hooked_modules


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal within ``rtol`` relative, and ``rtol`` of the largest reference magnitude."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


class RowCounter(nn.Module):
    """Wraps a model and records the number of rows of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        out: torch.Tensor = self.inner(x)
        return out


class Corner(nn.Module):
    """Class 0 scores the top-left pixel (all channels), class 1 the mean of a square."""

    def __init__(self, top: int = 0, left: int = 0, side: int = 1) -> None:
        super().__init__()
        self.box = (top, left, side)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, side = self.box
        corner = x[:, :, 0, 0].sum(dim=1)
        square = x[:, :, top : top + side, left : left + side].mean(dim=(1, 2, 3))
        return self.scale * torch.stack([corner, square], dim=1)


class Scaled(nn.Module):
    """``factor`` times the logits of ``inner``."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * self.factor
        return out


def small_vgg() -> VGG11:
    torch.manual_seed(0)
    return VGG11(batch_norm=True, width=1 / 8, hidden=64, pool_size=2, num_classes=6).eval()


# -- occlusion ----------------------------------------------------------------------------------


def test_occlusion_of_a_one_pixel_score_by_hand() -> None:
    # 8×8, window 4, stride 2: windows start at 0, 2, 4 on each axis; pixel (0, 0) lies only in
    # the window at (0, 0), whose removal drops the score by s = Σ_c x[c, 0, 0]. A pixel covered
    # by k_i · k_j windows gets s / (k_i k_j) if the (0, 0) window covers it, else 0.
    assert window_starts(8, 4, 2) == [0, 2, 4]
    x = torch.rand(1, 3, 8, 8) + 0.5
    s = float(x[0, :, 0, 0].sum())
    e = explain(Corner(), x, "occlusion", target=0, window=4, stride=2)
    k = torch.tensor([1.0, 1, 2, 2, 2, 2, 1, 1])  # windows covering each row (column)
    inside = torch.zeros(8)
    inside[:4] = 1
    expected = s * torch.outer(inside / k, inside / k)
    close(e.maps[0, 0], expected, 1e-5)
    assert e.attributions is not None
    close(e.attributions[0, 0], expected.expand(3, 8, 8), 1e-5)  # repeated over colour
    assert e.display.value == "positive"
    # the last window is clipped at the border: 7 px, window 4, stride 2 → starts 0, 2, 4
    assert window_starts(7, 4, 2) == [0, 2, 4]


def test_occlusion_matches_captum_with_several_targets_and_baselines() -> None:
    from captum.attr import Occlusion

    model = small_vgg()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    counted = RowCounter(model)
    e = explain(counted, x, "occlusion", target=TopK(2), window=16, stride=8, batch_size=20)
    assert max(counted.rows) <= 20
    assert len(counted.rows) == 1 + 5  # clean pass + ⌈49 windows / 10 per pass⌉; both targets
    assert e.targets.indices is not None
    ref = Occlusion(model).attribute(
        x,
        target=e.targets.indices[:, 1].tolist(),  # the second target of each image
        sliding_window_shapes=(3, 16, 16),
        strides=(3, 8, 8),
        baselines=0.0,
    )
    close(e.attributions[:, 1], ref)
    # odd window and stride (clipped last windows), a per-channel baseline, probabilities
    fill = torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1)
    odd = explain(
        model, x, "occlusion", target=[1, 4], window=(15, 20), stride=(7, 9), baseline=fill
    )
    ref = Occlusion(model).attribute(
        x, target=[1, 4], sliding_window_shapes=(3, 15, 20), strides=(3, 7, 9), baselines=fill
    )
    close(odd.attributions[:, 0], ref)
    sharp = Scaled(model, 300.0)  # the random VGG's logits are tiny: make probabilities move
    prob = explain(sharp, x, "occlusion", target=[1, 4], stride=16, score="probability")
    ref = Occlusion(lambda z: sharp(z).softmax(dim=1)).attribute(
        x, target=[1, 4], sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16), baselines=0.0
    )
    close(prob.attributions[:, 0], ref)
    chunked = explain(model, x, "occlusion", target=[1, 4], stride=16, batch_size=3)
    whole = explain(model, x, "occlusion", target=[1, 4], stride=16, batch_size=1000)
    close(chunked.maps, whole.maps, 1e-5)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    loaded: LoadedModel = load_model("efficientnet_lite0")
    return loaded


def test_occlusion_matches_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    from captum.attr import Occlusion

    paths = {p.name: p for p in bundled_samples()}
    x = torch.stack(
        [
            preprocess_image(load_image(paths[n]), lite0.preprocessing)
            for n in ("coffee.jpg", "chelsea.jpg")
        ]
    )
    e = explain(lite0, x, "occlusion", target=TopK(2), window=112, stride=56, batch_size=18)
    assert e.targets.indices is not None
    assert e.targets.indices[:, 0].tolist() == [967, 282]  # espresso, tiger cat
    ref = Occlusion(lite0.module).attribute(
        x,
        target=[967, 282],
        sliding_window_shapes=(3, 112, 112),
        strides=(3, 56, 56),
        baselines=0.0,
    )
    close(e.attributions[:, 0], ref)
    # hiding the cat lowers the cat score: the strongest evidence lies in the picture's middle
    cat = e.maps[1, 0]
    assert cat[56:168, 56:168].mean() > cat.mean()
    assert hooked_modules(lite0.module) == []


# -- RISE ---------------------------------------------------------------------------------------


def test_rise_masks_are_smooth_shifted_and_keep_p_of_the_image() -> None:
    masks = draw_rise_masks(
        make_generator(0, torch.device("cpu")), 400, grid=7, p=0.5, size=(56, 56)
    )
    assert masks.shape == (400, 56, 56)
    assert masks.min() >= 0
    assert masks.max() <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.03
    assert ((masks > 0.01) & (masks < 0.99)).float().mean() > 0.3  # bilinear, not binary
    again = draw_rise_masks(
        make_generator(0, torch.device("cpu")), 400, grid=7, p=0.5, size=(56, 56)
    )
    assert torch.equal(masks, again)
    # the random shift: the cell edges (where a mask changes) are not at the same place in all
    edges = (masks[:, :, 1:] - masks[:, :, :-1]).abs().sum(dim=(0, 1))
    assert (edges > 0).all()


def test_rise_equals_its_formula_and_finds_the_square() -> None:
    # logits: class 1 is the mean of x over the square rows/cols 20…35 of a 56×56 input of ones
    model, x = Corner(top=20, left=20, side=16), torch.ones(2, 3, 56, 56)
    count, p = 1000, 0.5
    e = explain(
        model, x, "rise", target=1, masks=count, grid=7, p=p, seed=3, score="logit", batch_size=50
    )
    masks = draw_rise_masks(
        make_generator(3, torch.device("cpu")), count, grid=7, p=p, size=(56, 56)
    )
    scores = masks[:, 20:36, 20:36].mean(dim=(1, 2))  # the model's score on x ⊙ M_i
    expected = torch.einsum("k,khw->hw", scores, masks) / (count * p)
    close(e.maps[0, 0], expected, 1e-5)
    close(e.maps[1, 0], expected, 1e-5)
    # E[map] = p + Cov(S, M_pixel)/p: 0.5 far from the square, more inside it
    inside, outside = e.maps[0, 0, 20:36, 20:36].mean(), e.maps[0, 0, :, :12].mean()
    assert inside > outside + 0.05  # measured 0.60 vs 0.51 (seeds 0–4: differences 0.08–0.11)
    row, col = divmod(int(e.maps[0, 0].argmax()), 56)
    assert 20 <= row < 36
    assert 20 <= col < 36
    other = explain(model, x, "rise", target=1, masks=count, seed=4, score="logit")
    assert not torch.allclose(other.maps, e.maps)
    same = explain(model, x, "rise", target=1, masks=count, seed=3, score="logit", batch_size=7)
    close(same.maps, e.maps, 1e-6)  # deterministic for a seed, whatever the batch size


def test_rise_probability_scores_and_targets_share_the_forward_passes() -> None:
    model = small_vgg()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    counted = RowCounter(model)
    e = explain(counted, x, "rise", target=TopK(3), masks=60, grid=4, batch_size=40)
    assert counted.rows == [2] + [40] * 3  # clean pass, then 120 rows for all 3 targets at once
    assert e.maps.shape == (2, 3, 64, 64)
    assert e.display.value == "positive"
    masks = draw_rise_masks(
        make_generator(0, torch.device("cpu")), 60, grid=4, p=0.5, size=(64, 64)
    )
    assert e.targets.indices is not None
    with torch.no_grad():
        probs = model((x.unsqueeze(0) * masks[:, None, None]).flatten(0, 1)).softmax(dim=1)
    probs = probs.view(60, 2, -1).gather(2, e.targets.indices.expand(60, 2, 3))
    close(e.maps, torch.einsum("knt,khw->nthw", probs, masks) / 30, 1e-5)


# -- all perturbation methods: state, dtype, options --------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("occlusion", {"window": 16, "stride": 16}),
        ("rise", {"masks": 20, "grid": 4}),
        ("feature-ablation", {"patch": 16}),
    ],
)
def test_model_left_as_found_and_float64_works(method: str, options: dict[str, Any]) -> None:
    model = small_vgg().double()
    model.train()
    bn1 = model.get_submodule("backbone.bn1")
    bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        e = explain(model, x, method, target=TopK(2), **options)
    assert e.maps.dtype == torch.float64
    assert e.maps.shape == (1, 2, 64, 64)
    assert model.training
    assert not bn1.training
    assert hooked_modules(model) == []
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_methods_are_registered_and_options_are_validated() -> None:
    assert {"occlusion", "rise"} <= set(method_names())
    model, x = Corner(), torch.ones(1, 3, 8, 8)
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("occlusion", {"window": 0}, "window must be"),
        ("occlusion", {"window": (4, 4, 4)}, "one int or"),
        ("occlusion", {"window": 9}, "larger than the input"),
        ("occlusion", {"score": "margin"}, "score must be"),
        ("occlusion", {"window": 4, "stride": 5}, "larger than window"),
        ("occlusion", {"window": 4, "baseline": torch.zeros(2, 5, 5)}, "does not broadcast"),
        ("rise", {"p": 0.0}, "p .* must be in"),
        ("rise", {"masks": 0}, "masks must be"),
    ]
    for method, options, message in bad:
        with pytest.raises(ValueError, match=message):
            explain(model, x, method, **options)
