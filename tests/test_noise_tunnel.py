"""The noise tunnel around any method: exactly SmoothGrad / SmoothGrad² / VarGrad around
saliency, equal to captum's NoiseTunnel (fed the same noise) around Saliency and LayerGradCam on a
random VGG and on EfficientNet-Lite0 with two targets per image, the clean targets kept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from cnnviz import explain
from cnnviz.capture.targets import TopK
from cnnviz.errors import CnnvizError
from cnnviz.methods.gradients import gaussian_noise
from cnnviz.methods.registry import make_method
from cnnviz.models import LoadedModel
from hook_leaks import hooked_modules
from test_methods_perturbation import lite0, small_vgg

__all__ = ["lite0"]  # the fixture, imported for its use here

SIGMA, SAMPLES, SEED = 0.3, 5, 4


def x_of(n: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad-sq", "vargrad"])
def test_around_saliency_it_is_smoothgrad(kind: str) -> None:
    model, x = small_vgg(), x_of(3, 32)
    common = {"samples": SAMPLES, "seed": SEED, "batch_size": 6, "target": TopK(2)}
    ours = explain(model, x, "noise-tunnel", kind=kind, **common)
    reference = explain(model, x, kind, **common)
    torch.testing.assert_close(ours.maps, reference.maps, rtol=1e-5, atol=1e-7)
    assert ours.attributions is not None and reference.attributions is not None
    torch.testing.assert_close(ours.attributions, reference.attributions, rtol=1e-5, atol=1e-7)
    assert ours.targets.labels == reference.targets.labels
    assert float(ours.maps.abs().sum()) > 0


@contextmanager
def captum_fed_our_noise(x: torch.Tensor) -> Iterator[None]:
    """captum's NoiseTunnel adds ``torch.normal`` noise to ``x.repeat_interleave(S)`` (image-
    major rows); give it cnnviz's draws (sample-major: ε_s for all images) in its row order."""
    from captum.attr import NoiseTunnel

    ours = torch.stack(list(gaussian_noise(x, SAMPLES, SEED))) * SIGMA  # (S, N, C, H, W)
    original = NoiseTunnel._add_noise_to_input

    def same_noise(input: torch.Tensor, stdev: float, samples: int) -> torch.Tensor:
        assert samples == SAMPLES and stdev == SIGMA
        return input.repeat_interleave(samples, dim=0) + ours.transpose(0, 1).flatten(0, 1)

    NoiseTunnel._add_noise_to_input = staticmethod(same_noise)  # type: ignore[method-assign]
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = original  # type: ignore[method-assign]


def captum_tunnel(
    method: Any, x: torch.Tensor, classes: torch.Tensor, kind: str, **options: Any
) -> torch.Tensor:
    """captum's NoiseTunnel(method), one call per target, stacked as ``(N, T, …)``."""
    from captum.attr import NoiseTunnel

    nt_type = kind.replace("-", "_")
    with captum_fed_our_noise(x):
        return torch.stack(
            [
                NoiseTunnel(method)
                .attribute(
                    x,
                    nt_type=nt_type,
                    nt_samples=SAMPLES,
                    stdevs=SIGMA,
                    target=c.tolist(),
                    **options,
                )
                .detach()
                for c in classes.T
            ],
            dim=1,
        )


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("kind", ["smoothgrad", "vargrad"])
def test_equals_captum_around_saliency_and_layer_gradcam_on_a_random_vgg(kind: str) -> None:
    from captum.attr import LayerGradCam, Saliency

    model, x = small_vgg(), x_of(2, 32)
    options = {"kind": kind, "samples": SAMPLES, "sigma": SIGMA, "seed": SEED}
    sal = explain(model, x, "noise-tunnel", target=TopK(2), **options)
    assert sal.targets.indices is not None
    ref = captum_tunnel(Saliency(model), x, sal.targets.indices, kind, abs=False)
    assert sal.attributions is not None
    assert rel_error(sal.attributions, ref) < 1e-5
    layer = "backbone.bn4_2"
    cam = explain(
        model, x, "noise-tunnel", around="gradcam", layer=layer, target=TopK(2), **options
    )
    assert cam.layer == layer and cam.maps.shape == (2, 2, 4, 4)
    gradcam = LayerGradCam(model, model.get_submodule(layer))
    ref = captum_tunnel(gradcam, x, cam.targets.indices, kind)  # type: ignore[arg-type]
    assert rel_error(cam.maps, ref[:, :, 0]) < 1e-5
    assert hooked_modules(model) == []


def test_equals_captum_around_layer_gradcam_on_efficientnet_lite0(lite0: LoadedModel) -> None:
    from captum.attr import LayerGradCam

    from cnnviz.data.samples import bundled_samples
    from cnnviz.inputs.images import load_image
    from cnnviz.inputs.preprocess import preprocess_image

    x = torch.stack(
        [preprocess_image(load_image(p), lite0.preprocessing) for p in sorted(bundled_samples())]
    )
    options = {"samples": SAMPLES, "sigma": SIGMA, "seed": SEED, "batch_size": 4}
    e = explain(lite0, x, "noise-tunnel", around="gradcam", target=TopK(2), **options)
    assert e.layer == "bn2" and e.targets.indices is not None
    ref = captum_tunnel(
        LayerGradCam(lite0.module, lite0.module.bn2), x, e.targets.indices, "smoothgrad"
    )
    assert rel_error(e.maps, ref[:, :, 0]) < 1e-4  # float32, channels-last against standard
    clean = explain(lite0, x, "gradcam", target=TopK(2))
    assert e.targets.labels == clean.targets.labels  # the clean image's targets


class Flip(nn.Module):
    """Class 0 when the mean is positive, else class 1: noise flips weak images' decision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1) * 10


def test_noise_cannot_change_the_explained_class() -> None:
    x = torch.full((1, 3, 4, 4), 0.01)  # class 0, barely: most noisy copies are class 1
    e = explain(Flip(), x, "noise-tunnel", samples=8, sigma=1.0)
    assert e.targets.indices is not None and e.targets.indices.tolist() == [[0]]
    assert e.attributions is not None
    torch.testing.assert_close(e.attributions, torch.full_like(e.attributions, 10 / 48))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"around": "no-such"}, "Unknown method"),
        ({"around": "noise-tunnel"}, "cannot wrap another noise tunnel"),
        ({"around": 3}, "around must be a method name"),
        ({"kind": "mean"}, "kind must be one of smoothgrad"),
        ({"samples": 0}, "samples"),
        ({"sigma": -1.0}, "sigma must be"),
    ],
)
def test_options_are_refused_at_the_boundary(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CnnvizError, match=message):
        make_method("noise-tunnel", **options)
