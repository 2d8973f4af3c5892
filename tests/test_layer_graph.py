"""LayerGraph: one forward pass kept with its graph above a layer gives every CAM method's own
maps, for any target, again and again, and leaves the model as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.capture.targets import TopK
from cnnviz.errors import NotApplicableError
from cnnviz.methods.layer_graph import LayerGraph, uses_layer_graph
from cnnviz.methods.registry import get_method, make_method, method_names
from hook_leaks import hooked_modules

CAMS = [name for name in method_names() if uses_layer_graph(get_method(name))]


def small_vgg() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    )
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def test_the_cams_are_answered_from_the_graph() -> None:
    assert set(CAMS) == {
        "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam",
        "cam", "scorecam", "ablationcam", "randomcam",
    }  # fmt: skip
    assert not uses_layer_graph(get_method("saliency"))


@pytest.mark.parametrize("name", CAMS)
def test_graph_maps_equal_the_methods_own(name: str) -> None:
    model = small_vgg()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layer = "0"  # the features, right before the global average pooling (as CAM needs)
    method = make_method(name)
    graph = LayerGraph(model, x, layer)
    for target in ([0, 3, 4], TopK(2), 2):  # per-image, two targets each, one for all
        ours = graph.explain(method, target=target, class_names=None)
        reference = method.explain(model, x, layer=layer, target=target, class_names=None)
        assert ours.maps.shape == reference.maps.shape
        torch.testing.assert_close(ours.maps, reference.maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.scores, reference.scores)
        assert ours.targets.labels == reference.targets.labels
        assert ours.layer == layer and ours.method == name


def test_the_graph_is_reused_and_the_model_left_as_found() -> None:
    model = small_vgg()
    model.train()  # a model handed over in training mode keeps it
    x = torch.randn(2, 3, 16, 16)
    graph = LayerGraph(model, x, "0.4")
    gradcam = make_method("gradcam")
    first = graph.explain(gradcam, target=1, class_names=None).maps
    for _ in range(3):  # the graph survives repeated backward passes
        graph.explain(make_method("layercam"), target=[0, 4], class_names=None)
    torch.testing.assert_close(graph.explain(gradcam, target=1, class_names=None).maps, first)
    assert hooked_modules(model) == []
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_a_flat_layer_and_a_gradient_method_are_refused() -> None:
    model = small_vgg()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(NotApplicableError, match="spatial"):
        LayerGraph(model, x, "3").explain(make_method("gradcam"), target=0, class_names=None)
    with pytest.raises(TypeError, match="Saliency"):
        LayerGraph(model, x, "0.4").explain(make_method("saliency"), target=0, class_names=None)
