"""Post-processing of raw maps: pure tensor functions, applied explicitly.

Methods return raw, signed, un-normalised maps. What a picture shows is decided here, step by
step: :func:`relu` (keep positive evidence), :func:`absolute`, :func:`upsample` to the input,
:func:`minmax_normalize` to [0, 1]. Constant maps normalise to zeros, never NaN.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class Display(enum.Enum):
    """How a method's raw map is turned into a picture by default."""

    POSITIVE = "positive"
    """ReLU, then min-max: CAMs (the papers' ReLU(Σ α A))."""
    ABSOLUTE = "absolute"
    """|map|, then min-max: saliency magnitudes."""
    SIGNED = "signed"
    """Divided by max |map|, keeping the sign (diverging colormap)."""


def relu(maps: torch.Tensor) -> torch.Tensor:
    """Positive part of the maps."""
    return maps.clamp(min=0)


def absolute(maps: torch.Tensor) -> torch.Tensor:
    """Element-wise magnitude."""
    return maps.abs()


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps of shape ``(..., h, w)`` to ``size`` (bilinear, ``align_corners=False``)."""
    if maps.dim() < 2:
        raise ValueError(f"Expected maps of shape (..., h, w), got {tuple(maps.shape)}")
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    if tuple(flat.shape[-2:]) == tuple(size):
        return maps.clone()
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=size, mode=mode, **kwargs)
    return out.reshape(*lead, *size)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each ``(h, w)`` map to [0, 1] by its own min and max; constant maps become zeros."""
    if maps.dim() < 2:
        raise ValueError(f"Expected maps of shape (..., h, w), got {tuple(maps.shape)}")
    flat = maps.reshape(*maps.shape[:-2], -1)
    low = flat.min(dim=-1, keepdim=True).values
    high = flat.max(dim=-1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp(min=eps), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def signed_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each map by its largest magnitude: values in [-1, 1], zero stays zero."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    peak = flat.abs().max(dim=-1, keepdim=True).values
    scaled = torch.where(peak > eps, flat / peak.clamp(min=eps), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def for_display(
    maps: torch.Tensor, display: Display, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """The default picture of raw maps: rectify per ``display``, upsample, normalise.

    Returns values in [0, 1] (``POSITIVE``/``ABSOLUTE``) or [-1, 1] (``SIGNED``).
    """
    if display is Display.POSITIVE:
        maps = relu(maps)
    elif display is Display.ABSOLUTE:
        maps = absolute(maps)
    if size is not None:
        maps = upsample(maps, size)
    if display is Display.SIGNED:
        return signed_normalize(maps)
    return minmax_normalize(maps)


def to_unit_range(
    maps: torch.Tensor, display: Display, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Raw maps as pictures show them: :func:`for_display`, with signed maps moved from [-1, 1]
    to [0, 1] (``(s + 1) / 2``: zero evidence is the middle of a diverging colour map).

    Returns float32 values in [0, 1] on the CPU, detached.
    """
    shown = for_display(maps.detach().float().cpu(), display, size)
    if display is Display.SIGNED:
        shown = (shown + 1) / 2
    return shown
