"""cnnviz: see inside CNN image classifiers.

Heavy libraries (torch, matplotlib) are imported lazily, so ``import cnnviz`` and ``cnnviz --help``
are instant; public names are resolved on first use. ``__version__`` is read on first use from the
installed package's metadata, whose one source is ``version`` in ``pyproject.toml``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__: str  # resolved by __getattr__ below, so there is no second copy of the version

_UNKNOWN_VERSION = "0+unknown"
"""``__version__`` when cnnviz runs from a source tree that was never installed (no metadata)."""

_PUBLIC = {
    "explain": "cnnviz.api",
    "Explanation": "cnnviz.methods.base",
    "method_names": "cnnviz.methods.registry",
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
