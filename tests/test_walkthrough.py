"""The seed exercise replayed by examples/seed_walkthrough.py: every step runs, numbers match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from cnnviz.inspect.summary import count_parameters
from cnnviz.models.shapes_vgg11 import build_shapes_vgg11

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seed_walkthrough.py"


def test_walkthrough_runs_every_step(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("seed_walkthrough", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--out", str(tmp_path)])
    # offline test session: no vgg11_bn ImageNet weights, so the shapes model stands in
    assert results["model"] == "shapes_vgg11"
    reference = build_shapes_vgg11()
    assert results["params_total"] == sum(count_parameters(reference))
    assert results["params_backbone"] + results["params_classifier"] == results["params_total"]
    assert results["activation_shape_backbone.conv1"] == (1, 8, 64, 64)
    assert results["activation_shape_backbone.bn4_1"] == (1, 64, 8, 8)
    assert results["gradcam_layer"] == "backbone.bn5_2"
    assert results["gradcam_shape"] == (1, 1, 4, 4)
    for name in (
        "conv1_filters",
        "activations_backbone.conv1",
        "activations_backbone.bn4_1",
        "saliency",
        "gradcam_bn5_2",
    ):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.width > 16 and picture.height > 16
