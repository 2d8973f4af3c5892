"""A synthetic shapes dataset with known ground truth: one object per image, with its exact mask.

Every image holds one object of a class in :data:`SHAPE_CLASSES` — random colour, size (its
mask covers 4–8 % of the image, :data:`AREA_FRACTION`; its tight box 4–19 %), rotation and
position (favouring the edges, so that the image centre is a weak guess) — over clutter:

* the background is smooth two-octave colour noise, soft stripes of random period (4–12 px),
  angle and colours, or an even blend of the two;
* distractors of the same colour distribution as objects but of no shape class: with
  probability 0.8 one as large as an object (an elongated ellipse or rectangle, aspect
  0.25–0.6, or a half disc), plus 0–4 small ones (thin blobs, line segments up to 28 px);
  they never touch the object (a 2 px margin keeps its silhouette intact). The large ones make
  "a big blob" or "a straight edge" no evidence of any class, so the classifier has to look at
  the object's exact outline;
* Gaussian pixel noise (σ ≤ 0.05) over everything, object included.

Nothing but the object's shape tells the class: background, distractors, colour, size and
position are drawn independently of it, so a classifier that is right must look at the object.
Shapes are drawn without anti-aliasing by exact tests on pixel centres (half-planes, radii), so
:attr:`ShapesBatch.masks` are exactly the object's pixels (noise aside) and
:attr:`ShapesBatch.boxes` their tight bounding box.

Everything is drawn from one ``torch.Generator`` seeded with ``seed`` in a fixed order, so the
same ``(n, seed, size)`` gives identical tensors (for a given torch version). Generation is
vectorised in chunks (distractors drawn with PIL): 6,000 images of 64×64 take about two seconds
of one CPU core.

Example:
    >>> from cnnviz.data.shapes import SHAPE_CLASSES, make_shapes
    >>> batch = make_shapes(8, seed=0)
    >>> batch.images.shape, batch.masks.shape, batch.boxes.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 64, 64]), torch.Size([8, 4]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""Class names, in label order."""

HELDOUT_SEED: int = 20_240_601
"""Seed of the held-out set. Training (:func:`cnnviz.models.shapes_vgg11.train_shapes_vgg11`)
draws its data with seeds below 1,000, so the two never coincide."""

DATASET_VERSION: int = 3
"""Bumped whenever the generator's code changes its output for a given seed; together with
:func:`dataset_config` it names the cached model (:mod:`cnnviz.models.shapes_vgg11`)."""

AREA_FRACTION: tuple[float, float] = (0.04, 0.08)
"""Range of the object's intended area as a fraction of the image (uniform); pixel-centre
sampling makes the drawn mask's fraction deviate by a few per cent of that."""

_CHUNK = 512  # images rendered at once, which bounds memory (about 30 MB at 64×64)
_STRIPE_PERIOD = (4.0, 12.0)  # pixels
_STRIPE_SHARPNESS = (0.5, 3.0)  # 0.5: nearly sinusoidal; 3: nearly square waves
_DISTRACTORS = (0, 4)  # fewest and most small distractors per image
_LINE_HALF_LENGTH = (5.0, 14.0)
_LINE_HALF_WIDTH = (0.6, 1.3)
_BLOB_HALF_LENGTH = (2.0, 8.0)
_BLOB_ASPECT = (0.25, 0.6)  # minor / major axis: never round, so never a circle or square
_LARGE_PROBABILITY = 0.8  # chance of one object-sized distractor
_LARGE_HALF_LENGTH = (6.0, 11.0)
# Distractor kinds: small (blob, line) and object-sized (ellipse, rectangle, half disc).
_BLOB, _LINE, _ELLIPSE, _RECTANGLE, _HALF_DISC = range(5)
_NUM_KINDS = 5
_NOISE = (0.0, 0.05)  # range of the pixel noise's standard deviation
_POSITION_POWER = 0.5  # offsets from the middle are |v|^power, v uniform: < 1 favours the edges
_RING_INNER = 0.55  # inner radius of a ring, relative to its outer radius
_STAR_INNER = 0.5  # inner vertex radius of the 5-pointed star, relative to the outer one
_CROSS_HALF_WIDTH = 0.3  # half-width of a cross's arm, relative to the arm's half-length
_CROSS_LENGTH = 1.0 / math.sqrt(1.0 + _CROSS_HALF_WIDTH**2)  # arm tips' corners on the unit circle

# Area of each class's shape when its circumradius is 1 (all shapes fit the unit circle), so a
# shape of area A has circumradius sqrt(A / unit_area).
_UNIT_AREA: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,  # half-side 1/√2
    "triangle": 3.0 * math.sqrt(3.0) / 4.0,  # equilateral
    "star": 5.0 * _STAR_INNER * math.sin(math.radians(36.0)),  # 10 triangles (1, inner, 36°)
    "cross": _CROSS_LENGTH**2 * (8.0 * _CROSS_HALF_WIDTH - 4.0 * _CROSS_HALF_WIDTH**2),
    "ring": math.pi * (1.0 - _RING_INNER**2),
}


@dataclass(frozen=True)
class ShapesBatch:
    """Images of the shapes dataset with their ground truth.

    Attributes:
        images: ``(N, 3, S, S)`` float32 in [0, 1].
        labels: ``(N,)`` int64 indices into :data:`SHAPE_CLASSES`.
        masks: ``(N, S, S)`` bool, True exactly on the object's pixels.
        boxes: ``(N, 4)`` int64 ``x0, y0, x1, y1``, the tight box of the mask (x1, y1 exclusive).
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_shapes(n: int, *, seed: int, size: int = 64) -> ShapesBatch:
    """Generate ``n`` images of ``size``×``size`` pixels, reproducibly from ``seed``.

    Classes are balanced: each occurs ``n // len(SHAPE_CLASSES)`` or one more times, in a
    random order. See the module docstring for what an image contains.

    Raises:
        TypeError: ``n``, ``seed`` or ``size`` is not an int.
        ValueError: ``n`` is negative or ``size`` is outside 32–512.
    """
    for name, value in (("n", n), ("seed", seed), ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"n must be the number of images (>= 0), got {n}")
    if not 32 <= size <= 512:
        raise ValueError(f"size must be between 32 and 512 pixels, got {size}")
    gen = torch.Generator().manual_seed(seed)
    num_classes = len(SHAPE_CLASSES)
    labels = torch.arange(n, dtype=torch.int64).remainder(num_classes)
    labels = labels[torch.randperm(n, generator=gen)]
    images, masks = [], []
    for start in range(0, n, _CHUNK):
        chunk_images, chunk_masks = _render(labels[start : start + _CHUNK], gen, size)
        images.append(chunk_images)
        masks.append(chunk_masks)
    if n == 0:
        images = [torch.zeros(0, 3, size, size)]
        masks = [torch.zeros(0, size, size, dtype=torch.bool)]
    mask = torch.cat(masks)
    return ShapesBatch(torch.cat(images), labels, mask, mask_boxes(mask))


def heldout_shapes(n: int = 200, *, size: int = 64) -> ShapesBatch:
    """The held-out set, ``make_shapes(n, seed=HELDOUT_SEED, size=size)``; never trained on."""
    return make_shapes(n, seed=HELDOUT_SEED, size=size)


def dataset_config() -> dict[str, object]:
    """The generator's version and parameters, JSON-ready (for cache keys and manifests)."""
    return {
        "version": DATASET_VERSION,
        "classes": list(SHAPE_CLASSES),
        "area_fraction": list(AREA_FRACTION),
        "stripe_period": list(_STRIPE_PERIOD),
        "stripe_sharpness": list(_STRIPE_SHARPNESS),
        "small_distractors": list(_DISTRACTORS),
        "line_half_length": list(_LINE_HALF_LENGTH),
        "line_half_width": list(_LINE_HALF_WIDTH),
        "blob_half_length": list(_BLOB_HALF_LENGTH),
        "blob_aspect": list(_BLOB_ASPECT),
        "large_probability": _LARGE_PROBABILITY,
        "large_half_length": list(_LARGE_HALF_LENGTH),
        "noise": list(_NOISE),
        "position_power": _POSITION_POWER,
        "ring_inner": _RING_INNER,
        "star_inner": _STAR_INNER,
        "cross_half_width": _CROSS_HALF_WIDTH,
    }


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(N, 4)`` int64 ``x0, y0, x1, y1`` (x1, y1 exclusive) of ``(N, H, W)`` masks.

    An empty mask gets the box ``0, 0, 0, 0``.
    """
    if masks.dim() != 3:
        raise ValueError(f"Expected masks of shape (N, H, W), got {tuple(masks.shape)}")
    masks = masks.bool()
    boxes = []
    for axis in (1, 2):  # any over rows → columns present (x); any over columns → rows (y)
        present = masks.any(dim=axis)
        length = present.shape[1]
        first = present.to(torch.uint8).argmax(dim=1)
        last = length - present.flip(1).to(torch.uint8).argmax(dim=1)
        nonempty = present.any(dim=1)
        boxes.append((torch.where(nonempty, first, 0), torch.where(nonempty, last, 0)))
    (x0, x1), (y0, y1) = boxes
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)


# -- rendering ---------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _background(batch: int, gen: torch.Generator, size: int) -> torch.Tensor:
    """``(B, 3, S, S)``: smooth colour noise, stripes, or an even blend of both."""
    # Two octaves mixed at 16×16 (coarse 5×5 upsampled bicubically), then upsampled once.
    coarse = torch.rand(batch, 3, 5, 5, generator=gen)
    fine = torch.rand(batch, 3, 16, 16, generator=gen)
    smooth = 0.7 * F.interpolate(coarse, size=(16, 16), mode="bicubic") + 0.3 * fine
    smooth = F.interpolate(smooth, size=(size, size), mode="bilinear").clamp(0.0, 1.0)

    ys, xs = _grid(size)
    angle = _uniform(gen, (batch, 1, 1), 0.0, math.pi)
    period = _uniform(gen, (batch, 1, 1), *_STRIPE_PERIOD)
    phase = _uniform(gen, (batch, 1, 1), 0.0, 2.0 * math.pi)
    sharpness = _uniform(gen, (batch, 1, 1), *_STRIPE_SHARPNESS)
    wavenumber = 2.0 * math.pi / period
    wave = torch.sin(xs * (angle.cos() * wavenumber) + (ys * (angle.sin() * wavenumber) + phase))
    weight = (0.5 + 0.5 * torch.tanh(sharpness * wave)).unsqueeze(1)
    colours = torch.rand(batch, 2, 3, 1, 1, generator=gen)
    stripes = weight * colours[:, 0] + (1.0 - weight) * colours[:, 1]

    kind = torch.randint(0, 3, (batch,), generator=gen)  # 0 smooth, 1 stripes, 2 blend
    alpha = torch.tensor([0.0, 1.0, 0.5])[kind].view(batch, 1, 1, 1)
    return (1.0 - alpha) * smooth + alpha * stripes


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(ys, xs)``, shaped ``(S, 1)`` and ``(1, S)``; pixel (i, j) is at
    (i, j)."""
    coords = torch.arange(size, dtype=torch.float32)
    return coords.view(size, 1), coords.view(1, size)


def _local(
    ys: torch.Tensor,
    xs: torch.Tensor,
    cy: torch.Tensor,
    cx: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    scale_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(u, v)`` in each shape's frame: centred, rotated by ``-angle``, with
    ``u`` divided by ``scale`` and ``v`` by ``scale_v`` (default ``scale``).

    ``cy, cx, angle, scale`` broadcast against ``ys, xs`` (give them trailing ``1, 1`` dims).
    Each result costs one full-size addition: the products are taken on rows and columns.
    """
    scale_v = scale if scale_v is None else scale_v
    cos, sin = angle.cos(), angle.sin()
    dy, dx = ys - cy, xs - cx  # (..., S, 1) and (..., 1, S)
    return dx * (cos / scale) + dy * (sin / scale), dy * (cos / scale_v) - dx * (sin / scale_v)


def _shape_mask(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside test of class ``name`` at local coordinates of a shape with circumradius 1."""
    if name in ("circle", "ring"):
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= _RING_INNER**2) if name == "ring" else rho2 <= 1.0
    if name == "square":
        half_side = 1.0 / math.sqrt(2.0)
        return (u.abs() <= half_side) & (v.abs() <= half_side)
    if name == "triangle":  # equilateral: edge normals at 90°+120°k, inradius 1/2
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            normal = math.pi / 2.0 + 2.0 * math.pi * k / 3.0
            inside &= u * math.cos(normal) + v * math.sin(normal) <= 0.5
        return inside
    if name == "cross":
        arm, width = _CROSS_LENGTH, _CROSS_HALF_WIDTH * _CROSS_LENGTH
        au, av = u.abs(), v.abs()
        return ((au <= arm) & (av <= width)) | ((au <= width) & (av <= arm))
    if name == "star":
        # Fold the angle into one 36° half-sector between an outer vertex (at 0°, radius 1) and
        # an inner one (at 36°); inside iff on the centre's side of the edge joining them.
        sector = 2.0 * math.pi / 5.0
        phi = torch.remainder(torch.atan2(v, u), sector)
        phi = torch.minimum(phi, sector - phi)
        rho = torch.hypot(u, v)
        px, py = rho * phi.cos(), rho * phi.sin()
        ex = _STAR_INNER * math.cos(sector / 2.0) - 1.0
        ey = _STAR_INNER * math.sin(sector / 2.0)
        return ex * py - ey * (px - 1.0) >= 0.0
    raise ValueError(f"Unknown shape class {name!r}; expected one of {SHAPE_CLASSES}")


def _unit_polygon(kind: int) -> torch.Tensor:
    """``(P, 2)`` vertices of distractor ``kind`` with unit half-length and half-width."""
    if kind in (_BLOB, _ELLIPSE):
        t = torch.arange(12 if kind == _BLOB else 24, dtype=torch.float32)
        t = t * (2.0 * math.pi / t.numel())
    elif kind == _HALF_DISC:
        t = torch.linspace(0.0, math.pi, 13)
    else:  # _LINE, _RECTANGLE
        return torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    return torch.stack([t.cos(), t.sin()], dim=-1)


def _distractor_map(
    kind: torch.Tensor,
    active: torch.Tensor,
    centres: torch.Tensor,
    angle: torch.Tensor,
    half_length: torch.Tensor,
    half_width: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """``(B, S, S)`` int64: 0 for no distractor, ``k + 1`` where distractor ``k`` is on top.

    Distractors are filled polygons drawn by PIL (no anti-aliasing), in slot order. Inputs are
    ``(B, K)`` (``centres`` ``(B, K, 2)`` as x, y); inactive slots are not drawn.
    """
    radii = torch.stack([half_length, half_width], dim=-1).unsqueeze(2)  # (B, K, 1, 2)
    cos, sin = angle.cos().unsqueeze(2), angle.sin().unsqueeze(2)
    polygons = []
    for k in range(_NUM_KINDS):
        local = _unit_polygon(k) * radii  # (B, K, P, 2)
        x = local[..., 0] * cos - local[..., 1] * sin + centres[..., 0:1]
        y = local[..., 0] * sin + local[..., 1] * cos + centres[..., 1:2]
        # PIL's pixel (i, j) spans [j, j + 1) × [i, i + 1); ours is centred on (i, j).
        polygons.append(torch.stack([x + 0.5, y + 0.5], dim=-1).flatten(2).numpy())
    kinds, actives = kind.tolist(), active.tolist()
    maps = np.zeros((len(kinds), size, size), dtype=np.uint8)
    for b, (row, on) in enumerate(zip(kinds, actives, strict=True)):
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        for k, (slot_kind, slot_on) in enumerate(zip(row, on, strict=True)):
            if slot_on:
                draw.polygon(polygons[slot_kind][b, k].tolist(), fill=k + 1)
        maps[b] = np.asarray(canvas)
    return torch.from_numpy(maps).to(torch.int64)


def _render(labels: torch.Tensor, gen: torch.Generator, size: int) -> tuple[torch.Tensor, ...]:
    """Images ``(B, 3, S, S)`` and masks ``(B, S, S)`` for one chunk of labels."""
    batch = labels.shape[0]
    ys, xs = _grid(size)
    image = _background(batch, gen, size)

    # The object: area → circumradius per class; centre so that it lies fully inside.
    unit_area = torch.tensor([_UNIT_AREA[name] for name in SHAPE_CLASSES])[labels]
    area = _uniform(gen, (batch,), *AREA_FRACTION) * size * size
    radius = (area / unit_area).sqrt()
    # Along each axis the offset from the middle of the allowed range is half_span·sign(v)·|v|^½,
    # v uniform in [−1, 1]: its density rises linearly towards the edges, so that pointing at
    # the image centre is a weak baseline for localisation (it hits about 40 % of boxes).
    lo, span = radius + 1.0, (size - 3.0 - 2.0 * radius).clamp(min=0.0)
    offset = _uniform(gen, (2, batch), -1.0, 1.0)
    offset = offset.sign() * offset.abs() ** _POSITION_POWER
    cx, cy = lo + 0.5 * span * (1.0 + offset[0]), lo + 0.5 * span * (1.0 + offset[1])
    angle = _uniform(gen, (batch,), 0.0, 2.0 * math.pi)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    for index, name in enumerate(SHAPE_CLASSES):
        rows = (labels == index).nonzero().squeeze(1)
        params = (t[rows].view(-1, 1, 1) for t in (cy, cx, angle, radius))
        mask[rows] = _shape_mask(name, *_local(ys, xs, *params))

    # Distractors, kept 2 px away from the object: in slot 0 (drawn first) perhaps one as large
    # as an object but of no class (elongated ellipse or rectangle, half disc), then small ones
    # (thin blobs and line segments).
    slots = (batch, _DISTRACTORS[1] + 1)
    count = torch.randint(_DISTRACTORS[0], _DISTRACTORS[1] + 1, (batch, 1), generator=gen)
    active = torch.arange(slots[1]).view(1, -1) <= count
    active[:, 0] = torch.rand(batch, generator=gen) < _LARGE_PROBABILITY
    small_kind = torch.where(torch.rand(slots, generator=gen) < 0.5, _LINE, _BLOB)
    large_kind = torch.randint(_ELLIPSE, _NUM_KINDS, (batch, 1), generator=gen)
    kind = torch.cat([large_kind, small_kind[:, 1:]], dim=1)
    centres = _uniform(gen, (*slots, 2), 0.0, size - 1.0)
    dangle = _uniform(gen, slots, 0.0, 2.0 * math.pi)
    blob = _uniform(gen, slots, *_BLOB_HALF_LENGTH)
    line = _uniform(gen, slots, *_LINE_HALF_LENGTH)
    large = _uniform(gen, slots, *_LARGE_HALF_LENGTH)
    half_length = torch.where(kind == _BLOB, blob, torch.where(kind == _LINE, line, large))
    thin = half_length * _uniform(gen, slots, *_BLOB_ASPECT)
    line_width = _uniform(gen, slots, *_LINE_HALF_WIDTH)
    half_width = torch.where(kind == _LINE, line_width, thin)
    half_width = torch.where(kind == _HALF_DISC, half_length, half_width)
    which = _distractor_map(kind, active, centres, dangle, half_length, half_width, size)
    margin = mask.unsqueeze(1).float()  # dilated by 2 px, separably
    margin = F.max_pool2d(margin, kernel_size=(1, 5), stride=1, padding=(0, 2))
    margin = F.max_pool2d(margin, kernel_size=(5, 1), stride=1, padding=(2, 0)) > 0
    which = which.masked_fill(margin.squeeze(1), 0)
    palette = torch.rand(batch, slots[1] + 1, 3, generator=gen)
    painted = palette.gather(1, which.view(batch, -1, 1).expand(-1, -1, 3))  # (B, S*S, 3)
    painted = painted.permute(0, 2, 1).reshape(batch, 3, size, size)
    image = torch.where((which > 0).unsqueeze(1), painted, image)

    # Object colour: of 4 random candidates, the farthest from the background under the mask.
    weight = mask.unsqueeze(1).float()
    under = (image * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp(min=1.0)
    candidates = torch.rand(batch, 4, 3, generator=gen)
    best = (candidates - under.unsqueeze(1)).norm(dim=2).argmax(dim=1)
    colour = candidates[torch.arange(batch), best].view(batch, 3, 1, 1)
    image = torch.where(mask.unsqueeze(1), colour, image)

    sigma = _uniform(gen, (batch, 1, 1, 1), *_NOISE)
    noise = torch.randn(image.shape, generator=gen) * sigma
    return (image + noise).clamp(0.0, 1.0).contiguous(), mask.contiguous()
