"""The one hook mechanism: capture layer outputs (and make them differentiable) for a forward pass.

Everything in cnnviz that looks at an intermediate layer goes through :class:`LayerCapture`:

    with LayerCapture(model, ["conv5_2"], grad=GradFrom.LAYERS) as cap:
        logits = cap.forward(x)
        A = cap.activations["backbone.conv5_2"]
        dA = torch.autograd.grad(logits[:, 3].sum(), A)[0]

Guarantees (each tested):

* hooks are owned by the context manager and removed in ``finally``, also when the forward raises;
  :meth:`LayerCapture.remove` is idempotent;
* the model is left exactly as found: each module's ``training`` flag is restored, parameters'
  ``requires_grad`` and ``.grad`` are never touched (gradients are taken with
  ``torch.autograd.grad`` to captured tensors only), nothing is moved to another device;
* captured tensors are copies, so an in-place ReLU after the layer can neither corrupt them nor
  break autograd ("… is a view and is being modified inplace");
* it works when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()`` (take
  scores and gradients inside :func:`autograd_enabled`);
* a captured layer that runs twice in one forward pass, or never, raises :class:`LayerError`.

With ``grad=GradFrom.LAYERS`` no autograd graph is built for the part of the network before the
first captured layer: that part runs without grad, the layer's output becomes a fresh leaf that
requires grad, and the rest of the network runs with grad. The result is the same gradient at
a fraction of the memory and time.

Memory layout: on CPU, the part of the forward pass that runs without autograd (all of it with
``GradFrom.NONE``, the part before the first captured layer with ``GradFrom.LAYERS``) runs on a
channels-last copy of a float32 image batch when the model has 2-D convolutions; oneDNN's
convolutions run markedly faster so (``benchmarks/run.py``). The user's input and weights are not
touched. Captured activations are contiguous, and the part with a graph runs in the standard
layout, so gradients are the standard ones to float rounding of the activations. A model whose
forward pass fails on a channels-last input (e.g. it calls ``.view`` on a feature map) is rerun
in the standard layout and remembered. ``channels_last=False`` turns it off.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.capture.forward import (
    add_forward_hook,
    channels_last_suits,
    model_state_guard,
    standard_layout_from_now_on,
)
from cnnviz.capture.layers import LayerRef, resolve_layers
from cnnviz.errors import CnnvizError, LayerError

logger = logging.getLogger(__name__)


class ForwardError(CnnvizError, RuntimeError):
    """The model's own forward pass raised; the message says which model and why."""


# A BaseException, so that a model which catches Exception around a submodule cannot swallow it.
class _LayersCaptured(BaseException):  # a signal, not an error
    """Raised by a hook to end the forward pass once every captured layer has run."""


class GradFrom(enum.Enum):
    """Which part of the forward pass records an autograd graph."""

    NONE = "none"
    """No graph at all: activations only (fastest)."""
    LAYERS = "layers"
    """Graph from the first captured layer on; gradients w.r.t. captured activations."""
    INPUT = "input"
    """Graph from the input on; gradients w.r.t. the input and the captured activations."""


class HookOwner:
    """Base of the context managers that own hooks on a model: leaving the ``with`` block, by
    return or by exception, calls :meth:`remove`, which must be safe to call more than once."""

    def remove(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


class LayerCapture(HookOwner):
    """Own forward hooks on ``layers`` of ``model``; see the module docstring for guarantees.

    Args:
        model: any ``nn.Module``.
        layers: dotted names, unique name suffixes or module objects (resolved to dotted names;
            :attr:`names` holds them in the order given).
        grad: which part of the forward pass records a graph (:class:`GradFrom`).
        eval_mode: run in eval mode (default), restoring each module's flag on exit.
        channels_last: run the part without autograd on a channels-last copy of the input
            (``None``: where it suits, :func:`channels_last_suits`; never with ``GradFrom.INPUT``).
        stop_after_layers: end the forward pass as soon as every captured layer has run, so
            :meth:`forward` returns ``None`` and the rest of the network costs nothing (for
            callers that need only the layers, e.g. feature visualisation of a channel).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerRef],
        *,
        grad: GradFrom = GradFrom.NONE,
        eval_mode: bool = True,
        channels_last: bool | None = None,
        stop_after_layers: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.names: list[str] = resolve_layers(model, layers)
        self.grad = GradFrom(grad)
        self.eval_mode = eval_mode
        self.activations: dict[str, torch.Tensor] = {}
        self.input: torch.Tensor | None = None
        self._calls: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        self._state: Any = None
        self._graph_started = False
        self.channels_last = channels_last
        self.stop_after_layers = stop_after_layers

    # -- ownership -------------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        self._state = model_state_guard(self.model, eval_mode=self.eval_mode)
        self._state.__enter__()
        try:
            for name in self.names:
                module = self.model.get_submodule(name)
                self._handles.append(add_forward_hook(module, self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook and restore the model's mode; safe to call more than once."""
        while self._handles:
            self._handles.pop().remove()
        if self._state is not None:
            state, self._state = self._state, None
            state.__exit__(None, None, None)

    # -- the hook --------------------------------------------------------------------------
    def _make_hook(self, name: str):  # type: ignore[no-untyped-def]  # torch's hook signature
        def hook(module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
            count = self._calls.get(name, 0) + 1
            self._calls[name] = count
            if count > 1:
                raise LayerError(
                    f"Layer {name!r} ({type(module).__name__}) runs more than once in one forward "
                    "pass, so its activation is ambiguous. Choose a layer that runs once "
                    "(a module reused in the forward pass cannot be explained by hooks)."
                )
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"Layer {name!r} ({type(module).__name__}) returns {type(output).__name__}, "
                    "not a tensor; choose a layer whose output is a single tensor."
                )
            if self.grad is GradFrom.NONE:
                self.activations[name] = output.detach().clone(
                    memory_format=torch.contiguous_format
                )
                self._stop_when_complete()
                return None
            if self.grad is GradFrom.LAYERS and not self._graph_started:
                # Start the graph here: everything before this layer ran without grad.
                self._graph_started = True
                torch.set_grad_enabled(True)
                # A channels-last part before ends here: the leaf, its gradient and the rest of
                # the network (the part with a graph) are in the standard layout.
                leaf = output.detach().contiguous().requires_grad_(True)
                self.activations[name] = leaf
                self._stop_when_complete()
                return leaf.clone()  # in-place ops downstream act on the copy, not the leaf
            self.activations[name] = output
            self._stop_when_complete()
            return output.clone()

        return hook

    def _stop_when_complete(self) -> None:
        if self.stop_after_layers and len(self._calls) == len(self.names):
            raise _LayersCaptured

    # -- running ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run the model on ``x`` once, filling :attr:`activations`; returns the model's output.

        With ``GradFrom.INPUT`` the tensor actually fed to the model is a fresh leaf copy of
        ``x`` that requires grad, available as :attr:`input`.
        """
        if not self._handles and self.names:
            raise RuntimeError("LayerCapture.forward must be called inside its `with` block")
        layout_cl = self.channels_last
        if layout_cl is None:
            layout_cl = channels_last_suits(self.model, x)
        layout_cl = layout_cl and self.grad is not GradFrom.INPUT
        try:
            return self._run(x, layout_cl, args, kwargs)
        except ForwardError:
            if not layout_cl:
                raise
        # The forward pass failed on the channels-last copy: rerun in the standard layout.
        output = self._run(x, False, args, kwargs)
        standard_layout_from_now_on(self.model, remember=self.channels_last is None)
        return output

    def _run(
        self, x: torch.Tensor, channels_last: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.activations = {}
        self._calls = {}
        self._graph_started = False
        previous = torch.is_grad_enabled()
        try:
            with torch.inference_mode(False):
                if self.grad is GradFrom.INPUT:
                    torch.set_grad_enabled(True)
                    # A detached view is a fresh leaf sharing x's storage (no copy); an
                    # inference tensor cannot join a graph, so it is copied.
                    x = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
                    self.input = fed = x
                else:
                    torch.set_grad_enabled(False)
                    if x.is_inference() and not channels_last:
                        x = x.clone()
                    self.input = x
                    fed = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                try:
                    output = self.model(fed, *args, **kwargs)
                except _LayersCaptured:
                    output = None
                except CnnvizError:
                    raise
                except Exception as e:
                    raise ForwardError(
                        f"The forward pass of {type(self.model).__name__} failed on an input of "
                        f"shape {tuple(x.shape)} and dtype {x.dtype}: {type(e).__name__}: {e}"
                    ) from e
        finally:
            torch.set_grad_enabled(previous)
        missing = [name for name in self.names if name not in self._calls]
        if missing:
            raise LayerError(
                f"Layer(s) {', '.join(repr(m) for m in missing)} never ran in the forward pass of "
                f"{type(self.model).__name__}; choose a layer that the forward pass uses "
                "(see `cnnviz layers MODEL`)."
            )
        return output
