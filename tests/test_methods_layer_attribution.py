"""Layer Conductance, Internal Influence and Neuron Integrated Gradients: closed forms on a
linear layer (and a quadratic head, whose left Riemann–Stieltjes sum misses exactly 1/steps),
equality with captum's LayerConductance, InternalInfluence and NeuronIntegratedGradients on a
random VGG (several rules, a baseline tensor) and on EfficientNet-Lite0 with several targets per
image, the neuron's labels and default, options refused and the model left as found.

Tolerances (float32): rtol 1e-5 and atol 1e-5 · max|captum| (measured: below 1e-6 on the VGG,
3e-6 on Lite0); the hand values to 1e-5. On Lite0 the baseline is the blurred photo and the
layer blocks.5: from a black baseline at blocks.4 the first nodes lie near x = 0, where the
channels-last rounding of the no-grad part before the layer (1e-6 of |A|, see
cnnviz.capture.hooks) flips ReLU6 units of the rest of the network, and conductance and
influence then differ from captum's by up to 2e-3 of their largest value (measured; the same
run in the standard layout is bit-equal).
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
from cnnviz.inputs.preprocess import gaussian_blur, preprocess_image
from cnnviz.methods.integrated import Quadrature, nodes_and_weights
from cnnviz.methods.registry import MethodOptionError, get_method, make_method
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules
from test_methods_gradient_shap import random_bn_vgg
from test_methods_perturbation import RowCounter, close

LAYER_METHODS = ["layer-conductance", "internal-influence", "neuron-integrated-gradients"]


class LinearLayer(nn.Module):
    """``lin``: a bias-free 1 × 1 convolution 2 → 3 channels; class c scores
    Σ V[c] ⊙ lin(x) (``square=False``) or ½ ‖lin(x)‖² (``square=True``, class 0)."""

    def __init__(self, square: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.lin = nn.Conv2d(2, 3, 1, bias=False)
        self.lin.weight.data = torch.randn(3, 2, 1, 1, generator=generator)
        self.v = nn.Parameter(torch.randn(2, 3, 4, 4, generator=generator))
        self.square = square

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lin(x)
        if self.square:
            return 0.5 * a.square().flatten(1).sum(1, keepdim=True).repeat(1, 2)
        return torch.einsum("nchw,kchw->nk", a, self.v)


def complete(gap: torch.Tensor, delta_f: torch.Tensor) -> bool:
    """The completeness gap within 1e-5 of the score change (float32 rounding)."""
    return bool((gap.abs() <= 1e-5 * delta_f.abs().clamp_min(1)).all())


def test_closed_forms_on_a_linear_layer() -> None:
    """A = W x is linear and ∂S_c/∂A = V[c]: conductance is V[c] ⊙ (A(γ(α_n)) − A(γ(α_0))),
    exactly V[c] ⊙ (A(x) − A(x′)) for the trapezoid nodes (completeness exact) and
    (α_n − α_0) of it for Gauss-Legendre's; internal influence is V[c] (Σ w = 1)."""
    model = LinearLayer()
    torch.manual_seed(1)
    x, x0 = torch.randn(2, 2, 4, 4), 0.3
    w = model.lin.weight.detach()[:, :, 0, 0]
    change = torch.einsum("ck,nkhw->nchw", w, x - x0)  # A(x) − A(x′)
    v = model.v.detach()
    options: dict[str, Any] = {"layer": "lin", "target": [1, 0], "baseline": x0, "steps": 6}
    e = explain(model, x, "layer-conductance", quadrature="riemann_trapezoid", **options)
    assert e.layer == "lin" and e.maps.shape == (2, 1, 4, 4)
    expected = torch.stack([v[1] * change[0], v[0] * change[1]]).unsqueeze(1)
    close(e.extras["conductance"], expected, 1e-5)
    close(e.maps, expected.sum(dim=2), 1e-5)
    close(e.extras["delta_f"], expected.sum(dim=(2, 3, 4)), 1e-5)
    assert complete(e.extras["completeness_gap"], e.extras["delta_f"])
    gauss = explain(model, x, "layer-conductance", **options)  # default: gausslegendre
    nodes = nodes_and_weights(Quadrature.GAUSS_LEGENDRE, 7)[0]
    close(gauss.extras["conductance"], expected * float(nodes[-1] - nodes[0]), 1e-5)
    influence = explain(model, x, "internal-influence", **options)
    close(influence.extras["influence"], torch.stack([v[1], v[0]]).unsqueeze(1), 1e-5)
    close(influence.maps, torch.stack([v[1], v[0]]).sum(dim=1).unsqueeze(1), 1e-5)


def test_conductance_of_a_quadratic_head_misses_one_step() -> None:
    """S = ½ ‖A‖², A linear, x′ = 0: Σ_k A_k · (A_{k+1} − A_k) on uniform nodes is
    ΔS − ½ Σ ‖ΔA‖² = ΔS (1 − 1/steps)."""
    model = LinearLayer(square=True)
    x = torch.randn(1, 2, 4, 4)
    for steps in (4, 32):
        e = explain(
            model,
            x,
            "layer-conductance",
            layer="lin",
            target=0,
            baseline=0.0,
            steps=steps,
            quadrature="riemann_trapezoid",
        )
        relative = e.extras["completeness_gap"] / e.extras["delta_f"]
        close(relative, torch.full((1, 1), -1 / steps), 1e-5)


def test_neuron_integrated_gradients_of_a_linear_unit() -> None:
    """u = A_cij = Σ_k W_ck x_kij: a = (x − x′) ⊙ W_c at (i, j), zero elsewhere; the channel's
    spatial mean: a = (x − x′) ⊙ W_c / (h w) everywhere. Exact for any rule."""
    model = LinearLayer()
    x = torch.randn(2, 2, 4, 4)
    w = model.lin.weight.detach()[:, :, 0, 0]
    e = explain(model, x, "neuron-integrated-gradients", layer="lin", neuron=(2, 1, 3), steps=3)
    assert e.attributions is not None
    expected = torch.zeros_like(x)
    expected[:, :, 1, 3] = x[:, :, 1, 3] * w[2]
    close(e.attributions[:, 0], expected, 1e-5)
    assert e.targets.labels == (("unit (2, 1, 3) of lin",),) * 2
    assert e.targets.indices is None and e.probabilities is None
    close(e.scores[:, 0], (x[:, :, 1, 3] * w[2]).sum(dim=1), 1e-5)
    assert complete(e.extras["completeness_gap"], e.extras["delta_f"])
    channel = explain(model, x, "neuron-integrated-gradients", layer="lin", neuron=1, steps=2)
    assert channel.attributions is not None
    close(channel.attributions[:, 0], x * w[1].view(1, 2, 1, 1) / 16, 1e-5)
    assert channel.targets.labels[0] == ("unit 1 of lin",)
    # by default each image explains its most active channel (largest spatial mean)
    default = explain(model, x, "neuron-integrated-gradients", layer="lin", target=5)
    means = torch.einsum("ck,nkhw->nc", w, x) / 16
    assert default.extras["channel"][:, 0].tolist() == means.argmax(dim=1).tolist()
    assert default.targets.labels[1] == (f"unit {int(means[1].argmax())} of lin",)
    with pytest.raises(ValueError, match="outside layer 'lin'"):
        explain(model, x, "neuron-integrated-gradients", layer="lin", neuron=(0, 4, 0))


@pytest.mark.parametrize("quadrature", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
def test_equal_to_captum_on_a_random_vgg(quadrature: str) -> None:
    from captum.attr import InternalInfluence, LayerConductance, NeuronIntegratedGradients

    model = random_bn_vgg()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    x0 = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1)
    name = "backbone.conv4_2"
    layer = model.get_submodule(name)
    options: dict[str, Any] = {
        "layer": name,
        "target": TopK(2),
        "steps": 8,
        "quadrature": quadrature,
        "baseline": x0,
        "batch_size": 10,
    }
    counted = RowCounter(model)
    conductance = explain(counted, x, "layer-conductance", **options)
    assert counted.rows == [2, 10, 8, 2]  # clean, 9 nodes × 2 images by 5 nodes, x′
    influence = explain(model, x, "internal-influence", **options)
    classes = conductance.targets.indices
    assert classes is not None
    base = x0.expand(2, 3, 32, 32)
    # captum's trapezoid step sizes (influence, neuron IG) sum to (steps − 1)/steps, ours to 1
    scale = 7 / 8 if quadrature == "riemann_trapezoid" else 1.0
    for k in range(2):
        c = classes[:, k].tolist()
        kw = {"baselines": base, "target": c, "n_steps": 8, "method": quadrature}
        ref = LayerConductance(model, layer).attribute(x, **kw)
        close(conductance.extras["conductance"][:, k], ref, 1e-5)
        close(conductance.maps[:, k], ref.sum(dim=1), 1e-5)
        ref = InternalInfluence(model, layer).attribute(x, **kw)
        close(influence.extras["influence"][:, k] * scale, ref, 1e-5)
    del options["target"]
    neuron = NeuronIntegratedGradients(model, layer)
    kw = {"baselines": base, "n_steps": 8, "method": quadrature}
    unit = explain(model, x, "neuron-integrated-gradients", neuron=(3, 1, 2), **options)
    assert unit.attributions is not None
    close(unit.attributions[:, 0] * scale, neuron.attribute(x, (3, 1, 2), **kw), 1e-5)
    channel = explain(model, x, "neuron-integrated-gradients", neuron=5, **options)
    assert channel.attributions is not None
    ref = neuron.attribute(x, lambda a: a[:, 5].mean(dim=(1, 2)), **kw)
    close(channel.attributions[:, 0] * scale, ref, 1e-5)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    loaded: LoadedModel = load_model("efficientnet_lite0")
    return loaded


def test_equal_to_captum_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    from captum.attr import InternalInfluence, LayerConductance, NeuronIntegratedGradients

    paths = {p.name: p for p in bundled_samples()}
    x = torch.stack(
        [
            preprocess_image(load_image(paths[n]), lite0.preprocessing)
            for n in ("coffee.jpg", "chelsea.jpg")
        ]
    )
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear")  # for time
    module, name = lite0.module, "blocks.5"
    layer = module.get_submodule(name)
    x0 = gaussian_blur(x, 11.0)
    options: dict[str, Any] = {"layer": name, "steps": 4, "baseline": x0, "batch_size": 10}
    conductance = explain(lite0, x, "layer-conductance", target=TopK(2), **options)
    influence = explain(lite0, x, "internal-influence", target=TopK(2), **options)
    classes = conductance.targets.indices
    assert classes is not None and conductance.maps.shape == (2, 2, 4, 4)
    for k in range(2):
        kw = {"baselines": x0, "target": classes[:, k].tolist(), "n_steps": 4}
        ref = LayerConductance(module, layer).attribute(x, **kw)
        close(conductance.extras["conductance"][:, k], ref, 1e-5)
        ref = InternalInfluence(module, layer).attribute(x, **kw)
        close(influence.extras["influence"][:, k], ref, 1e-5)
    unit = explain(lite0, x, "neuron-integrated-gradients", neuron=(7, 3, 3), **options)
    ref = NeuronIntegratedGradients(module, layer).attribute(x, (7, 3, 3), x0, n_steps=4)
    assert unit.attributions is not None
    close(unit.attributions[:, 0], ref, 1e-5)


def test_options_refused_and_model_left_as_found() -> None:
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("layer-conductance", {"steps": 0}, "steps"),
        ("layer-conductance", {"quadrature": "adaptive"}, "adaptive"),
        ("internal-influence", {"quadrature": "simpson"}, "quadrature must be one of"),
        ("internal-influence", {"quadrature": "riemann_trapezoid", "steps": 1}, "steps >= 2"),
        ("internal-influence", {"baseline": "grey"}, "baseline"),
        ("layer-conductance", {"batch_size": 0}, "batch_size"),
        ("neuron-integrated-gradients", {"neuron": (1, 2)}, "neuron must be"),
        ("neuron-integrated-gradients", {"neuron": -1}, "neuron indices"),
        ("neuron-integrated-gradients", {"neuron": 1.5}, "neuron must be"),
        ("neuron-integrated-gradients", {"samples": 3}, "samples"),
    ]
    for name, options, message in bad:
        with pytest.raises(MethodOptionError, match=message):
            make_method(name, **options)
    assert all(get_method(name).needs_layer for name in LAYER_METHODS)
    model = random_bn_vgg().double()
    model.train()
    bn1 = model.get_submodule("backbone.bn1")
    bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for name in LAYER_METHODS:
        with torch.inference_mode():
            e = explain(model, x, name, layer="backbone.relu3_2", target=TopK(2), steps=3)
        assert e.maps.dtype == torch.float64
        assert e.maps.shape[-2:] == ((32, 32) if name.startswith("neuron") else (8, 8))
        assert model.training and not bn1.training
        assert hooked_modules(model) == []
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
