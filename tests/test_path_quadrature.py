"""The adaptive trapezoid rule (cnnviz.methods.path_quadrature) on integrands known by hand:
a density that jumps once, a jump the score cannot see, a constant density."""

from __future__ import annotations

import math

import pytest
import torch

from cnnviz.methods.path_quadrature import (
    adaptive_trapezoid,
    bisections_per_round,
    completeness_errors,
    first_grid_size,
    trapezoid_weights,
)

JUMP = 0.37
"""Where the test densities jump (not a dyadic fraction, so no node lands on it)."""


class StepDensity:
    """ρ(α) = ``before`` for α < JUMP, ``after`` from there on, for every image and one target;
    s(α) = ∫₀^α Σ ρ. Records every call's alphas per image."""

    def __init__(self, before: list[float], after: list[float]) -> None:
        self.before = torch.tensor(before, dtype=torch.float64)
        self.after = torch.tensor(after, dtype=torch.float64)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def density(self, alpha: float) -> torch.Tensor:
        return self.before if alpha < JUMP else self.after

    def score(self, alpha: float) -> float:
        below = min(alpha, JUMP) * float(self.before.sum())
        return below + max(alpha - JUMP, 0.0) * float(self.after.sum())

    def exact(self) -> torch.Tensor:
        return JUMP * self.before + (1 - JUMP) * self.after

    def __call__(self, images: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append((images.clone(), alphas.clone()))
        densities = torch.stack([self.density(float(a)) for a in alphas]).double()
        scores = torch.tensor([[self.score(float(a))] for a in alphas], dtype=torch.float64)
        return densities.unsqueeze(1), scores


def trapezoid_error_of_the_jump_interval(steps_of_refinement: int) -> torch.Tensor:
    """With the jump in [a, b] of width h and every other interval exact, the rule gives
    h/2 (ρ₋ + ρ₊) where the integral is (c − a) ρ₋ + (b − c) ρ₊: error (h/2 − (c − a))(ρ₋ − ρ₊)."""
    h = 1 / 16 / 2**steps_of_refinement
    a = math.floor(JUMP / h) * h
    return torch.tensor(h / 2 - (JUMP - a), dtype=torch.float64)


def test_grid_sizes_and_trapezoid_weights_by_hand() -> None:
    assert (first_grid_size(64), bisections_per_round(64)) == (17, 8)
    assert (first_grid_size(2), bisections_per_round(2)) == (2, 1)
    assert (first_grid_size(5), bisections_per_round(5)) == (2, 1)
    alphas = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert trapezoid_weights(alphas).tolist() == [0.125, 0.5, 0.375]
    # s(α) = α² on [0, 0.5, 1]: slopes 0, 1, 2; errors 0.25 − 0.25 = 0 and 0.75 − 0.75 = 0;
    # s = |α − 0.4|: slopes −1, 1, 1 → first interval (0.1 − 0.4) − 0.5·0 = −0.3, second 0
    scores = torch.tensor([[0.4], [0.1], [0.6]], dtype=torch.float64)
    slopes = torch.tensor([[-1.0], [1.0], [1.0]], dtype=torch.float64)
    errors = completeness_errors(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), scores, slopes)
    assert errors.flatten().tolist() == pytest.approx([-0.3, 0.0])


def test_a_jump_is_chased_down_to_1_1024_with_64_nodes() -> None:
    """17 uniform nodes, then 6 rounds of bisections: each round halves the interval holding
    the jump (all others are exact, indicator 0), so it ends 1/16/2⁶ = 1/1024 wide and the
    error is the hand formula; a uniform 64-node rule is 16× coarser there."""
    density = StepDensity([1.0, 0.0], [0.0, 3.0])
    result, used = adaptive_trapezoid(density, torch.tensor([0]), steps=64)
    error = trapezoid_error_of_the_jump_interval(6) * (density.before - density.after)
    torch.testing.assert_close(result[0, 0], density.exact() + error, rtol=0, atol=1e-12)
    assert float((result[0, 0] - density.exact()).abs().max()) < 3 / 2048
    # every node evaluated once: 17 + 8·5 + 7 = 64 distinct α in 7 calls, 0 and 1 included
    alphas = torch.cat([a for _, a in density.calls])
    assert len(density.calls) == 7
    assert used.tolist() == [64]
    assert [len(a) for _, a in density.calls] == [17, 8, 8, 8, 8, 8, 7]
    assert len(alphas.unique()) == 64
    assert {0.0, 1.0} <= set(alphas.tolist())


def test_a_jump_the_score_cannot_see_is_still_refined() -> None:
    """ρ jumps from (1, −1) to (−1, 1): Σρ = 0, so the score is flat and the completeness error
    of every interval is 0; the variation term alone finds the jump."""
    density = StepDensity([1.0, -1.0], [-1.0, 1.0])
    result, _ = adaptive_trapezoid(density, torch.tensor([0, 1]), steps=64)
    error = trapezoid_error_of_the_jump_interval(6) * (density.before - density.after)
    for image in range(2):
        torch.testing.assert_close(result[image, 0], density.exact() + error, rtol=0, atol=1e-12)


def test_a_constant_density_is_integrated_exactly_whatever_the_grid() -> None:
    density = StepDensity([2.0, -0.5], [2.0, -0.5])
    for steps in (2, 3, 64):
        result, _ = adaptive_trapezoid(density, torch.tensor([0]), steps=steps)
        torch.testing.assert_close(result[0, 0], density.exact(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="steps >= 2"):
        adaptive_trapezoid(density, torch.tensor([0]), steps=1)


def test_a_tolerance_stops_each_image_once_its_completeness_bound_is_met() -> None:
    """The jump's interval [5/16, 6/16] errs by (0.0575 + 3·0.005) − (1/16)(1 + 3)/2 = −0.0525,
    2.3 % of s(1) − s(0) = 2.26; once bisected, [11/32, 12/32] by 0.04125 − 0.0625, 0.94 %;
    twice, [23/64, 24/64] by 0.025625 − 0.03125, 0.25 %: under a 0.5 % tolerance after two
    rounds, 17 + 8 + 8 = 33 nodes. An unreachable tolerance spends the cap (256, in rounds of 8
    after 17 nodes, as for 64)."""
    density = StepDensity([1.0, 0.0], [0.0, 3.0])
    change = density.score(1.0) - density.score(0.0)
    assert change == pytest.approx(2.26)
    result, used = adaptive_trapezoid(density, torch.tensor([0]), steps=64, tolerance=0.005)
    assert int(used[0]) == 33
    assert abs(float(result.sum()) - change) <= 0.005 * change
    density.calls.clear()
    _, used = adaptive_trapezoid(density, torch.tensor([0]), steps=256, tolerance=1e-12)
    assert int(used[0]) == 256
    assert [len(a) for _, a in density.calls][:3] == [17, 8, 8]
    _, used = adaptive_trapezoid(density, torch.tensor([0]), steps=2, tolerance=1e-12)
    assert int(used[0]) == 2
