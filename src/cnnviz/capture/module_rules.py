"""Backward rules for modules: the one hook mechanism behind every method that changes how a
module passes the signal back — Guided Backprop and DeconvNet (ReLU), DeepLift (multipliers of
nonlinearities), LRP (relevance rules of linear layers) and Excitation Backprop.

:class:`ModuleRules` hooks the modules a *rule picker* gives a rule for. On each call of such a
module, a forward pre-hook keeps the call's input ``x`` (and hands an in-place module — an
``nn.ReLU(inplace=True)`` — a copy, so ``x`` keeps its autograd node), and a forward hook
replaces the output by the same values whose gradient to ``x`` is the rule's::

    ∂L/∂x := rule.backward(module, x, y, ∂L/∂y)

The forward values are unchanged. Every call gets its own autograd node holding its own ``x``
and ``y``, so a module used twice in one forward (a shared ReLU, a weight-tied block) gets the
rule once per use, each with that use's tensors. The model is left exactly as found: the hooks
are removed on exit (idempotent), also after an exception.

Only modules with one tensor input and one tensor output can take a rule; a picker's rule for
another module is refused when the module is called (:class:`RuleError` names it). Functional
calls inside a ``forward`` (``torch.relu``, ``F.conv2d``) are not modules and keep their plain
gradient: methods that need every layer covered check :attr:`ModuleRules.modules` and refuse
unsupported layer types by name up front.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.capture.forward import add_forward_hook, require_hooks
from cnnviz.capture.hooks import HookOwner
from cnnviz.errors import CnnvizError


class RuleError(CnnvizError, TypeError):
    """A module that cannot take a backward rule (several inputs or outputs)."""


class BackwardRule(Protocol):
    """How one module sends the signal back: the gradient to its input ``x`` given the
    gradient ``grad`` to its output ``y`` (``x`` and ``y`` detached, as in the forward)."""

    def backward(
        self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor
    ) -> torch.Tensor: ...


RulePicker = Callable[[str, nn.Module], BackwardRule | None]
"""The rule for a module, given its dotted name and itself; ``None``: its own gradient."""


class _RuleGradient(torch.autograd.Function):
    """Returns ``y`` in the forward pass; sends ``rule.backward(module, x, y, g)`` to ``x``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, y: torch.Tensor, rule: BackwardRule, module: nn.Module
    ) -> torch.Tensor:
        ctx.rule, ctx.module = rule, module
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, y = ctx.saved_tensors
        return ctx.rule.backward(ctx.module, x, y, grad), None, None, None


class ModuleRules(HookOwner):
    """Context manager: for its block, every module of ``model`` that ``pick`` gives a rule
    backpropagates by that rule (module docstring). ``modules`` lists the hooked modules'
    names after entry.

        with ModuleRules(model, lambda name, m: GUIDED if isinstance(m, nn.ReLU) else None):
            run = gradient_pass(model, x, layer=None, target=3, class_names=None)
    """

    def __init__(self, model: nn.Module, pick: RulePicker) -> None:
        self.model = model
        self.pick = pick
        self.modules: list[str] = []
        self._handles: list[RemovableHandle] = []
        self._rules: dict[nn.Module, BackwardRule] = {}
        self._inputs: dict[nn.Module, list[torch.Tensor | None]] = {}

    def __enter__(self) -> ModuleRules:
        require_hooks(self.model)  # a TorchScript model has no modules to hook
        try:
            for name, module in self.model.named_modules():
                rule = self.pick(name, module)
                if rule is None or module in self._rules:
                    continue  # a module registered under two names is hooked once
                self._rules[module] = rule
                self._inputs[module] = []
                self._handles.append(add_forward_hook(module, self._keep_input, before=True))
                self._handles.append(add_forward_hook(module, self._replace_output))
                self.modules.append(name)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook; safe to call more than once."""
        while self._handles:
            self._handles.pop().remove()
        self._rules.clear()
        self._inputs.clear()

    def _keep_input(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if len(args) == 1 else None
        if len(args) != 1 or not isinstance(x, torch.Tensor):
            raise RuleError(
                f"{type(module).__name__} takes {len(args)} inputs; backward rules apply only to "
                "modules with one tensor input (convolutions, linear layers, activations, "
                "pooling, batch norm)."
            )
        kept = x if torch.is_grad_enabled() and x.requires_grad else None
        self._inputs[module].append(kept)  # a stack: a module called inside itself nests
        if kept is not None and getattr(module, "inplace", False):
            return (x.clone(),)  # the in-place op acts on the copy; x keeps its autograd node
        return None

    def _replace_output(
        self, module: nn.Module, _args: tuple[Any, ...], output: Any
    ) -> torch.Tensor | None:
        x = self._inputs[module].pop()
        if x is None:
            return None  # no gradient flows here (no autograd, or an input that needs none)
        if not isinstance(output, torch.Tensor):
            raise RuleError(
                f"{type(module).__name__} returns {type(output).__name__}; backward rules apply "
                "only to modules with one tensor output."
            )
        result: torch.Tensor = _RuleGradient.apply(x, output.detach(), self._rules[module], module)
        return result
