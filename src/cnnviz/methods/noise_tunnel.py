"""The noise tunnel: any method, averaged over noisy copies of the input (captum's
``NoiseTunnel``, which SmoothGrad, SmoothGrad² and VarGrad are for the gradient)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import close_matches, positive_int
from cnnviz.methods.base import (
    Explanation,
    Method,
    check_finite,
    register,
    registered_methods,
)
from cnnviz.methods.gradients import (
    ChannelReduction,
    SmoothGrad,
    chunks,
    clean_pass,
    gaussian_noise,
    reduce_channels,
)
from cnnviz.methods.postprocess import Display
from cnnviz.progress import batches


class TunnelKind(enum.Enum):
    """How the methods' results on the noisy copies are combined (captum's ``nt_type``)."""

    SMOOTHGRAD = "smoothgrad"
    """The mean (Smilkov et al. 2017)."""
    SMOOTHGRAD_SQ = "smoothgrad-sq"
    """The mean of the squares (Hooker et al. 2019)."""
    VARGRAD = "vargrad"
    """The population variance (Adebayo et al. 2018)."""


def tunnel_statistic(kind: TunnelKind, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
    """The combined result from the mean and the mean square over the noisy copies."""
    if kind is TunnelKind.SMOOTHGRAD:
        return mean
    if kind is TunnelKind.SMOOTHGRAD_SQ:
        return mean_sq
    return (mean_sq - mean.square()).clamp(min=0)


class _Sums:
    """Running Σ and Σ² over the noisy copies of one tensor ``(N, T, …)``."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:  # values: (k, N, T, …)
        total, total_sq = values.sum(dim=0), values.square().sum(dim=0)
        self.total = total if self.total is None else self.total + total
        self.total_sq = total_sq if self.total_sq is None else self.total_sq + total_sq

    def statistic(self, kind: TunnelKind, samples: int) -> torch.Tensor:
        assert self.total is not None and self.total_sq is not None  # samples ≥ 1
        return tunnel_statistic(kind, self.total / samples, self.total_sq / samples)


@register
class NoiseTunnel(Method):
    """Noise tunnel (captum's ``NoiseTunnel``; Smilkov et al., "SmoothGrad: removing noise by
    adding noise", ICML-W 2017; Adebayo et al., ICLR-W 2018) around any method ``M``:

        R(x) = stat_{i = 1…n} M(x + ε_i),   ε_i ~ N(0, σ²),

    ``stat`` by ``kind``: "smoothgrad" (mean), "smoothgrad-sq" (mean of squares) or "vargrad"
    (variance). ``around`` is a registry name or a :class:`Method` (with its own options); a
    CAM is explained at the layer given to :func:`cnnviz.explain` (CLI: ``cnnviz explain
    --method noise-tunnel --option around=gradcam``). Noise as SmoothGrad's:
    ``samples`` (16), ``noise_level`` (0.15 of each image's value range) or an absolute
    ``sigma``, ``seed``; the noisy copies of all images go to ``M`` ``batch_size`` rows at a time.

    What is combined: where ``M`` gives per-channel attributions and a channel ``reduction``
    (saliency, Gradient × Input, Integrated Gradients, …), the statistic is taken of the
    attributions and the map reduced after, as captum does with its attributions — so
    ``noise-tunnel`` around ``saliency`` is exactly ``smoothgrad`` (``smoothgrad-sq``,
    ``vargrad``) for the same seed (tested); otherwise of ``M``'s raw maps. The targets are the
    clean image's (resolved once, then given to ``M`` by index), so noise cannot change the
    explained class; a callable target is called on each noisy output. Example::

        >>> e = explain(model, x, "noise-tunnel", around="gradcam", layer="conv5_2", samples=8)
    """

    name = "noise-tunnel"
    title = "Noise tunnel"
    paper = "Smilkov et al., ICML-W 2017; captum"
    summary = "Any method averaged (or squared, or its variance) over noisy copies of the input."

    def __init__(
        self,
        *,
        around: str | Method = "saliency",
        kind: str | TunnelKind = TunnelKind.SMOOTHGRAD,
        samples: int = 16,
        noise_level: float | None = None,
        sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        if isinstance(around, str):
            key, methods = around.strip().lower().replace("_", "-"), registered_methods()
            if key == self.name:
                raise ValueError("a noise tunnel cannot wrap another noise tunnel by name")
            if key not in methods:
                raise ValueError(
                    f"Unknown method {around!r} to wrap.{close_matches(key, methods)} "
                    "List the methods with `cnnviz methods`."
                )
            around = methods[key]()
        if not isinstance(around, Method):
            raise TypeError(f"around must be a method name or a Method, got {around!r}")
        self.method = around
        try:
            self.kind = TunnelKind(str(getattr(kind, "value", kind)).strip().lower())
        except ValueError:
            choices = ", ".join(k.value for k in TunnelKind)
            raise ValueError(f"kind must be one of {choices}; got {kind!r}") from None
        # SmoothGrad's own noise settings: validated, and σ per image as SmoothGrad takes it
        self.noise = SmoothGrad(samples=samples, noise_level=noise_level, sigma=sigma, seed=seed)
        self.samples = positive_int(samples, "samples")
        self.batch_size = positive_int(batch_size, "batch_size")
        # per instance: a tunnel around a CAM needs its layer, around a gradient its percentile
        self.needs_layer = around.needs_layer  # type: ignore[misc]  # instance overrides class
        self.outlier_percent = around.outlier_percent  # type: ignore[misc]  # likewise
        inner = around.display
        self.display = inner if self.kind is TunnelKind.SMOOTHGRAD else Display.ABSOLUTE

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        clean = clean_pass(model, x, target, class_names)
        n = x.shape[0]
        indices = clean.targets.indices
        sigma = self.noise.noise_scale(x).view(1, n, 1, 1, 1)
        noise = gaussian_noise(x, self.samples, self.noise.seed)
        maps, attributions = _Sums(), _Sums()
        reduction = getattr(self.method, "reduction", None)
        first: Explanation | None = None
        for span in batches(list(chunks(self.samples, n, self.batch_size)), self.title):
            noisy = (x + torch.stack([next(noise) for _ in span]) * sigma).flatten(0, 1)
            rows_target: TargetSpec = (
                target if indices is None else indices.repeat(len(span), 1).tolist()
            )
            e = self.method.explain(
                model, noisy, layer=layer, target=rows_target, class_names=class_names
            )
            first = first or e
            maps.add(e.maps.view(len(span), n, *e.maps.shape[1:]))
            if e.attributions is not None:
                attributions.add(e.attributions.view(len(span), n, *e.attributions.shape[1:]))
        assert first is not None  # samples ≥ 1
        combined = None
        if attributions.total is not None:
            combined = attributions.statistic(self.kind, self.samples)
        if combined is not None and isinstance(reduction, ChannelReduction):
            result_maps = reduce_channels(combined, reduction)
        else:
            result_maps = maps.statistic(self.kind, self.samples)
        check_finite(result_maps, "The noise-tunnel map")
        return replace(
            first,
            method=self.name,
            maps=result_maps,
            targets=clean.targets,
            scores=clean.scores,
            probabilities=clean.probabilities,
            attributions=combined,
            display=self.display,
            extras={"sigma": sigma.flatten()},
        )
