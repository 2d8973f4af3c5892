"""The report's "What the units want to see": feature visualisations of one layer, checked.

Computed once per report (it is about the model, not one image) by :func:`feature_section`:
the first channels of the layer optimised in one batch (:func:`cnnviz.features`), with the
report's own images as the natural exemplars of check (a), and every check written under its
picture and in a table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cnnviz.capture.forward import model_device
from cnnviz.capture.layers import resolve_layer
from cnnviz.featurevis.units import layer_output_shape
from cnnviz.featurevis.visualise import features
from cnnviz.models.loaded import LoadedModel
from cnnviz.render.html import figure_data_uri

logger = logging.getLogger(__name__)

MAX_EXEMPLAR_IMAGES = 64
"""The report's images used as exemplars for check (a) (its first ones, to bound memory)."""


def feature_section(
    loaded: LoadedModel,
    layer: str,
    images: Sequence[Path],
    *,
    channels: int,
    steps: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The section's figure (a data URI), its checks per unit and what it did, for the page."""
    exemplars = [str(p) for p in images[:MAX_EXEMPLAR_IMAGES]] or None
    name = resolve_layer(loaded.module, layer)
    example = torch.zeros((1, *loaded.preprocessing.input_shape))
    shape = layer_output_shape(loaded.module, name, example.to(model_device(loaded.module)))
    count = min(channels, shape[1]) if len(shape) > 1 else 1
    result = features(loaded, name, range(count), steps=steps, seed=seed, exemplars=exemplars)
    rows = []
    for row in result.checks_table():
        rows.append({key: _shown(value) for key, value in row.items()})
    return {
        "layer": result.units[0].layer,
        "src": figure_data_uri(result.plot()),
        "rows": rows,
        "steps": result.steps,
        "stopped": result.stopped,
        "exemplar_images": len(exemplars or ()),
        "objective": result.objective,
    }


def _shown(value: object) -> object:
    """A table cell: floats to 3 significant digits, undefined as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.3g}"
    return value
