"""The VGG-11 visualisation exercise (../shared/seed-exercise.md), replayed with cnnviz.

Step by step, as in the exercise: (1) count parameters per module, (2) plot conv1's filters,
(3) capture activations at conv1 and bn4_1 with forward hooks, (4) gradient saliency,
(5) Grad-CAM at bn5_2. It runs on ``vgg11_bn`` when torchvision's ImageNet weights are on disk,
otherwise on ``shapes_vgg11`` (the same architecture, trained by cnnviz on synthetic shapes).
The exercise works in float64 (``model.double()``); so does this walkthrough. The same steps,
explained and checked by hand, are the notebooks ``seed_walkthrough.ipynb`` (English) and
``seed_walkthrough.ko.ipynb`` (Korean).

    python examples/seed_walkthrough.py --out walkthrough
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

import cnnviz
from cnnviz.errors import WeightsUnavailableError
from cnnviz.models import LoadedModel
from cnnviz.outputs.files import atomic_write_bytes
from cnnviz.render.canvas import figure_to_png_bytes

logger = logging.getLogger("walkthrough")


def pick_model() -> tuple[LoadedModel, Path | np.ndarray]:
    """vgg11_bn with ImageNet weights and the coffee photo, else shapes_vgg11 and a shape."""
    try:
        loaded = cnnviz.load_model("vgg11_bn")
        from cnnviz.data.samples import bundled_samples

        return loaded, next(p for p in bundled_samples() if p.name == "coffee.jpg")
    except WeightsUnavailableError as e:
        logger.info("vgg11_bn weights not on disk (%s); using shapes_vgg11", str(e)[:60])
    from cnnviz.data.shapes import heldout_shapes

    shape = heldout_shapes(1).images[0].permute(1, 2, 0).numpy()  # (64, 64, 3) in [0, 1]
    return cnnviz.load_model("shapes_vgg11"), shape


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("walkthrough"))
    args = parser.parse_args(argv)
    out: Path = args.out
    loaded, image = pick_model()
    model = loaded.module.double()  # the exercise's float64; cnnviz converts the image to it
    results: dict[str, object] = {"model": loaded.name}

    # (1) get_module_params_num, done right: shared tensors counted once
    for name in ("backbone", "classifier"):
        results[f"params_{name}"] = cnnviz.count_params(model.get_submodule(name))
    results["params_total"] = cnnviz.count_params(model)
    print(f"(1) parameters: {results}")

    # (2) conv1's filters as RGB images
    view = cnnviz.filters(loaded, "conv1")
    atomic_write_bytes(out / "conv1_filters.png", figure_to_png_bytes(view.plot()))
    print(f"(2) conv1 filters {tuple(view.weight.shape)} → {out / 'conv1_filters.png'}")

    # (3) activations at conv1 and bn4_1, captured with forward hooks in one forward pass
    acts = cnnviz.activations(loaded, image, ["conv1", "bn4_1"])
    for name, act in acts.items():
        atomic_write_bytes(out / f"activations_{name}.png", figure_to_png_bytes(acts.plot(name)))
        results[f"activation_shape_{name}"] = tuple(act.shape)
        print(f"(3) activations {name} {tuple(act.shape)}")

    # (4) saliency: |∂s_y/∂I|, max over colour channels, for the predicted class
    saliency = cnnviz.explain(loaded, image, "saliency")
    saliency.save(out, stem="saliency")
    results["predicted"] = saliency.targets.labels[0][0]
    print(f"(4) saliency for {results['predicted']!r}")

    # (5) Grad-CAM at bn5_2
    cam = cnnviz.explain(loaded, image, "gradcam", layer="bn5_2")
    cam.save(out, stem="gradcam_bn5_2")
    results["gradcam_layer"] = cam.layer
    results["gradcam_shape"] = tuple(cam.maps.shape)
    print(f"(5) Grad-CAM at {cam.layer}, map {tuple(cam.maps.shape[-2:])}")
    model.float()
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    main()
