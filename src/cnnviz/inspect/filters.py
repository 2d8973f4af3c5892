"""Convolution filters as pictures (the seed exercise's step 2, "plot conv1 filters").

A first-layer filter of an RGB model looks at the three colour channels, so it can be shown as a
small RGB image; only a weight with exactly 3 input channels is drawn so. A filter of a grey
(1-channel) model is drawn in grey as it is. Filters with any other number of input channels
(2, 4, …, and deeper layers) are shown in gray, either averaged over the input channels (one
tile per filter) or one tile per (filter, input channel).

Scaling: a filter's weights are signed, so they are mapped linearly to ``[0, 255]``, either per
filter (``(w − min_f) / (max_f − min_f)``, which shows each filter's pattern best) or with one
global min/max over all shown filters (which keeps their strengths comparable). A constant filter
(or set) has no pattern to stretch and becomes mid-grey (128), never NaN.

Example:
    >>> from cnnviz.models.vgg import VGG11
    >>> model = VGG11(width=1 / 8)
    >>> tiles = filter_tiles(conv_weight(model, first_conv_layer(model)))
    >>> tiles.shape, tiles.dtype
    ((8, 3, 3, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnviz.capture.layers import LayerRef, resolve_layer
from cnnviz.errors import LayerError, NonFiniteError, positive_int
from cnnviz.options import DeepFilterView as DeepFilterView
from cnnviz.options import FilterScale as FilterScale
from cnnviz.render.colours import to_uint8


def conv_layers(model: nn.Module) -> list[str]:
    """Dotted names of every ``nn.Conv2d`` in ``model``, in definition order."""
    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Conv2d)]


def first_conv_layer(model: nn.Module) -> str:
    """Dotted name of the first ``nn.Conv2d`` in definition order (``backbone.conv1`` for VGG-11).

    Raises:
        LayerError: the model has no ``nn.Conv2d``.
    """
    names = conv_layers(model)
    if not names:
        raise LayerError(
            f"{type(model).__name__} has no nn.Conv2d layer, so it has no filters to show; "
            "choose a convolutional model."
        )
    return names[0]


def conv_weight(model: nn.Module, layer: LayerRef) -> torch.Tensor:
    """A detached copy of a ``Conv2d``'s weight, shape ``(C_out, C_in / groups, kh, kw)``.

    Raises:
        LayerError: the layer is unknown or not an ``nn.Conv2d`` (a few conv layers are listed).
    """
    name = resolve_layer(model, layer)
    module = model.get_submodule(name)
    if not isinstance(module, nn.Conv2d):
        convs = conv_layers(model)
        hint = (
            f"choose a convolution layer such as {', '.join(repr(c) for c in convs[:4])}"
            + (", …" if len(convs) > 4 else "")
            if convs
            else "this model has no nn.Conv2d layers"
        )
        raise LayerError(
            f"Layer {name!r} is a {type(module).__name__}, not an nn.Conv2d, so it has no "
            f"filters to show; {hint}."
        )
    weight = module.weight
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise LayerError(
            f"Layer {name!r} is a lazy convolution whose weight is not initialised yet; "
            "run one forward pass first."
        )
    return weight.detach().clone()


def _as_weight_array(weight: torch.Tensor) -> np.ndarray:
    """A 4-D finite floating weight tensor as a float64 NumPy array on the CPU."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(
            f"Expected a conv weight of shape (C_out, C_in, kh, kw), got {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"Expected a floating-point weight, got dtype {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise NonFiniteError(
            "The conv weight contains NaN or infinite values; check the checkpoint."
        )
    return weight.detach().to(device="cpu", dtype=torch.float64).numpy()


def _scale(values: np.ndarray, scale: FilterScale, group_axes: tuple[int, ...]) -> np.ndarray:
    """Min-max scale to uint8; ``group_axes`` are the axes reduced per group under PER_FILTER."""
    scale = FilterScale(scale)
    axes = group_axes if scale is FilterScale.PER_FILTER else None
    lo = values.min(axis=axes, keepdims=True)
    hi = values.max(axis=axes, keepdims=True)
    span = hi - lo
    flat = span == 0
    scaled = np.where(flat, 0.5, (values - lo) / np.where(flat, 1.0, span))
    return to_uint8(scaled)


def rgb_filter_tiles(
    weight: torch.Tensor, scale: FilterScale = FilterScale.PER_FILTER
) -> np.ndarray:
    """First-layer filters as RGB tiles: ``(C_out, 3, kh, kw)`` → ``(C_out, kh, kw, 3)`` uint8.

    Each value becomes ``round(255·(w − lo) / (hi − lo))`` with ``lo, hi`` the filter's own
    min and max (``PER_FILTER``) or those of the whole weight (``GLOBAL``); constant → 128.
    """
    values = _as_weight_array(weight)
    if values.shape[1] != 3:
        raise ValueError(
            f"RGB filter tiles need 3 input channels, got {values.shape[1]} "
            f"(weight shape {tuple(values.shape)}); use deep_filter_tiles for deeper layers."
        )
    tiles = values.transpose(0, 2, 3, 1)
    return _scale(tiles, scale, group_axes=(1, 2, 3))


def deep_filter_tiles(
    weight: torch.Tensor,
    view: DeepFilterView = DeepFilterView.CHANNEL_MEAN,
    scale: FilterScale = FilterScale.PER_FILTER,
    max_filters: int = 64,
    max_in_channels: int = 16,
) -> np.ndarray:
    """Gray tiles ``(K, kh, kw)`` uint8 for filters with any number of input channels.

    ``CHANNEL_MEAN``: one tile per filter (the first ``max_filters``), the mean over its input
    channels; ``K = min(C_out, max_filters)``. ``PER_INPUT_CHANNEL``: for each of the first
    ``max_filters`` filters, its first ``max_in_channels`` input channels, filter-major, so
    ``K = F·I`` and ``image_grid(tiles, ncols=I)`` gives one row per filter. Under
    ``PER_FILTER`` scaling all tiles of one filter share that filter's min and max.
    """
    view = DeepFilterView(view)
    for label, value in (("max_filters", max_filters), ("max_in_channels", max_in_channels)):
        positive_int(value, label)
    values = _as_weight_array(weight)[:max_filters]
    if view is DeepFilterView.CHANNEL_MEAN:
        return _scale(values.mean(axis=1), scale, group_axes=(1, 2))
    picked = values[:, :max_in_channels]
    tiles = _scale(picked, scale, group_axes=(1, 2, 3))
    return tiles.reshape(-1, *tiles.shape[2:])


def filter_tiles(
    weight: torch.Tensor,
    *,
    scale: FilterScale = FilterScale.PER_FILTER,
    view: DeepFilterView = DeepFilterView.CHANNEL_MEAN,
    max_filters: int = 64,
    max_in_channels: int = 16,
    rgb: bool | None = None,
) -> np.ndarray:
    """Tiles for any conv weight: RGB ``(K, kh, kw, 3)`` when it has 3 input channels, else gray.

    ``rgb=None`` decides from the weight's shape; pass ``rgb=False`` for a layer whose three
    input channels are not colours (e.g. a grouped convolution deep in the network). A gray
    weight goes through :func:`deep_filter_tiles` with ``view``: one input channel gives each
    filter as it is under either view (the mean of one channel is that channel).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError("Expected a conv weight tensor of shape (C_out, C_in, kh, kw)")
    use_rgb = weight.shape[1] == 3 if rgb is None else rgb
    if use_rgb:
        positive_int(max_filters, "max_filters")
        return rgb_filter_tiles(weight[:max_filters], scale)
    return deep_filter_tiles(
        weight, view, scale, max_filters=max_filters, max_in_channels=max_in_channels
    )


def tiles_per_filter(
    weight: torch.Tensor,
    view: DeepFilterView = DeepFilterView.CHANNEL_MEAN,
    *,
    max_in_channels: int = 16,
    rgb: bool | None = None,
) -> int:
    """How many tiles :func:`filter_tiles` draws per filter of ``weight``: one, or under
    ``PER_INPUT_CHANNEL`` (gray weights) one per input channel, up to ``max_in_channels``."""
    use_rgb = weight.shape[1] == 3 if rgb is None else rgb
    if use_rgb or DeepFilterView(view) is DeepFilterView.CHANNEL_MEAN:
        return 1
    return min(int(weight.shape[1]), positive_int(max_in_channels, "max_in_channels"))
