"""Path attributions at a layer: Conductance and Internal Influence (maps at the layer's
resolution), and Neuron Integrated Gradients (Integrated Gradients of one unit of a layer).

All three walk the straight path x′ + α (x − x′) on the nodes of a fixed rule
(:func:`cnnviz.methods.integrated.nodes_and_weights`), streamed through the model
``batch_size`` rows per pass by :func:`cnnviz.methods.integrated.path_batches`, as
Integrated Gradients' fixed rules do. The layer maps are the per-location sum over the layer's
channels; the per-channel values are kept in ``extras`` (``"conductance"``, ``"influence"``:
``(N, T, C, h, w)``), as ``Explanation.attributions`` holds input attributions only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cnnviz.capture.forward import autograd_enabled
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import Targets, TargetSpec
from cnnviz.errors import LayerError, TargetError, positive_int
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
    CleanPass,
    clean_pass,
    forward_scores,
    input_space_result,
)
from cnnviz.methods.integrated import Quadrature, nodes_and_weights, path_batches
from cnnviz.methods.postprocess import GRADIENT_OUTLIER_PERCENT, Display

logger = logging.getLogger(__name__)


def fixed_quadrature(value: str | Quadrature, steps: int) -> Quadrature:
    """``value`` as a fixed rule (every :class:`Quadrature` but "adaptive"), checked for
    ``steps``."""
    fixed = [q.value for q in Quadrature if q is not Quadrature.ADAPTIVE]
    try:
        rule = Quadrature(value)
    except ValueError:
        raise ValueError(f"quadrature must be one of {', '.join(fixed)}; got {value!r}") from None
    if rule is Quadrature.ADAPTIVE:
        raise ValueError(
            f"quadrature 'adaptive' is for Integrated Gradients only here; give one of "
            f"{', '.join(fixed)}"
        )
    nodes_and_weights(rule, steps)
    return rule


def layer_gradients(
    model: nn.Module, batch: torch.Tensor, layer: str, targets: Targets, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activation ``(M, C, h, w)`` on ``batch`` and ∂score_t/∂activation for every
    target ``(M, T, C, h, w)``; the part before the layer runs without autograd."""
    with autograd_enabled(), LayerCapture(model, [layer], grad=GradFrom.LAYERS) as capture:
        output = capture.forward(batch)
        scores = targets.scores(output, rows=rows)
        check_finite(scores.detach(), "The model output on the path")
        value = capture.activations[layer]
        if not scores.requires_grad:
            raise LayerError(
                f"The target scores do not depend on layer {layer!r}; choose a layer that lies "
                "on the path from the input to the output."
            )
        count = scores.shape[1]
        grads = []
        for t in range(count):
            (g,) = torch.autograd.grad(
                scores[:, t].sum(), value, retain_graph=t < count - 1, allow_unused=True
            )
            grads.append(torch.zeros_like(value) if g is None else g)
    return value.detach(), torch.stack(grads, dim=1)


class LayerPath(Method):
    """Base of the path methods here: ``steps`` nodes of a fixed ``quadrature`` between the
    ``baseline`` x′ and x, ``batch_size`` rows per forward pass."""

    needs_layer = True
    display = Display.SIGNED

    def __init__(
        self,
        *,
        steps: int = 50,
        quadrature: str | Quadrature = Quadrature.GAUSS_LEGENDRE,
        baseline: BaselineSpec = Baseline.BLACK,
        preprocessing: Preprocessing | None = None,
        blur_sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        self.steps = positive_int(steps, "steps")
        self.quadrature = fixed_quadrature(quadrature, self.steps)
        self.baseline = parse_baseline(baseline)
        self.context = BaselineContext(preprocessing, blur_sigma, int(seed))
        self.batch_size = positive_int(batch_size, "batch_size")

    def baseline_for(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline x′ for ``x`` (checked finite)."""
        x0 = baseline_tensor(self.baseline, x, self.context)
        check_finite(x0, f"The {self.title} baseline")
        return x0

    def layer_result(
        self,
        x: torch.Tensor,
        layer: str,
        clean: CleanPass,
        values: torch.Tensor,
        **extras: torch.Tensor,
    ) -> Explanation:
        """The :class:`Explanation` of per-channel layer values ``(N, T, C, h, w)``: the map is
        their sum over channels."""
        check_finite(values, f"The {self.title} attribution")
        return Explanation(
            method=self.name,
            maps=values.sum(dim=2),
            layer=layer,
            targets=clean.targets,
            scores=clean.scores,
            probabilities=clean.probabilities,
            input_size=(x.shape[-2], x.shape[-1]),
            display=self.display,
            extras=extras,
        )


@register
class LayerConductance(LayerPath):
    """Conductance (Dhamdhere, Sundararajan & Yan, "How Important is a Neuron?", ICLR 2019;
    captum's ``LayerConductance``): the flow of Integrated Gradients through each unit y of a
    layer,

        Cond_y = ∫₀¹ ∂S_c/∂y · dy/dα dα ≈ Σ_k ∂S_c/∂y(γ(α_k)) · (y(γ(α_{k+1})) − y(γ(α_k))),

    γ(α) = x′ + α (x − x′), on the ``steps + 1`` nodes α_0 < … < α_steps of ``quadrature``
    (default "gausslegendre", 50 steps: captum's defaults and its Riemann–Stieltjes sum; the
    rule's weights are not used). map_ij = Σ_channels Cond (layer resolution, signed);
    ``extras["conductance"]`` holds the per-channel conductance ``(N, T, C, h, w)``.

    Completeness: Σ_y Cond_y ≈ S_c(γ(α_steps)) − S_c(γ(α_0)), which is S_c(x) − S_c(x′) for a
    rule whose nodes reach both ends ("riemann_trapezoid"), and misses the two end pieces of the
    path for "gausslegendre" (nodes inside (0, 1)); the left sum's own error falls like 1/steps
    (for S = ½‖y‖², y linear in x and x′ = 0, the trapezoid nodes miss exactly 1/steps of
    ΔS, tested; on a ReLU network the first term takes the gradient at x′, where the units
    may be off). ``extras["delta_f"]`` holds
    S_c(x) − S_c(x′) and ``extras["completeness_gap"]`` Σ Cond − (S_c(x) − S_c(x′)), ``(N, T)``.
    ``baseline`` as for Integrated Gradients (default "black"); ``batch_size`` (16) path points
    per pass. Equal to ``LayerConductance(model, layer).attribute(x, baselines=x′, target=c,
    n_steps=steps, method=quadrature)`` (tested). Example::

        >>> e = explain(model, x, "layer-conductance", layer="features.10", target=3)
        >>> e.extras["conductance"].shape  # (N, 1, C, h, w)
    """

    name = "layer-conductance"
    title = "Layer Conductance"
    paper = "Dhamdhere et al., ICLR 2019"
    summary = "Integrated Gradients flowing through each unit of a layer, summed over channels."

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        if layer is None:
            raise LayerError(f"{self.title} needs a layer")
        clean = clean_pass(model, x, target, class_names)
        x0 = self.baseline_for(x)
        diff = x - x0
        alphas = nodes_and_weights(self.quadrature, self.steps + 1)[0].to(diff)
        n = x.shape[0]
        total: torch.Tensor | None = None
        last: tuple[torch.Tensor, torch.Tensor] | None = None  # the previous node's A, ∂S/∂A
        for span, path, rows in path_batches(x0, diff, alphas, self.batch_size, self.title):
            acts, grads = layer_gradients(model, path, layer, clean.targets, rows)
            acts = acts.view(len(span), n, *acts.shape[1:])
            grads = grads.view(len(span), n, *grads.shape[1:])
            if last is not None:
                acts = torch.cat([last[0].unsqueeze(0), acts])
                grads = torch.cat([last[1].unsqueeze(0), grads])
            part = (grads[:-1] * acts.diff(dim=0).unsqueeze(2)).sum(dim=0)
            total = part if total is None else total + part
            last = acts[-1], grads[-1]
        assert total is not None  # steps + 1 >= 2 nodes
        delta_f = clean.scores - forward_scores(model, x0, clean.targets)
        gap = total.sum(dim=(2, 3, 4)) - delta_f
        return self.layer_result(
            x, layer, clean, total, conductance=total, delta_f=delta_f, completeness_gap=gap
        )


@register
class InternalInfluence(LayerPath):
    """Internal Influence (Leino, Sen, Datta, Fredrikson & Li, "Influence-Directed Explanations
    for Deep Convolutional Networks", ITC 2018; captum's ``InternalInfluence``): the gradient of
    the score with respect to a layer, averaged along the path from the baseline,

        I_y = ∫₀¹ ∂S_c/∂y (x′ + α (x − x′)) dα ≈ Σ_k w_k ∂S_c/∂y(γ(α_k)),

    on the ``steps`` nodes and weights of ``quadrature`` (default "gausslegendre", 50 steps,
    as captum). map_ij = Σ_channels I (layer resolution, signed); ``extras["influence"]`` holds
    the per-channel influence ``(N, T, C, h, w)``. Options as ``layer-conductance``. Equal to
    ``InternalInfluence(model, layer).attribute(x, baselines=x′, target=c, n_steps=steps,
    method=quadrature)`` (tested); for "riemann_trapezoid" captum's weights sum to
    (steps − 1)/steps instead of 1 (see :func:`~cnnviz.methods.integrated.nodes_and_weights`).
    Example::

        >>> e = explain(model, x, "internal-influence", layer="features.10", target=3)
    """

    name = "internal-influence"
    title = "Internal Influence"
    paper = "Leino et al., ITC 2018"
    summary = "Layer gradients averaged along the path from a baseline, summed over channels."

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        if layer is None:
            raise LayerError(f"{self.title} needs a layer")
        clean = clean_pass(model, x, target, class_names)
        x0 = self.baseline_for(x)
        alphas, weights = (t.to(x) for t in nodes_and_weights(self.quadrature, self.steps))
        n = x.shape[0]
        total: torch.Tensor | None = None
        for span, path, rows in path_batches(x0, x - x0, alphas, self.batch_size, self.title):
            _, grads = layer_gradients(model, path, layer, clean.targets, rows)
            grads = grads.view(len(span), n, *grads.shape[1:])
            w = weights[span.start : span.stop].view(-1, *[1] * (grads.dim() - 1))
            part = (grads * w).sum(dim=0)
            total = part if total is None else total + part
        assert total is not None
        return self.layer_result(x, layer, clean, total, influence=total)


# -- Neuron Integrated Gradients ----------------------------------------------------------------

Neuron = int | tuple[int, int, int]
"""A unit of a layer: a channel (its spatial mean is explained) or (channel, row, column)."""


def parse_neuron(value: object) -> Neuron | None:
    """``value`` checked: ``None``, a channel index or a (channel, row, column) triple, >= 0."""
    if value is None:
        return None
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if len(parts) not in (1, 3) or any(
        isinstance(p, bool) or not isinstance(p, int) for p in parts
    ):
        raise TypeError(
            f"neuron must be a channel index or a (channel, row, column) triple of ints, got "
            f"{value!r}"
        )
    if any(p < 0 for p in parts):
        raise ValueError(f"neuron indices must be >= 0, got {value!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1], parts[2])


def unit_values(
    acts: torch.Tensor, channels: torch.Tensor, where: tuple[int, int] | None
) -> torch.Tensor:
    """``(M,)`` the explained unit of each row: channel ``channels[m]`` of ``acts[m]`` at
    ``where`` (row, column), or its spatial mean without ``where``."""
    picked = acts[torch.arange(len(acts), device=acts.device), channels.to(acts.device)]
    if where is None:
        return picked.flatten(1).mean(dim=1)
    return picked[:, where[0], where[1]]


def neuron_label(channel: int, where: tuple[int, int] | None, layer: str) -> str:
    """How a target names the unit: "unit 12 of features.10", "unit (12, 3, 4) of …"."""
    unit = str(channel) if where is None else f"({channel}, {where[0]}, {where[1]})"
    return f"unit {unit} of {layer}"


def neuron_scores_refused(output: object) -> torch.Tensor:
    """A neuron target is read at its layer, not from the model output."""
    raise TargetError(
        "a neuron target is a unit of a layer, not a function of the model output; it cannot "
        "score the output"
    )


@register
class NeuronIntegratedGradients(LayerPath):
    """Neuron Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017, applied to a hidden
    unit as in Dhamdhere et al., ICLR 2019; captum's ``NeuronIntegratedGradients``):
    Integrated Gradients of one unit u of the layer instead of a class score,

        a = (x − x′) ⊙ Σ_k w_k ∂u/∂x |_(x′ + α_k (x − x′)),   map = Σ_c a_c (signed),

    on ``steps`` (50) nodes of ``quadrature`` ("gausslegendre"), captum's defaults. The layer
    is the method's layer; ``neuron`` is a channel index c — u is the channel's spatial mean
    (1/hw) Σ_ij A_cij, the channel objective of feature visualisation — or a triple
    (c, i, j) — u = A_cij. By default (``neuron=None``) each image explains its own most
    active channel (largest spatial mean on x). The ``target`` is ignored: there is one target
    per image (T = 1), labelled "unit 12 of features.10" (``Explanation.targets.labels``),
    ``scores`` is u(x), and ``extras`` hold ``"channel"`` (N, 1), ``"delta_f"`` u(x) − u(x′)
    and ``"completeness_gap"`` Σ a − (u(x) − u(x′)). Only the network up to the layer runs.

    Equal to captum's ``NeuronIntegratedGradients(model, layer).attribute(x, (c, i, j),
    baselines=x′, n_steps=steps, method=quadrature)``, and for a channel to a callable
    ``neuron_selector`` returning the channel's spatial mean (captum needs one scalar per
    image; tested). Example::

        >>> e = explain(model, x, "neuron-integrated-gradients", layer="features.10", neuron=12)
        >>> e.targets.labels[0]  # ('unit 12 of features.10',)
    """

    name = "neuron-integrated-gradients"
    title = "Neuron Integrated Gradients"
    paper = "Sundararajan et al., ICML 2017; Dhamdhere et al., ICLR 2019"
    summary = "Integrated Gradients of one unit (channel or position) of a layer (signed)."
    outlier_percent = GRADIENT_OUTLIER_PERCENT

    def __init__(
        self,
        *,
        neuron: int | tuple[int, int, int] | None = None,
        steps: int = 50,
        quadrature: str | Quadrature = Quadrature.GAUSS_LEGENDRE,
        baseline: BaselineSpec = Baseline.BLACK,
        preprocessing: Preprocessing | None = None,
        blur_sigma: float | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        super().__init__(
            steps=steps,
            quadrature=quadrature,
            baseline=baseline,
            preprocessing=preprocessing,
            blur_sigma=blur_sigma,
            seed=seed,
            batch_size=batch_size,
        )
        self.neuron = parse_neuron(neuron)

    def units(self, acts: torch.Tensor, layer: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """Each image's channel ``(N,)`` and the position (``None``: the spatial mean), checked
        against the layer's activation ``acts`` ``(N, C, h, w)``."""
        if acts.dim() != 4:
            raise LayerError(
                f"{self.title} needs a layer with (N, C, h, w) output; {layer!r} gives shape "
                f"{tuple(acts.shape)}"
            )
        if self.neuron is None:
            return acts.flatten(2).mean(dim=2).argmax(dim=1), None
        channel, where = (
            (self.neuron, None)
            if isinstance(self.neuron, int)
            else (
                self.neuron[0],
                (self.neuron[1], self.neuron[2]),
            )
        )
        shape = tuple(acts.shape[1:])
        index = (channel,) if where is None else (channel, *where)
        if any(i >= size for i, size in zip(index, shape, strict=False)):
            raise ValueError(
                f"neuron {self.neuron!r} is outside layer {layer!r}, whose output is (C, h, w) = "
                f"{shape}"
            )
        return torch.full((acts.shape[0],), channel, device=acts.device), where

    def unit_pass(
        self,
        model: nn.Module,
        batch: torch.Tensor,
        layer: str,
        pick: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``(M,)`` the unit of every row, without autograd (the network after the layer does
        not run)."""
        with LayerCapture(model, [layer], grad=GradFrom.NONE, stop_after_layers=True) as capture:
            capture.forward(batch)
        return pick(capture.activations[layer])

    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        if layer is None:
            raise LayerError(f"{self.title} needs a layer")
        if target is not None:
            logger.info("%s explains a unit of %s; target %r ignored", self.title, layer, target)
        with LayerCapture(model, [layer], grad=GradFrom.NONE, stop_after_layers=True) as capture:
            capture.forward(x)
        acts = capture.activations[layer]
        channels, where = self.units(acts, layer)
        x0 = self.baseline_for(x)
        diff = x - x0
        alphas, weights = (t.to(diff) for t in nodes_and_weights(self.quadrature, self.steps))
        total = torch.zeros_like(diff)
        for span, path, rows in path_batches(x0, diff, alphas, self.batch_size, self.title):
            with (
                autograd_enabled(),
                LayerCapture(
                    model, [layer], grad=GradFrom.INPUT, stop_after_layers=True
                ) as capture,
            ):
                capture.forward(path)
                units = unit_values(capture.activations[layer], channels[rows], where)
                leaf = capture.input
                assert leaf is not None  # set by LayerCapture.forward
                (g,) = torch.autograd.grad(units.sum(), leaf, allow_unused=True)
            if g is None:
                g = torch.zeros_like(path)
            w = weights[span.start : span.stop].view(-1, 1, 1, 1, 1)
            total += (g.view(len(span), *diff.shape) * w).sum(dim=0)
        attributions = (total * diff).unsqueeze(1)
        scores = unit_values(acts, channels, where).unsqueeze(1)
        check_finite(scores, f"The unit of layer {layer!r}")
        delta_f = scores - self.unit_pass(
            model, x0, layer, lambda a: unit_values(a, channels, where)
        ).unsqueeze(1)
        labels = tuple((neuron_label(int(c), where, layer),) for c in channels)
        clean = CleanPass(Targets(None, labels, neuron_scores_refused), scores, None)
        return input_space_result(
            self.name,
            x,
            clean,
            attributions,
            ChannelReduction.SUM,
            channel=channels.unsqueeze(1),
            delta_f=delta_f,
            completeness_gap=attributions.sum(dim=(2, 3, 4)) - delta_f,
        )
