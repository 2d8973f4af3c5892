"""Layer activations (the seed exercise's step 3, "visualise activations with forward hooks").

All requested layers are captured in ONE forward pass through
:class:`cnnviz.capture.hooks.LayerCapture`, which owns and removes the hooks, leaves the model's
mode untouched, and copies each output so an in-place ReLU after a captured conv cannot change
it (captured values are the layer's own output, pre-activation for a conv followed by ReLU).

Example:
    >>> import torch
    >>> from cnnviz.models.vgg import VGG11
    >>> model = VGG11(batch_norm=True, width=1 / 8)
    >>> acts = capture_activations(model, torch.randn(1, 3, 64, 64), ["conv1", "bn4_1"])
    >>> {name: tuple(a.shape) for name, a in acts.items()}
    {'backbone.conv1': (1, 8, 64, 64), 'backbone.bn4_1': (1, 64, 8, 8)}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnviz.capture.forward import as_model_input
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.layers import LayerRef
from cnnviz.errors import NonFiniteError, positive_int
from cnnviz.options import ChannelOrder as ChannelOrder


def capture_activations(
    model: nn.Module, x: torch.Tensor, layers: Sequence[LayerRef]
) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` for input ``x``, from a single forward pass without autograd.

    Args:
        model: any ``nn.Module``; its modes, hooks, device and parameters are left as found.
        x: ``(N, C, H, W)`` batch or one ``(C, H, W)`` image; moved to the model's device and dtype.
        layers: dotted names, unique suffixes (``conv1``) or module objects.

    Returns:
        ``{full dotted name: detached tensor}`` in the order the layers were given.

    Raises:
        LayerError: a layer is unknown, ambiguous, named twice, runs twice or never runs.
        ForwardError: the model's forward pass raised.
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not layers:
        raise ValueError("No layers given; name at least one layer (see `cnnviz layers MODEL`).")
    batch = as_model_input(model, x)
    with LayerCapture(model, layers, grad=GradFrom.NONE) as capture:
        capture.forward(batch)
        return {name: capture.activations[name] for name in capture.names}


def select_channels(
    act: torch.Tensor, n: int, order: ChannelOrder = ChannelOrder.FIRST
) -> tuple[list[int], torch.Tensor]:
    """Pick ``n`` channels of one image's activation ``(C, H, W)``.

    Returns:
        ``(channel indices, act[indices])``; fewer than ``n`` when ``C < n``.
    """
    order = ChannelOrder(order)
    if not isinstance(act, torch.Tensor):
        raise TypeError(f"Expected a tensor, got {type(act).__name__}")
    if act.dim() == 4:
        raise ValueError(
            f"Expected one image's activation of shape (C, H, W), got {tuple(act.shape)}; "
            "index the batch first (act[0])."
        )
    if act.dim() != 3:
        raise ValueError(
            f"Expected one image's activation of shape (C, H, W), got {tuple(act.shape)}: "
            "a layer without a spatial output (a linear layer, a transformer's tokens) has no "
            "channels to draw; capture a convolutional layer."
        )
    positive_int(n, "n (the number of channels)")
    if not torch.isfinite(act).all():
        raise NonFiniteError("The activation contains NaN or infinite values; check the model.")
    count = min(n, act.shape[0])
    if order is ChannelOrder.FIRST:
        ids = list(range(count))
    else:
        means = act.detach().flatten(1).double().mean(dim=1)
        ids = torch.argsort(means, descending=True, stable=True)[:count].tolist()
    index = torch.tensor(ids, dtype=torch.long, device=act.device)
    return ids, act.index_select(0, index)
