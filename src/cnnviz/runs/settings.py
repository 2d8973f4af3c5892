"""What a folder run (:func:`cnnviz.runs.explain.explain_files`) explains, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnnviz.capture.targets import TargetSpec
from cnnviz.methods.registry import get_method, method_names
from cnnviz.render.drawing import DrawingSettings

ALL_METHODS = "all"
STORES = ("files", "zarr")


@dataclass(frozen=True)
class ExplainSettings(DrawingSettings):
    """What to explain, how to draw it (:class:`~cnnviz.render.drawing.MapDrawing`: ``sign``,
    ``style``, ``cmap``, ``alpha``, ``outlier_percent``), and how to run (``num_workers=None``:
    automatic).

    ``store``: ``"files"`` (per-image PNG and NPY files and records) or ``"zarr"`` (one chunked
    store, :mod:`cnnviz.outputs.result_store`, its maps in ``store_dtype``, at the input
    resolution too with ``store_input_maps``)."""

    method: str = "gradcam"
    layer: str | None = None
    target: TargetSpec = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    num_workers: int | None = None
    resume: bool = False
    store: str = "files"
    store_dtype: str = "float16"
    store_input_maps: bool = False


def methods_of(settings: ExplainSettings) -> list[str]:
    """The registered names of the methods ``settings`` asks for (every one for ``all``)."""
    if settings.method.strip().lower() == ALL_METHODS:
        return method_names()
    return [get_method(settings.method).name]
