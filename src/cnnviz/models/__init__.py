"""The model zoo: :func:`load_model` by name, :func:`from_module` for a user's own network.

See :mod:`cnnviz.models.registry` for the table of models and the ``weights`` rules, and
:mod:`cnnviz.models.checkpoint` for how user checkpoints are read safely.
"""

from __future__ import annotations

from cnnviz.models.loaded import LoadedModel, ModelInfo, imagenet_classes
from cnnviz.models.registry import DEFAULT_MODEL, DeviceError, from_module, list_models, load_model

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
