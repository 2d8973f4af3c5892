"""The explorer's units: a layer's channels as one sprite of tiles (sorted by strength or index),
one channel over the image, its filter, its feature visualisation and its top exemplars among the
explorer's images. Feature visualisation and exemplars run on a copy of the model with a lock of
its own, so the seconds they take never hold up the maps."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.layers import resolve_layer
from cnnviz.featurevis.exemplars import Exemplars, collect_exemplars
from cnnviz.featurevis.visualise import features
from cnnviz.inspect.filters import conv_weight, filter_tiles
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import encode_png
from cnnviz.render.colours import colorize, compose
from cnnviz.render.grids import tile_sheet
from cnnviz.serve.requests import HttpError
from cnnviz.serve.session import ExplorerSession

TILE = 64
"""Side of one channel's tile in the activation sprite, in pixels."""

COLUMNS = 8
"""Tiles per row of the sprite."""

FEATUREVIS_SIDE = 128
"""The side of the explorer's feature visualisations (fewer pixels: seconds, not minutes)."""

EXEMPLARS_K = 4
"""Exemplar crops shown per channel."""

EXEMPLAR_IMAGES = 256
"""The images searched for exemplars at most (the first ones listed): a click on a channel
then costs seconds, not minutes (``cnnviz exemplars`` searches a whole folder)."""


def layer_name(session: ExplorerSession, layer: str) -> str:
    return resolve_layer(session.module, layer)


def activation(session: ExplorerSession, image_id: str, layer: str) -> torch.Tensor:
    """One image's ``(C, h, w)`` activation at ``layer`` (cached; the forward stops there)."""
    name = layer_name(session, layer)
    x = session.prepared(image_id).x

    def make() -> torch.Tensor:
        with LayerCapture(session.module, [name], grad=GradFrom.NONE, stop_after_layers=True) as c:
            c.forward(x)
        act: torch.Tensor = c.activations[name][0].float().cpu()
        return act

    act = session.cached(("activation", image_id, name), make)
    if act.dim() != 3:
        raise HttpError(
            f"Layer {name!r} gives shape {tuple(act.shape)}, not channels × height × width; "
            "choose a convolutional layer (the layer table marks them spatial)."
        )
    return act


def channel_order(act: torch.Tensor, sort: str) -> list[int]:
    """Channels by mean activation, strongest first (ties: lower index), or by index."""
    if sort == "index":
        return list(range(act.shape[0]))
    if sort != "strength":
        raise HttpError(f"sort must be 'strength' or 'index', got {sort!r}.")
    means = act.mean(dim=(1, 2))
    return [int(i) for i in torch.sort(-means, stable=True).indices]


def activations_json(
    session: ExplorerSession, image_id: str, layer: str, sort: str, limit: int
) -> dict[str, Any]:
    act = activation(session, image_id, layer)
    shown = channel_order(act, sort)[:limit]
    name = layer_name(session, layer)
    means, peaks = act.mean(dim=(1, 2)), act.amax(dim=(1, 2))
    return {
        "layer": name,
        "shape": list(act.shape),
        "total": int(act.shape[0]),
        "channels": [{"index": c, "mean": float(means[c]), "max": float(peaks[c])} for c in shown],
        "sprite": f"api/images/{image_id}/activations.png?layer={name}&sort={sort}&limit={limit}",
        "tile": TILE,
        "columns": COLUMNS,
        "scale": {"low": float(act[shown].amin()), "high": float(act[shown].amax())},
    }


def activation_sprite(
    session: ExplorerSession, image_id: str, layer: str, sort: str, limit: int
) -> bytes:
    """The shown channels' tiles row by row, on one colour scale (the shown channels' min…max)
    so channels compare, in viridis; ``COLUMNS`` per row, ``TILE`` pixels each."""
    act = activation(session, image_id, layer)
    shown = channel_order(act, sort)[:limit]

    def make() -> bytes:
        tiles = F.interpolate(act[shown].unsqueeze(1), size=(TILE, TILE), mode="nearest")[:, 0]
        low, high = float(tiles.amin()), float(tiles.amax())
        unit = ((tiles - low) / (high - low if high > low else 1.0)).clamp(0, 1).numpy()
        rows = math.ceil(len(shown) / COLUMNS)
        sheet = np.zeros((rows * TILE, COLUMNS * TILE, 3), np.uint8)
        for k, tile in enumerate(unit):
            r, c = divmod(k, COLUMNS)
            sheet[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = colorize(tile, "viridis")
        return encode_png(sheet, compress_level=1)

    key = ("sprite", image_id, layer, sort, limit)
    return session.cache.get_or_make(key, make, len)


def checked_channel(act: torch.Tensor, channel: int, layer: str) -> int:
    if not 0 <= channel < act.shape[0]:
        raise HttpError(f"Layer {layer!r} has channels 0…{act.shape[0] - 1}; got {channel}.")
    return channel


def channel_json(
    session: ExplorerSession, image_id: str, layer: str, channel: int
) -> dict[str, Any]:
    act = activation(session, image_id, layer)
    name = layer_name(session, layer)
    checked_channel(act, channel, name)
    is_conv = isinstance(session.module.get_submodule(name), torch.nn.Conv2d)
    where = f"layer={name}&channel={channel}"
    return {
        "layer": name,
        "channel": channel,
        "mean": float(act[channel].mean()),
        "max": float(act[channel].amax()),
        "overlay": f"api/images/{image_id}/channel.png?{where}",
        "filter": f"api/filter.png?{where}" if is_conv else None,
        "featurevis": f"api/featurevis.png?{where}",
        "exemplars": f"api/exemplars.png?{where}",
        "exemplars_among": min(len(session.images()), EXEMPLAR_IMAGES),
    }


def channel_png(
    session: ExplorerSession, image_id: str, layer: str, channel: int, cmap: str, alpha: float
) -> bytes:
    """The channel's activation, min-max scaled and upsampled, over the image."""
    act = activation(session, image_id, layer)
    checked_channel(act, channel, layer)
    picture = session.prepared(image_id).picture
    one = act[channel][None, None]
    big = F.interpolate(one, size=picture.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    low, high = float(big.min()), float(big.max())
    unit = ((big - low) / (high - low if high > low else 1.0)).clamp(0, 1).numpy()
    return encode_png(compose(picture, unit, cmap=cmap, alpha=alpha), compress_level=1)


def filter_png(session: ExplorerSession, layer: str, channel: int) -> bytes:
    """One output channel's filter: colour for a first layer, else the mean over its inputs;
    a 1×1 (pointwise) filter, whose mean would be one grey pixel, as its weight per input
    channel instead, in a near-square grid (row-major, grey: lowest black, highest white)."""
    weight = conv_weight(session.module, layer)
    if not 0 <= channel < weight.shape[0]:
        raise HttpError(f"Layer {layer!r} has filters 0…{weight.shape[0] - 1}; got {channel}.")
    one = weight[channel : channel + 1]
    if one.shape[2:] == (1, 1) and one.shape[1] > 1:
        per_input = one.flatten()
        side = math.ceil(math.sqrt(per_input.numel()))
        grid = torch.full((side * side,), float(per_input.min()))
        grid[: per_input.numel()] = per_input
        one = grid.view(1, 1, side, side)  # one grey filter of side × side "pixels"
    tile = filter_tiles(one)[0]
    factor = max(1, 96 // max(tile.shape[:2]))
    return encode_png(np.ascontiguousarray(tile.repeat(factor, 0).repeat(factor, 1)))


def filters_png(session: ExplorerSession, layer: str) -> bytes:
    """A convolution's filters (the first 64) as one sheet."""
    weight = conv_weight(session.module, layer)
    return encode_png(tile_sheet(filter_tiles(weight)))


class SideModel:
    """A copy of the explorer's model with its own lock, for long work (feature visualisation,
    exemplars) that must not hold the main model's lock for seconds."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._source = loaded
        self._loaded: LoadedModel | None = None
        self.lock = threading.Lock()

    @property
    def loaded(self) -> LoadedModel:
        """The copy, made on first use (call with :attr:`lock` held)."""
        if self._loaded is None:
            module = copy.deepcopy(self._source.module)
            self._loaded = dataclasses.replace(self._source, module=module)
        return self._loaded


def featurevis_png(
    session: ExplorerSession, side: SideModel, layer: str, channel: int, steps: int
) -> bytes:
    """The channel's feature visualisation at ``FEATUREVIS_SIDE`` pixels (cached)."""
    name = layer_name(session, layer)

    def make() -> bytes:
        with side.lock:
            result = features(
                side.loaded,
                name,
                [channel],
                size=min(FEATUREVIS_SIDE, *session.loaded.preprocessing.input_shape[1:]),
                steps=steps,
                stability=False,
                seed=0,
            )
        picture = np.asarray(result.to_pil(0).convert("RGB"), dtype=np.uint8)
        return encode_png(picture)

    return session.cache.get_or_make(("featurevis", name, channel, steps), make, len)


def exemplars_png(session: ExplorerSession, side: SideModel, layer: str, channel: int) -> bytes:
    """The channel's top exemplar crops among the explorer's images, side by side."""
    name = layer_name(session, layer)
    entries = session.images()[:EXEMPLAR_IMAGES]
    key = ("exemplars", name, tuple(e.id for e in entries))

    def collect() -> Exemplars:
        with side.lock:
            return collect_exemplars(
                side.loaded, [e.path for e in entries], name, k=EXEMPLARS_K, batch_size=8
            )

    found: Exemplars = session.cache.get_or_make(key, collect, _exemplar_size)
    row = found.row(channel)
    crops = np.zeros((1, 64, 64, 3), np.uint8)
    if found.crops is not None and (found.peak_sources[row] >= 0).any():
        crops = found.crops[row][found.peak_sources[row] >= 0]  # fewer images than k: no blanks
    gap = np.full((crops.shape[1], 2, 3), 255, np.uint8)
    strip = np.concatenate([part for crop in crops for part in (crop, gap)][:-1], axis=1)
    return encode_png(np.ascontiguousarray(strip))


def _exemplar_size(found: Exemplars) -> int:
    return sum(int(c.nbytes) for c in found.crops or ()) + 64 * len(found.channels)
