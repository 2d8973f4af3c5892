"""Naming layers: dotted ``named_modules()`` paths, short aliases, and automatic CAM-layer choice.

A layer is always reported by its full dotted path (``backbone.conv5_2``). Users may also give a
unique suffix of that path (``conv5_2``), which is how the seed exercise's VGG-11 names
(``conv1`` … ``bn5_2``) work everywhere a layer can be named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz.capture.forward import add_forward_hook, model_state_guard
from cnnviz.errors import CnnvizError, LayerError, close_matches, remedy

logger = logging.getLogger(__name__)

LayerRef = str | nn.Module

# Pooling modules: neither they nor a container that just returns their output is a CAM layer.
_POOLING: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)
# Modules that only reshape, drop, pass through or apply a pointwise activation: skipped
# themselves, while a block whose last step they are (a ResNet block) remains a candidate.
_NOT_CAM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
)


def layer_names(model: nn.Module) -> list[str]:
    """All named submodules of ``model`` (the root, named ``''``, excluded), in definition order."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: LayerRef) -> str:
    """The full dotted name of ``layer`` in ``model``.

    Accepts a module object (resolved by identity), an exact dotted name, or a unique suffix of one
    (``conv1`` for ``backbone.conv1``). An exact name always wins over a suffix.

    Raises:
        LayerError: the name is unknown (close matches listed) or the suffix is ambiguous.
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return str(name)
        raise LayerError(
            f"The module {type(layer).__name__} given as layer is not a submodule of the model. "
            "Pass a module from this model, or its dotted name (see `cnnviz layers MODEL`)."
        )
    if not isinstance(layer, str):
        raise TypeError(
            f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}"
        )
    names = layer_names(model)
    if layer in names:
        return layer
    suffix = "." + layer
    matches = [n for n in names if n.endswith(suffix)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:6]) + (", …" if len(matches) > 6 else "")
        raise LayerError(
            f"Layer name {layer!r} is ambiguous: it ends {len(matches)} module paths "
            f"({shown}). Give the full dotted name."
        )
    # Suggest by full path and by last component (so "bn4_l" suggests "backbone.bn4_1").
    by_last = {n.rsplit(".", 1)[-1]: n for n in reversed(names)}
    hint = close_matches(layer, names) or close_matches(layer, by_last)
    raise LayerError(
        f"Unknown layer {layer!r} in {type(model).__name__}.{hint} "
        "List the layers with `cnnviz layers MODEL`."
    )


def alias_of(model: nn.Module, name: str) -> str | None:
    """The shortest unique suffix of ``name`` that :func:`resolve_layer` maps back to it.

    ``None`` when no suffix shorter than the full name is unique.
    """
    parts = name.split(".")
    names = layer_names(model)
    for k in range(1, len(parts)):
        candidate = ".".join(parts[-k:])
        if candidate in names:
            continue
        if sum(1 for n in names if n.endswith("." + candidate)) == 1:
            return candidate
    return None


@dataclass(frozen=True)
class LayerCall:
    """One module call recorded by :func:`trace_layers`, in execution order."""

    name: str
    module_type: str
    output_shape: tuple[int, ...] | None
    num_params: int


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    """Run ``model`` once on ``example`` (no grad, eval mode, model restored) recording every call.

    Modules whose output is not a single tensor get ``output_shape=None``. Used by the layer list,
    the report's activation layers and the sanity checks' layer groups.
    """
    calls: list[LayerCall] = []

    def make_hook(name: str):  # type: ignore[no-untyped-def]  # hook signature is torch's
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            own = sum(p.numel() for p in module.parameters(recurse=False))
            calls.append(LayerCall(name, type(module).__name__, shape, own))

        return hook

    _forward_with_hook_on_every_layer(model, example, make_hook)
    return calls


def _forward_with_hook_on_every_layer(
    model: nn.Module, example: torch.Tensor, make_hook: Callable[[str], Any]
) -> None:
    """One no-grad, eval-mode forward of ``example`` with ``make_hook(name)`` as a forward hook
    on every named submodule; the hooks are removed and the model's mode restored, whatever
    happens."""
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(add_forward_hook(module, make_hook(name)))
        with model_state_guard(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def auto_cam_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last layer, in execution order, whose output is a spatial map (4-D with H·W > 1).

    Pooling, activation, dropout and identity modules are skipped, and so are containers whose
    output is just a pooling module's output. Containers run after their children, so for a ResNet
    this picks ``layer4`` (the block output, skip connection included); for the seed's VGG-11-BN
    it picks ``bn5_2``; for timm's EfficientNet ``bn2``. The choice is logged.

    Raises:
        LayerError: no layer produces a spatial map (e.g. a model without convolutions).
    """
    chosen: str | None = None
    # Pooling outputs, kept alive (not just their ids) so a freed tensor's id cannot be reused.
    skipped: list[torch.Tensor] = []

    def make_hook(name: str):  # type: ignore[no-untyped-def]  # hook signature is torch's
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            nonlocal chosen
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                return
            if isinstance(module, _POOLING):
                skipped.append(output)
                return
            if isinstance(module, _NOT_CAM_LAYERS):
                return
            if any(output is t for t in skipped) or output.shape[-1] * output.shape[-2] <= 1:
                return
            chosen = name

        return hook

    try:
        _forward_with_hook_on_every_layer(model, example, make_hook)
    except CnnvizError:
        raise
    except Exception as e:  # the model's own forward failed: say so, as LayerCapture does
        raise LayerError(
            f"The forward pass of {type(model).__name__} failed on an input of shape "
            f"{tuple(example.shape)} while choosing the CAM layer ({type(e).__name__}: {e}); "
            "check the input size (--input-size) and the model."
        ) from e
    if chosen is None:
        raise LayerError(
            f"{type(model).__name__} has no layer with a spatial (N, C, H, W) output larger "
            f"than 1×1; CAM methods need one. Pass {remedy('--layer', 'layer=')} explicitly or "
            "use a gradient method "
            "such as saliency."
        )
    logger.info("Automatic CAM layer: %s", chosen)
    return chosen


def resolve_layers(model: nn.Module, layers: Sequence[LayerRef]) -> list[str]:
    """:func:`resolve_layer` for each entry, rejecting duplicates."""
    names = [resolve_layer(model, layer) for layer in layers]
    if len(set(names)) != len(names):
        raise LayerError(f"The same layer is named twice in {names}; name each layer once.")
    return names
