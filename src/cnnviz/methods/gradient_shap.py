"""GradientShap (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions",
NeurIPS 2017): expected gradients × (input − reference) at random points between the input
and references drawn from a distribution of baselines."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.capture.targets import TargetSpec
from cnnviz.errors import positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method, check_finite, register
from cnnviz.methods.baselines import (
    Baseline,
    BaselineContext,
    BaselineSpec,
    baseline_distribution,
    parse_baseline,
)
from cnnviz.methods.gradients import (
    ChannelReduction,
    chunks,
    clean_pass,
    display_for,
    input_gradients,
    input_space_result,
    make_generator,
    parse_reduction,
    repeated_rows,
)
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT, Display
from cnnviz.progress import batches


@dataclass(frozen=True)
class ShapDraw:
    """The random draws of one sample, for every image of the batch."""

    references: torch.Tensor
    """``(N,)`` indices into the distribution of references: x′ of each image."""
    noise: torch.Tensor
    """``(N, C, H, W)`` input noise ε, already scaled by ``stdevs`` (zeros without noise)."""
    alphas: torch.Tensor
    """``(N,)`` positions α ∈ [0, 1] on the path from x′ to x + ε."""


@register
class GradientShap(Method):
    """GradientShap (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions",
    NeurIPS 2017; the expected-gradients estimator of SHAP values, captum's ``GradientShap``).

    For each of ``samples`` draws s, every image takes a reference x′_s drawn uniformly from the
    distribution of baselines, noise ε_s ~ N(0, ``stdevs``²) and α_s ~ U[0, 1]; with
    x̃_s = x + ε_s,

        a = (1/S) Σ_s (x̃_s − x′_s) ⊙ ∂S_c/∂x |_(α_s x̃_s + (1 − α_s) x′_s),   map = Σ_c a_c

    (signed, display SIGNED). In expectation Σ a ≈ S_c(x) − E[S_c(x′)] (for ``stdevs = 0``):
    Monte-Carlo Integrated Gradients averaged over the references.

    Options: ``baseline`` — the distribution of references of
    :func:`cnnviz.methods.baselines.baseline_distribution`: a ``(B, C, H, W)`` tensor of ``B``
    references shared by every image (captum's ``baselines``, e.g. a few training images), a
    ``(B, N, C, H, W)`` tensor per image, or one reference (a name, a number, a tensor; default
    "black", with ``preprocessing``); ``samples`` (25, captum's ``n_samples``); ``stdevs``
    (0.0, the noise's standard deviation in model-input units); ``seed`` (0); ``batch_size``
    (16 path points per forward pass, at least one per image); ``reduction`` ("sum").

    The draws are the seam to other implementations: :meth:`draws` yields one
    :class:`ShapDraw` per sample from a generator seeded with ``seed`` on the input's device
    (reference index, α, then noise), so chunking never changes them. Captum draws the same
    quantities from the global RNGs (NumPy for the reference index and α, torch for the noise)
    in image-major order; fed captum's draws through :meth:`draws`, the attributions equal
    ``GradientShap(model).attribute(x, baselines, n_samples=samples, stdevs=stdevs,
    target=c)`` (tested on a random VGG and EfficientNet-Lite0, several targets per image: the
    same draws serve every target, as captum's do when reseeded for each). The difference
    x̃ − x′ uses the noisy input, as captum and the SHAP library do.

    Example::

        >>> refs = torch.randn(8, 3, 224, 224) * 0.1  # or a few training images
        >>> e = explain(model, x, "gradientshap", target=3, baseline=refs, samples=32)
        >>> e.attributions.shape  # (N, 1, 3, 224, 224)
    """

    name = "gradientshap"
    title = "GradientShap"
    paper = "Lundberg & Lee, NeurIPS 2017"
    summary = "Gradients × (input − reference) at random points towards random references."
    display = Display.SIGNED
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        samples: int = 25,
        stdevs: float = 0.0,
        baseline: BaselineSpec = Baseline.BLACK,
        preprocessing: Preprocessing | None = None,
        blur_sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
        reduction: str | ChannelReduction = ChannelReduction.SUM,
    ) -> None:
        self.samples = positive_int(samples, "samples")
        if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)):
            raise TypeError(f"stdevs must be a number, got {stdevs!r}")
        if not (math.isfinite(stdevs) and stdevs >= 0):
            raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")
        self.stdevs = float(stdevs)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.baseline = parse_baseline(baseline)
        self.context = BaselineContext(preprocessing, blur_sigma, seed)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def draws(self, x: torch.Tensor, references: int) -> Iterator[ShapDraw]:
        """``samples`` draws for the batch ``x`` from a distribution of ``references``, one
        sample after another from a generator seeded with ``seed`` (override to replay
        another implementation's draws)."""
        generator = make_generator(self.seed, x.device)
        n = x.shape[0]
        for _ in range(self.samples):
            index = torch.randint(references, (n,), generator=generator, device=x.device)
            alphas = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
            noise = torch.zeros_like(x)
            if self.stdevs > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                noise *= self.stdevs
            yield ShapDraw(index, noise, alphas)

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
        references = baseline_distribution(self.baseline, x, self.context)  # (B, N, C, H, W)
        check_finite(references, "The GradientShap baselines")
        n, count = x.shape[0], clean.targets.per_image
        images = torch.arange(n, device=x.device)
        total = x.new_zeros((n, count, *x.shape[1:]))
        draws = self.draws(x, references.shape[0])
        for span in batches(list(chunks(self.samples, n, self.batch_size)), self.title):
            drawn = [next(draws) for _ in span]
            start = torch.stack([references[d.references.to(x.device), images] for d in drawn])
            end = x.unsqueeze(0) + torch.stack([d.noise.to(x) for d in drawn])
            a = torch.stack([d.alphas.to(x) for d in drawn]).view(len(span), n, 1, 1, 1)
            path = (a * end + (1 - a) * start).flatten(0, 1)  # captum's form of the point
            rows = repeated_rows(n, len(span), x.device)
            grads, _ = input_gradients(model, path, clean.targets, rows)
            grads = grads.view(len(span), n, count, *x.shape[1:])
            total += (grads * (end - start).unsqueeze(2)).sum(dim=0)
        attributions = total / self.samples
        return input_space_result(self.name, x, clean, attributions, self.reduction)
