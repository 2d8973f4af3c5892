"""Post-processing of raw maps: pure tensor functions, applied explicitly.

Methods return raw, signed, un-normalised maps. What a picture shows is decided here, step by
step: the sign (:func:`relu` keeps the evidence for the target, :func:`absolute` its magnitude,
``relu(-map)`` the evidence against), :func:`upsample` to the input, then :func:`minmax_normalize`
to [0, 1], optionally saturating the brightest outliers (:func:`percentile_normalize`). Constant
maps normalise to zeros, never NaN.

Gradient maps are sparse: a few pixels carry most of the magnitude, so a plain min-max picture
is nearly all dark (measured on the bundled photos with EfficientNet-Lite0: 0.03-0.3 % of a
saliency map's pixels above half of the colour scale). The gradient methods therefore show their
maps with the top :data:`GRADIENT_OUTLIER_PERCENT` % clipped (captum's ``outlier_perc`` idea, and
its default of 2 %), which brings 7-19 % of those pixels above half the scale. CAMs are smooth
and are not clipped.
"""

from __future__ import annotations

import enum
import math

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
    NEGATIVE = "negative"
    """ReLU of −map, then min-max: the evidence *against* the target."""


SIGN_NAMES = {
    "positive": Display.POSITIVE,
    "negative": Display.NEGATIVE,
    "absolute": Display.ABSOLUTE,
    "all": Display.SIGNED,
}
"""The sign modes people name (``--sign``): ``all`` keeps both signs (:attr:`Display.SIGNED`)."""

GRADIENT_OUTLIER_PERCENT = 2.0
"""The share (in %) of a gradient map's brightest pixels that saturate the colour scale."""


def parse_sign(value: str | Display) -> Display:
    """A :class:`Display` from itself, a sign name (:data:`SIGN_NAMES`) or a ``Display`` value."""
    if isinstance(value, Display):
        return value
    text = str(value).strip().lower()
    found = SIGN_NAMES.get(text)
    if found is None:
        try:
            return Display(text)
        except ValueError:
            raise ValueError(
                f"sign must be one of {', '.join(SIGN_NAMES)}; got {value!r}"
            ) from None
    return found


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


def check_outlier_percent(percent: float | None) -> float | None:
    """``percent`` checked to lie in [0, 50) (``None`` and 0 mean no clipping)."""
    if percent is None:
        return None
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise TypeError(
            f"outlier_percent must be a number in [0, 50), got {type(percent).__name__}"
        )
    if not 0.0 <= float(percent) < 50.0:
        raise ValueError(
            "outlier_percent must be in [0, 50) (the share of the brightest pixels clipped), "
            f"got {percent}"
        )
    return float(percent) or None


def upper_quantile(flat: torch.Tensor, percent: float) -> torch.Tensor:
    """The value below which ``100 - percent`` % of each row of ``flat`` lies, ``(..., 1)``
    (the sorted row's element at ``⌈(1 − percent/100)·n⌉ − 1``: an observed value, no
    interpolation, and no size limit, unlike ``torch.quantile``)."""
    n = flat.shape[-1]
    k = max(0, min(n - 1, math.ceil((1.0 - percent / 100.0) * n) - 1))
    return flat.sort(dim=-1).values[..., k : k + 1]


def percentile_normalize(
    maps: torch.Tensor, percent: float | None, eps: float = 1e-12
) -> torch.Tensor:
    """Scale each ``(h, w)`` map to [0, 1] between its min and the value its brightest
    ``percent`` % of pixels exceed; those saturate at 1. ``percent`` ``None`` or 0 is
    :func:`minmax_normalize`.

    With ``lo`` the map's minimum and ``hi`` its ``(100 − percent)``-th percentile:
    ``clamp((m − lo) / (hi − lo), 0, 1)``; a map whose ``hi`` equals ``lo`` falls back to its
    max (so a map with a few non-zero pixels still shows them).
    """
    percent = check_outlier_percent(percent)
    if percent is None:
        return minmax_normalize(maps, eps)
    flat = maps.reshape(*maps.shape[:-2], -1)
    low = flat.min(dim=-1, keepdim=True).values
    high = upper_quantile(flat, percent)
    high = torch.where(high - low > eps, high, flat.max(dim=-1, keepdim=True).values)
    span = high - low
    scaled = torch.where(
        span > eps, ((flat - low) / span.clamp(min=eps)).clamp(0, 1), torch.zeros_like(flat)
    )
    return scaled.reshape(maps.shape)


def signed_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each map by its largest magnitude: values in [-1, 1], zero stays zero."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    peak = flat.abs().max(dim=-1, keepdim=True).values
    scaled = torch.where(peak > eps, flat / peak.clamp(min=eps), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def signed_percentile_normalize(
    maps: torch.Tensor, percent: float | None, eps: float = 1e-12
) -> torch.Tensor:
    """Divide each map by the ``(100 − percent)``-th percentile of its magnitude, clamped to
    [-1, 1]: values in [-1, 1], zero stays zero. ``percent`` ``None`` or 0 is
    :func:`signed_normalize`."""
    percent = check_outlier_percent(percent)
    if percent is None:
        return signed_normalize(maps, eps)
    flat = maps.reshape(*maps.shape[:-2], -1)
    magnitude = flat.abs()
    peak = upper_quantile(magnitude, percent)
    peak = torch.where(peak > eps, peak, magnitude.max(dim=-1, keepdim=True).values)
    scaled = torch.where(
        peak > eps, (flat / peak.clamp(min=eps)).clamp(-1, 1), torch.zeros_like(flat)
    )
    return scaled.reshape(maps.shape)


def for_display(
    maps: torch.Tensor,
    display: Display,
    size: tuple[int, int] | None = None,
    *,
    outlier_percent: float | None = None,
) -> torch.Tensor:
    """The picture of raw maps: rectify per ``display``, upsample, normalise (with the brightest
    ``outlier_percent`` % of each map saturated, :func:`percentile_normalize`).

    Returns values in [0, 1] (``POSITIVE``/``ABSOLUTE``/``NEGATIVE``) or [-1, 1] (``SIGNED``).
    """
    if display is Display.POSITIVE:
        maps = relu(maps)
    elif display is Display.NEGATIVE:
        maps = relu(-maps)
    elif display is Display.ABSOLUTE:
        maps = absolute(maps)
    if size is not None:
        maps = upsample(maps, size)
    if display is Display.SIGNED:
        return signed_percentile_normalize(maps, outlier_percent)
    return percentile_normalize(maps, outlier_percent)


def to_unit_range(
    maps: torch.Tensor,
    display: Display,
    size: tuple[int, int] | None = None,
    *,
    outlier_percent: float | None = None,
) -> torch.Tensor:
    """Raw maps as pictures show them: :func:`for_display`, with signed maps moved from [-1, 1]
    to [0, 1] (``(s + 1) / 2``: zero evidence is the middle of a diverging colour map).

    Returns float32 values in [0, 1] on the CPU, detached.
    """
    shown = for_display(maps.detach().float().cpu(), display, size, outlier_percent=outlier_percent)
    if display is Display.SIGNED:
        shown = (shown + 1) / 2
    return shown
