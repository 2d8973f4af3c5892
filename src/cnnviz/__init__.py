"""cnnviz: see inside CNN image classifiers.

Heavy libraries (torch, matplotlib) are imported lazily, so ``import cnnviz`` and ``cnnviz --help``
are instant; public names are resolved on first use. One import gives the whole notebook API::

    import cnnviz
    model = cnnviz.load_model("efficientnet_lite0")
    cnnviz.summarize(model)                          # a table in a notebook, text in print()
    cnnviz.filters(model)                            # conv filters, drawn
    cnnviz.explain(model, "coffee.jpg", "gradcam")   # the map over the image, labelled

In a Jupyter kernel, cnnviz's notices (the automatic layer, the eval-mode notice) are shown on
the cell's stderr without any logging set-up (:func:`cnnviz.notebook.notebook_logging`).
``__version__`` is read on first use from the installed package's metadata, whose one source is
``version`` in ``pyproject.toml``.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

__version__: str  # resolved by __getattr__ below, so there is no second copy of the version

_UNKNOWN_VERSION = "0+unknown"
"""``__version__`` when cnnviz runs from a source tree that was never installed (no metadata)."""

_PUBLIC = {
    # models
    "load_model": "cnnviz.models",
    "from_module": "cnnviz.models",
    "list_models": "cnnviz.models",
    "Preprocessing": "cnnviz.inputs.preprocess",
    "load_image": "cnnviz.inputs.images",
    # structure
    "count_params": "cnnviz.inspect.summary",
    "count_parameters": "cnnviz.inspect.summary",
    "summarize": "cnnviz.inspect.summary",
    "layer_table": "cnnviz.inspect.summary",
    "filters": "cnnviz.inspect.views",
    "activations": "cnnviz.inspect.views",
    "predict": "cnnviz.inspect.views",
    # explanations
    "explain": "cnnviz.api",
    "Explanation": "cnnviz.methods.base",
    "method_names": "cnnviz.methods.registry",
    "TopK": "cnnviz.capture.targets",
    "build_report": "cnnviz.runs.report",
    "open_results": "cnnviz.outputs.results",
    "subplots": "cnnviz.render.canvas",
    # what units want to see
    "features": "cnnviz.featurevis.visualise",
    "FeatureVisualization": "cnnviz.featurevis.result",
    "RobustnessTransforms": "cnnviz.featurevis.transforms",
    # whole datasets: the audit (`cnnviz audit`)
    "audit_results": "cnnviz.runs.audit",
    # the explorer (`cnnviz serve`)
    "explore": "cnnviz.serve.server",
    # hooks and layers, for your own code
    "LayerCapture": "cnnviz.capture.hooks",
    "GradFrom": "cnnviz.capture.hooks",
    "resolve_layer": "cnnviz.capture.layers",
    "auto_cam_layer": "cnnviz.capture.layers",
}


if "ipykernel" in sys.modules:
    # in a notebook only: cnnviz's notices show there without logging set up
    from cnnviz.notebook import notebook_logging

    notebook_logging()


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # lazy: only when asked

    try:
        return version("cnnviz")
    except PackageNotFoundError:
        return _UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()["__version__"] = found = _installed_version()  # looked up once
        return found
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["__version__", *_PUBLIC]
