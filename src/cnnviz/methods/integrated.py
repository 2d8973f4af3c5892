"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017): attributions that add up to the score difference from a baseline image."""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cnnviz.capture.targets import Targets, TargetSpec
from cnnviz.errors import positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.base import Explanation, Method, check_finite, register
from cnnviz.methods.baselines import (
    Baseline,
    BaselineContext,
    BaselineSpec,
    baseline_tensor,
    parse_baseline,
)
from cnnviz.methods.gradients import (
    ChannelReduction,
    chunks,
    clean_pass,
    display_for,
    forward_scores,
    input_gradients,
    input_space_result,
    parse_reduction,
    repeated_rows,
)
from cnnviz.methods.path_quadrature import adaptive_trapezoid
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT, Display
from cnnviz.progress import INNER_DELAY_SECONDS, batches, progress

logger = logging.getLogger(__name__)

ADAPTIVE_MEMORY_BYTES = 256 * 2**20
"""The adaptive rule keeps every node's (x − x′) ⊙ gradient until its grid is final; images are
taken in groups whose kept values stay within this many bytes (at least one image at a time)."""

COMPLETENESS_WARNING = 0.05
"""Relative completeness gap above which a warning suggests more steps (the paper's advice:
attributions should add up to within 5 % of the score difference)."""

# -- Integrated Gradients -----------------------------------------------------------------------


class Quadrature(enum.Enum):
    """How ∫₀¹ ∂S/∂x(x′ + α(x − x′)) dα is approximated with ``steps`` points."""

    ADAPTIVE = "adaptive"
    """The trapezoid rule on a grid refined, per image, where the integrand changes
    (:mod:`cnnviz.methods.path_quadrature`); the default."""
    GAUSS_LEGENDRE = "gausslegendre"
    RIEMANN_LEFT = "riemann_left"
    RIEMANN_RIGHT = "riemann_right"
    RIEMANN_MIDDLE = "riemann_middle"
    RIEMANN_TRAPEZOID = "riemann_trapezoid"


def nodes_and_weights(rule: Quadrature, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α_k in [0, 1] and weights w_k (Σ w_k = 1) of ``rule``, float64.

    The trapezoid rule has spacing 1/(steps − 1), so its weights sum to 1; captum's
    ``riemann_trapezoid`` uses 1/steps, so its attributions are ``(steps − 1)/steps`` of these.
    """
    k = torch.arange(steps, dtype=torch.float64)
    if rule is Quadrature.GAUSS_LEGENDRE:
        nodes, gauss_weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(gauss_weights / 2)
    if rule is Quadrature.ADAPTIVE:
        raise ValueError("The adaptive rule chooses its nodes per image; see adaptive_trapezoid")
    if rule is Quadrature.RIEMANN_TRAPEZOID:
        if steps < 2:
            raise ValueError(f"The trapezoid rule needs steps >= 2, got {steps}")
        weights = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offset = {Quadrature.RIEMANN_LEFT: 0.0, Quadrature.RIEMANN_RIGHT: 1.0}.get(rule, 0.5)
    return (k + offset) / steps, torch.full((steps,), 1 / steps, dtype=torch.float64)


def path_batches(
    x0: torch.Tensor, diff: torch.Tensor, alphas: torch.Tensor, batch_size: int, title: str
) -> Iterator[tuple[range, torch.Tensor, torch.Tensor]]:
    """The path points x′ + α_k (x − x′) of every image, node after node, ``batch_size`` rows at
    a time (at least one node of every image), with a progress bar titled ``title``: for each
    range ``span`` of nodes, the ``(len(span) · N, C, H, W)`` batch (node-major) and its row →
    image index. Shared by the fixed-rule path methods (Integrated Gradients, the layer and
    neuron attributions of :mod:`cnnviz.methods.layer_attribution`)."""
    n = diff.shape[0]
    for span in batches(list(chunks(len(alphas), n, batch_size)), title):
        a = alphas[span.start : span.stop].view(-1, *[1] * diff.dim())
        path = (x0.unsqueeze(0) + a * diff.unsqueeze(0)).flatten(0, 1)
        yield span, path, repeated_rows(n, len(span), diff.device)


@register
class IntegratedGradients(Method):
    """Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep
    Networks", ICML 2017).

    a = (x − x′) ⊙ Σ_k w_k ∂S_c/∂x |_(x′ + α_k (x − x′)),   map = Σ_c a_c (signed, display
    SIGNED), with ``steps`` (64) nodes α_k and weights w_k of ``quadrature``:

    * "adaptive" (default): the trapezoid rule on a grid refined, image by image, where the
      integrand changes (:mod:`cnnviz.methods.path_quadrature`). On a ReLU network the path
      crosses many kinks and the error of a fixed rule falls only like 1/steps; at 64 steps on
      200 held-out images the trained ``shapes_vgg11``'s gap averages 0.45 % of
      |S_c(x) − S_c(x′)| (Gauss-Legendre 1.5 %), and on the two bundled photos
      ``efficientnet_lite0``'s is 0.8 % and 0.2 % where Gauss-Legendre misses 16.6 % and 3.7 %,
      at the same number of gradient evaluations; the attributions are closer to the exact
      integral too (docs/ig-completeness.md).
    * "gausslegendre" (captum's default; attributions equal captum's), "riemann_left",
      "riemann_right", "riemann_middle", "riemann_trapezoid" (captum calls the option
      ``method``).

    With ``tolerance`` (adaptive only) ``steps`` is a cap: each image stops refining once the sum
    of its intervals' |completeness errors|, a bound on its gap, is within ``tolerance`` of
    |S_c(x) − S_c(x′)| for every target (``steps=256, tolerance=0.01`` brings every held-out
    shapes image with |Δf| ≥ 1 below 1 %, at 220 evaluations on average).

    Completeness says Σ a = S_c(x) − S_c(x′); ``extras["delta_f"]`` holds S_c(x) − S_c(x′),
    ``extras["completeness_gap"]`` Σ a − (S_c(x) − S_c(x′)) and ``extras["steps"]`` the
    gradient evaluations each image used, all ``(N, T)``. Where the gap
    exceeds :data:`COMPLETENESS_WARNING` (5 %) of |S_c(x) − S_c(x′)| a warning names the images
    and suggests more steps (``warn_incomplete=False`` leaves that to the caller, as the HTML
    report does, which prints the gap under the picture).

    ``baseline`` x′ is in the model-input space: "black" (default; zeros unless
    ``preprocessing`` gives the mean/std that map a black image), "mean" (zeros), "blurred"
    (``blur_sigma``), "uniform" (``seed``), a number, or a tensor broadcastable to x (the
    baselines of :mod:`cnnviz.methods.baselines`, shared with DeepLift and the perturbation
    methods); :func:`cnnviz.explain` passes
    a LoadedModel's ``preprocessing``. Steps stream through the model ``batch_size`` (16) rows
    at a time (at least one step of every image). Example::

        >>> e = explain(loaded, x, "integrated-gradients", target=3, steps=32)
        >>> e.extras["completeness_gap"] / e.extras["delta_f"]  # small
    """

    name = "integrated-gradients"
    title = "Integrated Gradients"
    paper = "Sundararajan et al., ICML 2017"
    summary = "Gradients integrated along the straight path from a baseline image (signed)."
    display = Display.SIGNED
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        steps: int = 64,
        quadrature: str | Quadrature = Quadrature.ADAPTIVE,
        baseline: BaselineSpec = Baseline.BLACK,
        preprocessing: Preprocessing | None = None,
        blur_sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
        reduction: str | ChannelReduction = ChannelReduction.SUM,
        warn_incomplete: bool = True,
        tolerance: float | None = None,
    ) -> None:
        self.steps = positive_int(steps, "steps")
        self.warn_incomplete = bool(warn_incomplete)
        try:
            self.quadrature = Quadrature(quadrature)
        except ValueError:
            choices = ", ".join(q.value for q in Quadrature)
            raise ValueError(f"quadrature must be one of {choices}; got {quadrature!r}") from None
        if self.quadrature is Quadrature.ADAPTIVE:  # validate now, not after a forward pass
            if self.steps < 2:
                raise ValueError(f"The adaptive rule needs steps >= 2, got {self.steps}")
        else:
            nodes_and_weights(self.quadrature, self.steps)
        if tolerance is not None:
            if self.quadrature is not Quadrature.ADAPTIVE:
                raise ValueError("tolerance needs quadrature='adaptive' (fixed rules cannot stop)")
            if isinstance(tolerance, bool) or not (
                isinstance(tolerance, (int, float)) and 0 < tolerance < 1
            ):
                raise ValueError(f"tolerance must be a fraction in (0, 1), got {tolerance!r}")
        self.tolerance = None if tolerance is None else float(tolerance)
        self.baseline = parse_baseline(baseline)
        self.context = BaselineContext(preprocessing, blur_sigma, int(seed))
        self.preprocessing = preprocessing
        self.blur_sigma = blur_sigma
        self.seed = int(seed)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.reduction = parse_reduction(reduction)
        self.display = display_for(self.reduction)

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline x′ for ``x``, same shape, dtype and device."""
        return baseline_tensor(self.baseline, x, self.context)

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
        x0 = self.baseline_for(x)
        check_finite(x0, "The Integrated Gradients baseline")
        diff = x - x0
        if self.quadrature is Quadrature.ADAPTIVE:
            attributions, steps_used = self.adaptive_attributions(model, x0, diff, clean.targets)
        else:
            attributions = self.fixed_attributions(model, x0, diff, clean.targets)
            steps_used = torch.full((x.shape[0],), self.steps, device=x.device)
        delta_f = clean.scores - forward_scores(model, x0, clean.targets)
        gap = attributions.sum(dim=(2, 3, 4)) - delta_f
        if self.warn_incomplete:
            warn_if_incomplete(gap, delta_f, self.steps)
        return input_space_result(
            self.name,
            x,
            clean,
            attributions,
            self.reduction,
            completeness_gap=gap,
            delta_f=delta_f,
            steps=steps_used.unsqueeze(1).expand_as(gap),
        )

    def fixed_attributions(
        self, model: nn.Module, x0: torch.Tensor, diff: torch.Tensor, targets: Targets
    ) -> torch.Tensor:
        """``(N, T, C, H, W)`` (x − x′) ⊙ Σ_k w_k ∂S_t/∂x at the rule's nodes, streamed
        ``batch_size`` rows at a time."""
        alphas, weights = (t.to(diff) for t in nodes_and_weights(self.quadrature, self.steps))
        n = diff.shape[0]
        total = diff.new_zeros((n, targets.per_image, *diff.shape[1:]))
        for span, path, rows in path_batches(x0, diff, alphas, self.batch_size, self.title):
            grads, _ = input_gradients(model, path, targets, rows)
            w = weights[span.start : span.stop].view(-1, 1, 1, 1, 1, 1)
            total += (grads.view(len(span), n, *grads.shape[1:]) * w).sum(dim=0)
        return total * diff.unsqueeze(1)

    def adaptive_attributions(
        self, model: nn.Module, x0: torch.Tensor, diff: torch.Tensor, targets: Targets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, T, C, H, W)`` adaptive trapezoid integrals of (x − x′) ⊙ ∂S_t/∂x
        (:func:`adaptive_trapezoid`) and the steps each image used ``(N,)``; images taken in
        groups whose kept densities fit :data:`ADAPTIVE_MEMORY_BYTES`, rows streamed
        ``batch_size`` at a time (at least as many as the group has images, as the fixed rules
        take one step of every image)."""

        per_image = self.steps * targets.per_image * diff[0].numel() * diff.element_size()
        group = min(diff.shape[0], max(1, ADAPTIVE_MEMORY_BYTES // per_image))
        if per_image > ADAPTIVE_MEMORY_BYTES:
            logger.warning(
                "Integrated Gradients: the adaptive rule keeps %.0f MiB per image (%d steps × %d "
                "targets); quadrature='gausslegendre' streams in constant memory.",
                per_image / 2**20,
                self.steps,
                targets.per_image,
            )
        rows_per_pass = max(self.batch_size, group)
        n = diff.shape[0]

        def evaluate(
            images: torch.Tensor, alphas: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            bar.update(len(images))
            images = images.to(diff.device)
            a = alphas.to(diff).view(-1, 1, 1, 1)
            densities, scores = [], []
            for span in chunks(len(images), 1, rows_per_pass):
                rows = images[span.start : span.stop]
                path = x0[rows] + a[span.start : span.stop] * diff[rows]
                grads, s = input_gradients(model, path, targets, rows)
                densities.append(grads * diff[rows].unsqueeze(1))
                scores.append(s)
            return torch.cat(densities), torch.cat(scores)

        images = torch.arange(n)
        # At most `steps` points per image (fewer when the rule stops early), nested, once slow.
        most = n * self.steps
        with progress(
            most,
            self.title,
            "step",
            leave=False,
            delay=INNER_DELAY_SECONDS,
            show=most > rows_per_pass,
        ) as bar:
            parts = [
                adaptive_trapezoid(
                    evaluate, images[start : start + group], self.steps, self.tolerance
                )
                for start in range(0, n, group)
            ]
        attributions = torch.cat([integral for integral, _ in parts])
        used = torch.cat([count for _, count in parts]).to(diff.device)
        return attributions, used


def relative_gap(gap: torch.Tensor, delta_f: torch.Tensor) -> torch.Tensor:
    """|gap| / |Δf| elementwise; a score change of zero counts as complete (0)."""
    relative = gap.abs() / delta_f.abs().clamp_min(torch.finfo(delta_f.dtype).tiny)
    return torch.where(delta_f == 0, torch.zeros_like(relative), relative)


def warn_if_incomplete(gap: torch.Tensor, delta_f: torch.Tensor, steps: int) -> list[int]:
    """Log a warning naming the images whose relative completeness gap (:func:`relative_gap`)
    exceeds :data:`COMPLETENESS_WARNING`; returns them."""
    worst = relative_gap(gap, delta_f).amax(dim=1)
    images = [int(i) for i in (worst > COMPLETENESS_WARNING).nonzero().flatten()]
    if images:
        shown = ", ".join(str(i) for i in images[:8]) + (" …" if len(images) > 8 else "")
        logger.warning(
            "Integrated Gradients: the attributions of image(s) %s miss the score change by up "
            "to %.1f %% (completeness; the paper asks for < %.0f %%); increase steps (now %d; "
            "try %d).",
            shown,
            100 * float(worst.max()),
            100 * COMPLETENESS_WARNING,
            steps,
            4 * steps,
        )
    return images
