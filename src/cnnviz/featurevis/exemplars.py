"""Dataset exemplars: the natural images, and the crops of them, where each channel fires most.

For a layer ``a`` and each kept channel ``c`` over a stream of images ``x_n``:

* the top-``k`` images by ``s[n, c] = mean_{y,x} a(x_n)[c, y, x]`` (the channel objective whose
  best value check (a) of :mod:`cnnviz.featurevis.checks` compares a visualisation with);
* the top-``k`` images by the peak ``max_{y,x} a(x_n)[c, y, x]``, each with its position and the
  crop of the picture around it: the effective receptive field of that position
  (:mod:`cnnviz.featurevis.receptive_field`), resized to 64 × 64.

The stream is read once in batches (:class:`~cnnviz.featurevis.exemplar_collector.
ExemplarCollector`, O(C·k) memory), then only the peak images are decoded again for the crops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnviz.api import model_preprocessing, unpack_model
from cnnviz.capture.forward import model_device
from cnnviz.capture.layers import resolve_layer
from cnnviz.errors import ArgumentError, positive_int
from cnnviz.featurevis.checks import layer_outputs
from cnnviz.featurevis.exemplar_collector import ExemplarCollector
from cnnviz.featurevis.receptive_field import ReceptiveField, receptive_field, whole_image
from cnnviz.inputs.given import as_batch, tensor_pictures
from cnnviz.inputs.images import find_images
from cnnviz.outputs.files import atomic_write_bytes, encode_png, to_json_text

if TYPE_CHECKING:
    from cnnviz.models.loaded import LoadedModel
    from cnnviz.render.canvas import InlineFigure

__all__ = ["CROP_SIZE", "ExemplarCollector", "Exemplars", "collect_exemplars"]

logger = logging.getLogger(__name__)

CROP_SIZE = 64
"""Side of every crop, in pixels."""
JSON_NAME = "exemplars.json"
FIGURE_NAME = "exemplars.png"


def crop_name(channel: int, rank: int) -> str:
    """Where :meth:`Exemplars.save` writes the crop of ``channel``'s peak of rank ``rank``."""
    return f"channel-{channel:04d}/{rank:02d}.png"


@dataclass(frozen=True)
class Exemplars:
    """A layer's dataset exemplars (row ``r`` of every array is channel ``channels[r]``).

    ``scores``/``score_sources``: the top-``k`` images by mean activation, descending (NaN and
    -1 where fewer images came); ``peaks``/``peak_sources``/``peak_positions``: the top-``k`` by
    the largest activation and its ``(y, x)``; ``boxes``: ``(top, left, bottom, right)`` of each
    peak's receptive-field crop in model-input pixels (-1 where missing); ``crops``: per channel
    ``(k, 64, 64, 3)`` uint8 (black where missing). ``sources[i]`` names image id ``i``.
    """

    layer: str
    k: int
    sources: tuple[str, ...]
    scores: np.ndarray
    score_sources: np.ndarray
    peaks: np.ndarray
    peak_sources: np.ndarray
    peak_positions: np.ndarray
    boxes: np.ndarray
    channels: tuple[int, ...]
    crops: tuple[np.ndarray, ...] | None = None
    receptive_field: ReceptiveField | None = None

    def row(self, channel: int) -> int:
        """The row of the layer's channel ``channel``.

        Raises:
            ArgumentError: a channel that was not kept.
        """
        if channel not in self.channels:
            raise ArgumentError(
                f"channel {channel} of layer {self.layer!r} was not collected (kept: "
                f"{list(self.channels)})"
            )
        return self.channels.index(channel)

    def best(self, channel: int) -> float:
        """The largest mean activation of ``channel`` over the images (check (a)'s reference)."""
        return float(self.scores[self.row(channel), 0])

    def to_dict(self) -> dict[str, Any]:
        """Everything but the crops' pixels, for JSON (missing entries left out)."""

        def name(i: int) -> str:
            return self.sources[i]

        rows = []
        for r, channel in enumerate(self.channels):
            top = [
                {"source": name(int(i)), "id": int(i), "score": float(s)}
                for s, i in zip(self.scores[r], self.score_sources[r], strict=True)
                if i >= 0
            ]
            peaks = [
                {
                    "source": name(int(i)),
                    "id": int(i),
                    "value": float(v),
                    "position": [int(p) for p in pos],
                    "box": [int(b) for b in box],
                    "crop": crop_name(channel, j) if self.crops is not None else None,
                }
                for j, (v, i, pos, box) in enumerate(
                    zip(
                        self.peaks[r],
                        self.peak_sources[r],
                        self.peak_positions[r],
                        self.boxes[r],
                        strict=True,
                    )
                )
                if i >= 0
            ]
            rows.append({"channel": channel, "top": top, "peaks": peaks})
        field = self.receptive_field.as_dict() if self.receptive_field is not None else None
        return {
            "layer": self.layer,
            "k": self.k,
            "sources": list(self.sources),
            "receptive_field": field,
            "channels": rows,
        }

    def plot(self) -> InlineFigure:
        """One row per channel (at most 16) of its peak crops, each titled with its value."""
        # lazy: matplotlib is imported only when a figure is drawn
        from cnnviz.render.exemplars import exemplar_figure

        blank = np.zeros((self.k, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        crops = self.crops if self.crops is not None else tuple(blank for _ in self.channels)
        return exemplar_figure(
            crops, self.peaks, self.channels, title=f"Dataset exemplars of {self.layer}"
        )

    def _repr_png_(self) -> bytes:
        # lazy: matplotlib is imported only when a figure is drawn
        from cnnviz.render.canvas import figure_to_png_bytes

        return figure_to_png_bytes(self.plot())

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``exemplars.json``, ``exemplars.png`` and each crop as ``channel-XXXX/NN.png``
        (atomically, each file); returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if self.crops is not None:
            for channel, crops in zip(self.channels, self.crops, strict=True):
                (out / crop_name(channel, 0)).parent.mkdir(exist_ok=True)
                for j, source in enumerate(self.peak_sources[self.row(channel)]):
                    if source >= 0:
                        atomic_write_bytes(out / crop_name(channel, j), encode_png(crops[j]))
        atomic_write_bytes(out / JSON_NAME, (to_json_text(self.to_dict()) + "\n").encode())
        atomic_write_bytes(out / FIGURE_NAME, self._repr_png_())
        return out


def check_channels(
    channels: Sequence[int] | None, count: int, layer: str, spatial: bool
) -> tuple[int, ...]:
    """The kept channels (default: all ``count``), each once, in the order given.

    Raises:
        ArgumentError: a channel out of range, or an empty list.
    """
    if channels is None:
        return tuple(range(count))
    chosen = tuple(dict.fromkeys(int(c) for c in channels))
    if not chosen:
        raise ArgumentError("channels is empty; name at least one channel")
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        kind = "channels" if spatial else "units"
        raise ArgumentError(
            f"channel {bad[0]} is out of range: layer {layer!r} has {count} {kind} (0–{count - 1})"
        )
    return chosen


def peak_boxes(field: ReceptiveField, positions: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``(C, k, 4)`` int64 crop boxes of the peaks at ``positions`` ``(C, k, 2)`` (-1 where the
    source is missing)."""
    boxes = np.full((*sources.shape, 4), -1, dtype=np.int64)
    for index in zip(*np.nonzero(sources >= 0), strict=True):
        y, x = positions[index]
        boxes[index] = field.box(int(y), int(x))
    return boxes


def cut_crops(
    boxes: np.ndarray, sources: np.ndarray, pictures: Mapping[int, np.ndarray]
) -> tuple[np.ndarray, ...]:
    """Per channel ``(k, 64, 64, 3)`` uint8: ``pictures[source]`` cut by its box and resized
    (bilinear, PIL); black where the source is missing."""
    crops = []
    for r in range(sources.shape[0]):
        row = np.zeros((sources.shape[1], CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
        for j, source in enumerate(sources[r]):
            if source < 0:
                continue
            top, left, bottom, right = (int(v) for v in boxes[r, j])
            piece = Image.fromarray(
                np.ascontiguousarray(pictures[int(source)][top:bottom, left:right])
            )
            row[j] = np.asarray(piece.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR))
        crops.append(row)
    return tuple(crops)


def exemplars_of(
    collector: ExemplarCollector,
    *,
    layer: str,
    sources: Sequence[str],
    channels: Sequence[int],
    field: ReceptiveField,
    pictures_of: Callable[[list[int]], Mapping[int, np.ndarray]] | None,
) -> Exemplars:
    """The :class:`Exemplars` of a filled collector: boxes from ``field``, crops from the
    pictures ``pictures_of(ids)`` gives for the peak images' ids (none without it)."""
    arrays = collector.arrays()
    boxes = peak_boxes(field, arrays["peak_positions"], arrays["peak_sources"])
    needed = sorted({int(i) for i in arrays["peak_sources"].flatten() if i >= 0})
    crops = None
    if pictures_of is not None:
        crops = cut_crops(boxes, arrays["peak_sources"], pictures_of(needed))
    return Exemplars(
        layer=layer,
        k=collector.k,
        sources=tuple(sources),
        boxes=boxes,
        channels=tuple(channels),
        crops=crops,
        receptive_field=field,
        **arrays,
    )


def layer_field(
    module: nn.Module, layer: str, acts: torch.Tensor, x: torch.Tensor
) -> ReceptiveField:
    """The receptive field of ``layer`` (whose activations on ``x`` are ``acts``)."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if acts.dim() < 4:
        return whole_image(size)
    return receptive_field(module, layer, (int(x.shape[1]), *size))


def image_items(images: Any) -> list[Any] | torch.Tensor:
    """``images`` as a tensor or a list of single images (folders expanded to their files)."""
    if isinstance(images, torch.Tensor):
        return images[None] if images.dim() == 3 else images
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    expanded: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            expanded.extend(find_images(item))
        else:
            expanded.append(item)
    if not expanded:
        raise ArgumentError("images is empty; give at least one image, path or tensor")
    return expanded


def collect_exemplars(
    model: nn.Module | LoadedModel,
    images: Any,
    layer: Any,
    *,
    k: int = 9,
    channels: Sequence[int] | None = None,
    batch_size: int = 32,
) -> Exemplars:
    """The top-``k`` images and peak crops of each of ``layer``'s ``channels`` (default: all)
    over ``images`` (paths, a folder, PIL images, arrays, or a preprocessed tensor), run in
    batches of ``batch_size``; the model is left exactly as found.

    Example::

        >>> ex = cnnviz.featurevis.exemplars.collect_exemplars(model, "photos/", "layer3", k=9)
        >>> ex.best(5), ex.crops[0].shape  # (9, 64, 64, 3)

    Raises:
        LayerError: an unknown layer (with close matches) or one the forward pass never runs.
        ArgumentError: a channel out of range, ``k`` or ``batch_size`` below 1, no images.
    """
    positive_int(k, "k")
    positive_int(batch_size, "batch_size")
    module, _ = unpack_model(model)
    prep = model_preprocessing(model, module)
    name = resolve_layer(module, layer)
    items = image_items(images)
    device = model_device(module)
    collector: ExemplarCollector | None = None
    kept: tuple[int, ...] = ()
    field: ReceptiveField | None = None
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        x = (chunk if isinstance(chunk, torch.Tensor) else as_batch(chunk, prep).x).to(device)
        acts = layer_outputs(module, name, x)
        if collector is None:
            kept = check_channels(channels, acts.shape[1], name, acts.dim() == 4)
            collector = ExemplarCollector(len(kept), k)
            field = layer_field(module, name, acts, x)
        collector.update(acts[:, list(kept)], range(start, start + x.shape[0]))
    assert collector is not None and field is not None  # items is never empty

    def pictures_of(ids: list[int]) -> dict[int, np.ndarray]:
        if not ids:
            return {}
        if isinstance(items, torch.Tensor):
            pictures = tensor_pictures(items[ids], prep)
        else:
            pictures = as_batch([items[i] for i in ids], prep).pictures
        return {i: p.numpy() for i, p in zip(ids, pictures, strict=True)}

    names = [
        str(item) if isinstance(item, (str, os.PathLike)) else f"image {i}"
        for i, item in enumerate(items)
    ]
    return exemplars_of(
        collector, layer=name, sources=names, channels=kept, field=field, pictures_of=pictures_of
    )
