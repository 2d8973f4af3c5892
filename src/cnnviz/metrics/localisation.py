"""Localisation against ground truth: the pointing game and the energy-based pointing game.

* **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV
  2016): a hit when the map's maximum (the first one in raster order) lies within ``tolerance``
  pixels (Euclidean distance between pixel centres; 15 px in the paper) of an object pixel.
  A constant map points nowhere and counts as a miss.
* **Energy-based pointing game** (Wang et al., Score-CAM, CVPRW 2020): the share of the map's
  positive mass inside the object, ``Σ_{p ∈ object} max(m_p, 0) / Σ_p max(m_p, 0)``. A uniform map
  scores the object's area fraction; a map without positive mass has no share (NaN).

Both take maps ``(N, H, W)`` and boolean object masks ``(N, H, W)`` at the same (model input)
resolution; :func:`boxes_to_mask` rasterises boxes.

Ground-truth files
------------------
``cnnviz evaluate DIR --boxes FILE`` reads boxes or masks for the images of ``DIR`` from JSON or
CSV. Coordinates are pixels of the **original image file** (before resizing and cropping);
boxes are ``x0, y0, x1, y1`` with ``x0, y0`` inclusive and ``x1, y1`` exclusive (a box
``0, 0, 10, 5`` covers 10 columns and 5 rows). Several boxes of one image are joined (union).
Images are matched by their path relative to ``DIR``, else by file name.

JSON::

    {
      "images": {
        "cat.jpg": {"boxes": [[10, 20, 110, 140], [150, 30, 200, 90]]},
        "dog.png": {"mask": "masks/dog.png"},
        "bird.jpg": [[5, 5, 60, 48]]
      }
    }

A value is a list of boxes, or an object with ``"boxes"`` and/or ``"mask"``: the path (relative
to the JSON file) of an image of the same size as the input whose pixels ≥ 128 (grey level) are
the object. The top-level ``"images"`` wrapper may be left out.

CSV (header required; one row per box; ``#`` comment lines allowed)::

    image,x0,y0,x1,y1
    cat.jpg,10,20,110,140
    cat.jpg,150,30,200,90

For the model, the ground truth goes through the same resize and centre crop as the image
(nearest-neighbour), so it is scored at the model input resolution; an object cropped away
entirely leaves the image unscored.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnviz.errors import CnnvizError, NonFiniteError
from cnnviz.inputs.preprocess import resize_and_crop

if TYPE_CHECKING:
    from cnnviz.inputs.preprocess import Preprocessing

Box = tuple[int, int, int, int]

DEFAULT_TOLERANCE = 15.0
"""Pixels, as in Zhang et al. 2016."""


class GroundTruthError(CnnvizError, ValueError):
    """A ground-truth file that cannot be read or does not fit its images."""


# -- the games ---------------------------------------------------------------------------------


def boxes_to_mask(boxes: Sequence[Sequence[int]], size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` bool mask of the union of ``boxes`` (``x0, y0, x1, y1``; x1, y1 exclusive),
    clipped to the image ``size = (H, W)``."""
    h, w = size
    mask = torch.zeros(h, w, dtype=torch.bool)
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return mask


def _check(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(maps, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise TypeError("maps and masks must be torch tensors")
    if maps.dim() == 2:
        maps, masks = maps.unsqueeze(0), masks.unsqueeze(0)
    if maps.dim() != 3 or tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(
            f"maps and masks must both be (N, H, W) of the same shape, got {tuple(maps.shape)} "
            f"and {tuple(masks.shape)}; upsample maps to the input resolution first."
        )
    if not torch.isfinite(maps).all():
        raise NonFiniteError("The maps contain NaN or infinite values; they cannot be scored.")
    masks = masks.bool().cpu()
    empty = [i for i in range(masks.shape[0]) if not masks[i].any()]
    if empty:
        raise ValueError(f"The object masks of images {empty} are empty; nothing to point at.")
    return maps.detach().float().cpu(), masks


@dataclass(frozen=True)
class PointingResult:
    """Pointing-game outcome per image.

    Attributes:
        hits: ``(N,)`` bool.
        points: ``(N, 2)`` int64 ``(y, x)`` of each map's maximum.
        distances: ``(N,)`` distance in pixels from the maximum to the nearest object pixel.
    """

    hits: torch.Tensor
    points: torch.Tensor
    distances: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Share of hits."""
        return float(self.hits.float().mean())


def pointing_game(
    maps: torch.Tensor, masks: torch.Tensor, *, tolerance: float = DEFAULT_TOLERANCE
) -> PointingResult:
    """Hit when the maximum of each map is within ``tolerance`` pixels of its object mask."""
    if not tolerance >= 0 or math.isinf(tolerance):
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    maps, masks = _check(maps, masks)
    n, _, w = maps.shape
    flat = maps.reshape(n, -1)
    index = flat.argmax(dim=1)  # the first maximum in raster order
    points = torch.stack([index // w, index % w], dim=1)
    constant = flat.max(dim=1).values == flat.min(dim=1).values
    distances = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        d2 = (ys - points[i, 0]).double() ** 2 + (xs - points[i, 1]).double() ** 2
        distances[i] = d2.min().sqrt()
    hits = (distances <= tolerance) & ~constant
    return PointingResult(hits, points, distances)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(N,)`` share of positive map mass inside the object (NaN for a map with none)."""
    maps, masks = _check(maps, masks)
    energy = maps.double().clamp(min=0)
    total = energy.sum(dim=(1, 2))
    inside = (energy * masks).sum(dim=(1, 2))
    return torch.where(
        total > 0, inside / total.clamp(min=1e-300), torch.full_like(total, math.nan)
    )


REFERENCE_MAPS: tuple[str, ...] = ("random-map", "coarse-random-map", "centre-map")
"""Model-free maps to score next to the methods (:func:`reference_map`)."""


def reference_map(name: str, size: tuple[int, int], index: int, seed: int) -> torch.Tensor:
    """``(H, W)`` reference map, independent of the model.

    ``random-map``: uniform noise per pixel; ``coarse-random-map``: uniform noise on a grid of
    ``max(2, round(side / 16))`` cells per side (4×4 for 64 px, the resolution of a last-block
    CAM), bilinearly upsampled — a random map as smooth as a CAM, so that deleting it removes
    blobs rather than scattered pixels; both seeded by ``seed`` and ``index``. ``centre-map``: a
    Gaussian at the image centre, σ a quarter of the shorter side.
    """
    h, w = size
    generator = torch.Generator().manual_seed(seed * 100_003 + index)
    if name == "random-map":
        return torch.rand(h, w, generator=generator)
    if name == "coarse-random-map":
        grid = torch.rand(1, 1, max(2, round(h / 16)), max(2, round(w / 16)), generator=generator)
        return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if name != "centre-map":
        raise ValueError(f"Unknown reference map {name!r}; use one of {REFERENCE_MAPS}")
    ys = torch.arange(h, dtype=torch.float32).view(-1, 1) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32).view(1, -1) - (w - 1) / 2
    sigma = max(min(h, w) / 4.0, 0.5)
    return torch.exp(-(ys**2 + xs**2) / (2.0 * sigma**2))


# -- ground-truth files ------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """The object of one image: boxes and/or a mask file, in the original image's pixels."""

    boxes: tuple[Box, ...] = ()
    mask_file: Path | None = None

    def mask(self, size: tuple[int, int]) -> torch.Tensor:
        """``(H, W)`` bool mask at the original image ``size = (H, W)``."""
        mask = boxes_to_mask(self.boxes, size)
        if self.mask_file is not None:
            mask |= _read_mask(self.mask_file, size)
        return mask

    def model_mask(self, size: tuple[int, int], preprocessing: Preprocessing) -> torch.Tensor:
        """The mask resized and centre-cropped like the image (nearest), at the model input."""

        picture = Image.fromarray(self.mask(size).numpy().astype(np.uint8) * 255, mode="L")
        nearest = dataclasses.replace(preprocessing, interpolation="nearest").with_channels(1)
        shown = np.asarray(resize_and_crop(picture, nearest))  # (H, W): one channel, "L"
        return torch.from_numpy(shown >= 128)


def _read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    try:
        with Image.open(path) as opened:
            grey = np.asarray(opened.convert("L"))
    except (OSError, ValueError) as e:
        raise GroundTruthError(f"Cannot read the mask {path} ({e}); give a PNG mask.") from e
    if grey.shape != tuple(size):
        raise GroundTruthError(
            f"The mask {path} is {grey.shape[1]}×{grey.shape[0]} but its image is "
            f"{size[1]}×{size[0]}; masks must have the image's size."
        )
    return torch.from_numpy(grey >= 128)


def _parse_box(value: Any, where: str) -> Box:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise GroundTruthError(f"{where}: a box must be [x0, y0, x1, y1] numbers, got {value!r}")
    x0, y0, x1, y1 = (round(float(v)) for v in value)
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise GroundTruthError(
            f"{where}: box {list(value)} needs 0 <= x0 < x1 and 0 <= y0 < y1 (x1, y1 exclusive)."
        )
    return x0, y0, x1, y1


def _parse_json(path: Path) -> dict[str, GroundTruth]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GroundTruthError(f"Cannot read ground truth {path}: {e}") from e
    if isinstance(data, Mapping) and isinstance(data.get("images"), Mapping):
        data = data["images"]
    if not isinstance(data, Mapping):
        raise GroundTruthError(
            f"{path}: expected an object mapping image names to boxes (see docs/evaluation.md)."
        )
    truth: dict[str, GroundTruth] = {}
    for name, entry in data.items():
        where = f"{path}: {name}"
        if isinstance(entry, list):
            entry = {"boxes": entry}
        if not isinstance(entry, Mapping) or not ({"boxes", "mask"} & set(entry)):
            raise GroundTruthError(f"{where}: give a list of boxes or {{'boxes': …, 'mask': …}}.")
        raw_boxes = entry.get("boxes", [])
        if not isinstance(raw_boxes, list):
            raise GroundTruthError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1].")
        mask = entry.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise GroundTruthError(f"{where}: 'mask' must be a file path string.")
        truth[str(name)] = GroundTruth(
            boxes=tuple(_parse_box(b, where) for b in raw_boxes),
            mask_file=(path.parent / mask) if mask else None,
        )
    return truth


def _parse_csv(path: Path) -> dict[str, GroundTruth]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise GroundTruthError(f"Cannot read ground truth {path}: {e}") from e
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(lines)
    needed = ["image", "x0", "y0", "x1", "y1"]
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != needed:
        raise GroundTruthError(f"{path}: the CSV header must be exactly {','.join(needed)}.")
    boxes: dict[str, list[Box]] = {}
    for number, row in enumerate(reader, start=2):
        where = f"{path}, row {number}"
        try:
            values = [float(row[k]) for k in needed[1:]]
        except (TypeError, ValueError) as e:
            raise GroundTruthError(f"{where}: coordinates must be numbers ({e}).") from e
        boxes.setdefault(row["image"].strip(), []).append(_parse_box(values, where))
    return {name: GroundTruth(boxes=tuple(b)) for name, b in boxes.items()}


def load_ground_truth(path: str | Path) -> dict[str, GroundTruth]:
    """Read a ground-truth file (``.json`` or ``.csv``, format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GroundTruthError(f"No ground-truth file {path}; give a .json or .csv file.")
    if path.suffix.lower() == ".csv":
        return _parse_csv(path)
    if path.suffix.lower() == ".json":
        return _parse_json(path)
    raise GroundTruthError(f"{path}: unknown ground-truth format; use .json or .csv.")


def lookup(truth: Mapping[str, GroundTruth], image: Path, root: Path | None) -> GroundTruth | None:
    """The entry for ``image``: by path relative to ``root`` (POSIX form), else by file name."""
    if root is not None:
        try:
            relative = image.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            relative = None
        if relative is not None and relative in truth:
            return truth[relative]
    return truth.get(image.name)
