"""Surrogate models over superpixels: LIME and KernelSHAP.

Both draw binary coalitions z of an image's segments, score the images with the left-out
segments set to the baseline (:mod:`cnnviz.methods.sampling`), and fit a weighted linear model
g(z) = b + Σ_f w_f z_f to the scores; each pixel gets its segment's coefficient w_f. They differ
in how z is drawn, how each sample is weighted, and the regression (:func:`fit_linear`).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import register
from cnnviz.methods.baselines import BaselineSpec
from cnnviz.methods.gradients import CleanPass
from cnnviz.methods.perturbation import Score
from cnnviz.methods.sampling import SegmentSampling
from cnnviz.methods.superpixels import Segments, positive_number

ENDPOINT_WEIGHT = 1e6
"""KernelSHAP's weight of the empty and the full coalition (captum's ``inf_weight``): a finite
stand-in for the Shapley kernel's infinite weight, which forces g(0) = f(x′), g(1) = f(x)."""


def fit_linear(
    z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float = 0.0
) -> torch.Tensor:
    """The coefficients ``(T, F)`` of the weighted linear fit, with intercept, of the scores
    ``y`` ``(S, T)`` on the coalitions ``z`` ``(S, F)``:

        argmin_{b, w} 1/(2 Σπ) Σ_s π_s (y_s − b − w·z_s)² + α ‖w‖₁

    scikit-learn's ``Lasso(alpha)`` for α > 0, its ``LinearRegression`` (least squares, the
    minimum-norm solution when underdetermined) for α = 0 — captum's ``SkLearnLasso`` and
    ``SkLearnLinearRegression`` on the same float32 arrays, so the same coefficients.
    """
    # lazy: scikit-learn loads only when a surrogate is fitted
    from sklearn.linear_model import Lasso, LinearRegression

    model = Lasso(alpha=alpha) if alpha > 0 else LinearRegression()
    model.fit(
        z.float().cpu().numpy(),
        y.float().cpu().numpy(),
        sample_weight=weights.float().cpu().numpy(),
    )
    coefficients = torch.as_tensor(model.coef_, dtype=torch.float32)
    return coefficients.reshape(y.shape[1], z.shape[1])


def lime_coalitions(generator: torch.Generator, samples: int, features: int) -> torch.Tensor:
    """LIME's ``samples`` coalitions ``(S, F)``: every segment kept with probability ½, drawn
    as captum's default ``perturb_func`` draws them (``torch.bernoulli`` of ½, row by row)."""
    return torch.bernoulli(torch.full((samples, features), 0.5), generator=generator).bool()


def lime_weights(distances: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """The exponential kernel π = exp(−d² / (2 σ²)) of the cosine distances d, in captum's
    arithmetic (d² / 2σ² in float32, exp in float64, the weight in float32)."""
    exponent = (-1 * distances.float() ** 2) / (2 * kernel_width**2)
    return exponent.double().exp().float()


def shapley_size_probabilities(features: int) -> torch.Tensor:
    """P(|z| = k) ∝ (F − 1) / (k (F − k)) for k = 1 … F − 1 (index 0: 0), ``(F,)``, normalised.

    The Shapley kernel π(z) = (F − 1) / (C(F, |z|) |z| (F − |z|)) summed over the C(F, k)
    coalitions of size k; a uniform coalition of the drawn size then follows π.
    """
    k = torch.arange(features, dtype=torch.float)
    probabilities = torch.tensor(features - 1) / (k * (features - k))
    probabilities[0] = 0.0
    return probabilities / probabilities.sum()


def kernel_shap_coalitions(generator: torch.Generator, samples: int, features: int) -> torch.Tensor:
    """KernelSHAP's ``samples`` coalitions ``(S, F)``, in captum's draw order: the full and the
    empty coalition, then per sample a size k ~ :func:`shapley_size_probabilities` and the k
    segments of largest standard-normal noise. With one segment only the two endpoints."""
    rows = [torch.ones(1, features, dtype=torch.bool), torch.zeros(1, features, dtype=torch.bool)]
    if features > 1:
        sizes = shapley_size_probabilities(features).view(1, -1)
        for _ in range(samples - 2):
            k = int(torch.multinomial(sizes, 1, True, generator=generator))
            noise = torch.randn(1, features, generator=generator)
            threshold = torch.kthvalue(noise, features - k).values
            rows.append(noise > threshold)
    return torch.cat(rows)[:samples]


def kernel_shap_weights(z: torch.Tensor) -> torch.Tensor:
    """1 for every coalition, :data:`ENDPOINT_WEIGHT` for the empty and the full one (the
    kernel itself is in the sampling, :func:`kernel_shap_coalitions`)."""
    size = z.sum(dim=1)
    endpoint = (size == 0) | (size == z.shape[1])
    return torch.where(endpoint, ENDPOINT_WEIGHT, 1.0).float()


@register
class LIME(SegmentSampling):
    """LIME (Ribeiro, Singh & Guestrin, "'Why Should I Trust You?': Explaining the Predictions of
    Any Classifier", KDD 2016), as captum's ``Lime`` with its defaults.

    ``samples`` (256) coalitions z ∈ {0, 1}^F of the image's segments, each segment kept with
    probability ½; the image with the segments of z = 0 set to ``baseline`` is x_z. Each sample
    is weighted by the exponential kernel of the cosine distance d(x, x_z) in model-input space,

        π_z = exp(−d(x, x_z)² / (2 σ²)),   σ = ``kernel_width`` (1),

    and the surrogate is the weighted Lasso (scikit-learn's, ``alpha`` = 0.01; α = 0 gives
    weighted least squares):

        w = argmin 1/(2 Σπ) Σ_z π_z (S_c(x_z) − b − w·z)² + α ‖w‖₁;   a_p = w_{segment(p)}.

    Segments: SLIC superpixels by default (see :class:`SegmentSampling` for ``segments``,
    ``mask``, ``n_segments``, … and the other options). Equal to captum's
    ``Lime(model).attribute(x_i, target=c, feature_mask=segments_i, baselines=x′,
    n_samples=samples)`` per image and target (tested, 5e-5: the Lasso's stopping tolerance),
    given the same coalitions: cnnviz draws each image's with its own generator seeded
    ``seed``, in captum's order, so ``torch.manual_seed(seed)`` before captum's call on each
    image gives captum the same ones. Deviation: every image × target is fitted from one
    stream of forwards, ``batch_size`` rows each (captum: one forward per
    ``perturbations_per_eval`` rows, per target). Example::

        >>> e = explain(model, x, "lime", target=3, samples=500, n_segments=40)
    """

    name = "lime"
    title = "LIME"
    paper = "Ribeiro et al., KDD 2016"
    summary = "Weighted Lasso surrogate over random superpixel coalitions (exp. cosine kernel)."
    default_samples = 256

    def __init__(
        self,
        *,
        samples: int | None = None,
        kernel_width: float = 1.0,
        alpha: float = 0.01,
        segments: str | Segments | None = None,
        mask: torch.Tensor | None = None,
        n_segments: int | None = None,
        compactness: float | None = None,
        sigma: float | None = None,
        kernel_size: float | None = None,
        max_dist: float | None = None,
        ratio: float | None = None,
        patch: int | None = None,
        baseline: BaselineSpec = 0.0,
        preprocessing: Preprocessing | None = None,
        score: str | Score = Score.LOGIT,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(
            samples=samples,
            segments=segments,
            mask=mask,
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            kernel_size=kernel_size,
            max_dist=max_dist,
            ratio=ratio,
            patch=patch,
            baseline=baseline,
            preprocessing=preprocessing,
            score=score,
            batch_size=batch_size,
            seed=seed,
        )
        self.kernel_width = positive_number(kernel_width, "kernel_width")
        self.alpha = positive_number(alpha, "alpha", zero=True)

    def segment_values(
        self,
        model: nn.Module,
        x: torch.Tensor,
        fill: torch.Tensor,
        groups: torch.Tensor,
        counts: list[int],
        clean: CleanPass,
    ) -> list[torch.Tensor]:
        coalitions = [lime_coalitions(self.generator(), self.samples, f) for f in counts]
        run = self.sample(model, x, fill, groups, coalitions, clean, distances=True)
        assert run.distances is not None  # asked for above
        return [
            fit_linear(z, y, lime_weights(d, self.kernel_width), self.alpha)
            for z, y, d in zip(coalitions, run.scores, run.distances, strict=True)
        ]


@register
class KernelSHAP(SegmentSampling):
    """KernelSHAP (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions",
    NeurIPS 2017), as captum's ``KernelShap``.

    Shapley values of the segments as a weighted linear regression: coalitions z of the F
    segments follow the Shapley kernel

        π(z) = (F − 1) / (C(F, |z|) · |z| · (F − |z|)),

    drawn as captum draws them — the full and the empty coalition first (weight 10⁶, standing in
    for the kernel's infinite weight there), then ``samples`` − 2 coalitions of size k with
    P(k) ∝ (F − 1)/(k (F − k)), uniform among that size (weight 1) — and the unregularised
    least-squares fit  w = argmin Σ_z π_z (S_c(x_z) − b − w·z)²  gives a_p = w_{segment(p)}.
    With every coalition weighted by π the fit is exactly the Shapley values; sampled, it
    estimates them (and an additive model is recovered exactly from any full-rank sample).

    ``samples`` (256) includes the two endpoints; the other options are
    :class:`SegmentSampling`'s. Equal to captum's ``KernelShap(model).attribute(x_i, target=c,
    feature_mask=segments_i, baselines=x′, n_samples=samples)`` per image and target (tested,
    1e-5) after ``torch.manual_seed(seed)``: cnnviz replays captum's draws from its own
    generator, seeded ``seed`` for each image. Deviation: one batched stream of forwards for
    every image and target; a one-segment image (where captum's size distribution is
    undefined) gets the two endpoints.
    Example::

        >>> e = explain(model, x, "kernelshap", target=3, samples=500, segments="quickshift")
    """

    name = "kernelshap"
    title = "KernelSHAP"
    paper = "Lundberg & Lee, NeurIPS 2017"
    summary = "Shapley values of superpixels by Shapley-kernel weighted linear regression."
    default_samples = 256

    def segment_values(
        self,
        model: nn.Module,
        x: torch.Tensor,
        fill: torch.Tensor,
        groups: torch.Tensor,
        counts: list[int],
        clean: CleanPass,
    ) -> list[torch.Tensor]:
        coalitions = [kernel_shap_coalitions(self.generator(), self.samples, f) for f in counts]
        run = self.sample(model, x, fill, groups, coalitions, clean)
        return [
            fit_linear(z, y, kernel_shap_weights(z))
            for z, y in zip(coalitions, run.scores, strict=True)
        ]
