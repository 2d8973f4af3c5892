"""The explorer's maps: one explanation per (image, method, options, class, layer), computed from
the image's cached forward pass where the method allows (:mod:`cnnviz.methods.layer_graph`), its
picture, colour bar, legend, deletion/insertion scores, equivalent command and manifest entry."""

from __future__ import annotations

import dataclasses
import shlex
import time
from typing import Any

import numpy as np
import torch

from cnnviz.api import cam_layer, method_for_model
from cnnviz.api import explain as explain_with
from cnnviz.methods.base import Explanation
from cnnviz.methods.layer_graph import uses_layer_graph
from cnnviz.methods.postprocess import Display, parse_sign
from cnnviz.methods.registry import get_method
from cnnviz.metrics.faithfulness import deletion, insertion, relevance_maps
from cnnviz.outputs.files import encode_png
from cnnviz.outputs.manifest import model_record, utc_now_iso
from cnnviz.render.colours import colormap_for
from cnnviz.render.drawing import colour_strip, legend_text
from cnnviz.serve.requests import HttpError, MapQuery
from cnnviz.serve.session import ExplorerImage, ExplorerSession

FAITHFULNESS_STEPS = 50
"""Steps of the deletion and insertion curves the explorer computes (the report uses 100)."""


def explanation_for(session: ExplorerSession, image_id: str, query: MapQuery) -> Explanation:
    """The explanation the query asks for (cached). CAM methods come from the image's forward
    pass at the layer, kept with its graph: a new class or CAM method needs no new forward."""
    target = session.class_of(query.target, image_id)
    key = ("explanation", image_id, query.method, query.options, target, query.layer)

    def make() -> Explanation:
        method = method_for_model(query.method, session.loaded.preprocessing, dict(query.options))
        prepared = session.prepared(image_id)
        module, x = session.module, prepared.x
        layer = None
        if method.needs_layer:
            layer = cam_layer(
                module, x, query.layer, model_name=session.loaded.name, title=method.title
            )
        names = session.class_names
        if uses_layer_graph(method) and layer is not None:
            graph = session.graph(image_id, layer)
            result = graph.explain(method, target=target, class_names=names)
        else:
            result = explain_with(module, x, method, layer=layer, target=target, class_names=names)
        pictures = torch.from_numpy(prepared.picture).unsqueeze(0)
        return dataclasses.replace(result, pictures=pictures)

    return session.cached(key, make, _explanation_size)


def _explanation_size(e: Explanation) -> int:
    sizes = [e.maps, e.scores, *(t for t in (e.attributions, e.pictures) if t is not None)]
    return sum(t.numel() * t.element_size() for t in sizes)


def shown_display(e: Explanation, query: MapQuery) -> Display:
    return e.display if query.sign == "auto" else parse_sign(query.sign)


def map_png(session: ExplorerSession, image_id: str, query: MapQuery) -> bytes:
    """The map drawn as the query says, as PNG (cached)."""
    e = explanation_for(session, image_id, query)

    def make() -> bytes:
        picture = e.to_pil(
            style=query.style,
            cmap=query.cmap,
            alpha=query.alpha,
            sign=shown_display(e, query),
            outlier_percent=query.outlier,
        )
        return encode_png(_array(picture), compress_level=1)

    return session.cache.get_or_make(("map.png", image_id, query), make, len)


def colorbar_png(cmap: str, sign: str) -> bytes:
    """The colour bar of maps drawn in ``cmap`` with ``sign`` (``auto`` counts as positive)."""
    display = Display.POSITIVE if sign == "auto" else parse_sign(sign)
    return encode_png(colour_strip(colormap_for(display, cmap), 256, 14), compress_level=1)


def explanation_json(
    session: ExplorerSession, image_id: str, query: MapQuery, *, started: float
) -> dict[str, Any]:
    """What the page shows about a map: target, legend, picture URLs, command and manifest."""
    cached_before = ("map.png", image_id, query) in session.cache
    e = explanation_for(session, image_id, query)
    map_png(session, image_id, query)  # drawn now, so a bad colour map is refused here
    display = shown_display(e, query)
    label = e.targets.labels[0][0]
    index = int(e.targets.indices[0, 0]) if e.targets.indices is not None else None
    probability = float(e.probabilities[0, 0]) if e.probabilities is not None else None
    title = get_method(e.method).title
    entry = session.image(image_id)
    q = query.query_string()
    return {
        "method": e.method,
        "title": title,
        "layer": e.layer,
        "target": {
            "index": index,
            "label": label,
            "probability": probability,
            "score": float(e.scores[0, 0]),
        },
        "sign": display.value,
        "legend": legend_text(display, label, cmap=colormap_for(display, query.cmap)),
        "image": f"api/images/{image_id}/map.png?{q}",
        "colorbar": f"api/colorbar.png?cmap={query.cmap}&sign={query.sign}",
        "command": command_line(session, entry, e, query),
        "manifest": manifest_entry(session, entry, e, query, probability),
        "seconds": round(time.perf_counter() - started, 4),
        "cached": cached_before,
    }


def command_line(
    session: ExplorerSession, entry: ExplorerImage, e: Explanation, query: MapQuery
) -> str:
    """The ``cnnviz explain`` command that writes this map."""
    loaded = session.loaded
    image = str(entry.path) if entry.source != "upload" else entry.name
    words = ["cnnviz", "explain", image, "--model", loaded.name]
    if loaded.weights.startswith("file "):
        words += ["--weights", loaded.weights[len("file ") :]]
    words += ["--method", e.method]
    if e.targets.indices is not None:
        words += ["--target", str(int(e.targets.indices[0, 0]))]
    if query.layer is not None and e.layer is not None:
        words += ["--layer", e.layer]
    for key, value in query.options:
        words += ["--option", f"{key}={value}"]
    if query.sign != "auto":
        words += ["--sign", query.sign]
    if query.style != "overlay":
        words += ["--style", query.style]
    if query.cmap != "jet":
        words += ["--cmap", query.cmap]
    if query.alpha != 0.5:
        words += ["--alpha", f"{query.alpha:g}"]
    if query.outlier != "auto":
        words += ["--outlier-percent", "0" if query.outlier is None else f"{query.outlier:g}"]
    words += ["--out", "cnnviz-out"]
    return shlex.join(words)


def manifest_entry(
    session: ExplorerSession,
    entry: ExplorerImage,
    e: Explanation,
    query: MapQuery,
    probability: float | None,
) -> dict[str, Any]:
    """The exported view's manifest entry: what was explained and how it was drawn."""
    return {
        "image": entry.name,
        "file": f"{entry.path.stem}-{e.method}.png",
        "method": e.method,
        "layer": e.layer,
        "target": e.targets.labels[0][0],
        "target_index": None if e.targets.indices is None else int(e.targets.indices[0, 0]),
        "probability": probability,
        "score": float(e.scores[0, 0]),
        "options": dict(query.options),
        "drawing": {
            "sign": shown_display(e, query).value,
            "style": query.style,
            "cmap": query.cmap,
            "alpha": query.alpha,
            "outlier_percent": e.outlier_percent if query.outlier == "auto" else query.outlier,
        },
        "model": model_record(session.loaded),
        "created": utc_now_iso(),
    }


def faithfulness_json(session: ExplorerSession, image_id: str, query: MapQuery) -> dict[str, Any]:
    """RISE deletion and insertion areas of the map (:mod:`cnnviz.metrics.faithfulness`)."""
    started = time.perf_counter()
    e = explanation_for(session, image_id, query)
    x = session.prepared(image_id).x
    target = e.targets.indices
    if target is None:
        raise HttpError("Deletion and insertion need a class target.")

    def make() -> dict[str, float]:
        maps = relevance_maps(e)
        classes = target[:, 0].cpu()
        module = session.module
        kept = deletion(module, x, maps, target=classes, steps=FAITHFULNESS_STEPS)
        added = insertion(module, x, maps, target=classes, steps=FAITHFULNESS_STEPS)
        return {"deletion": float(kept.auc[0]), "insertion": float(added.auc[0])}

    key = ("faithfulness", image_id, query.method, query.options, int(target[0, 0]), e.layer)
    scores = session.cached(key, make, lambda _: 64)
    return {**scores, "steps": FAITHFULNESS_STEPS, "seconds": time.perf_counter() - started}


def _array(picture: Any) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.uint8)
