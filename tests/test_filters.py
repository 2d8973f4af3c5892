"""Conv filters as tiles: hand-computed min-max scaling, constant filters, layer checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz.errors import LayerError, NonFiniteError
from cnnviz.inspect.filters import (
    DeepFilterView,
    FilterScale,
    conv_weight,
    deep_filter_tiles,
    filter_tiles,
    first_conv_layer,
    rgb_filter_tiles,
    tiles_per_filter,
)
from cnnviz.models.vgg import VGG11


def _weight_2x3x2x2() -> torch.Tensor:
    """Filter 0 holds k = 0…11, filter 1 holds 20 + k/2 (both laid out as (3, 2, 2))."""
    k = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2)
    return torch.stack([k, 20 + k / 2])


# round(255·k/11) for k = 0…11, computed by hand (e.g. 255·3/11 = 69.55 → 70).
PER_FILTER = [0, 23, 46, 70, 93, 116, 139, 162, 185, 209, 232, 255]


def _layout(values: list[int]) -> np.ndarray:
    """Values indexed by k, placed like the weight: tile[i, j, c] = value[k(c, i, j)]."""
    return np.array(values)[np.arange(12).reshape(3, 2, 2)].transpose(1, 2, 0)


def test_rgb_tiles_per_filter_hand_values() -> None:
    tiles = rgb_filter_tiles(_weight_2x3x2x2(), FilterScale.PER_FILTER)
    assert tiles.shape == (2, 2, 2, 3)
    assert tiles.dtype == np.uint8
    # Both filters are affine in k, so each stretches to the same values.
    np.testing.assert_array_equal(tiles[0], _layout(PER_FILTER))
    np.testing.assert_array_equal(tiles[1], _layout(PER_FILTER))
    assert tiles[0, 0, 1, 2] == 209  # w[0, c=2, 0, 1] = k = 9


def test_rgb_tiles_global_hand_values() -> None:
    tiles = rgb_filter_tiles(_weight_2x3x2x2(), FilterScale.GLOBAL)
    # One range [0, 25.5] for both: filter 0 → 255·k/25.5 = 10k,
    # filter 1 → 10·(20 + k/2) = 200 + 5k.
    np.testing.assert_array_equal(tiles[0], _layout([10 * k for k in range(12)]))
    np.testing.assert_array_equal(tiles[1], _layout([200 + 5 * k for k in range(12)]))
    assert tiles[1, 0, 1, 2] == 245
    assert not np.array_equal(tiles, rgb_filter_tiles(_weight_2x3x2x2(), FilterScale.PER_FILTER))


def test_constant_filter_is_mid_grey_not_nan() -> None:
    weight = _weight_2x3x2x2()
    weight[0] = 3.0
    tiles = rgb_filter_tiles(weight)
    assert (tiles[0] == 128).all()
    np.testing.assert_array_equal(tiles[1], _layout(PER_FILTER))
    flat = torch.full((2, 3, 2, 2), -1.5)
    assert (rgb_filter_tiles(flat, FilterScale.GLOBAL) == 128).all()
    assert (deep_filter_tiles(torch.zeros(4, 8, 3, 3)) == 128).all()


def test_non_finite_weight_rejected() -> None:
    weight = _weight_2x3x2x2()
    weight[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        rgb_filter_tiles(weight)
    with pytest.raises(ValueError, match="3 input channels"):
        rgb_filter_tiles(torch.zeros(2, 4, 3, 3))


def _deep_weight() -> torch.Tensor:
    """(2 filters, 4 input channels, 1, 2); channel means are [2, 4] and [1, 2]."""
    f0 = [[0.0, 4.0], [2.0, 0.0], [4.0, 8.0], [2.0, 4.0]]
    f1 = [[1.0, 1.0], [1.0, 3.0], [1.0, 2.0], [1.0, 2.0]]
    return torch.tensor([f0, f1]).unsqueeze(2)


def test_deep_tiles_channel_mean() -> None:
    per = deep_filter_tiles(_deep_weight(), DeepFilterView.CHANNEL_MEAN, FilterScale.PER_FILTER)
    assert per.shape == (2, 1, 2)
    assert per[:, 0].tolist() == [[0, 255], [0, 255]]
    glob = deep_filter_tiles(_deep_weight(), DeepFilterView.CHANNEL_MEAN, FilterScale.GLOBAL)
    # Range [1, 4]: 2 → 85, 4 → 255, 1 → 0, 2 → 85.
    assert glob[:, 0].tolist() == [[85, 255], [0, 85]]
    assert deep_filter_tiles(_deep_weight(), max_filters=1).shape == (1, 1, 2)


def test_deep_tiles_per_input_channel() -> None:
    tiles = deep_filter_tiles(
        _deep_weight(), DeepFilterView.PER_INPUT_CHANNEL, FilterScale.PER_FILTER, max_in_channels=2
    )
    # Filter-major: (f0 c0, f0 c1, f1 c0, f1 c1); each filter scaled by its own shown range.
    # f0 shows [0, 4], [2, 0] → range [0, 4]; f1 shows [1, 1], [1, 3] → range [1, 3].
    assert tiles[:, 0].tolist() == [[0, 255], [128, 0], [0, 0], [0, 255]]
    glob = deep_filter_tiles(
        _deep_weight(), DeepFilterView.PER_INPUT_CHANNEL, FilterScale.GLOBAL, max_in_channels=2
    )
    # One range [0, 4] for everything shown: 1 → 63.75 → 64, 3 → 191.25 → 191.
    assert glob[:, 0].tolist() == [[0, 255], [128, 0], [64, 64], [64, 191]]


def test_tiles_per_filter_counts_what_filter_tiles_draws() -> None:
    rgb, deep = _weight_2x3x2x2(), _deep_weight()
    assert tiles_per_filter(rgb, DeepFilterView.PER_INPUT_CHANNEL) == 1  # RGB: one per filter
    assert tiles_per_filter(deep) == 1
    per_input = tiles_per_filter(deep, DeepFilterView.PER_INPUT_CHANNEL, max_in_channels=2)
    tiles = filter_tiles(deep, view=DeepFilterView.PER_INPUT_CHANNEL, max_in_channels=2)
    assert per_input == 2 and len(tiles) == deep.shape[0] * per_input


def test_filter_tiles_dispatch() -> None:
    rgb = _weight_2x3x2x2()
    np.testing.assert_array_equal(filter_tiles(rgb), rgb_filter_tiles(rgb))
    np.testing.assert_array_equal(filter_tiles(rgb, max_filters=1), rgb_filter_tiles(rgb)[:1])
    gray = filter_tiles(rgb, rgb=False)
    assert gray.shape == (2, 2, 2)
    deep = _deep_weight()
    np.testing.assert_array_equal(filter_tiles(deep), deep_filter_tiles(deep))


def test_conv_weight_is_a_detached_copy_and_names_resolve() -> None:
    torch.manual_seed(0)
    model = VGG11(batch_norm=True, width=1 / 8)
    assert first_conv_layer(model) == "backbone.conv1"
    weight = conv_weight(model, "conv1")
    conv1 = model.get_submodule("backbone.conv1")
    assert isinstance(conv1, nn.Conv2d)
    original = conv1.weight
    assert weight.shape == (8, 3, 3, 3)
    assert torch.equal(weight, original)
    assert not weight.requires_grad
    weight.zero_()
    assert original.abs().sum() > 0  # the model's weight is untouched
    conv3_1 = model.get_submodule("backbone.conv3_1")
    assert isinstance(conv3_1, nn.Conv2d)
    assert torch.equal(conv_weight(model, conv3_1), conv3_1.weight)
    assert filter_tiles(conv_weight(model, "conv1")).shape == (8, 3, 3, 3)


def test_conv_weight_rejects_non_conv_with_suggestions() -> None:
    model = VGG11(batch_norm=True, width=1 / 8)
    with pytest.raises(LayerError, match=r"BatchNorm2d.*'backbone\.conv1'"):
        conv_weight(model, "bn1")
    with pytest.raises(LayerError, match=r"no nn\.Conv2d"):
        first_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
