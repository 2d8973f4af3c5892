"""The one backward-rule mechanism (cnnviz.capture.module_rules): forward values unchanged, the
rule's gradient back, once per call of a module used twice, in-place modules handled, modules
it cannot take refused by name, and the model left as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.capture.module_rules import ModuleRules, RuleError
from hook_leaks import hooked_modules


class Doubling:
    """A rule that sends back twice the incoming gradient and records each call's input."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def backward(
        self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor
    ) -> torch.Tensor:
        self.inputs.append(x)
        return 2 * grad


class Reused(nn.Module):
    """x → relu → scale → relu (the same in-place ReLU twice) → sum (``x + 0``: an in-place op
    may not act on a leaf)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.act(x + 0) * 3 - 1).sum(dim=(1, 2, 3)).unsqueeze(1)


def grad_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    return g


def test_a_reused_inplace_module_gets_the_rule_once_per_call() -> None:
    model = Reused()
    x = torch.tensor([[[[-1.0, 0.2], [0.5, 2.0]]]])
    plain = grad_of(model, x)
    rule = Doubling()
    with ModuleRules(model, lambda _n, m: rule if isinstance(m, nn.ReLU) else None) as rules:
        assert rules.modules == ["act"]
        assert torch.equal(model(x), Reused()(x))  # the same values forward
        changed = grad_of(model, x)
    # the ReLU's own gradient is replaced twice by "×2": 2 · 3 · 2 = 12 everywhere
    assert changed.flatten().tolist() == [12.0] * 4
    assert plain.flatten().tolist() == [0.0, 0.0, 3.0, 3.0]  # relu'(x) · 3 · relu'(3x − 1)
    # each call kept its own input: x itself, then 3·relu(x) − 1 (not overwritten in place)
    assert torch.equal(rule.inputs[1], x) and torch.equal(rule.inputs[0], 3 * x.relu() - 1)
    assert hooked_modules(model) == []
    assert torch.equal(grad_of(model, x), plain)  # and the model is as it was


class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class UsesTwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add = TwoInputs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, x)


def test_a_module_with_two_inputs_is_refused_by_name_and_hooks_are_removed() -> None:
    model = UsesTwoInputs()
    rules = ModuleRules(model, lambda _n, m: Doubling() if isinstance(m, TwoInputs) else None)
    with pytest.raises(RuleError, match="TwoInputs takes 2 inputs"), rules:
        model(torch.ones(1, 1, 2, 2, requires_grad=True))
    assert hooked_modules(model) == []
    rules.remove()  # idempotent


def test_no_rule_without_autograd() -> None:
    model = nn.Sequential(nn.ReLU())
    rule = Doubling()
    pick = lambda _n, m: rule if isinstance(m, nn.ReLU) else None  # noqa: E731
    with ModuleRules(model, pick), torch.no_grad():
        y = model(torch.ones(1, 1, 2, 2))
    assert not y.requires_grad and rule.inputs == []
