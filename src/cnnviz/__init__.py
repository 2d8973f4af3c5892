"""cnnviz: see inside CNN image classifiers.

Heavy libraries (torch, matplotlib) are imported lazily, so ``import cnnviz`` and ``cnnviz --help``
are instant; public names are resolved on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "explain": "cnnviz.api",
    "Explanation": "cnnviz.methods.base",
    "method_names": "cnnviz.methods.base",
    "TopK": "cnnviz.capture.targets",
    "load_model": "cnnviz.models",
    "from_module": "cnnviz.models",
    "list_models": "cnnviz.models",
    "load_image": "cnnviz.inputs.images",
    "summarize": "cnnviz.inspect.summary",
    "LayerCapture": "cnnviz.capture.hooks",
    "GradFrom": "cnnviz.capture.hooks",
    "resolve_layer": "cnnviz.capture.layers",
    "auto_cam_layer": "cnnviz.capture.layers",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["__version__", *_PUBLIC]
