"""The default model name, in a module that imports no torch (the CLI parser reads it)."""

from __future__ import annotations

DEFAULT_MODEL = "efficientnet_lite0"
"""The model the CLI and :func:`cnnviz.models.load_model` examples use when none is named."""
