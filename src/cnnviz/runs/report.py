"""``cnnviz report``: one self-contained HTML page per image, plus an index page.

Each page shows the top-5 predictions, Grad-CAM for the three best classes, saliency, activation
grids, the first conv layer's filters, the model summary, the layer list and the manifest data.
Pictures are embedded as ``data:`` URIs and the page loads nothing from the network (a
Content-Security-Policy forbids it), so a page can be mailed or opened offline. All text is
escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnviz.methods.base import Explanation
from cnnviz.models import LoadedModel

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

COMPARED_METHODS: tuple[str, ...] = (
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "gradxinput",
    "smoothgrad",
    "integrated-gradients",
    "guided-backprop",
    "guided-gradcam",
)
"""The report's default "methods compared": those that cost a few passes, not one per channel."""


@dataclass(frozen=True)
class ReportSettings:
    """What the report draws (``layers=None``: first conv, a middle block, the CAM layer)."""

    layers: Sequence[str] | None = None
    cmap: str = "jet"
    alpha: float = 0.5
    cam_classes: int = 3
    channels: int = 16
    methods: Sequence[str] = COMPARED_METHODS


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,…`` URI for a uint8 ``(H, W)`` or ``(H, W, 3)`` array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_data_uri(fig: Any) -> str:
    """A data URI of a matplotlib figure rendered to PNG."""
    from cnnviz.render.figures import figure_to_png_bytes

    return "data:image/png;base64," + base64.b64encode(figure_to_png_bytes(fig)).decode("ascii")


def draw_box(image: np.ndarray, box: Box | None) -> np.ndarray:
    """A copy of ``image`` with a green rectangle around ``box``.

    ``box`` is ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive.
    """
    if box is None:
        return image
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(picture).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 220, 0))
    return np.asarray(picture)


def default_activation_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """First conv, a middle block and the CAM layer, in execution order.

    The middle is the middle of the layers with own parameters and a spatial output; a conv
    directly followed by a BatchNorm gives the BatchNorm (the seed's ``bn4_1`` on VGG-11-BN).
    """
    from cnnviz.api import default_layer
    from cnnviz.capture.layers import trace_layers

    calls = [
        c
        for c in trace_layers(model, x[:1])
        if c.num_params > 0 and c.output_shape is not None and len(c.output_shape) == 4
    ]
    last = default_layer(model, x)
    if not calls:
        return [last]
    middle_index = len(calls) // 2
    middle = calls[middle_index]
    if (
        middle.module_type.startswith("Conv")
        and middle_index + 1 < len(calls)
        and "BatchNorm" in calls[middle_index + 1].module_type
    ):
        middle = calls[middle_index + 1]
    chosen: list[str] = []
    for name in (calls[0].name, middle.name, last):
        if name not in chosen:
            chosen.append(name)
    return chosen


def demo_inputs(loaded: LoadedModel, out: Path) -> tuple[list[Path], dict[Path, Box]]:
    """The demo's images: bundled photos, or held-out synthetic shapes (with boxes) for
    ``shapes_vgg11``."""
    if loaded.name != "shapes_vgg11":
        from cnnviz.inputs.images import bundled_samples

        return bundled_samples(), {}
    from cnnviz.data.shapes import SHAPE_CLASSES, heldout_shapes
    from cnnviz.outputs.files import write_png

    batch = heldout_shapes(6)
    folder = out / "inputs"
    paths: list[Path] = []
    boxes: dict[Path, Box] = {}
    for i in range(batch.images.shape[0]):
        label = SHAPE_CLASSES[int(batch.labels[i])]
        path = folder / f"shape-{i}-{label}.png"
        image = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        write_png(path, image)
        paths.append(path)
        x0, y0, x1, y1 = (int(v) for v in batch.boxes[i])
        boxes[path] = (x0, y0, x1, y1)
    return paths, boxes


class _ModelParts:
    """What every page of one report shares: summary, layer table, filters (computed once)."""

    def __init__(self, loaded: LoadedModel, settings: ReportSettings) -> None:
        from cnnviz.inspect.filters import conv_weight, filter_tiles, first_conv_layer
        from cnnviz.inspect.summary import layer_table, summarize
        from cnnviz.render.figures import filters_figure

        size = (3, *loaded.preprocessing.input_size)
        self.summary = summarize(loaded.module, size, depth=2).to_dict()
        self.layers = [row.__dict__ for row in layer_table(loaded.module, size)]
        conv = first_conv_layer(loaded.module)
        weight = conv_weight(loaded.module, conv)
        fig = filters_figure(filter_tiles(weight), title=f"Filters of {conv}")
        self.filters = {"layer": conv, "shape": tuple(weight.shape), "src": figure_data_uri(fig)}


def _predictions(loaded: LoadedModel, x: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    from cnnviz.capture.hooks import as_model_input, model_state_guard
    from cnnviz.capture.targets import logits_of

    module = loaded.module
    with torch.no_grad(), model_state_guard(module):
        logits = logits_of(module(as_model_input(module, x)))[0].float().cpu()
    probabilities = logits.softmax(dim=0)
    top = probabilities.topk(min(k, probabilities.numel()))
    return [
        {
            "index": int(i),
            "name": loaded.class_names[int(i)] if loaded.class_names else str(int(i)),
            "score": float(logits[i]),
            "probability": float(p),
        }
        for p, i in zip(top.values, top.indices, strict=True)
    ]


def _page(
    loaded: LoadedModel,
    item: Any,
    parts: _ModelParts,
    settings: ReportSettings,
    box: Box | None,
) -> dict[str, Any]:
    from cnnviz.api import explain
    from cnnviz.capture.targets import TopK
    from cnnviz.errors import NotApplicableError
    from cnnviz.inspect.activations import ChannelOrder, capture_activations, select_channels
    from cnnviz.methods.base import get_method, method_options
    from cnnviz.methods.postprocess import Display
    from cnnviz.outputs.files import to_json_text
    from cnnviz.outputs.manifest import environment_info
    from cnnviz.render.colours import overlay, to_uint8
    from cnnviz.render.figures import activations_figure
    from cnnviz.runs.explain import display_maps, model_record

    x = item.tensor.unsqueeze(0)
    shown_input = draw_box(item.display, box)

    def overlay_uri(map01: np.ndarray, cmap: str = settings.cmap) -> str:
        picture = overlay(item.display, map01, cmap=cmap, alpha=settings.alpha)
        return png_data_uri(draw_box(picture, box))

    cams = explain(loaded, x, "gradcam", target=TopK(settings.cam_classes))
    cam_maps = display_maps(cams)
    gradcam = [
        {
            "label": cams.targets.labels[0][t],
            "probability": float(cams.probabilities[0, t]) if cams.probabilities is not None else 0,
            "src": overlay_uri(cam_maps[0, t]),
        }
        for t in range(cams.maps.shape[1])
    ]
    sal = explain(loaded, x, "saliency")
    sal_map = display_maps(sal)[0, 0]
    saliency = {
        "label": sal.targets.labels[0][0],
        "src": overlay_uri(sal_map),
        "raw": png_data_uri(to_uint8(sal_map)),
    }
    methods = []
    top_class = None if cams.targets.indices is None else int(cams.targets.indices[0, 0])
    for name in settings.methods:
        # The page states completeness under the picture (method_note), not as a warning.
        quiet = "warn_incomplete" in method_options(get_method(name))
        options: dict[str, Any] = {"warn_incomplete": False} if quiet else {}
        try:
            e = explain(loaded, x, name, target=top_class, **options)
        except NotApplicableError as error:  # e.g. CAM on a model without a GAP + linear head
            logger.warning("method %s skipped: %s", name, error)
            continue
        signed = e.display is Display.SIGNED  # diverging colours: red +, blue −
        picture = overlay_uri(display_maps(e)[0, 0], "bwr" if signed else settings.cmap)
        label = get_method(name).title + (f" @ {e.layer}" if e.layer else "")
        methods.append({"label": label, "src": picture, "note": method_note(e)})
    layers = (
        list(settings.layers) if settings.layers else default_activation_layers(loaded.module, x)
    )
    activations = []
    for name, act in capture_activations(loaded.module, x, layers).items():
        if act.dim() != 4:
            continue
        ids, chosen = select_channels(act[0], settings.channels, ChannelOrder.FIRST)
        fig = activations_figure(
            chosen.float().cpu().numpy(),
            title=f"{name} {tuple(act.shape)}",
            channel_ids=ids,
            shared_scale=False,
        )
        activations.append({"layer": name, "shape": tuple(act.shape), "src": figure_data_uri(fig)})
    predictions = _predictions(loaded, x)
    record = {
        "input": str(item.path),
        "model": model_record(loaded),
        "gradcam_layer": cams.layer,
        "predictions": predictions,
        "gradcam_targets": [{"name": g["label"], "probability": g["probability"]} for g in gradcam],
        "saliency_target": saliency["label"],
        "activation_layers": layers,
        "notes": list(item.notes),
        "environment": environment_info(),
    }
    return {
        "title": item.path.name,
        "stem": item.stem,
        "model": record["model"],
        "environment": record["environment"],
        "input_size": loaded.preprocessing.input_size,
        "notes": list(item.notes),
        "input_image": png_data_uri(shown_input),
        "box": box,
        "predictions": predictions,
        "gradcam_layer": cams.layer,
        "gradcam": gradcam,
        "saliency": saliency,
        "methods": methods,
        "activations": activations,
        "filters": parts.filters,
        "summary": parts.summary,
        "layers": parts.layers,
        "record": record,
        "manifest_json": to_json_text(record),
        "sections": ["predictions", "grad-cam", "saliency"]
        + (["methods"] if methods else [])
        + ["activations", "filters", "summary", "layers", "manifest"],
    }


def method_note(e: Explanation) -> str | None:
    """A caption line for what a picture cannot show: Integrated Gradients' completeness."""
    if "completeness_gap" not in e.extras:
        return None
    from cnnviz.methods.integrated import COMPLETENESS_WARNING, relative_gap

    gap = float(relative_gap(e.extras["completeness_gap"], e.extras["delta_f"])[0, 0])
    note = f"attributions sum to the score change within {100 * gap:.1f} %"
    if gap > COMPLETENESS_WARNING:
        note += " (over the paper's 5 %: more steps would tighten it)"
    return note


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("cnnviz", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        keep_trailing_newline=True,
    )


def build_report(
    loaded: LoadedModel,
    paths: Sequence[Path],
    out: Path,
    settings: ReportSettings | None = None,
    *,
    boxes: dict[Path, Box] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/<image>.html`` per image, ``out/index.html`` and ``out/manifest.json``.

    Returns the manifest as a dict, with ``index`` (path of the index page) added.
    """
    from tqdm import tqdm

    from cnnviz.outputs.files import atomic_write_bytes
    from cnnviz.outputs.manifest import Manifest, write_manifest
    from cnnviz.runs.explain import load_inputs, model_record

    settings = settings or ReportSettings()
    boxes = boxes or {}
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    page_template = env.get_template("report.html.j2")
    parts = _ModelParts(loaded, settings)
    failures: list[dict[str, Any]] = []
    index_entries: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    bar = tqdm(total=len(paths), desc="report", unit="img", disable=not progress or len(paths) < 2)
    try:
        for item in load_inputs(loaded, list(paths), failures):
            page = _page(loaded, item, parts, settings, boxes.get(item.path))
            href = f"{item.stem}.html"
            atomic_write_bytes(out / href, page_template.render(page=page).encode("utf-8"))
            items.append({**page["record"], "files": {"html": href}})
            index_entries.append(
                {
                    "href": href,
                    "title": page["title"],
                    "thumb": page["gradcam"][0]["src"],
                    "top": page["predictions"][0]["name"],
                    "probability": page["predictions"][0]["probability"],
                }
            )
            bar.update(1)
    finally:
        bar.close()
    model = model_record(loaded)
    index_html = env.get_template("index.html.j2").render(
        model=model, pages=index_entries, failures=failures
    )
    atomic_write_bytes(out / "index.html", index_html.encode("utf-8"))
    manifest = Manifest(
        command="report",
        model=model,
        method="report",
        items=tuple(items),
        failures=tuple(failures),
        extra={"cmap": settings.cmap, "alpha": settings.alpha},
    )
    write_manifest(out, manifest)
    result = manifest.to_dict()
    result["index"] = str(out / "index.html")
    return result
