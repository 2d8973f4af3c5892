"""The VGG-11 visualisation exercise (../shared/seed-exercise.md), replayed with cnnviz.

Step by step, as in the exercise: (1) count parameters per module, (2) plot conv1's filters,
(3) capture activations at conv1 and bn4_1 with forward hooks, (4) gradient saliency,
(5) Grad-CAM at bn5_2. It runs on ``vgg11_bn`` when torchvision's ImageNet weights are on disk,
otherwise on ``shapes_vgg11`` (the same architecture, trained by cnnviz on synthetic shapes).
The exercise works in float64 (``model.double()``); so does this walkthrough.

    python examples/seed_walkthrough.py --out walkthrough
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cnnviz import explain, load_model
from cnnviz.errors import WeightsUnavailableError
from cnnviz.inspect.activations import capture_activations
from cnnviz.inspect.filters import conv_weight, rgb_filter_tiles
from cnnviz.inspect.summary import count_parameters
from cnnviz.methods.postprocess import Display, for_display
from cnnviz.models import LoadedModel
from cnnviz.outputs.files import atomic_write_bytes, write_png
from cnnviz.render.colours import overlay
from cnnviz.render.figures import activations_figure, figure_to_png_bytes, filters_figure

logger = logging.getLogger("walkthrough")


def pick_model() -> tuple[LoadedModel, np.ndarray, torch.Tensor]:
    """vgg11_bn with ImageNet weights and the coffee photo, else shapes_vgg11 and a shape."""
    try:
        loaded = load_model("vgg11_bn")
        from cnnviz.data.samples import bundled_samples
        from cnnviz.inputs.images import load_image
        from cnnviz.inputs.preprocess import preprocess_image, resize_and_crop

        image = load_image(next(p for p in bundled_samples() if p.name == "coffee.jpg"))
        shown = np.asarray(resize_and_crop(image, loaded.preprocessing))
        return loaded, shown, preprocess_image(image, loaded.preprocessing)
    except WeightsUnavailableError as e:
        logger.info("vgg11_bn weights not on disk (%s); using shapes_vgg11", str(e)[:60])
    from cnnviz.data.shapes import heldout_shapes

    loaded = load_model("shapes_vgg11")
    batch = heldout_shapes(1)
    shown = (batch.images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    mean = torch.tensor(loaded.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(loaded.preprocessing.std).view(3, 1, 1)
    return loaded, shown, (batch.images[0] - mean) / std


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("walkthrough"))
    args = parser.parse_args(argv)
    out: Path = args.out
    loaded, shown, x = pick_model()
    model = loaded.module.double()  # the exercise's float64
    results: dict[str, object] = {"model": loaded.name}

    # (1) get_module_params_num, done right: shared tensors once, trainable and frozen apart
    for name in ("backbone", "classifier"):
        trainable, frozen = count_parameters(model.get_submodule(name))
        results[f"params_{name}"] = trainable + frozen
    results["params_total"] = sum(count_parameters(model))
    print(f"(1) parameters: {results}")

    # (2) conv1's filters as RGB images
    weight = conv_weight(model, "conv1")
    fig = filters_figure(
        rgb_filter_tiles(weight), title=f"Filters in conv1 layer {tuple(weight.shape)}"
    )
    atomic_write_bytes(out / "conv1_filters.png", figure_to_png_bytes(fig))
    print(f"(2) conv1 filters {tuple(weight.shape)} → {out / 'conv1_filters.png'}")

    # (3) activations at conv1 and bn4_1, captured in one forward pass
    for name, act in capture_activations(model, x, ["conv1", "bn4_1"]).items():
        channels = act[0, :16].float().numpy()
        fig = activations_figure(
            channels,
            title=f"Activations on: {name}",
            channel_ids=range(channels.shape[0]),
            shared_scale=False,
        )
        atomic_write_bytes(out / f"activations_{name}.png", figure_to_png_bytes(fig))
        results[f"activation_shape_{name}"] = tuple(act.shape)
        print(f"(3) activations {name} {tuple(act.shape)}")

    # (4) saliency: |∂s_y/∂I|, max over colour channels, for the predicted class
    saliency = explain(loaded, x, "saliency")
    sal = for_display(saliency.maps.float(), Display.ABSOLUTE)[0, 0].numpy()
    write_png(out / "saliency.png", overlay(shown, sal, cmap="gray", alpha=0.8))
    results["predicted"] = saliency.targets.labels[0][0]
    print(f"(4) saliency for {results['predicted']!r}")

    # (5) Grad-CAM at bn5_2
    cam = explain(loaded, x, "gradcam", layer="bn5_2")
    heat = for_display(cam.maps.float(), Display.POSITIVE, cam.input_size)[0, 0].numpy()
    write_png(out / "gradcam_bn5_2.png", overlay(shown, heat, cmap="jet", alpha=0.5))
    results["gradcam_layer"] = cam.layer
    results["gradcam_shape"] = tuple(cam.maps.shape)
    print(f"(5) Grad-CAM at {cam.layer}, map {tuple(cam.maps.shape[-2:])}")
    model.float()
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    main()
