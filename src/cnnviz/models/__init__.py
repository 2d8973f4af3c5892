"""The model zoo: :func:`load_model` by name, :func:`from_module` for a user's own network.

See :mod:`cnnviz.models.registry` for the table of models and the ``weights`` rules, and
:mod:`cnnviz.models.checkpoint` for how user checkpoints are read safely.

The names below are resolved on first use, so importing :mod:`cnnviz.models.defaults` (which
the CLI parser does) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from cnnviz.models.defaults import DEFAULT_MODEL

if TYPE_CHECKING:
    from cnnviz.models.loaded import LoadedModel, ModelInfo, imagenet_classes
    from cnnviz.models.registry import DeviceError, from_module, list_models, load_model

_HOMES = {"LoadedModel": "loaded", "ModelInfo": "loaded", "imagenet_classes": "loaded"}


def __getattr__(name: str) -> Any:
    if name in __all__:  # all but DEFAULT_MODEL (set above) live in the registry or loaded
        return getattr(import_module(f"cnnviz.models.{_HOMES.get(name, 'registry')}"), name)
    raise AttributeError(f"module 'cnnviz.models' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "DeviceError",
    "LoadedModel",
    "ModelInfo",
    "from_module",
    "imagenet_classes",
    "list_models",
    "load_model",
]
