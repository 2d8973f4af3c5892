"""CLI wiring for the evaluation commands (``evaluate``, ``sanity``); import-light."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:
    """Add the evaluation sub-commands to the ``cnnviz`` parser's sub-parsers."""
