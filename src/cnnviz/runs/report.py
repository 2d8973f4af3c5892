"""``cnnviz report``: one self-contained HTML page per image, plus an index page.

Each page shows the top-5 predictions, Grad-CAM for the three best classes, saliency, the
methods compared, activation grids, the first conv layer's filters, the model summary, the layer
list and the page's manifest record. Pages are rendered by :mod:`cnnviz.render.html` (pictures
embedded as ``data:`` URIs, nothing loaded from the network).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from cnnviz.api import announce_default_layer, default_layer, explain
from cnnviz.capture.layers import trace_layers
from cnnviz.capture.targets import TopK
from cnnviz.data.samples import bundled_samples
from cnnviz.data.shapes import SHAPE_CLASSES, heldout_shapes
from cnnviz.errors import LayerError, NotApplicableError
from cnnviz.inputs.decode import LoadedImage, load_inputs
from cnnviz.inputs.images import find_images
from cnnviz.inspect.activations import ChannelOrder, capture_activations, select_channels
from cnnviz.inspect.filters import conv_weight, filter_tiles, first_conv_layer
from cnnviz.inspect.summary import layer_table, summarize
from cnnviz.methods.base import Explanation
from cnnviz.methods.integrated import COMPLETENESS_WARNING, relative_gap
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT
from cnnviz.methods.registry import get_method, method_options
from cnnviz.metrics.faithfulness import class_logits
from cnnviz.models.loaded import LoadedModel
from cnnviz.models.registry import from_module
from cnnviz.options import MapStyle
from cnnviz.outputs.files import atomic_write_bytes, to_json_text, write_png
from cnnviz.outputs.image_files import drawn_maps
from cnnviz.outputs.manifest import Manifest, environment_info, model_record, write_manifest
from cnnviz.progress import disabled
from cnnviz.progress import progress as progress_bar
from cnnviz.render.colours import Box, draw_box, to_uint8
from cnnviz.render.drawing import DrawingSettings, MapDrawing, colour_strip, legend_text
from cnnviz.render.figures import activations_figure, filters_figure
from cnnviz.render.html import figure_data_uri, png_data_uri, render_page
from cnnviz.runs.report_features import feature_section

logger = logging.getLogger(__name__)

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

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReportSettings(DrawingSettings):
    """What the report draws (``layers=None``: first conv, a middle block, the CAM layer) and
    how its maps are drawn (:attr:`drawing`: ``sign``, ``style``, ``cmap``, ``alpha``,
    ``outlier_percent``)."""

    layers: Sequence[str] | None = None
    cam_classes: int = 3
    channels: int = 16
    methods: Sequence[str] = COMPARED_METHODS
    features: str | None = None
    """A layer whose first ``feature_channels`` units get "What the units want to see"."""
    feature_channels: int = 8
    feature_steps: int = 256


def default_activation_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """First conv, a middle block and the CAM layer, in execution order.

    The middle is the middle of the layers with own parameters and a spatial output; a conv
    directly followed by a BatchNorm gives the BatchNorm (the seed's ``bn4_1`` on VGG-11-BN).
    """
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
        return bundled_samples(), {}
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
    """What every page of one report shares: summary, layer table, filters (computed once).

    A part the model cannot give (a TorchScript program takes no hooks, so no shapes) is
    ``None`` and its reason is in :attr:`unavailable`, which the page shows in its place.
    """

    def __init__(
        self, loaded: LoadedModel, settings: ReportSettings, images: Sequence[Path] = ()
    ) -> None:
        size = loaded.preprocessing.input_shape
        self.unavailable: dict[str, str] = {}
        self.summary = self._part(
            "summary", lambda: summarize(loaded.module, size, depth=2).to_dict()
        )
        self.layers = self._part(
            "layers", lambda: [row.__dict__ for row in layer_table(loaded.module, size)]
        )
        self.filters = self._part("filters", lambda: _filters(loaded))
        layer = settings.features
        # Not a part that may be missing: a --features layer that does not work is an error.
        self.features = (
            None
            if layer is None
            else feature_section(
                loaded,
                layer,
                images,
                channels=settings.feature_channels,
                steps=settings.feature_steps,
            )
        )

    def _part(self, section: str, build: Callable[[], _T]) -> _T | None:
        try:
            return build()
        except LayerError as error:  # NotApplicableError, or a model without a conv
            self.unavailable[section] = str(error)
            return None


def _filters(loaded: LoadedModel) -> dict[str, Any]:
    conv = first_conv_layer(loaded.module)
    weight = conv_weight(loaded.module, conv)
    title = f"Filters of {conv} {tuple(weight.shape)}"
    fig = filters_figure(filter_tiles(weight), title=title, total=int(weight.shape[0]))
    return {"layer": conv, "shape": tuple(weight.shape), "src": figure_data_uri(fig)}


def _predictions(loaded: LoadedModel, x: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one image, with logit and probability."""
    logits = class_logits(loaded.module, x)[0]
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


class _Page:
    """The pictures of one image's page, drawn on the picture the model sees."""

    def __init__(
        self, loaded: LoadedModel, item: LoadedImage, settings: ReportSettings, box: Box | None
    ) -> None:
        self.loaded, self.item, self.settings, self.box = loaded, item, settings, box
        self.x = item.tensor.unsqueeze(0)
        self.unavailable: dict[str, str] = {}

    def picture(self, e: Explanation, t: int = 0) -> dict[str, Any]:
        """Target ``t``'s map drawn on the image (``src``) with its legend: a colour strip
        (``legend_src``) and what its colours mean (``legend``)."""
        drawing = self.settings.drawing
        display, maps = drawn_maps(e, drawing)
        picture = drawing.draw(self.item.picture, maps[0, t], display)
        strip = colour_strip(drawing.colormap(display), 224, 10)
        return {
            "src": png_data_uri(draw_box(picture, self.box)),
            "legend_src": png_data_uri(strip),
            "legend": drawing.legend(display, e.targets.labels[0][t]),
        }

    def gradcam(self) -> tuple[Explanation | None, list[dict[str, Any]]]:
        """Grad-CAM of the best classes; ``None`` where it does not apply (a token model, a
        TorchScript program), with the reason in :attr:`unavailable`."""
        try:
            k = min(self.settings.cam_classes, len(self.loaded.class_names) or 1)
            cams = explain(self.loaded, self.x, "gradcam", target=TopK(k))
        except NotApplicableError as error:
            self.unavailable["grad-cam"] = str(error)
            return None, []
        probabilities = cams.probabilities
        entries = [
            {
                "label": cams.targets.labels[0][t],
                "probability": float(probabilities[0, t]) if probabilities is not None else 0,
                **self.picture(cams, t),
            }
            for t in range(cams.maps.shape[1])
        ]
        return cams, entries

    def saliency(self) -> dict[str, Any]:
        sal = explain(self.loaded, self.x, "saliency")
        label = sal.targets.labels[0][0]
        display, shown = drawn_maps(sal, self.settings.drawing)
        return {
            "label": label,
            **self.picture(sal),
            "raw": png_data_uri(to_uint8(shown[0, 0])),
            "raw_legend": legend_text(display, label, cmap="gray"),
        }

    def methods(self, top_class: int | None) -> list[dict[str, Any]]:
        """The "methods compared" section: each method for the top class; the ones that do not
        apply are skipped and logged, once per reason."""
        entries = []
        skipped: dict[str, list[str]] = {}
        for name in self.settings.methods:
            # The page states completeness under the picture (method_note), not as a warning.
            quiet = "warn_incomplete" in method_options(get_method(name))
            options: dict[str, Any] = {"warn_incomplete": False} if quiet else {}
            try:
                e = explain(self.loaded, self.x, name, target=top_class, **options)
            except NotApplicableError as error:  # e.g. CAM on a model without a GAP + linear head
                skipped.setdefault(str(error), []).append(name)
                continue
            label = get_method(name).title + (f" @ {e.layer}" if e.layer else "")
            entries.append({"label": label, **self.picture(e), "note": method_note(e)})
        for reason, names in skipped.items():
            s = "s" if len(names) > 1 else ""
            logger.warning("method%s %s skipped: %s", s, ", ".join(names), reason)
        return entries

    def activation_layers(self) -> list[str]:
        """The layers asked for, else the default ones (none where layers cannot be read)."""
        if self.settings.layers:
            return list(self.settings.layers)
        try:
            return default_activation_layers(self.loaded.module, self.x)
        except NotApplicableError as error:
            self.unavailable["activations"] = str(error)
            return []

    def activations(self, layers: Sequence[str]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        if not layers:
            return entries
        for name, act in capture_activations(self.loaded.module, self.x, layers).items():
            if act.dim() != 4:
                continue
            ids, chosen = select_channels(act[0], self.settings.channels, ChannelOrder.FIRST)
            fig = activations_figure(
                chosen.float().cpu().numpy(),
                title=f"{name} {tuple(act.shape)}",
                channel_ids=ids,
                shared_scale=False,
            )
            entries.append({"layer": name, "shape": tuple(act.shape), "src": figure_data_uri(fig)})
        return entries


def _page(
    loaded: LoadedModel,
    item: LoadedImage,
    parts: _ModelParts,
    settings: ReportSettings,
    box: Box | None,
) -> dict[str, Any]:
    """Everything one image's page shows, and its manifest record (``page["record"]``)."""
    page = _Page(loaded, item, settings, box)
    cams, gradcam = page.gradcam()
    saliency = page.saliency()
    predictions = _predictions(loaded, page.x)
    methods = page.methods(predictions[0]["index"] if predictions else None)
    layers = page.activation_layers()
    activations = page.activations(layers)
    record = {
        "input": str(item.path),
        "model": model_record(loaded),
        "gradcam_layer": cams.layer if cams is not None else None,
        "predictions": predictions,
        "gradcam_targets": [{"name": g["label"], "probability": g["probability"]} for g in gradcam],
        "saliency_target": saliency["label"],
        "activation_layers": layers,
        "notes": list(item.notes),
        "environment": environment_info(),
    }
    sections = ["predictions", "grad-cam", "saliency", *(["methods"] if methods else [])]
    return {
        "title": item.path.name,
        "stem": item.stem,
        "model": record["model"],
        "environment": record["environment"],
        "input_size": loaded.preprocessing.input_size,
        "notes": list(item.notes),
        "input_image": png_data_uri(draw_box(item.picture, box)),
        "drawing_note": drawing_note(settings.drawing),
        "channels": settings.channels,
        "box": box,
        "predictions": predictions,
        "gradcam_layer": record["gradcam_layer"],
        "gradcam": gradcam,
        "saliency": saliency,
        "methods": methods,
        "activations": activations,
        "filters": parts.filters,
        "features": parts.features,
        "summary": parts.summary,
        "layers": parts.layers,
        "unavailable": _said_once(page.unavailable | parts.unavailable),
        "thumb": gradcam[0]["src"] if gradcam else saliency["src"],
        "record": record,
        "manifest_json": to_json_text(record),
        "sections": [
            *sections,
            "activations",
            *(["features"] if parts.features is not None else []),
            "filters",
            "summary",
            "layers",
            "manifest",
        ],
    }


def _said_once(reasons: dict[str, str]) -> dict[str, str]:
    """Each section's reason, in full the first time; a repeat points back to it."""
    first: dict[str, str] = {}
    said: dict[str, str] = {}
    for section, reason in reasons.items():
        said[section] = reason if reason not in first else f"as for {first[reason]}, above."
        first.setdefault(reason, section)
    return said


def drawing_note(drawing: MapDrawing) -> str:
    """One sentence saying how the page's maps are drawn (sign, clipping, style)."""
    sign = (
        "each rectified as its method defines it (ReLU for CAMs, magnitude or sign for gradients)"
        if drawing.sign == "auto"
        else f"showing the {drawing.sign} evidence"
        if drawing.sign != "all"
        else "showing both signs"
    )
    percent = drawing.outlier_percent
    clip = (
        f"gradient maps with their brightest {GRADIENT_OUTLIER_PERCENT:g} % saturated, so "
        "the rest of the map shows"
        if percent is None
        else "scaled from their minimum to their maximum"
        if percent == 0
        else f"with their brightest {percent:g} % saturated"
    )
    style = MapStyle(drawing.style).value
    alpha = f" at opacity {drawing.alpha:g}" if style in ("overlay", "alpha") else ""
    return f"Maps {sign}, {clip}; drawn as {style}{alpha} in {drawing.cmap}."


def method_note(e: Explanation) -> str | None:
    """A caption line for what a picture cannot show: Integrated Gradients' completeness."""
    if "completeness_gap" not in e.extras:
        return None
    gap = float(relative_gap(e.extras["completeness_gap"], e.extras["delta_f"])[0, 0])
    note = f"attributions sum to the score change within {100 * gap:.1f} %"
    if gap > COMPLETENESS_WARNING:
        note += " (over the paper's 5 %: more steps would tighten it)"
    return note


def build_report(
    model: LoadedModel | nn.Module,
    paths: Sequence[str | Path] | str | Path,
    out: str | Path,
    settings: ReportSettings | None = None,
    *,
    boxes: dict[Path, Box] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/<image>.html`` per image, ``out/index.html`` and ``out/manifest.json``: what
    ``cnnviz report`` writes, from Python.

    Args:
        model: a LoadedModel, or your own ``nn.Module`` (wrapped by :func:`cnnviz.from_module`:
            numbered classes, ImageNet preprocessing).
        paths: image files, or a folder (or one file).
        out: the folder to write.

    Returns the manifest as a dict, with ``index`` (path of the index page) added.

    Example::

        >>> cnnviz.build_report(cnnviz.load_model("shapes_vgg11"), ["a.png"], "report")["index"]
        'report/index.html'
    """
    loaded = model if isinstance(model, LoadedModel) else from_module(model)
    files = find_images(paths) if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    out = Path(out)
    settings = settings or ReportSettings()
    boxes = boxes or {}
    out.mkdir(parents=True, exist_ok=True)
    parts = _ModelParts(loaded, settings, files)
    announce_default_layer(loaded)  # its log line before the bar: every page draws Grad-CAM
    failures: list[dict[str, Any]] = []
    index_entries: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    with disabled(not progress), progress_bar(len(files), "report", "img") as bar:
        for item in load_inputs(loaded, files, failures):
            page = _page(loaded, item, parts, settings, boxes.get(item.path))
            href = f"{item.stem}.html"
            atomic_write_bytes(out / href, render_page("report.html.j2", page=page).encode("utf-8"))
            items.append({**page["record"], "files": {"html": href}})
            index_entries.append(
                {
                    "href": href,
                    "title": page["title"],
                    "thumb": page["thumb"],
                    "top": page["predictions"][0]["name"],
                    "probability": page["predictions"][0]["probability"],
                }
            )
            bar.update(1)
    record = model_record(loaded)
    index_html = render_page("index.html.j2", model=record, pages=index_entries, failures=failures)
    atomic_write_bytes(out / "index.html", index_html.encode("utf-8"))
    manifest = Manifest(
        command="report",
        model=record,
        method="report",
        items=tuple(items),
        failures=tuple(failures),
        extra=settings.drawing.record(),
    )
    write_manifest(out, manifest)
    result = manifest.to_dict()
    result["index"] = str(out / "index.html")
    return result
