"""Superpixels: the interpretable features of LIME, KernelSHAP and Shapley Value Sampling.

A :class:`Superpixels` says how the pixels of each image are grouped: SLIC (Achanta et al.,
TPAMI 2012) or Quickshift (Vedaldi & Soatto, ECCV 2008) from scikit-image, computed on the
picture as the model saw it (``x`` un-normalised with the model's preprocessing when given, else
min-max scaled per image to [0, 1]); Feature Ablation's grid of square patches; or a user mask.
Every image gets its own ids ``0 … F_i − 1`` (:meth:`Superpixels.groups`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from cnnviz.errors import positive_int
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.methods.baselines import channel_normalisation
from cnnviz.methods.region_ablation import pixel_groups


class Segments(enum.Enum):
    """How the pixels are grouped into interpretable features."""

    SLIC = "slic"
    """``skimage.segmentation.slic`` (k-means in colour × position; ``n_segments``,
    ``compactness``, ``sigma``)."""
    QUICKSHIFT = "quickshift"
    """``skimage.segmentation.quickshift`` (mode seeking; ``kernel_size``, ``max_dist``,
    ``ratio``, ``sigma``)."""
    PATCHES = "patches"
    """Feature Ablation's grid of ``patch``-px squares (default a 14 × 14 grid)."""
    MASK = "mask"
    """The integer ids of a user ``mask`` ``(H, W)`` or ``(N, H, W)``."""


_ONLY = {
    "n_segments": Segments.SLIC,
    "compactness": Segments.SLIC,
    "kernel_size": Segments.QUICKSHIFT,
    "max_dist": Segments.QUICKSHIFT,
    "ratio": Segments.QUICKSHIFT,
    "patch": Segments.PATCHES,
}
"""Options that belong to one kind of segmentation (refused with another)."""


def positive_number(value: object, what: str, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Superpixels:
    """A checked segmentation setting (see :class:`Segments`); scikit-image's defaults except
    ``n_segments`` (50), ``sigma`` (1 px of Gaussian pre-smoothing, so that pixel noise does not
    shatter the segments) and ``start_label`` (0)."""

    kind: Segments = Segments.SLIC
    n_segments: int = 50
    compactness: float = 10.0
    sigma: float = 1.0
    kernel_size: float = 5.0
    max_dist: float = 10.0
    ratio: float = 1.0
    patch: int | None = None
    mask: torch.Tensor | None = None

    @classmethod
    def parse(
        cls,
        segments: str | Segments | None,
        mask: torch.Tensor | None,
        **options: float | int | None,
    ) -> Superpixels:
        """The setting of a method's options: ``segments`` ("slic" by default, "quickshift",
        "patches"), or ``mask``; ``options`` not given are ``None``.

        Raises:
            TypeError: a mask that is not a tensor.
            ValueError: an unknown kind, a mask with another kind, an option of another kind,
                or a value out of range.
        """
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor of segment ids, got {type(mask).__name__}")
        if mask is not None and segments is not None:
            raise ValueError("give either segments or mask, not both")
        kind = Segments.MASK if mask is not None else cls._kind(segments)
        given = {key: value for key, value in options.items() if value is not None}
        for key in given:
            if _ONLY.get(key, kind) is not kind:
                raise ValueError(
                    f"{key} belongs to segments={_ONLY[key].value!r}, not {kind.value!r}"
                )
        checked: dict[str, float | int] = {}
        for key, value in given.items():
            if key in ("n_segments", "patch"):
                checked[key] = positive_int(value, key)
            else:
                checked[key] = positive_number(value, key, zero=key in ("sigma", "ratio"))
        return cls(kind, mask=mask, **checked)  # type: ignore[arg-type]  # keys checked above

    @staticmethod
    def _kind(segments: str | Segments | None) -> Segments:
        if segments is None:
            return Segments.SLIC
        if isinstance(segments, Segments):
            return segments
        try:
            kind = Segments(str(segments).strip().lower())
        except ValueError:
            kind = Segments.MASK
        if kind is Segments.MASK:
            raise ValueError(
                f"segments must be 'slic', 'quickshift' or 'patches' (or give mask=), "
                f"got {segments!r}"
            )
        return kind

    def groups(
        self, x: torch.Tensor, preprocessing: Preprocessing | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """``(N, H, W)`` segment ids of the batch ``x`` (long, on its device), numbered
        ``0 … F_i − 1`` in each image by first appearance in the sorted ids, and the counts
        ``F_i``."""
        if self.kind is Segments.PATCHES:
            raw = pixel_groups(x, self.patch)
        elif self.kind is Segments.MASK:
            raw = pixel_groups(x, mask=self.mask)
        else:
            raw = torch.stack([self.segment(p) for p in picture(x, preprocessing)]).to(x.device)
        ids, counts = [], []
        for image in raw:
            values, inverse = torch.unique(image, return_inverse=True)
            ids.append(inverse)
            counts.append(len(values))
        return torch.stack(ids).long(), counts

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """scikit-image's labels ``(H, W)`` of one picture ``(H, W, C)`` in [0, 1]."""
        # lazy: scikit-image loads only when superpixels are computed
        from skimage import segmentation

        array = image.cpu().double().numpy()
        if self.kind is Segments.SLIC:
            labels = segmentation.slic(
                array,
                n_segments=self.n_segments,
                compactness=self.compactness,
                sigma=self.sigma,
                start_label=0,
                channel_axis=-1,
            )
        else:
            labels = segmentation.quickshift(  # type: ignore[no-untyped-call]  # untyped upstream
                array,
                ratio=self.ratio,
                kernel_size=self.kernel_size,
                max_dist=self.max_dist,
                sigma=self.sigma,
                convert2lab=array.shape[-1] == 3,
                channel_axis=-1,
            )
        return torch.from_numpy(labels.astype("int64"))


def picture(x: torch.Tensor, preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """The batch ``x`` ``(N, C, H, W)`` as the pictures ``(N, H, W, C)`` in [0, 1] the model
    saw: ``x · std + mean`` clipped to [0, 1] with ``preprocessing``, else min-max per image."""
    normalisation = channel_normalisation(preprocessing, x)
    if normalisation is not None:
        mean, std = normalisation
        pixels = (x * std + mean).clamp(0.0, 1.0)
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        span = x.amax(dim=(1, 2, 3), keepdim=True) - low
        pixels = (x - low) / torch.where(span > 0, span, torch.ones_like(span))
    return pixels.permute(0, 2, 3, 1)
