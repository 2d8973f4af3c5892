"""Shapley Value Sampling: Shapley values of superpixels estimated from random permutations."""

from __future__ import annotations

import torch
from torch import nn

from cnnviz.methods.base import register
from cnnviz.methods.gradients import CleanPass
from cnnviz.methods.sampling import SegmentSampling


def permutations(generator: torch.Generator, samples: int, features: int) -> torch.Tensor:
    """``samples`` random orders ``(S, F)`` of the segments, one ``torch.randperm`` each (as
    captum's ``ShapleyValueSampling`` draws them)."""
    return torch.stack([torch.randperm(features, generator=generator) for _ in range(samples)])


def prefix_coalitions(orders: torch.Tensor) -> torch.Tensor:
    """The coalitions ``(1 + S·F, F)`` a permutation walk visits: the empty one, then for each
    order π and k = 1 … F the first k segments of π."""
    count, features = orders.shape
    rank = torch.empty_like(orders).scatter_(
        1, orders, torch.arange(features).expand(count, features)
    )
    steps = torch.arange(features).view(1, -1, 1)
    walks = (rank.unsqueeze(1) <= steps).flatten(0, 1)  # (S·F, F): step k keeps rank ≤ k
    return torch.cat([torch.zeros(1, features, dtype=torch.bool), walks])


def marginal_means(orders: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """φ ``(T, F)``: each segment's score gain when added in each order, averaged over orders;
    ``scores`` ``(1 + S·F, T)`` are those of :func:`prefix_coalitions`."""
    count, features = orders.shape
    walk = scores[1:].view(count, features, -1)
    chain = torch.cat([scores[:1].expand(count, 1, -1), walk], dim=1)
    gains = chain[:, 1:] - chain[:, :-1]  # gains[s, k]: segment orders[s, k] joins
    total = torch.zeros(features, scores.shape[1], dtype=scores.dtype, device=scores.device)
    total.index_add_(0, orders.flatten().to(scores.device), gains.flatten(0, 1))
    return (total / count).T


@register
class ShapleySampling(SegmentSampling):
    """Shapley Value Sampling (Castro, Gómez & Tejada, "Polynomial calculation of the Shapley
    value based on sampling", Computers & Operations Research 2009; Štrumbelj & Kononenko,
    "An Efficient Explanation of Individual Classifications using Game Theory", JMLR 2010), as
    captum's ``ShapleyValueSampling``.

    The Shapley value of segment f is its mean marginal contribution over orders π of the F
    segments; ``samples`` (16) random orders estimate it:

        φ_f ≈ 1/M Σ_π [S_c(x_{Pre_π(f) ∪ {f}}) − S_c(x_{Pre_π(f)})],

    x_A the image with the segments outside A set to ``baseline``, Pre_π(f) the segments before
    f in π. Each order costs F forwards (plus one of the baseline per image); Σ_f φ_f equals
    S_c(x) − S_c(x′) exactly for every sample. The other options are :class:`SegmentSampling`'s.
    Equal to captum's ``ShapleyValueSampling(model).attribute(x_i, target=c,
    feature_mask=segments_i, baselines=x′, n_samples=samples)`` per image and target (tested,
    1e-5) after ``torch.manual_seed(seed)``: cnnviz draws the same orders from its own
    generator, seeded ``seed`` for each image. Deviation: captum walks one order shared by the
    images of a batch (over the largest segment count); cnnviz gives each image its own orders
    over its own segments, and streams every walk of every image and target through one batched
    stream of forwards. Example::

        >>> e = explain(model, x, "shapley-sampling", target=3, samples=8, n_segments=30)
    """

    name = "shapley-sampling"
    title = "Shapley Value Sampling"
    paper = "Castro et al., 2009; Štrumbelj & Kononenko, JMLR 2010"
    summary = "Mean marginal score gain of each superpixel over random orders of the segments."
    default_samples = 16

    def segment_values(
        self,
        model: nn.Module,
        x: torch.Tensor,
        fill: torch.Tensor,
        groups: torch.Tensor,
        counts: list[int],
        clean: CleanPass,
    ) -> list[torch.Tensor]:
        orders = [permutations(self.generator(), self.samples, f) for f in counts]
        coalitions = [prefix_coalitions(o) for o in orders]
        run = self.sample(model, x, fill, groups, coalitions, clean)
        return [marginal_means(o, s) for o, s in zip(orders, run.scores, strict=True)]
