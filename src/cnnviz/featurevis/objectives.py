"""What the optimised image should do: the objectives of feature visualisation, which compose.

An objective maps one forward pass to a score **per image** of the batch, a ``(B,)`` tensor the
optimiser maximises (it minimises ``−Σ_b score_b``). Images of a batch are optimised together but
scored independently, so one batch can hold a different unit per image: ``channel(layer, [0, 1,
2])`` asks image 0 for channel 0, image 1 for channel 1, and so on. With ``A = activations of the
layer`` (``B × C × H × W``, or ``B × C`` for a 1-D layer):

====================  =====================================================================
``channel(l, c)``     ``mean_{y,x} A[b, c, y, x]``            (Olah et al., Distill 2017)
``neuron(l, c, y, x)``  ``A[b, c, y, x]``, the centre position by default
``layer(l)``          ``mean_{c,y,x} A[b, c, y, x]²``          (DeepDream, Mordvintsev et al. 2015)
``class_logit(k)``    ``logits[b, k]``, the score before the softmax (Simonyan et al., 2014)
``direction(l, v)``   ``mean_{y,x} ⟨A[b, :, y, x], v / |v|⟩``  (a direction in channel space)
``diversity(l, g)``   ``−mean_{j ≠ b} cos(G_b, G_j)`` over images ``j`` of ``b``'s group of ``g``,
                      ``G = A Aᵀ / (HW)`` the channels' Gram matrix (Olah et al., "Diversity")
``l2()``              ``−mean (x − ½)²`` over the image's pixels (Simonyan's L2 regulariser)
``total_variation()``  ``−mean |x_{y+1,x} − x_{y,x}| + |x_{y,x+1} − x_{y,x}|``
====================  =====================================================================

Objectives compose with ``+``, ``-``, scalar ``*`` and ``/``: ``channel("conv4_2", 3) - 0.1 *
total_variation()`` is one objective. Layers are dotted names, unique suffixes or module objects,
resolved when the optimisation starts, as everywhere in cnnviz. Example::

    objective = channel("backbone.relu4_2", [0, 1, 2, 3]) + 0.5 * diversity("backbone.relu4_2", 4)
    values = objective(probe)       # (4,) one score per image
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnviz.capture.layers import LayerRef
from cnnviz.errors import ArgumentError, LayerError, TargetError


@dataclass(frozen=True)
class Probe:
    """What an objective reads from one forward pass.

    Attributes:
        image: the parameterised image ``(B, C, H, W)`` in [0, 1], before the random moves.
        activations: the captured layers' outputs, by dotted name.
        logits: the model's output, or ``None`` when the forward pass stopped after the layers.
        names: each layer reference of the objective resolved to its dotted name.
    """

    image: torch.Tensor
    activations: Mapping[str, torch.Tensor]
    logits: torch.Tensor | None
    names: Mapping[LayerRef, str]

    def layer(self, ref: LayerRef) -> torch.Tensor:
        return self.activations[self.names[ref]]


class Objective:
    """A score per image to maximise; see the module docstring. Subclasses set :meth:`value`."""

    layers: tuple[LayerRef, ...] = ()
    needs_logits: bool = False

    def value(self, probe: Probe) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, probe: Probe) -> torch.Tensor:
        return self.value(probe)

    def describe(self) -> str:
        return type(self).__name__

    # -- composition -----------------------------------------------------------------------
    def terms(self) -> tuple[tuple[float, Objective], ...]:
        return ((1.0, self),)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(self.terms() + other.terms())

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(self.terms() + (-1.0 * other).terms())

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return Sum(tuple((weight * float(factor), term) for weight, term in self.terms()))

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if isinstance(divisor, bool) or not isinstance(divisor, int | float) or divisor == 0:
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return self * -1.0

    def __repr__(self) -> str:
        return f"<objective {self.describe()}>"


@dataclass(frozen=True, eq=False, repr=False)
class Sum(Objective):
    """``Σ_i w_i · objective_i``, the result of composing objectives."""

    parts: tuple[tuple[float, Objective], ...]

    def __post_init__(self) -> None:
        layers = tuple(dict.fromkeys(ref for _, term in self.parts for ref in term.layers))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "needs_logits", any(t.needs_logits for _, t in self.parts))

    def terms(self) -> tuple[tuple[float, Objective], ...]:
        return self.parts

    def value(self, probe: Probe) -> torch.Tensor:
        total: torch.Tensor | None = None
        for weight, term in self.parts:
            part = weight * term.value(probe)
            total = part if total is None else total + part
        if total is None:
            raise ArgumentError("an empty sum of objectives has no value")
        return total

    def describe(self) -> str:
        pieces = []
        for weight, term in self.parts:
            text = term.describe()
            pieces.append(text if weight == 1.0 else f"{weight:g}·{text}")
        return " + ".join(pieces).replace("+ -", "- ")


def _indices_text(index: int | tuple[int, ...]) -> str:
    """``3``, or the distinct indices of a per-image list: ``0–15`` when consecutive."""
    if isinstance(index, int):
        return str(index)
    distinct = sorted(set(index))
    if len(distinct) > 2 and distinct == list(range(distinct[0], distinct[-1] + 1)):
        return f"{distinct[0]}–{distinct[-1]}"
    return ", ".join(str(i) for i in distinct)


def _per_image(index: int | Sequence[int], batch: int, what: str) -> torch.Tensor:
    """An index per image: one for all, or one each (a sequence as long as the batch)."""
    if isinstance(index, int):
        return torch.full((batch,), index, dtype=torch.long)
    if len(index) != batch:
        raise ArgumentError(
            f"{what} lists {len(index)} indices for a batch of {batch} images; give one index "
            "for all images or one per image"
        )
    return torch.as_tensor(list(index), dtype=torch.long)


def _check_channels(acts: torch.Tensor, channels: torch.Tensor, layer: LayerRef) -> None:
    count = acts.shape[1]
    bad = channels[(channels < 0) | (channels >= count)]
    if bad.numel():
        raise ArgumentError(
            f"channel {int(bad[0])} is out of range: layer {layer!r} has {count} channels "
            f"(0–{count - 1})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class Channel(Objective):
    """``mean_{y,x} A[b, c_b, y, x]``: how strongly channel ``c_b`` fires over the image."""

    layer: LayerRef
    channel: int | tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", (self.layer,))

    def value(self, probe: Probe) -> torch.Tensor:
        acts = probe.layer(self.layer)
        channels = _per_image(self.channel, acts.shape[0], "channel()").to(acts.device)
        _check_channels(acts, channels, self.layer)
        picked = acts[torch.arange(acts.shape[0], device=acts.device), channels]
        return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked

    def describe(self) -> str:
        return f"channel {_indices_text(self.channel)} of {self.layer}"


@dataclass(frozen=True, eq=False, repr=False)
class Neuron(Objective):
    """``A[b, c_b, y, x]``: one position of a channel (the centre when ``y``/``x`` are None)."""

    layer: LayerRef
    channel: int | tuple[int, ...]
    y: int | None = None
    x: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", (self.layer,))

    def value(self, probe: Probe) -> torch.Tensor:
        acts = probe.layer(self.layer)
        if acts.dim() != 4:
            raise LayerError(
                f"neuron() needs a spatial layer, but {self.layer!r} gives "
                f"{acts.dim()}-D output of shape {tuple(acts.shape)}; use channel() for a 1-D "
                "layer or choose a convolutional layer"
            )
        height, width = acts.shape[2:]
        y = height // 2 if self.y is None else self.y
        x = width // 2 if self.x is None else self.x
        if not (0 <= y < height and 0 <= x < width):
            raise ArgumentError(
                f"position ({y}, {x}) is outside layer {self.layer!r}'s {height}×{width} map"
            )
        channels = _per_image(self.channel, acts.shape[0], "neuron()").to(acts.device)
        _check_channels(acts, channels, self.layer)
        return acts[torch.arange(acts.shape[0], device=acts.device), channels, y, x]

    def describe(self) -> str:
        where = "centre" if self.y is None and self.x is None else f"({self.y}, {self.x})"
        return f"neuron {_indices_text(self.channel)} at {where} of {self.layer}"


@dataclass(frozen=True, eq=False, repr=False)
class LayerEnergy(Objective):
    """``mean_{c,y,x} A²``: DeepDream's objective, everything the layer sees, amplified."""

    layer: LayerRef

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", (self.layer,))

    def value(self, probe: Probe) -> torch.Tensor:
        return probe.layer(self.layer).pow(2).flatten(1).mean(dim=1)

    def describe(self) -> str:
        return f"layer {self.layer} (DeepDream)"


@dataclass(frozen=True, eq=False, repr=False)
class ClassLogit(Objective):
    """``logits[b, k_b]``: the class score before the softmax (Simonyan et al. 2014)."""

    index: int | tuple[int, ...]
    needs_logits: bool = True

    def value(self, probe: Probe) -> torch.Tensor:
        logits = probe.logits
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ArgumentError(
                "class_logit() needs a model that returns (batch, classes) logits, got "
                + (type(logits).__name__ if logits is None else str(tuple(logits.shape)))
            )
        classes = _per_image(self.index, logits.shape[0], "class_logit()").to(logits.device)
        if int(classes.min()) < 0 or int(classes.max()) >= logits.shape[1]:
            raise TargetError(
                f"class {int(classes.max())} is out of range: the model has "
                f"{logits.shape[1]} classes"
            )
        return logits[torch.arange(logits.shape[0], device=logits.device), classes]

    def describe(self) -> str:
        return f"class logit {_indices_text(self.index)}"


@dataclass(frozen=True, eq=False, repr=False)
class Direction(Objective):
    """``mean_{y,x} ⟨A[b, :, y, x], v / |v|⟩``: a direction ``v`` in the layer's channel space."""

    layer: LayerRef
    vector: torch.Tensor

    def __post_init__(self) -> None:
        vector = torch.as_tensor(self.vector, dtype=torch.float32).flatten()
        norm = torch.linalg.vector_norm(vector)
        if not torch.isfinite(norm) or norm == 0:
            raise ArgumentError("direction() needs a finite, non-zero vector")
        object.__setattr__(self, "vector", vector / norm)
        object.__setattr__(self, "layers", (self.layer,))

    def value(self, probe: Probe) -> torch.Tensor:
        acts = probe.layer(self.layer)
        if acts.shape[1] != self.vector.numel():
            raise ArgumentError(
                f"direction() has {self.vector.numel()} values but layer {self.layer!r} has "
                f"{acts.shape[1]} channels"
            )
        v = self.vector.to(device=acts.device, dtype=acts.dtype)
        projected = torch.einsum("bc...,c->b...", acts, v)
        return projected.flatten(1).mean(dim=1) if projected.dim() > 1 else projected

    def describe(self) -> str:
        return f"a direction in {self.layer}"


@dataclass(frozen=True, eq=False, repr=False)
class Diversity(Objective):
    """``−mean_{j≠b} cos(G_b, G_j)`` within consecutive groups of ``group`` images (facets)."""

    layer: LayerRef
    group: int

    def __post_init__(self) -> None:
        if self.group < 1:
            raise ArgumentError(f"diversity() needs groups of at least 1 image, got {self.group}")
        object.__setattr__(self, "layers", (self.layer,))

    def value(self, probe: Probe) -> torch.Tensor:
        acts = probe.layer(self.layer)
        batch = acts.shape[0]
        if batch % self.group:
            raise ArgumentError(
                f"diversity() over groups of {self.group} needs a batch that is a multiple of "
                f"{self.group}, got {batch}"
            )
        if self.group == 1:
            return acts.new_zeros(batch)
        flat = acts.flatten(2) if acts.dim() > 2 else acts.unsqueeze(2)
        gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
        gram = F.normalize(gram.flatten(1), dim=1).view(batch // self.group, self.group, -1)
        cosines = torch.bmm(gram, gram.transpose(1, 2))  # (groups, g, g), 1 on the diagonal
        others = (cosines.sum(dim=2) - 1.0) / (self.group - 1)
        return -others.reshape(batch)

    def describe(self) -> str:
        return f"diversity in {self.layer}"


@dataclass(frozen=True, eq=False, repr=False)
class L2(Objective):
    """``−mean (x − ½)²``: keeps pixels near grey (Simonyan's L2 regulariser, on [0, 1] images)."""

    def value(self, probe: Probe) -> torch.Tensor:
        return -(probe.image - 0.5).pow(2).flatten(1).mean(dim=1)

    def describe(self) -> str:
        return "L2"


@dataclass(frozen=True, eq=False, repr=False)
class TotalVariation(Objective):
    """``−mean |∂_y x| + |∂_x x|``: penalises high-frequency noise (Mahendran & Vedaldi 2015)."""

    def value(self, probe: Probe) -> torch.Tensor:
        image = probe.image
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(dim=1)
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(dim=1)
        return -(dy + dx)

    def describe(self) -> str:
        return "total variation"


# -- the public constructors -------------------------------------------------------------------


def _index(value: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(value, bool):
        raise TypeError("a channel or class index must be an int, not a bool")
    if isinstance(value, int):
        return value
    return tuple(int(v) for v in value)


def channel(layer: LayerRef, index: int | Sequence[int]) -> Objective:
    """Channel ``index`` of ``layer`` over the whole image (one index, or one per image)."""
    return Channel(layer, _index(index))


def neuron(
    layer: LayerRef, index: int | Sequence[int], y: int | None = None, x: int | None = None
) -> Objective:
    """One position (the centre by default) of channel ``index`` of ``layer``."""
    return Neuron(layer, _index(index), y, x)


def layer(layer: LayerRef) -> Objective:
    """DeepDream: the mean squared activation of the whole layer."""
    return LayerEnergy(layer)


def class_logit(index: int | Sequence[int]) -> Objective:
    """The logit of class ``index`` (one, or one per image)."""
    return ClassLogit(_index(index))


def direction(layer: LayerRef, vector: torch.Tensor | Sequence[float]) -> Objective:
    """The projection of ``layer``'s activations on ``vector`` (one value per channel)."""
    return Direction(layer, torch.as_tensor(vector, dtype=torch.float32))


def diversity(layer: LayerRef, group: int) -> Objective:
    """Pushes the ``group`` images of each consecutive group apart in ``layer``'s Gram space."""
    return Diversity(layer, group)


def l2() -> Objective:
    return L2()


def total_variation() -> Objective:
    return TotalVariation()
