"""Input-space gradient methods: attributions with the resolution of the input image.

Saliency and Gradient × Input take one forward and one backward pass per target. SmoothGrad
(and its squared and variance variants) averages gradients over many noisy copies of the input,
streamed through the model ``batch_size`` rows at a time, so the activations held do not grow
with ``samples``. Targets are resolved once on the unperturbed input.

The batched passes here (:func:`clean_pass`, :func:`input_gradients`, :func:`forward_scores`) are
shared with :mod:`cnnviz.methods.integrated` (Integrated Gradients), :mod:`cnnviz.methods.guided`
and :mod:`cnnviz.methods.perturbation`.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.forward import autograd_enabled
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import Targets, TargetSpec, logits_of
from cnnviz.errors import positive_int
from cnnviz.methods.base import (
    Explanation,
    Method,
    check_finite,
    explained_scores,
    gradient_pass,
    register,
)
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT, Display
from cnnviz.progress import batches

logger = logging.getLogger(__name__)


class ChannelReduction(enum.Enum):
    """How per-channel input attributions ``(C, H, W)`` become one map ``(H, W)``."""

    MAX_ABS = "max-abs"
    """max_c |a_c| — Simonyan et al.'s saliency map (non-negative)."""
    SIGNED_MAX = "signed-max"
    """a_c at the channel of largest |a_c|: the magnitude of MAX_ABS, with its sign."""
    SUM = "sum"
    """Σ_c a_c — signed; what completeness-style methods add up."""


def reduce_channels(attributions: torch.Tensor, how: ChannelReduction) -> torch.Tensor:
    """Collapse the channel axis (dim -3) of attributions ``(..., C, H, W)``."""
    if how is ChannelReduction.MAX_ABS:
        return attributions.abs().amax(dim=-3)
    if how is ChannelReduction.SUM:
        return attributions.sum(dim=-3)
    index = attributions.abs().argmax(dim=-3, keepdim=True)
    return attributions.gather(-3, index).squeeze(-3)


def parse_reduction(value: str | ChannelReduction) -> ChannelReduction:
    """A :class:`ChannelReduction` from itself or its value (``"max-abs"``, ``"sum"``, …)."""
    if isinstance(value, ChannelReduction):
        return value
    try:
        return ChannelReduction(str(value).strip().lower().replace("_", "-"))
    except ValueError:
        choices = ", ".join(r.value for r in ChannelReduction)
        raise ValueError(f"reduction must be one of {choices}; got {value!r}") from None


def display_for(reduction: ChannelReduction) -> Display:
    """ABSOLUTE for magnitude maps (max-abs), SIGNED for the signed reductions."""
    return Display.ABSOLUTE if reduction is ChannelReduction.MAX_ABS else Display.SIGNED


# -- shared batched passes ----------------------------------------------------------------------


@dataclass(frozen=True)
class CleanPass:
    """Targets resolved on the unperturbed batch, with their ``(N, T)`` scores."""

    targets: Targets
    scores: torch.Tensor
    probabilities: torch.Tensor | None


def clean_pass(
    model: nn.Module, x: torch.Tensor, target: TargetSpec, class_names: Sequence[str] | None
) -> CleanPass:
    """One forward pass without autograd on ``x``: resolve ``target`` and score it."""
    with LayerCapture(model, [], grad=GradFrom.NONE) as capture:
        output = capture.forward(x)
    with torch.no_grad():
        targets, scores, probabilities = explained_scores(output, target, class_names, len(x))
    return CleanPass(targets, scores.detach(), probabilities)


def forward_scores(
    model: nn.Module,
    batch: torch.Tensor,
    targets: Targets,
    rows: torch.Tensor | None = None,
    *,
    probability: bool = False,
) -> torch.Tensor:
    """``(M, T)`` target scores of a batch of ``M`` (perturbed) images, without autograd.

    ``rows[m]`` is the original image of row ``m``. With ``probability`` class targets are
    scored by their softmax probability; a callable target's scalar is used as it is.
    """
    with LayerCapture(model, [], grad=GradFrom.NONE) as capture:
        output = capture.forward(batch)
        if probability and targets.indices is not None:
            output = logits_of(output).softmax(dim=1)
        scores = targets.scores(output, rows=rows)
    check_finite(scores, "The model output on the perturbed inputs")
    return scores


def input_gradients(
    model: nn.Module, batch: torch.Tensor, targets: Targets, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂score_t/∂input for every row and target: ``(M, T, C, H, W)``, and the ``(M, T)`` scores.

    One forward and ``T`` backward passes (``torch.autograd.grad``, so parameters' ``.grad`` stay
    untouched). Rows are independent in eval mode, so the gradient of the sum over rows gives
    each row its own gradient.
    """
    with autograd_enabled(), LayerCapture(model, [], grad=GradFrom.INPUT) as capture:
        output = capture.forward(batch)
        scores = targets.scores(output, rows=rows)
        check_finite(scores.detach(), "The model output")
        leaf = capture.input
        assert leaf is not None  # set by LayerCapture.forward
        count = scores.shape[1]
        grads = []
        for t in range(count):
            g = None
            if scores.requires_grad:
                (g,) = torch.autograd.grad(
                    scores[:, t].sum(), leaf, retain_graph=t < count - 1, allow_unused=True
                )
            grads.append(torch.zeros_like(leaf) if g is None else g)
    return torch.stack(grads, dim=1), scores.detach()


def chunks(total: int, rows_per_item: int, batch_size: int) -> Iterator[range]:
    """Consecutive ranges of ``range(total)``, ``batch_size // rows_per_item`` items each (≥ 1)."""
    size = max(1, batch_size // rows_per_item)
    for start in range(0, total, size):
        yield range(start, min(start + size, total))


def repeated_rows(images: int, repeats: int, device: torch.device) -> torch.Tensor:
    """Row → image index of ``repeats`` stacked copies of an ``images``-image batch."""
    return torch.arange(images, device=device).repeat(repeats)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def input_space_result(
    name: str,
    x: torch.Tensor,
    clean: CleanPass,
    attributions: torch.Tensor,
    reduction: ChannelReduction,
    **extras: torch.Tensor,
) -> Explanation:
    """The :class:`Explanation` of per-channel input attributions ``(N, T, C, H, W)``."""
    check_finite(attributions, f"The {name} attribution")
    return Explanation(
        method=name,
        maps=reduce_channels(attributions, reduction),
        layer=None,
        targets=clean.targets,
        scores=clean.scores,
        probabilities=clean.probabilities,
        input_size=(x.shape[-2], x.shape[-1]),
        display=display_for(reduction),
        attributions=attributions,
        extras=extras,
    )


# -- one pass -----------------------------------------------------------------------------------


@register
class Saliency(Method):
    """Gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", ICLR workshop 2014).

    a = ∂S_c/∂I  (S_c the pre-softmax class score),   map_ij = max_c |a_c,ij|.

    ``signed=True`` keeps the sign of the largest-magnitude channel instead. The per-channel
    gradient is returned as ``Explanation.attributions``. Example::

        >>> e = explain(model, x, "saliency", target=3)
        >>> e.attributions.shape  # (N, 1, 3, H, W): ∂S_3/∂I
    """

    name = "saliency"
    title = "Saliency"
    paper = "Simonyan et al., ICLR-W 2014"
    summary = "Gradient of the class score w.r.t. the input pixels, max |·| over colour."
    display = Display.ABSOLUTE
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(self, *, signed: bool = False) -> None:
        self.reduction = ChannelReduction.SIGNED_MAX if signed else ChannelReduction.MAX_ABS
        if signed:
            self.display = Display.SIGNED

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        run = gradient_pass(model, x, layer=None, target=target, class_names=class_names)
        attributions = torch.stack(run.grads, dim=1)  # (N, T, C, H, W)
        check_finite(attributions, "The saliency gradient")
        return Explanation(
            method=self.name,
            maps=reduce_channels(attributions, self.reduction),
            layer=None,
            targets=run.targets,
            scores=run.scores,
            probabilities=run.probabilities,
            input_size=(x.shape[-2], x.shape[-1]),
            display=self.display,
            attributions=attributions,
        )


@register
class GradientXInput(Method):
    """Gradient × Input (Shrikumar, Greenside, Shcherbina & Kundaje, "Not Just a Black Box:
    Learning Important Features Through Propagating Activation Differences", arXiv 2016).

    a = x ⊙ ∂S_c/∂x,   map = Σ_c a_c  (``reduction="sum"``, signed: display SIGNED).

    The sign matters (a pixel pushing the score up or down), so the default map keeps it; for a
    bias-free piecewise-linear network Σ a = S_c(x). Example::

        >>> e = explain(model, x, "gradxinput", target=3)
        >>> e.attributions.shape  # (N, 1, 3, H, W)
    """

    name = "gradxinput"
    title = "Gradient × Input"
    paper = "Shrikumar et al., arXiv 2016"
    summary = "Input times the gradient of the class score, summed over colour (signed)."
    display = Display.SIGNED
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(self, *, reduction: str | ChannelReduction = ChannelReduction.SUM) -> None:
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        run = gradient_pass(model, x, layer=None, target=target, class_names=class_names)
        attributions = torch.stack(run.grads, dim=1) * run.value.unsqueeze(1)
        clean = CleanPass(run.targets, run.scores, run.probabilities)
        return input_space_result(self.name, x, clean, attributions, self.reduction)


# -- SmoothGrad family --------------------------------------------------------------------------


def gaussian_noise(x: torch.Tensor, count: int, seed: int) -> Iterator[torch.Tensor]:
    """``count`` standard-normal tensors shaped like ``x``, drawn one after another from a
    generator on ``x``'s device seeded with ``seed`` (so chunking never changes them)."""
    generator = make_generator(seed, x.device)
    for _ in range(count):
        yield torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class NoisyGradients(Method):
    """Base of SmoothGrad, SmoothGrad² and VarGrad: gradients at ``samples`` noisy copies
    x + ε, ε ~ N(0, σ²), reduced by :meth:`statistic` from their mean and mean square.

    σ is ``sigma`` (absolute, in model-input units — captum's ``stdevs``) or, by default,
    ``noise_level · (max(x) − min(x))`` per image (the paper's convention, noise_level 0.15).
    ``batch_size`` is the number of noisy images per forward pass (at least one per image).
    """

    display = Display.ABSOLUTE
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        samples: int = 25,
        noise_level: float | None = None,
        sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
        reduction: str | ChannelReduction = ChannelReduction.MAX_ABS,
    ) -> None:
        if noise_level is not None and sigma is not None:
            raise ValueError("Give either noise_level (fraction of the input range) or sigma.")
        for value, what in ((noise_level, "noise_level"), (sigma, "sigma")):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
        self.samples = positive_int(samples, "samples")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.noise_level = 0.15 if noise_level is None and sigma is None else noise_level
        self.sigma = sigma
        self.seed = int(seed)
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def statistic(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        """The attribution from E[g] and E[g²] over the samples."""
        raise NotImplementedError

    def noise_scale(self, x: torch.Tensor) -> torch.Tensor:
        """σ for each image, ``(N,)``."""
        if self.sigma is not None:
            return torch.full((x.shape[0],), float(self.sigma), dtype=x.dtype, device=x.device)
        assert self.noise_level is not None
        return self.noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))

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
        n, count = x.shape[0], clean.targets.per_image
        sigma = self.noise_scale(x)
        total = x.new_zeros((n, count, *x.shape[1:]))
        total_sq = torch.zeros_like(total)
        noise = gaussian_noise(x, self.samples, self.seed)
        for span in batches(list(chunks(self.samples, n, self.batch_size)), self.title):
            eps = torch.stack([next(noise) for _ in span]) * sigma.view(1, n, 1, 1, 1)
            rows = repeated_rows(n, len(span), x.device)
            grads, _ = input_gradients(model, (x + eps).flatten(0, 1), clean.targets, rows)
            grads = grads.view(len(span), n, *grads.shape[1:])
            total += grads.sum(dim=0)
            total_sq += grads.square().sum(dim=0)
        attributions = self.statistic(total / self.samples, total_sq / self.samples)
        return input_space_result(self.name, x, clean, attributions, self.reduction, sigma=sigma)


@register
class SmoothGrad(NoisyGradients):
    """SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by
    adding noise", ICML workshop 2017).

    a = (1/n) Σ_i ∂S_c/∂x |_(x + ε_i),  ε_i ~ N(0, σ²),  σ = noise_level · (max x − min x);
    map = max_c |a_c|.  Options: ``samples`` (25), ``noise_level`` (0.15) or absolute ``sigma``,
    ``seed`` (0), ``batch_size`` (16 rows per pass), ``reduction``. Example::

        >>> e = explain(model, x, "smoothgrad", target=3, samples=50, noise_level=0.1)
        >>> e.extras["sigma"]  # (N,) the σ used for each image
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    paper = "Smilkov et al., ICML-W 2017"
    summary = "Saliency averaged over noisy copies of the input (sharper, less noisy)."

    def statistic(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        return mean


@register
class SmoothGradSquared(NoisyGradients):
    """SmoothGrad² (Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019): the mean of the squared noisy gradients,

    a = (1/n) Σ_i (∂S_c/∂x |_(x + ε_i))²   (non-negative), noise as in ``smoothgrad``. Example::

        >>> e = explain(model, x, "smoothgrad-sq", target=3)
    """

    name = "smoothgrad-sq"
    title = "SmoothGrad²"
    paper = "Hooker et al., NeurIPS 2019"
    summary = "Mean of the squared gradients over noisy copies of the input."

    def statistic(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        return mean_sq


@register
class VarGrad(NoisyGradients):
    """VarGrad (Adebayo, Gilmer, Goodfellow & Kim, "Local Explanation Methods for Deep Neural
    Networks Lack Sensitivity to Parameter Values", ICLR workshop 2018): the variance of the
    noisy gradients,

    a = (1/n) Σ_i g_i² − ((1/n) Σ_i g_i)²,   g_i = ∂S_c/∂x |_(x + ε_i)   (population variance,
    clamped at 0 against rounding), noise as in ``smoothgrad``. Example::

        >>> e = explain(model, x, "vargrad", target=3)
    """

    name = "vargrad"
    title = "VarGrad"
    paper = "Adebayo et al., ICLR-W 2018"
    summary = "Variance of the gradients over noisy copies of the input."

    def statistic(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        return (mean_sq - mean.square()).clamp(min=0)
