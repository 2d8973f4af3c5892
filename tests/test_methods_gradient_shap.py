"""GradientShap: hand-computed values on a quadratic score, equality with captum's GradientShap
(captum's own draws replayed through :meth:`GradientShap.draws`) on a random VGG and on
EfficientNet-Lite0 with several targets per image, determinism of the seeded draws, options
refused and the model left as found.

Tolerances (float32): rtol 1e-5 and atol 1e-5 · max|captum| (measured: 2e-7 on the VGG,
below 1e-6 on Lite0; the same points, grads and products in another summation order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import explain, load_model
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import preprocess_image
from cnnviz.methods.gradient_shap import GradientShap, ShapDraw
from cnnviz.methods.registry import MethodOptionError, make_method
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules
from test_methods_perturbation import RowCounter, close, small_vgg


def random_bn_vgg() -> nn.Module:
    """``small_vgg`` with random batch-norm statistics and affine terms (not the identity, so
    the network is not positively homogeneous)."""
    model = small_vgg()
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)
    return model.eval()


class Replayed(GradientShap):
    """GradientShap fed given draws (the documented seam)."""

    def __init__(self, replay: list[ShapDraw], **options: Any) -> None:
        super().__init__(samples=len(replay), **options)
        self.replay = replay

    def draws(self, x: torch.Tensor, references: int) -> Iterator[ShapDraw]:
        yield from self.replay


def captum_draws(
    seed: int, images: int, samples: int, references: int, stdev: float, shape: tuple[int, ...]
) -> list[ShapDraw]:
    """The draws captum's GradientShap makes after ``np.random.seed(seed)`` and
    ``torch.manual_seed(seed)``, in its order: NumPy's reference indices (NoiseTunnel's
    baseline expansion), torch's noise, then NumPy's α (InputBaselineXGradient); its rows are
    image-major (row = image · samples + sample)."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    rows = images * samples
    index = torch.from_numpy(np.random.choice(references, rows)).view(images, samples)
    noise = torch.normal(0, torch.tensor(stdev).repeat((rows, *shape)))
    noise = noise.view(images, samples, *shape)
    alphas = torch.from_numpy(np.random.uniform(0.0, 1.0, rows)).float().view(images, samples)
    return [ShapDraw(index[:, s], noise[:, s], alphas[:, s]) for s in range(samples)]


def captum_shap(
    model: nn.Module,
    x: torch.Tensor,
    refs: torch.Tensor,
    seed: int,
    samples: int,
    stdev: float,
    classes: torch.Tensor,
) -> torch.Tensor:
    """captum's attributions ``(N, T, C, H, W)``, reseeded for each target column."""
    from captum.attr import GradientShap as CaptumShap

    columns = []
    for k in range(classes.shape[1]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        columns.append(
            CaptumShap(model).attribute(
                x, refs, n_samples=samples, stdevs=stdev, target=classes[:, k].tolist()
            )
        )
    return torch.stack(columns, dim=1)


class HalfSquare(nn.Module):
    """Class 0 scores ½ Σ x², class 1 the sum of x: gradients x and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.scale * torch.stack([0.5 * flat.square().sum(1), flat.sum(1)], dim=1)


def test_gradient_shap_by_hand_on_a_quadratic_score() -> None:
    """S = ½ Σ x²: ∂S/∂x at p is p, so a = mean_s (x̃ − r_s) ⊙ (α_s x̃ + (1 − α_s) r_s) with the
    replayed draws; S = Σ x: a = mean_s (x̃ − r_s)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    refs = torch.randn(3, 3, 4, 4)
    replay = [
        ShapDraw(torch.tensor([2, 0]), 0.1 * torch.randn(2, 3, 4, 4), torch.tensor([0.25, 0.5])),
        ShapDraw(torch.tensor([1, 1]), 0.1 * torch.randn(2, 3, 4, 4), torch.tensor([1.0, 0.0])),
    ]
    e = explain(HalfSquare(), x, Replayed(replay, baseline=refs, batch_size=2), target=TopK(2))
    assert e.attributions is not None and e.targets.indices is not None
    expected_sq, expected_lin = torch.zeros_like(x), torch.zeros_like(x)
    for d in replay:
        noisy, r = x + d.noise, refs[d.references]
        a = d.alphas.view(-1, 1, 1, 1)
        expected_sq += (noisy - r) * (a * noisy + (1 - a) * r) / 2
        expected_lin += (noisy - r) / 2
    by_class = {int(c): k for k, c in enumerate(e.targets.indices[0])}
    assert e.targets.indices[1].tolist() == e.targets.indices[0].tolist()
    close(e.attributions[:, by_class[0]], expected_sq, 1e-6)
    close(e.attributions[:, by_class[1]], expected_lin, 1e-6)
    close(e.maps[:, by_class[1]], expected_lin.sum(dim=1), 1e-6)
    # one reference and no noise: the linear score's attribution is exactly x − x′
    one = explain(HalfSquare(), x, "gradientshap", target=1, baseline=0.5, samples=3)
    close(one.maps[:, 0], (x - 0.5).sum(dim=1), 1e-6)


def test_equal_to_captum_on_a_random_vgg_with_several_targets() -> None:
    model = random_bn_vgg()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    refs = torch.randn(4, 3, 64, 64) * 0.3
    samples, stdev = 5, 0.1
    replay = captum_draws(3, 2, samples, 4, stdev, (3, 64, 64))
    counted = RowCounter(model)
    method = Replayed(replay, stdevs=stdev, baseline=refs, batch_size=4)
    e = explain(counted, x, method, target=TopK(2))
    assert counted.rows == [2, 4, 4, 2]  # the clean pass, then 5 samples × 2 images by 4 rows
    assert e.attributions is not None and e.targets.indices is not None
    ref = captum_shap(model, x, refs, 3, samples, stdev, e.targets.indices)
    close(e.attributions, ref, 1e-5)


def test_equal_to_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    paths = {p.name: p for p in bundled_samples()}
    x = torch.stack(
        [
            preprocess_image(load_image(paths[n]), lite0.preprocessing)
            for n in ("coffee.jpg", "chelsea.jpg")
        ]
    )
    refs = torch.stack([torch.zeros(3, 224, 224), x.flip(0)[0] * 0.5])  # two references
    replay = captum_draws(7, 2, 3, 2, 0.2, (3, 224, 224))
    e = explain(lite0, x, Replayed(replay, stdevs=0.2, baseline=refs), target=TopK(2))
    assert e.attributions is not None and e.targets.indices is not None
    ref = captum_shap(lite0.module, x, refs, 7, 3, 0.2, e.targets.indices)
    close(e.attributions, ref, 1e-5)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    loaded: LoadedModel = load_model("efficientnet_lite0")
    return loaded


def test_draws_are_seeded_and_independent_of_the_batch_size() -> None:
    model = random_bn_vgg()
    x = torch.randn(2, 3, 32, 32)
    refs = torch.randn(5, 3, 32, 32)
    options: dict[str, Any] = {"samples": 6, "stdevs": 0.2, "baseline": refs}
    a = explain(model, x, "gradientshap", target=1, batch_size=2, **options)
    b = explain(model, x, "gradientshap", target=1, batch_size=64, **options)
    c = explain(model, x, "gradientshap", target=1, seed=1, **options)
    close(a.maps, b.maps, 1e-6)
    assert not torch.allclose(a.maps, c.maps)
    draws = list(GradientShap(samples=4, stdevs=0.5, seed=3).draws(x, 5))
    assert len(draws) == 4 and all(0 <= int(d.references.max()) < 5 for d in draws)
    assert all(bool(((d.alphas >= 0) & (d.alphas <= 1)).all()) for d in draws)
    assert 0.3 < float(torch.stack([d.noise for d in draws]).std()) < 0.7
    no_noise = next(GradientShap(samples=1).draws(x, 1))
    assert not no_noise.noise.any()


def test_options_refused_and_model_left_as_found() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"samples": 0}, "samples"),
        ({"stdevs": -1.0}, "stdevs"),
        ({"stdevs": float("nan")}, "stdevs"),
        ({"stdevs": "0.1"}, "stdevs"),
        ({"seed": 1.5}, "seed"),
        ({"baseline": "grey"}, "baseline"),
        ({"batch_size": 0}, "batch_size"),
        ({"reduction": "mean"}, "reduction"),
        ({"radius": 3}, "radius"),
    ]
    for options, message in bad:
        with pytest.raises(MethodOptionError, match=message):
            make_method("gradientshap", **options)
    with pytest.raises(ValueError, match="do not fit the input"):
        explain(
            HalfSquare(), torch.ones(1, 3, 4, 4), "gradientshap", baseline=torch.ones(2, 3, 5, 4)
        )
    model = random_bn_vgg().double()
    model.train()
    bn1 = model.get_submodule("backbone.bn1")
    bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.inference_mode():
        e = explain(model, x, "gradientshap", target=TopK(2), samples=3, stdevs=0.1)
    assert e.maps.dtype == torch.float64 and e.maps.shape == (1, 2, 32, 32)
    assert model.training and not bn1.training
    assert hooked_modules(model) == []
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
