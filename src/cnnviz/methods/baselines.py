"""The one notion of a baseline (reference input) x′ shared by every method that compares the
input with one: Integrated Gradients, DeepLift, GradientShap, DeepLiftShap, and the perturbation
methods (Occlusion, Feature Ablation, LIME, KernelShap, Shapley sampling), which fill what they
hide with it.

A baseline is given as a :data:`BaselineSpec`:

* a name (:class:`Baseline`): "black", "mean", "blurred" or "uniform";
* a number: that value in every channel, in model-input units (0 is the dataset's mean colour
  for a normalised input);
* a tensor broadcastable to the batch ``(N, C, H, W)``: ``(C, 1, 1)``, ``(C, H, W)`` or
  ``(N, C, H, W)``.

Methods that average over a *distribution* of references (GradientShap, DeepLiftShap) take
:func:`baseline_distribution`: ``B`` references shared by every image, as captum's ``baselines``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from cnnviz.inputs.preprocess import Preprocessing, gaussian_blur


class Baseline(enum.Enum):
    """Named baselines x′, in the model-input space."""

    BLACK = "black"
    """The preprocessed black image with ``preprocessing`` given, else zeros."""
    MEAN = "mean"
    """Zeros: the dataset's mean colour for an input normalised by its mean and std."""
    BLURRED = "blurred"
    """x blurred by a Gaussian of ``blur_sigma`` pixels (default 5 % of the longer side)."""
    UNIFORM = "uniform"
    """Seeded uniform noise over the pixel range [0, 1] normalised with ``preprocessing``,
    else over each image's own value range [min x, max x]."""


BaselineSpec = str | Baseline | float | int | torch.Tensor
"""A name, a number or a tensor (see the module docstring)."""


def parse_baseline(value: BaselineSpec, what: str = "baseline") -> Baseline | float | torch.Tensor:
    """``value`` checked: a :class:`Baseline`, a float or a tensor.

    Raises:
        ValueError: an unknown name, or a non-finite number.
        TypeError: anything else (a bool, a list, …).
    """
    if isinstance(value, (Baseline, torch.Tensor)):
        return value
    if isinstance(value, str):
        try:
            return Baseline(value.strip().lower())
        except ValueError:
            choices = ", ".join(b.value for b in Baseline)
            raise ValueError(
                f"{what} must be one of {choices}, a number or a tensor; got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a name, a number or a tensor, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def channel_normalisation(
    prep: Preprocessing | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``prep``'s mean and std as ``(1, C, 1, 1)`` tensors like ``x`` (``None`` without ``prep``).

    Raises:
        ValueError: ``prep`` has another channel count than ``x`` (``(N, C, H, W)``).
    """
    if prep is None:
        return None
    if prep.channels != x.shape[1]:
        raise ValueError(
            f"The preprocessing has {prep.channels} channel(s) (mean {prep.mean}) but the input "
            f"has {x.shape[1]}; give a Preprocessing with one mean and std per input channel "
            "(Preprocessing.with_channels adapts one)."
        )
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return mean, std


@dataclass(frozen=True)
class BaselineContext:
    """What a named baseline needs besides the input: the model's ``preprocessing`` (for
    "black" and "uniform"), the blur's ``blur_sigma`` in pixels, and the noise's ``seed``."""

    preprocessing: Preprocessing | None = None
    blur_sigma: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        sigma = self.blur_sigma
        if sigma is not None and (
            isinstance(sigma, bool)
            or not isinstance(sigma, (int, float))
            or not (math.isfinite(sigma) and sigma > 0)
        ):
            raise ValueError(f"blur_sigma must be a positive number of pixels, got {sigma!r}")


def baseline_tensor(
    spec: Baseline | float | torch.Tensor,
    x: torch.Tensor,
    context: BaselineContext | None = None,
    what: str = "baseline",
) -> torch.Tensor:
    """The baseline x′ for the batch ``x``: same shape, dtype and device (a new tensor).

    Raises:
        ValueError: a tensor that does not broadcast to ``x``, or a preprocessing whose channel
            count is not ``x``'s.
    """
    context = context or BaselineContext()
    if isinstance(spec, torch.Tensor):
        try:
            return torch.broadcast_to(spec.to(x), x.shape).clone()
        except RuntimeError as e:
            raise ValueError(
                f"A {what} tensor of shape {tuple(spec.shape)} does not broadcast to the "
                f"input shape {tuple(x.shape)}; give (C, H, W), (N, C, H, W) or (C, 1, 1)."
            ) from e
    if not isinstance(spec, Baseline):
        return torch.full_like(x, float(spec))
    if spec is Baseline.MEAN:
        return torch.zeros_like(x)
    if spec is Baseline.BLURRED:
        return gaussian_blur(x, context.blur_sigma or 0.05 * max(x.shape[-2:]))
    normalisation = channel_normalisation(context.preprocessing, x)
    if spec is Baseline.BLACK:
        if normalisation is None:
            return torch.zeros_like(x)
        mean, std = normalisation
        return (-mean / std).expand_as(x).clone()
    generator = torch.Generator(device=x.device).manual_seed(context.seed)
    u = torch.rand(x.shape, generator=generator, device=x.device).to(x.dtype)
    if normalisation is not None:
        mean, std = normalisation
        return (u - mean) / std
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    return low + u * (x.amax(dim=(1, 2, 3), keepdim=True) - low)


def baseline_distribution(
    spec: Baseline | float | torch.Tensor,
    x: torch.Tensor,
    context: BaselineContext | None = None,
    what: str = "baselines",
) -> torch.Tensor:
    """``B`` references per image, ``(B, N, C, H, W)``, for methods that average over a
    distribution of baselines (GradientShap, DeepLiftShap).

    A 4-d tensor ``(B, C, H, W)`` is ``B`` references shared by every image (captum's
    ``baselines``); a 5-d tensor ``(B, N, C, H, W)`` gives each image its own; a name, a number
    or a 3-d tensor is one reference (``B = 1``), as :func:`baseline_tensor` makes it.

    Raises:
        ValueError: a tensor of another shape.
    """
    if isinstance(spec, torch.Tensor) and spec.dim() in (4, 5):
        images = x.shape[0]
        shared = spec.dim() == 4
        expected = (*x.shape[1:],) if shared else (images, *x.shape[1:])
        if tuple(spec.shape[1:]) != expected or spec.shape[0] == 0:
            raise ValueError(
                f"{what} of shape {tuple(spec.shape)} do not fit the input {tuple(x.shape)}; "
                f"give (B, {', '.join(map(str, x.shape[1:]))}) references shared by all images "
                f"or (B, {', '.join(map(str, x.shape))}) per image."
            )
        references = spec.to(x)
        if shared:
            return references.unsqueeze(1).expand(-1, images, -1, -1, -1)
        return references
    return baseline_tensor(spec, x, context, what).unsqueeze(0)
