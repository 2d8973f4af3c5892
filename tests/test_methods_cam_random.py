"""RandomCAM against pytorch-grad-cam's RandomCAM (same NumPy draws), by hand, and as the
control it is meant to be: a trained CAM beats it on the known-truth shapes."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cnnviz import explain
from cnnviz.capture.targets import TopK
from cnnviz.errors import CnnvizError
from cnnviz.methods.registry import make_method
from hook_leaks import hooked_modules
from test_methods_cam import Identity2x2, assert_rel, reference_pass
from test_methods_perturbation import small_vgg


def test_the_weights_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]]])
    e = explain(Identity2x2(), x, "randomcam", layer="conv", target=0, seed=5)
    w = np.random.RandomState(5).uniform(-1, 1, size=(1, 1, 2))[0, 0]
    expected = torch.tensor(w[0] * x[0, 0].numpy() + w[1] * x[0, 1].numpy(), dtype=torch.float32)
    torch.testing.assert_close(e.maps[0, 0], expected, rtol=1e-6, atol=1e-7)


def test_equals_pytorch_grad_cam_target_by_target() -> None:
    """Two images, two targets each: target t's map equals pgc's t-th call after seeding."""
    model = small_vgg()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layer = model.backbone.bn4_2
    e = explain(model, x, "randomcam", layer="backbone.bn4_2", target=TopK(2), seed=7)
    assert e.maps.shape[:2] == (2, 2) and e.targets.indices is not None
    np.random.seed(7)
    for t in range(2):
        classes = e.targets.indices[:, t].tolist()
        A, G = reference_pass(model, layer, x, classes)
        with pgc.RandomCAM(model=model, target_layers=[layer]) as cam:
            targets = [ClassifierOutputTarget(c) for c in classes]
            ref = torch.from_numpy(np.asarray(cam.get_cam_image(x, layer, targets, A, G, False)))
        assert_rel(e.maps[:, t], ref, 1e-5)
    assert hooked_modules(model) == []
    again = explain(model, x, "randomcam", layer="backbone.bn4_2", target=TopK(2), seed=7)
    assert torch.equal(again.maps, e.maps)
    other = explain(model, x, "randomcam", layer="backbone.bn4_2", target=TopK(2), seed=8)
    assert not torch.allclose(other.maps, e.maps)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_bad_seeds_are_refused(seed: object) -> None:
    with pytest.raises(CnnvizError, match="seed must be an integer"):
        make_method("randomcam", seed=seed)
