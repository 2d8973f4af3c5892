"""The shapes with a "copyright tag": a shortcut whose truth is known, for auditing a classifier.

Lapuschkin et al. ("Unmasking Clever Hans predictors and assessing what machines really learn",
Nature Communications 10, 2019) found a PASCAL VOC classifier that recognised horses by a
photographer's copyright tag in the corner, and exposed it by clustering its explanation maps
(SpRAy). This module builds the same situation on :mod:`cnnviz.data.shapes`, where the answer is
known image by image:

* the watermark is a fixed 8×8 pattern (:func:`watermark_pattern`: a white frame, a black ring
  inside it and a white 2×2 centre, the whole at full contrast) that is no shape class — square
  and high-frequency, unlike every filled or round class — stamped at :data:`WATERMARK_BOX`, near
  the bottom-right corner;
* only images of :data:`WATERMARK_CLASS` (``"triangle"``) ever carry it, a given share of them
  (half by default), chosen at random; so the tag predicts the class, though half of the class
  goes without it;
* every image's object keeps out of :data:`KEEP_OUT`, the 16×16 corner around the tag: images
  are drawn with :func:`~cnnviz.data.shapes.make_shapes` and those whose object box reaches into
  it are dropped (about 20 %: objects favour the edges), so the tag never hides part of the
  object and a map on the corner is evidence about the tag, not the object. Distractors may
  cross the corner: under the tag they are simply covered;
* each image comes with its clean twin, the same pixels without the tag (:attr:`WatermarkBatch.
  clean`), so "deleting just the watermark" is exact: the twin differs only inside the box, where
  it keeps the original pixels.

Example:
    >>> from cnnviz.data.watermark import heldout_watermark_shapes
    >>> batch = heldout_watermark_shapes(60)
    >>> batch.shapes.images.shape, int(batch.watermarked.sum()) > 0
    (torch.Size([60, 3, 64, 64]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cnnviz.data.shapes import HELDOUT_SEED, SHAPE_CLASSES, ShapesBatch, make_shapes

WATERMARK_CLASS: int = SHAPE_CLASSES.index("triangle")
"""The label whose images (and only they) may carry the watermark."""

IMAGE_SIZE: int = 64
"""The images' side in pixels (the watermarked data comes in this size only)."""

WATERMARK_SIZE: int = 8
"""The tag's side in pixels."""

WATERMARK_BOX: tuple[int, int, int, int] = (54, 54, 62, 62)
"""``x0, y0, x1, y1`` (exclusive) of the tag: 2 px in from the bottom-right corner."""

KEEP_OUT: tuple[int, int, int, int] = (48, 48, 64, 64)
"""``x0, y0, x1, y1``: the corner no object's box enters. It is the 2×2 cells at the corner of an
8×8 map (``conv4_*`` of ``shapes_vgg11``), so the tag's cells never hold part of an object."""

WATERMARK_SHARE: float = 0.5
"""Default share of :data:`WATERMARK_CLASS`'s images that carry the tag."""

WATERMARK_VERSION: int = 2
"""Bumped whenever this module's output for a given seed changes (it names the cached model)."""

_DRAW_FACTOR = 1.4  # images drawn per image kept: about 20 % reach into the corner


@dataclass(frozen=True)
class WatermarkBatch:
    """Shapes, some carrying the watermark, with their clean twins.

    Attributes:
        shapes: the images as given to the model (the tag stamped where ``watermarked``), with the
            objects' labels, masks and boxes (the tag is not part of any mask).
        watermarked: ``(N,)`` bool, True where the tag was stamped (only on
            :data:`WATERMARK_CLASS`).
        clean: ``(N, 3, 64, 64)`` the same images without any tag: equal to ``shapes.images``
            outside :attr:`box`, and inside it wherever ``watermarked`` is False.
        box: ``x0, y0, x1, y1`` (exclusive) of the tag, :data:`WATERMARK_BOX`.
    """

    shapes: ShapesBatch
    watermarked: torch.Tensor
    clean: torch.Tensor
    box: tuple[int, int, int, int] = WATERMARK_BOX

    def __len__(self) -> int:
        return len(self.shapes)


def watermark_pattern() -> torch.Tensor:
    """The tag, ``(3, 8, 8)`` in [0, 1]: white 1-px frame, black 2-px ring, white 2×2 centre."""
    side = WATERMARK_SIZE
    coords = torch.arange(side)
    # Chebyshev distance from the border: 0 on the frame, 1–2 on the ring, 3 at the centre.
    depth = torch.minimum(coords, side - 1 - coords)
    depth = torch.minimum(depth.view(-1, 1), depth.view(1, -1))
    bright = (depth == 0) | (depth == 3)
    return bright.float().expand(3, side, side).clone()


def stamp_watermark(images: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``images`` ``(N, 3, 64, 64)`` with the tag at :data:`WATERMARK_BOX` on the
    images where ``where`` (``(N,)`` bool; default all) is True.

    Raises:
        ValueError: ``images`` is not ``(N, 3, 64, 64)`` or ``where`` not ``(N,)``.
    """
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        expected = f"(N, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"
        raise ValueError(f"Expected images of shape {expected}, got {tuple(images.shape)}")
    n = images.shape[0]
    where = torch.ones(n, dtype=torch.bool) if where is None else where.bool()
    if tuple(where.shape) != (n,):
        raise ValueError(f"Expected where of shape ({n},), got {tuple(where.shape)}")
    x0, y0, x1, y1 = WATERMARK_BOX
    out = images.clone()
    tag = watermark_pattern().to(images.dtype)
    out[where, :, y0:y1, x0:x1] = tag
    return out


def make_watermark_shapes(n: int, *, seed: int, share: float = WATERMARK_SHARE) -> WatermarkBatch:
    """``n`` shapes whose objects keep out of :data:`KEEP_OUT`, a ``share`` of
    :data:`WATERMARK_CLASS`'s images carrying the tag; reproducible from ``seed``.

    The images are the first ``n`` of ``make_shapes(m, seed=seed)`` whose object box stays out
    of the corner (``m`` = 1.4 ``n`` rounded up, of which about 1.12 ``n`` pass; doubled while
    too few do), so classes are near balance. Which images of the class carry the tag is drawn
    with a generator seeded with ``seed``: exactly ``round(share · count)`` of them.

    Raises:
        TypeError: ``n`` or ``seed`` is not an int, ``share`` not a number.
        ValueError: ``n`` is negative or ``share`` outside [0, 1].
    """
    for name, value in (("n", n), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not isinstance(share, (int, float)) or isinstance(share, bool):
        raise TypeError(f"share must be a number, got {type(share).__name__}")
    if n < 0:
        raise ValueError(f"n must be the number of images (>= 0), got {n}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    drawn = max(16, math.ceil(_DRAW_FACTOR * n))
    while True:
        candidates = make_shapes(drawn, seed=seed, size=IMAGE_SIZE)
        keep = clear_of_corner(candidates.boxes).nonzero().squeeze(1)
        if keep.numel() >= n:
            break
        drawn *= 2
    keep = keep[:n]
    batch = ShapesBatch(
        *(
            t[keep]
            for t in (candidates.images, candidates.labels, candidates.masks, candidates.boxes)
        )
    )
    of_class = (batch.labels == WATERMARK_CLASS).nonzero().squeeze(1)
    chosen = torch.randperm(of_class.numel(), generator=torch.Generator().manual_seed(seed))
    watermarked = torch.zeros(n, dtype=torch.bool)
    watermarked[of_class[chosen[: round(share * of_class.numel())]]] = True
    images = stamp_watermark(batch.images, watermarked)
    stamped = ShapesBatch(images, batch.labels, batch.masks, batch.boxes)
    return WatermarkBatch(stamped, watermarked, batch.images)


def heldout_watermark_shapes(n: int = 600, *, share: float = WATERMARK_SHARE) -> WatermarkBatch:
    """The held-out set, ``make_watermark_shapes(n, seed=HELDOUT_SEED, share=share)``: drawn from
    the shapes' held-out seed, never trained on (training seeds stay below 1,000,000)."""
    return make_watermark_shapes(n, seed=HELDOUT_SEED, share=share)


def clear_of_corner(boxes: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: which ``(N, 4)`` boxes ``x0, y0, x1, y1`` (exclusive) miss
    :data:`KEEP_OUT`."""
    kx0, ky0, kx1, ky1 = KEEP_OUT
    overlaps = (boxes[:, 0] < kx1) & (boxes[:, 2] > kx0) & (boxes[:, 1] < ky1) & (boxes[:, 3] > ky0)
    return ~overlaps


def watermark_config() -> dict[str, object]:
    """The watermark's parameters, JSON-ready (for cache keys and manifests)."""
    return {
        "version": WATERMARK_VERSION,
        "class": SHAPE_CLASSES[WATERMARK_CLASS],
        "box": list(WATERMARK_BOX),
        "keep_out": list(KEEP_OUT),
        "draw_factor": _DRAW_FACTOR,
        "pattern": watermark_pattern()[0].to(torch.int64).tolist(),
    }


def corner_share(maps: torch.Tensor) -> torch.Tensor:
    """``(N,)``: the share of each map's positive mass that lies in :data:`KEEP_OUT`, the tag's
    corner (0 for a map with no positive value).

    ``maps`` are ``(N, h, w)`` over the 64×64 image at any resolution that divides it (an 8×8
    Grad-CAM at ``conv4_2``: the corner's 2×2 cells; 64×64: its 16×16 pixels). Only the positive
    part counts, as Grad-CAM's ReLU keeps it: the evidence for the class.

    Raises:
        ValueError: ``maps`` is not ``(N, h, w)`` with ``h`` and ``w`` dividing 64.
    """
    if maps.dim() != 3 or IMAGE_SIZE % maps.shape[1] or IMAGE_SIZE % maps.shape[2]:
        raise ValueError(
            f"Expected maps of shape (N, h, w) with h and w dividing {IMAGE_SIZE}, "
            f"got {tuple(maps.shape)}"
        )
    positive = maps.detach().float().clamp(min=0.0)
    sy, sx = IMAGE_SIZE // maps.shape[1], IMAGE_SIZE // maps.shape[2]
    x0, y0, x1, y1 = KEEP_OUT
    corner = positive[:, y0 // sy : -(-y1 // sy), x0 // sx : -(-x1 // sx)].sum(dim=(1, 2))
    total = positive.sum(dim=(1, 2))
    return torch.where(total > 0, corner / total.clamp(min=1e-30), torch.zeros_like(total))
