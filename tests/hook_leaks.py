"""Leak checks for the tests: which modules of a model still carry hooks."""

from __future__ import annotations

from torch import nn


def hooked_modules(model: nn.Module) -> list[str]:
    """Names of modules that still carry forward/backward hooks (``<root>`` for the model)."""
    found = []
    for name, module in model.named_modules():
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            found.append(name or "<root>")
    return found
