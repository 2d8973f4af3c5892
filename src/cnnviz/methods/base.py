"""The method core: the result type, the base class and its registration, and the shared
forward/gradient passes.

A method is a short class registered under a stable name. It supplies its own arithmetic and
nothing else: hooks (:class:`cnnviz.capture.hooks.LayerCapture`), targets
(:mod:`cnnviz.capture.targets`), validation and batching live here.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from cnnviz.capture.forward import autograd_enabled
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import Targets, TargetSpec, logits_of, resolve_and_score
from cnnviz.errors import LayerError, NonFiniteError
from cnnviz.methods.postprocess import Display, parse_sign, to_unit_range, upsample

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL.Image import Image as PILImage

    from cnnviz.render.explanation import Drawing


@dataclass(frozen=True, repr=False)
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

    # -- showing the result (drawing is the render stage's: imported on use, see below) -------

    def drawing(
        self, *, sign: Display | str | None = None, outlier_percent: float | str | None = "auto"
    ) -> Drawing:
        """What :meth:`plot` draws: the shown maps, pictures, labels and probabilities."""
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.explanation import Drawing

        display = self.display if sign is None else parse_sign(sign)
        percent = self.outlier_percent if outlier_percent == "auto" else outlier_percent
        if isinstance(percent, str):
            raise ValueError(f"outlier_percent must be a number, None or 'auto', got {percent!r}")
        title = getattr(_REGISTRY.get(self.method), "title", self.method)
        return Drawing(
            shown=self.shown(sign=display, outlier_percent=percent).numpy(),
            pictures=None if self.pictures is None else self.pictures.cpu().numpy(),
            labels=self.targets.labels,
            probabilities=(
                None if self.probabilities is None else self.probabilities.float().cpu().numpy()
            ),
            method_title=str(title),
            layer=self.layer,
            display=display,
            outlier_percent=percent,
        )

    def plot(
        self,
        ax: Axes | None = None,
        *,
        image: int = 0,
        target: int = 0,
        style: str = "overlay",
        cmap: str = "jet",
        alpha: float = 0.5,
        sign: Display | str | None = None,
        outlier_percent: float | str | None = "auto",
        colorbar: bool = True,
    ) -> Figure:
        """The result as a figure: one panel per image (rows) and target (columns), each titled
        with its class and probability, under the method and layer, with a colour bar that says
        what the colours mean (:func:`cnnviz.render.explanation.explanation_figure`).

        With ``ax``, only panel (``image``, ``target``) is drawn, into ``ax``, and ``ax``'s
        figure returned. ``style``: ``overlay``, ``heatmap``, ``masked`` or ``alpha``; ``sign``:
        ``positive``, ``negative``, ``absolute`` or ``all``; ``outlier_percent``: the share of
        the brightest pixels that saturate (default: the method's, 2 % for gradient maps).

        Example::

            >>> e = cnnviz.explain(model, "coffee.jpg", "gradcam")
            >>> e.plot().savefig("gradcam.png")
        """
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.explanation import draw_panel, explanation_figure

        drawing = self.drawing(sign=sign, outlier_percent=outlier_percent)
        if ax is not None:
            draw_panel(ax, drawing, image, target, style=style, cmap=cmap, alpha=alpha)
            return ax.figure  # type: ignore[return-value]  # a SubFigure only for subfigure axes
        return explanation_figure(drawing, style=style, cmap=cmap, alpha=alpha, colorbar=colorbar)

    def show(self, **options: Any) -> None:
        """Show :meth:`plot` (same options): inline in a notebook, in a window in a script."""
        self.plot(**options).show()

    def to_pil(
        self,
        image: int = 0,
        target: int = 0,
        *,
        style: str = "overlay",
        cmap: str = "jet",
        alpha: float = 0.5,
        sign: Display | str | None = None,
        outlier_percent: float | str | None = "auto",
    ) -> PILImage:
        """One map drawn with its image (``style`` as in :meth:`plot`) at the input's size."""
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.explanation import panel_image

        drawing = self.drawing(sign=sign, outlier_percent=outlier_percent)
        return panel_image(drawing, image, target, style=style, cmap=cmap, alpha=alpha)

    def to_numpy(
        self,
        *,
        raw: bool = False,
        sign: Display | str | None = None,
        outlier_percent: float | str | None = "auto",
    ) -> np.ndarray:
        """The maps as NumPy: shown (``(N, T, H, W)`` in [0, 1] at the input's size, as
        :meth:`plot` draws them), or with ``raw=True`` the raw signed maps ``(N, T, h, w)``."""
        if raw:
            return self.maps.detach().float().cpu().numpy()
        return self.drawing(sign=sign, outlier_percent=outlier_percent).shown

    def save(
        self, folder: str | os.PathLike[str], *, stem: str | None = None, **options: Any
    ) -> list[Path]:
        """Write the figure (``<stem>.png``), one picture per image and target and the raw maps
        (``<stem>.npy``) into ``folder``; returns the paths. ``stem`` defaults to the method."""
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.explanation import save_drawing

        drawn = {k: options.pop(k) for k in ("sign", "outlier_percent") if k in options}
        return save_drawing(
            self.drawing(**drawn),
            self.to_numpy(raw=True),
            Path(folder),
            stem=stem or self.method,
            **options,
        )

    def _repr_png_(self) -> bytes:
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.canvas import figure_to_png_bytes

        return figure_to_png_bytes(self.plot())

    def _repr_html_(self) -> str:
        # lazy: the render stage draws results; it imports nothing of this module back
        from cnnviz.render.explanation import explanation_html

        return explanation_html(self.drawing(), self._repr_png_())

    def __repr__(self) -> str:
        labels = ", ".join(dict.fromkeys(label for row in self.targets.labels for label in row))
        return (
            f"Explanation(method={self.method!r}, layer={self.layer!r}, "
            f"maps={tuple(self.maps.shape)}, targets=[{labels[:80]}])"
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
