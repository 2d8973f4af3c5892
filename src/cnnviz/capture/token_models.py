"""Token models (ViT, DeiT, Swin, …): which of their layers are CNN feature maps, and which not.

CAM methods weight the channels of an ``(N, C, H, W)`` map whose positions are image regions seen
through convolutions. In a vision transformer the patch embedding (a convolution whose kernel
equals its stride) cuts the image into tokens, and from there on the maps are token grids —
``(N, L, C)`` sequences, or Swin's channels-last ``(N, H, W, C)`` — mixed by self-attention:
Grad-CAM there is meaningless. :func:`token_layer_problem` says whether, and why, a layer of a
model is such a layer; ordinary CNNs (squeeze-excitation, CBAM and ECA channel attention
included) are never token models, and the convolutions of a hybrid (timm's MobileViT) that run
before its first self-attention remain CAM layers.

A model is a token model when it holds transformer self-attention — an
``nn.MultiheadAttention``, or a module with a ``qkv`` (or ``to_qkv``) ``nn.Linear``, or linear
``q``/``k``/``v`` projections — or is one of the known transformer classes. Only then is the
model traced: one forward pass per model and input shape, remembered.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.layers import LayerCall, trace_layers

# Class names (of the model itself) that say what kind of token model it is, checked in order.
_KNOWN_KINDS: tuple[tuple[str, str], ...] = (
    ("SwinTransformer", "a Swin Transformer"),
    ("VisionTransformer", "a Vision Transformer"),
    ("MaxVit", "a MaxViT (a hybrid with self-attention)"),
)
_GENERIC_KIND = "a model with transformer self-attention"
# A fused query-key-value projection, or separate ones: what a self-attention module holds.
_FUSED_QKV = ("qkv", "to_qkv")
_SPLIT_QKV: tuple[tuple[str, ...], ...] = (
    ("q", "k", "v"),
    ("q", "kv"),
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
)
# Modules that act on the last dimension: a 4-D output of one is channels-last (N, H, W, C).
_LAST_DIM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.Linear)
_TO_CHANNELS_LAST = [0, 2, 3, 1]
# Modules whose 4-D output is (N, C, H, W) by construction, whatever its shape looks like.
_CHANNELS_FIRST_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
)

_PATCH_EMBEDDING = (
    "is the patch embedding, and the maps after it are token grids, not CNN feature maps"
)

_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], list[LayerCall]]] = (
    weakref.WeakKeyDictionary()
)


def is_self_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a transformer self-attention: ``nn.MultiheadAttention``, or a module
    with a fused ``qkv``/``to_qkv`` linear projection (timm's ``Attention``, Swin's window
    attention) or separate linear ``q``, ``k``, ``v`` projections. Convolutional "attention"
    (squeeze-excitation, CBAM, ECA, a ``qkv`` that is a 1×1 convolution) is not."""
    if isinstance(module, nn.MultiheadAttention):
        return True

    def linear(name: str) -> bool:
        return isinstance(getattr(module, name, None), nn.Linear)

    return any(linear(n) for n in _FUSED_QKV) or any(
        all(linear(n) for n in names) for names in _SPLIT_QKV
    )


def attention_layers(model: nn.Module) -> list[str]:
    """Dotted names of the self-attention modules of ``model``, in definition order."""
    return [name for name, m in model.named_modules() if name and is_self_attention(m)]


def token_model_kind(model: nn.Module) -> str | None:
    """What kind of token model ``model`` is (``"a Vision Transformer"``, ``"a Swin
    Transformer"``, ``"a model with transformer self-attention"``), or ``None`` for a CNN.

    Static (no forward pass): the model's class name, else whether it holds self-attention.
    """
    cls = type(model).__name__
    for marker, kind in _KNOWN_KINDS:
        if marker in cls:
            return kind
    return _GENERIC_KIND if attention_layers(model) else None


def is_patch_conv(module: nn.Module) -> bool:
    """A ``Conv2d`` whose kernel equals its stride, larger than 1: it cuts its input into
    patches."""
    if not isinstance(module, nn.Conv2d):
        return False
    kernel, stride = tuple(module.kernel_size), tuple(module.stride)
    return kernel == stride and all(k > 1 for k in kernel)


@dataclass(frozen=True)
class TokenLayerProblem:
    """Why a layer of a token model is not a CNN feature map.

    Attributes:
        kind: what the model is (:func:`token_model_kind`).
        layer: the layer's dotted name.
        reason: a phrase about the layer, e.g. ``"is the patch embedding, and the maps after it
            are token grids, not CNN feature maps"``.
        suggestion: the last CNN layer before the first self-attention (a hybrid's), if any.
    """

    kind: str
    layer: str
    reason: str
    suggestion: str | None

    def message(
        self, model_name: str, method_title: str, alternatives: Sequence[str], automatic: bool
    ) -> str:
        """One line: what the model and its layer are, why ``method_title`` is meaningless
        there, and what to use instead (a hybrid's CNN layer, or the ``alternatives``)."""
        chosen = " (the automatic choice)" if automatic else ""
        names = ", ".join(alternatives[:-1]) + f" or {alternatives[-1]}"
        remedy = (
            f"Choose a CNN layer before the first self-attention (the last one is "
            f"{self.suggestion}) or use"
            if self.suggestion
            else "Use"
        )
        return (
            f"{model_name} is {self.kind}: its layer {self.layer}{chosen} {self.reason}, so "
            f"{method_title} there is meaningless. {remedy} an input-space method instead: "
            f"{names} (CAMs of token maps are not supported yet)."
        )


def _traced(model: nn.Module, example: torch.Tensor) -> list[LayerCall]:
    """:func:`trace_layers` on one image, remembered per model and input shape."""
    per_model = _TRACES.setdefault(model, {})
    key = tuple(example.shape[1:])
    if key not in per_model:
        per_model[key] = trace_layers(model, example[:1])
    return per_model[key]


def _attention_start(calls: Sequence[LayerCall], attention: Sequence[str]) -> tuple[int, str]:
    """The index of the first call that is a self-attention or runs inside one, and that
    self-attention's name (``len(calls), ""`` when none runs)."""
    for i, call in enumerate(calls):
        for name in attention:
            if call.name == name or call.name.startswith(name + "."):
                return i, name
    return len(calls), ""


def _channels_last_calls(model: nn.Module, calls: Sequence[LayerCall]) -> set[int]:
    """Indices of the calls whose 4-D output is channels-last ``(N, H, W, C)``: the output of a
    LayerNorm or Linear, of a permutation to channels-last, a permuted copy of an earlier
    ``(N, C, H, W)`` shape, or the same shape as an output already found channels-last (the
    last two never for a convolution or a BatchNorm, which are channels-first)."""
    found: set[int] = set()
    last_shapes: set[tuple[int, ...]] = set()
    first_shapes: set[tuple[int, ...]] = set()
    for i, call in enumerate(calls):
        shape = call.output_shape
        if shape is None or len(shape) != 4:
            continue
        module = model.get_submodule(call.name)
        n, h, w, c = shape
        by_shape = not isinstance(module, _CHANNELS_FIRST_MODULES) and (
            shape in last_shapes or ((n, c, h, w) in first_shapes and (n, c, h, w) != shape)
        )
        dims = getattr(module, "dims", None)
        if (
            type(module) in _LAST_DIM_MODULES
            or (isinstance(dims, Sequence) and list(dims) == _TO_CHANNELS_LAST)
            or by_shape
        ):
            found.add(i)
            last_shapes.add(shape)
        else:
            first_shapes.add(shape)
    return found


def _is_token_grid(call: LayerCall, channels_last: bool) -> bool:
    shape = call.output_shape
    return shape is not None and (len(shape) != 4 or channels_last)


def _shape_reason(call: LayerCall, channels_last: bool) -> str:
    shape = call.output_shape
    if channels_last:
        what = "a channels-last (N, H, W, C) token grid"
    elif shape is not None and len(shape) == 3:
        what = "a sequence of tokens (N, L, C)"
    else:
        what = "no spatial map"
    return f"outputs {shape}, {what}, not an (N, C, H, W) CNN feature map"


def _suggestion(
    model: nn.Module, calls: Sequence[LayerCall], start: int, channels_last: set[int]
) -> str | None:
    """The last layer with own parameters and an (N, C, H, W) output larger than 1×1 that runs
    before the first self-attention and is not a patch embedding."""
    for i in range(start - 1, -1, -1):
        call, shape = calls[i], calls[i].output_shape
        if call.num_params == 0 or shape is None or len(shape) != 4 or i in channels_last:
            continue
        if shape[2] * shape[3] > 1 and not _is_patch_embedding(model, calls, i, channels_last):
            return call.name
    return None


def _is_patch_embedding(
    model: nn.Module, calls: Sequence[LayerCall], i: int, channels_last: set[int]
) -> bool:
    """A patch convolution whose output the next module receives as tokens."""
    if not is_patch_conv(model.get_submodule(calls[i].name)) or i + 1 >= len(calls):
        return False
    return _is_token_grid(calls[i + 1], i + 1 in channels_last)


def _attention_reason(layer: str, attention: str) -> str:
    """Why a layer at or after the first self-attention ``attention`` is refused."""
    if layer == attention:
        where = "is"
    elif layer.startswith(attention + "."):
        where = "is part of"
    elif attention.startswith(layer + "."):
        where = "contains"
    else:
        where = "runs after"
    return f"{where} the self-attention {attention}: its maps are token grids, not CNN feature maps"


def token_layer_problem(
    model: nn.Module, layer: str, example: torch.Tensor
) -> TokenLayerProblem | None:
    """Why ``layer`` (a dotted name) of ``model`` is not a CNN feature map, or ``None`` when it is
    one — always ``None`` for a model without self-attention (:func:`token_model_kind`).

    In a token model the layer is refused when it is the patch embedding, runs at or after the
    first self-attention in forward order, or outputs something other than an ``(N, C, H, W)``
    map. Deciding that takes one no-grad forward pass of ``example[:1]`` (model left as found),
    done once per model and input shape; a layer the pass never reaches is left to the method.
    """
    kind = token_model_kind(model)
    if kind is None:
        return None
    calls = _traced(model, example)
    index = next((i for i, c in enumerate(calls) if c.name == layer), None)
    if index is None:
        return None
    start, attention = _attention_start(calls, attention_layers(model))
    channels_last = _channels_last_calls(model, calls)
    call = calls[index]
    if index >= start:
        reason = _attention_reason(layer, attention)
    elif _is_patch_embedding(model, calls, index, channels_last):
        reason = (
            "is the patch embedding, and the maps after it are token grids, not CNN feature maps"
        )
    elif _is_token_grid(call, index in channels_last):
        reason = _shape_reason(call, index in channels_last)
    else:
        return None
    return TokenLayerProblem(kind, layer, reason, _suggestion(model, calls, start, channels_last))
