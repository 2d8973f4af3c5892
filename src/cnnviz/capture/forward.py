"""Running the user's model as found: its device and dtype, inputs moved to them, eval mode for
the call with every module's ``training`` flag restored, autograd on where scores need it, and
a channels-last input on CPU where that suits the model (see :mod:`cnnviz.capture.hooks`)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.errors import NotApplicableError, remedy

logger = logging.getLogger(__name__)

# Per model: whether its forward pass may run on a channels-last input (see the module docstring).
_CHANNELS_LAST: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


# Models already told that they were explained in eval mode (said once per model object).
_TOLD_EVAL: weakref.WeakSet[nn.Module] = weakref.WeakSet()
TRAINING_NOTICE = (
    "the model ({}) was in training mode; cnnviz explains it in eval mode (dropout off, "
    "BatchNorm running statistics) and restores its modes afterwards"
)


@contextmanager
def model_state_guard(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's own ``training`` flag.

    Restoring module by module (not ``model.train(was_training)``) keeps mixed states intact,
    e.g. a frozen BatchNorm kept in eval inside a model in training mode. The first time a model
    with any module in training mode is put in eval mode, a warning says so (once per model
    object, remembered in a weak set: nothing is stored on the model).
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        if eval_mode and any(training for _, training in flags):
            if model not in _TOLD_EVAL:
                _TOLD_EVAL.add(model)
                logger.warning(TRAINING_NOTICE.format(type(model).__name__))
            model.eval()
        yield model
    finally:
        for module, training in flags:
            if module.training != training:  # setting every flag costs ~2 ms on 250 modules
                module.training = training


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Grad mode on, inference mode off, for the block; restored afterwards.

    Scores and gradients taken from a :class:`LayerCapture` output must be computed inside this
    block when the caller may be in ``torch.no_grad()`` or ``torch.inference_mode()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 if it has none)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def as_model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device and in its floating dtype (float64 for a ``model.double()``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected the input as a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(
            f"Expected an image batch of shape (N, C, H, W) or one image (C, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    return x.to(device=model_device(model), dtype=model_dtype(model))


def channels_last_suits(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` should run on a channels-last copy of ``x``: a float32 4-D batch on a
    CPU with oneDNN, a model with 2-D convolutions whose forward has not failed in that layout."""
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # untyped in torch
        return False
    known = _CHANNELS_LAST.get(model)
    if known is None:
        known = any(isinstance(module, nn.Conv2d) for module in model.modules())
        _CHANNELS_LAST[model] = known
    return known


def input_layout(model: nn.Module, x: torch.Tensor) -> torch.memory_format:
    """The memory layout :class:`LayerCapture` feeds ``model`` (channels-last for convolutions on
    CPU, :func:`channels_last_suits`), so that perturbed forwards run as fast as the plain one."""
    return torch.channels_last if channels_last_suits(model, x) else torch.contiguous_format


def forward_in_layout(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` on a copy of ``x`` in :func:`input_layout`, for passes without autograd.

    A model whose forward fails on a channels-last input is rerun in the standard layout, and
    remembered (as :class:`LayerCapture` does). Outputs equal ``model(x)`` to float rounding.
    """
    if input_layout(model, x) is torch.channels_last:
        try:
            return model(x.contiguous(memory_format=torch.channels_last))
        except Exception:  # any failure: retry in the standard layout below
            standard_layout_from_now_on(model, remember=True)
    return model(x)


def standard_layout_from_now_on(model: nn.Module, *, remember: bool) -> None:
    """Log that ``model`` failed on a channels-last input; with ``remember``, never try again."""
    if remember:
        _CHANNELS_LAST[model] = False
    logger.info(
        "%s fails on a channels-last input; cnnviz runs it in the standard layout",
        type(model).__name__,
    )


def add_forward_hook(
    module: nn.Module, hook: Callable[..., Any], *, before: bool = False
) -> RemovableHandle:
    """``module.register_forward_hook(hook)`` (``before=True``: a forward pre-hook), or a
    :class:`~cnnviz.errors.NotApplicableError` for a TorchScript module, which takes no Python
    hooks: every hook cnnviz sets goes through here, so that refusal is said one way."""
    require_hooks(module)
    if before:
        return module.register_forward_pre_hook(hook)
    return module.register_forward_hook(hook)


def require_hooks(module: nn.Module) -> None:
    """A :class:`~cnnviz.errors.NotApplicableError` for a TorchScript module (it takes no Python
    hooks, and none of its submodules is an ``nn.ReLU`` to override), naming what works instead."""
    if isinstance(module, torch.jit.ScriptModule):
        python_class = remedy(
            "--model file.py:Class --weights FILE", 'load_model("file.py:Class", weights=FILE)'
        )
        program = remedy("--model export:FILE.pt2", 'load_model("export:FILE.pt2")')
        raise NotApplicableError(
            "the model is a TorchScript program, and TorchScript modules take no Python hooks, "
            "so methods that read a layer's output (CAMs, activations, Guided Backprop, the "
            "layer table's shapes) cannot run on it; input-space methods work (saliency, "
            "integrated-gradients, smoothgrad, occlusion, rise), or load the Python class "
            f"({python_class}) or an exported program ({program})"
        )
