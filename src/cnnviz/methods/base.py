"""The method core: the result type, the base class and its registration, and the shared
forward/gradient passes.

A method is a short class registered under a stable name. It supplies its own arithmetic and
nothing else: hooks (:class:`cnnviz.capture.hooks.LayerCapture`), targets
(:mod:`cnnviz.capture.targets`), validation and batching live here.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cnnviz.capture.forward import autograd_enabled
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import Targets, TargetSpec, logits_of, resolve_and_score
from cnnviz.errors import LayerError, NonFiniteError
from cnnviz.methods.postprocess import Display, parse_sign, to_unit_range, upsample


@dataclass(frozen=True)
class Explanation:
    """The immutable result of one method on one batch.

    Attributes:
        method: registry name of the method.
        maps: raw, signed, un-normalised maps ``(N, T, h, w)`` on the model's device, detached;
            ``h, w`` is the layer's resolution for CAMs and the input's for input-space methods.
        layer: dotted name of the explained layer (``None`` for input-space methods).
        targets: what was explained, ``T`` targets per image.
        scores: ``(N, T)`` target scalars on the unperturbed input (pre-softmax logits for classes).
        probabilities: ``(N, T)`` softmax probabilities for class targets, else ``None``.
        input_size: ``(H, W)`` of the model input.
        display: how the raw map is drawn by default (:class:`cnnviz.methods.postprocess.Display`).
        attributions: ``(N, T, C, H, W)`` per-channel input attributions for input-space methods.
        extras: method-specific tensors (e.g. Integrated Gradients' completeness gap).
        outlier_percent: the share (%) of each map's brightest pixels that saturate its picture
            (:func:`~cnnviz.methods.postprocess.percentile_normalize`); set from the method's
            :attr:`Method.outlier_percent` by :func:`cnnviz.explain`.
        pictures: ``(N, H, W, 3)`` uint8, the images as the model saw them (resized, cropped,
            un-normalised), for drawing; set by :func:`cnnviz.explain`, ``None`` when unknown.
    """

    method: str
    maps: torch.Tensor
    layer: str | None
    targets: Targets
    scores: torch.Tensor
    probabilities: torch.Tensor | None
    input_size: tuple[int, int]
    display: Display
    attributions: torch.Tensor | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    outlier_percent: float | None = None
    pictures: torch.Tensor | None = field(default=None, repr=False)

    def upsampled(self) -> torch.Tensor:
        """Raw maps bilinearly resized to the input resolution, ``(N, T, H, W)``."""
        return upsample(self.maps, self.input_size)

    def shown(
        self,
        *,
        sign: Display | str | None = None,
        outlier_percent: float | Literal["auto"] | None = "auto",
        size: tuple[int, int] | Literal["input"] | None = "input",
    ) -> torch.Tensor:
        """The maps as pictures show them: ``(N, T, H, W)`` float32 in [0, 1] on the CPU.

        Args:
            sign: which evidence to show: ``"positive"``, ``"negative"``, ``"absolute"`` or
                ``"all"`` (a :class:`Display`); default: the method's own (:attr:`display`).
            outlier_percent: share (%) of the brightest pixels that saturate; ``"auto"``: the
                method's default (:attr:`outlier_percent`: 2 for gradient maps, none for CAMs).
            size: ``"input"`` (default) upsamples to :attr:`input_size`; ``None`` keeps the
                maps' own resolution.

        Signed maps (``sign="all"``) come as ``(s + 1) / 2``: 0.5 is no evidence.
        """
        display = self.display if sign is None else parse_sign(sign)
        percent = self.outlier_percent if outlier_percent == "auto" else outlier_percent
        return to_unit_range(
            self.maps,
            display,
            self.input_size if size == "input" else size,
            outlier_percent=percent,
        )


class Method(abc.ABC):
    """Base of every explanation method; subclasses implement :meth:`explain` (or a family hook).

    Class attributes say what the method is: ``name`` (registry key), ``title``, ``paper``,
    ``summary`` (one line for ``cnnviz methods``), ``needs_layer`` and ``display``.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    needs_layer: ClassVar[bool] = False
    display: Display = Display.POSITIVE  # an instance may change it (e.g. signed saliency)
    outlier_percent: ClassVar[float | None] = None
    """Share (%) of a map's brightest pixels its picture saturates by default (gradient maps:
    :data:`~cnnviz.methods.postprocess.GRADIENT_OUTLIER_PERCENT`)."""

    @abc.abstractmethod
    def explain(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        layer: str | None,
        target: TargetSpec,
        class_names: Sequence[str] | None,
    ) -> Explanation:
        """Explain ``model`` on the prepared batch ``x`` (on the model's device and dtype)."""


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"Method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_methods() -> Mapping[str, type[Method]]:
    """The methods registered so far, by name, in registration order (read-only); the lookup
    that loads every built-in method first is :mod:`cnnviz.methods.registry`."""
    return MappingProxyType(_REGISTRY)


# -- shared passes --------------------------------------------------------------------------


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` holds NaN or ±Inf."""
    # One reduction first: a NaN or ±Inf anywhere makes the sum non-finite. Only when the sum is
    # not finite (which a sum of huge finite values can also be) look element by element.
    if tensor.is_floating_point() and bool(torch.isfinite(tensor.sum())):
        return
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(
            f"{what} contains NaN or infinite values; check the input image and the weights "
            "(a model with NaN weights cannot be explained)."
        )


def probabilities_of(output: Any, targets: Targets) -> torch.Tensor | None:
    """Softmax probabilities of class targets, ``(N, T)``; ``None`` for callable targets."""
    if targets.indices is None:
        return None
    logits = logits_of(output).detach()
    return logits.softmax(dim=1).gather(1, targets.indices.to(logits.device))


def explained_scores(
    output: Any, target: TargetSpec, class_names: Sequence[str] | None, images: int
) -> tuple[Targets, torch.Tensor, torch.Tensor | None]:
    """What a forward pass explains: the targets resolved on ``output`` (a batch of ``images``),
    their ``(N, T)`` scores (still on the graph) and their probabilities (class targets only).

    A callable target is called once. The scores and probabilities, not the whole output, must
    be finite (:class:`NonFiniteError`): an output that holds no logits tensor can still be
    explained through a callable target.
    """
    targets, scores = resolve_and_score(target, output, class_names, images=images)
    check_finite(scores.detach(), "The explained target score")
    probabilities = probabilities_of(output, targets)
    if probabilities is not None:
        check_finite(probabilities, "The softmax of the model output")
    return targets, scores, probabilities


@dataclass(frozen=True)
class GradientPass:
    """Result of one forward and ``T`` backward passes: the tensor differentiated against,
    its gradient for each target, and what was explained."""

    value: torch.Tensor  # the captured activation (N, C, h, w) or the input (N, C, H, W)
    grads: tuple[torch.Tensor, ...]  # one (N, C, h, w) gradient per target t
    targets: Targets
    scores: torch.Tensor  # (N, T), detached
    probabilities: torch.Tensor | None


def gradient_pass(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str | None,
    target: TargetSpec,
    class_names: Sequence[str] | None,
) -> GradientPass:
    """Forward once and take ∂score_t/∂(layer output or input) for every target ``t``.

    With a layer, the part of the network before it runs without autograd (see
    :class:`~cnnviz.capture.hooks.GradFrom`); gradients come from ``torch.autograd.grad``, so
    parameters' ``.grad`` are never touched. Images are independent in eval mode, so the
    gradient of the batch sum of scores gives every image's own gradient. A callable target is
    called once, on this forward's output.
    """
    grad = GradFrom.LAYERS if layer is not None else GradFrom.INPUT
    layers = [layer] if layer is not None else []
    with autograd_enabled(), LayerCapture(model, layers, grad=grad) as capture:
        output = capture.forward(x)
        targets, scores, probabilities = explained_scores(output, target, class_names, len(x))
        value = capture.activations[layer] if layer is not None else capture.input
        assert value is not None  # set by LayerCapture.forward
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
    return GradientPass(
        value=value.detach(),
        grads=tuple(grads),
        targets=targets,
        scores=scores.detach(),
        probabilities=probabilities,
    )
