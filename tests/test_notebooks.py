"""Helpers the exercise notebooks use."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.render.canvas import InlineFigure


def test_subplots_puts_results_side_by_side_outside_pyplot() -> None:
    from matplotlib import _pylab_helpers

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.rand(1, 3, 16, 16)
    fig, axes = cnnviz.subplots(1, 2, panel_inches=2.0, dpi=50)
    assert isinstance(fig, InlineFigure) and len(axes) == 2
    for ax, method in zip(axes, ["gradcam", "saliency"], strict=True):
        assert (
            cnnviz.explain(net, x, method, layer="0" if method == "gradcam" else None).plot(ax=ax)
            is fig
        )
    with Image.open(io.BytesIO(fig._repr_png_())) as picture:
        assert picture.size == (2 * 2 * 50, round((2 + 0.4) * 50))
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0  # pyplot never saw it
    for bad in ({"nrows": 0}, {"ncols": 1.5}, {"panel_inches": 0}):
        with pytest.raises(ValueError, match="must be"):
            cnnviz.subplots(**bad)
