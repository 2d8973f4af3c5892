"""LIME, KernelSHAP and Shapley Value Sampling over superpixels: the kernels and the sampling by
hand, an additive model whose Shapley values are known exactly, SLIC / Quickshift equal to
scikit-image on the un-normalised picture, equality with captum (same coalitions and orders:
``torch.manual_seed(seed)`` before captum's call on each image), batching, options, clean-up.

Tolerances: the regressions on the same float32 arrays equal captum's to 1e-6. End to end the
forwards run in other batch compositions than captum's one row at a time, which moves logits by
float32 rounding (~1e-7 relative); KernelSHAP's least squares and the Shapley means stay within
1e-5 of the largest attribution (measured ≤ 7e-6), LIME's Lasso within 5e-5 (measured ≤ 1e-5:
its coordinate descent stops at tol = 1e-4 of the duality gap, so a rounding-level change of the
scores can change where it stops).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnviz import explain
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import CnnvizError
from cnnviz.inputs.images import load_image
from cnnviz.inputs.preprocess import Preprocessing, preprocess_image
from cnnviz.methods.registry import make_method
from cnnviz.methods.sampling import SegmentSampling
from cnnviz.methods.superpixels import Superpixels, picture
from cnnviz.methods.surrogate import (
    fit_linear,
    kernel_shap_coalitions,
    kernel_shap_weights,
    lime_coalitions,
    lime_weights,
    shapley_size_probabilities,
)
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules
from test_methods_perturbation import RowCounter, Scaled, close, lite0, small_vgg  # noqa: F401

METHODS = ("lime", "kernelshap", "shapley-sampling")


def _peer(name: str) -> type:
    from captum.attr import KernelShap, Lime, ShapleyValueSampling

    peers: dict[str, type] = {
        "lime": Lime,
        "kernelshap": KernelShap,
        "shapley-sampling": ShapleyValueSampling,
    }
    return peers[name]


def _groups(name: str, x: torch.Tensor, prep: Preprocessing | None = None, **options: object):
    method = make_method(name, **options)
    assert isinstance(method, SegmentSampling)
    return method.superpixels.groups(x, prep)


def _captum(
    model: nn.Module, name: str, x: torch.Tensor, groups: torch.Tensor, targets, samples: int
) -> torch.Tensor:
    """captum's attributions ``(N, T, C, H, W)``, one call per image and target, each after
    ``torch.manual_seed(0)`` (cnnviz's seed 0 for every image)."""
    per_image = []
    for i in range(len(x)):
        per_target = []
        for c in targets[i].tolist():
            torch.manual_seed(0)
            per_target.append(
                _peer(name)(model).attribute(
                    x[i : i + 1],
                    target=c,
                    feature_mask=groups[i : i + 1].unsqueeze(1),
                    baselines=0.0,
                    n_samples=samples,
                )[0]
            )
        per_image.append(torch.stack(per_target))
    return torch.stack(per_image)


# -- by hand ------------------------------------------------------------------------------------


def test_kernels_and_sampling_by_hand() -> None:
    # P(|z| = k) ∝ (F − 1)/(k (F − k)): for F = 4, 3/3, 3/4, 3/3 → 4/11, 3/11, 4/11
    close(shapley_size_probabilities(4), torch.tensor([0.0, 4 / 11, 3 / 11, 4 / 11]), 1e-6)
    z = kernel_shap_coalitions(torch.Generator().manual_seed(0), 4402, 4)
    assert z[0].all() and not z[1].any()
    sizes = z[2:].sum(dim=1)
    assert sizes.min() >= 1 and sizes.max() <= 3
    shares = torch.bincount(sizes, minlength=4)[1:].float() / len(sizes)
    close(shares, torch.tensor([4 / 11, 3 / 11, 4 / 11]), 0.05)  # 4400 draws: σ ≈ 0.007
    weights = kernel_shap_weights(z[:4])
    assert weights[:2].tolist() == [1e6, 1e6] and weights[2:].tolist() == [1.0, 1.0]
    assert kernel_shap_coalitions(torch.Generator(), 5, 1).tolist() == [[True], [False]]
    # LIME: each segment kept with probability ½; π = exp(−d² / (2σ²))
    kept = lime_coalitions(torch.Generator().manual_seed(0), 2000, 10).float().mean()
    assert abs(float(kept) - 0.5) < 0.02
    d = torch.tensor([0.0, 0.5, 1.0])
    close(lime_weights(d, 0.5), torch.tensor([1.0, math.exp(-0.5), math.exp(-2.0)]), 1e-6)


class Additive(nn.Module):
    """Two classes, each a fixed linear function of the pixels: an additive game over any
    segmentation, whose Shapley value of segment f (baseline 0) is Σ_{p ∈ f} w_p x_p."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.weight = nn.Parameter(torch.randn(2, 3 * 8 * 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("kernelshap", {"samples": 64}),  # all 14 proper coalitions of 4 segments drawn
        ("shapley-sampling", {"samples": 3}),
        ("lime", {"samples": 64, "alpha": 0.0}),  # weighted least squares
    ],
)
def test_an_additive_model_gets_its_exact_shapley_values(method: str, options: dict) -> None:
    model, x = Additive(), torch.rand(2, 3, 8, 8)
    e = explain(model, x, method, target=TopK(2), segments="patches", patch=4, **options)
    assert e.targets.indices is not None
    groups = torch.arange(4).view(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    w = model.weight.detach().view(2, 3, 8, 8)
    for i, classes in enumerate(e.targets.indices.tolist()):
        for t, c in enumerate(classes):
            contribution = (w[c] * x[i]).sum(dim=0)
            phi = torch.stack([contribution[groups == f].sum() for f in range(4)])
            close(e.maps[i, t], phi[groups], 1e-4)
    if method == "kernelshap":
        z = kernel_shap_coalitions(torch.Generator().manual_seed(0), 64, 4)
        assert len({tuple(r) for r in z.tolist()}) == 16


def test_fit_equals_captums_interpretable_models() -> None:
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    z = torch.bernoulli(torch.full((50, 6), 0.5))
    y = z @ torch.randn(6, 2) + 0.1 * torch.randn(50, 2)
    w = torch.rand(50)
    for alpha, peer in ((0.01, SkLearnLasso(alpha=0.01)), (0.0, SkLearnLinearRegression())):
        ours = fit_linear(z, y, w, alpha)
        for t in range(2):  # several targets at once = one fit per target
            peer.fit(DataLoader(TensorDataset(z, y[:, t], w), batch_size=50))
            close(ours[t], peer.representation()[0], 1e-6)


# -- superpixels --------------------------------------------------------------------------------


def test_slic_and_quickshift_are_skimages_on_the_unnormalised_picture() -> None:
    from skimage.segmentation import quickshift, slic

    torch.manual_seed(0)
    prep = Preprocessing(input_size=(32, 32))
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    x = (pixels - mean) / std
    close(picture(x, prep), pixels.permute(0, 2, 3, 1), 1e-5)
    low = pixels.amin(dim=(1, 2, 3), keepdim=True)
    scaled = (pixels - low) / (pixels.amax(dim=(1, 2, 3), keepdim=True) - low)
    close(picture(pixels * 4 - 1), scaled.permute(0, 2, 3, 1), 1e-5)  # min-max per image
    ours, counts = Superpixels.parse("slic", None, n_segments=9, compactness=5.0).groups(x, prep)
    quick, _ = Superpixels.parse("quickshift", None, max_dist=6.0).groups(x, prep)
    for i in range(2):
        image = picture(x, prep)[i].double().numpy()
        ref = slic(image, n_segments=9, compactness=5.0, sigma=1.0, start_label=0, channel_axis=-1)
        expected = torch.unique(torch.from_numpy(ref), return_inverse=True)[1]
        assert torch.equal(ours[i], expected) and counts[i] == int(expected.max()) + 1
        ref = quickshift(image, ratio=1.0, kernel_size=5, max_dist=6.0, sigma=1.0)
        assert torch.equal(quick[i], torch.unique(torch.from_numpy(ref), return_inverse=True)[1])
    # patches are Feature Ablation's; a mask's ids are renumbered per image
    patches, counts = Superpixels.parse("patches", None, patch=16).groups(x)
    assert counts == [4, 4] and patches[0, 16, 0] == 2
    mask = torch.stack([torch.full((32, 32), 7), torch.arange(32).repeat(32, 1) // 16 * 5])
    ids, counts = Superpixels.parse(None, mask).groups(x)
    assert counts == [1, 2] and ids[0].max() == 0 and ids[1, 0, 31] == 1


# -- captum -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "samples"), [(m, 3 if m[0] == "s" else 40) for m in METHODS])
def test_matches_captum_on_a_random_vgg(method: str, samples: int) -> None:
    model = Scaled(small_vgg(), 1000.0).eval()  # logits spread enough for the Lasso to keep
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    counted = RowCounter(model)
    e = explain(counted, x, method, target=TopK(2), samples=samples, n_segments=12, batch_size=32)
    groups, counts = _groups(method, x, n_segments=12)
    rows = sum(1 + samples * f if method[0] == "s" else samples for f in counts)
    assert counted.rows[1:] == [32] * (rows // 32) + ([rows % 32] if rows % 32 else [])
    assert e.targets.indices is not None and e.attributions is not None
    ref = _captum(model, method, x, groups, e.targets.indices, samples)
    close(e.attributions, ref, 5e-5 if method == "lime" else 1e-5)


def test_matches_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:  # noqa: F811
    paths = {p.name: p for p in bundled_samples()}
    x = torch.stack(
        [
            preprocess_image(load_image(paths[n]), lite0.preprocessing)
            for n in ("coffee.jpg", "chelsea.jpg")
        ]
    )
    for method, samples in (("lime", 24), ("kernelshap", 24), ("shapley-sampling", 1)):
        e = explain(lite0, x, method, target=TopK(2), samples=samples, n_segments=10)
        groups, _ = _groups(method, x, lite0.preprocessing, n_segments=10)
        assert e.targets.indices is not None
        ref = _captum(lite0.module, method, x, groups, e.targets.indices, samples)
        close(e.attributions, ref, 5e-5 if method == "lime" else 1e-5)
    assert hooked_modules(lite0.module) == []


# -- seeds, options, clean-up -------------------------------------------------------------------


def test_seeded_batch_independent_and_model_left_as_found() -> None:
    model = Scaled(small_vgg(), 1000.0)  # logits spread enough for the Lasso to keep
    model.train()
    frozen = next(model.parameters()).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    for method in METHODS:
        options = {"samples": 2 if method[0] == "s" else 20, "n_segments": 6}
        one = explain(model, x, method, target=[1, 2], **options)
        again = explain(model, x, method, target=[1, 2], **options)
        alone = explain(model, x[1:], method, target=[2], **options)
        other = explain(model, x, method, target=[1, 2], seed=1, **options)
        assert torch.equal(one.maps, again.maps)
        close(alone.maps[0], one.maps[1], 1e-5)  # each image's draws are its own
        assert not torch.equal(one.maps, other.maps)
    assert model.training and not frozen.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert hooked_modules(model) == [] and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"samples": 0}, "samples"),
        ({"segments": "felzenszwalb"}, "slic"),
        ({"segments": "slic", "mask": torch.zeros(4, 4, dtype=torch.long)}, "either"),
        ({"segments": "quickshift", "n_segments": 10}, "n_segments"),
        ({"patch": 8}, "patch"),
        ({"compactness": -1.0}, "compactness"),
        ({"mask": [[0, 1]]}, "tensor"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"baseline": "grey"}, "baseline"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_options_are_refused_at_the_boundary(method: str, options: dict, match: str) -> None:
    with pytest.raises(CnnvizError, match=match):
        make_method(method, **options)


def test_lime_options_and_a_float_mask_are_refused() -> None:
    for options in ({"kernel_width": 0.0}, {"alpha": -0.1}, {"alpha": float("nan")}):
        with pytest.raises(CnnvizError, match=r"kernel_width|alpha"):
            make_method("lime", **options)
    with pytest.raises(CnnvizError, match="kernel_width"):
        make_method("kernelshap", kernel_width=2.0)  # LIME's option only
    with pytest.raises(TypeError, match="integer group ids"):
        explain(small_vgg(), torch.randn(1, 3, 32, 32), "lime", mask=torch.zeros(32, 32))


def test_shapley_samples_add_up_to_the_score_change_also_for_probabilities() -> None:
    """Efficiency: every permutation walk telescopes, Σ_f φ_f = S(x) − S(x′), for logits and
    softmax probabilities alike, whatever the baseline."""
    model = small_vgg()
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    for score, baseline in (("logit", 0.0), ("probability", 0.5)):
        e = explain(model, x, "shapley-sampling", target=TopK(2), samples=2, score=score,
                    baseline=baseline, segments="patches", patch=8)  # fmt: skip
        out = model(x).softmax(1) if score == "probability" else model(x)
        ref = model(torch.full_like(x, baseline))
        ref = ref.softmax(1) if score == "probability" else ref
        assert e.targets.indices is not None
        for i in range(2):
            phi = e.maps[i, :, ::8, ::8].flatten(1)  # one pixel of each 8-px patch
            c = e.targets.indices[i]
            close(phi.sum(dim=1), (out[i, c] - ref[i, c]).detach(), 1e-4)
