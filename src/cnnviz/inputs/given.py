"""What people hand to :func:`cnnviz.explain`, made into the model's batch and the pictures to draw
on: a file path, a list of paths, a PIL image, a NumPy array, or a tensor.

Anything that is not a tensor is an image and goes through the model's own preprocessing (read in
the model's channel mode, resized and cropped once, normalised). A tensor is taken as already
preprocessed (``(C, H, W)`` or ``(N, C, H, W)``), as before; its pictures are the tensor
un-normalised with the preprocessing, when one is known, else stretched to [0, 1] per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image

from cnnviz.inputs.decode import decode_input, model_tensor
from cnnviz.inputs.images import CHANNEL_MODES, image_mode, rgb_picture
from cnnviz.inputs.preprocess import Preprocessing, denormalize, resize_and_crop

OneImage: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"
ImagesLike: TypeAlias = "torch.Tensor | OneImage | Sequence[OneImage]"
"""What :func:`cnnviz.explain` takes as ``images``."""


@dataclass(frozen=True)
class GivenBatch:
    """The model input ``x`` ``(N, C, H, W)`` and ``pictures`` ``(N, H, W, 3)`` uint8 to draw on."""

    x: torch.Tensor
    pictures: torch.Tensor


def as_batch(images: object, prep: Preprocessing | None) -> GivenBatch:
    """The batch and pictures of ``images`` (see the module docstring).

    Raises:
        TypeError: something that is not an image, a path, a list of them or a tensor.
        ValueError: an array of the wrong shape or value range; an image input for a model
            whose preprocessing is unknown.
        ImageLoadError: a file that cannot be read.
    """
    if isinstance(images, torch.Tensor):
        return GivenBatch(images, tensor_pictures(images, prep))
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images is an empty list; give at least one image, path or tensor")
    if prep is None:
        raise ValueError(
            "This model has no preprocessing to turn an image into its input; pass a tensor "
            "batch, or load the model with cnnviz.from_module(module, preprocessing=...)"
        )
    tensors, pictures = [], []
    for item in items:
        picture, tensor = one_image(item, prep)
        pictures.append(torch.from_numpy(picture))
        tensors.append(tensor)
    return GivenBatch(torch.stack(tensors), torch.stack(pictures))


def one_image(item: object, prep: Preprocessing) -> tuple[np.ndarray, torch.Tensor]:
    """The picture and the ``(C, H, W)`` model tensor of one path, PIL image or array."""
    if isinstance(item, (str, os.PathLike)):
        picture, tensor, _ = decode_input(Path(item), prep)
        return picture, tensor
    if isinstance(item, np.ndarray):
        item = array_image(item)
    if not isinstance(item, Image.Image):
        raise TypeError(
            "images must be a file path, a PIL image, a NumPy array (H, W[, C]), a list of "
            f"those, or a preprocessed tensor; got {type(item).__name__}"
        )
    shown = resize_and_crop(item.convert(image_mode(prep.channels)), prep)
    return rgb_picture(shown), model_tensor(np.array(shown), prep)


def array_image(array: np.ndarray) -> Image.Image:
    """A PIL image of an ``(H, W)`` or ``(H, W, C)`` array (C in 1–4): uint8 as it is, floats in
    [0, 1] scaled by 255."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in CHANNEL_MODES):
        raise ValueError(
            f"An image array must have shape (H, W) or (H, W, C) with C in 1, 2, 3, 4, got "
            f"{array.shape}; for a batch, pass a list of arrays or a preprocessed tensor"
        )
    if array.dtype != np.uint8:
        if array.dtype.kind not in "fiu" or not np.isfinite(array).all():
            raise ValueError(f"An image array must be uint8 or finite floats, got {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"A float image array must lie in [0, 1], got [{array.min():.4g}, "
                f"{array.max():.4g}]; pass uint8 pixels (0–255) or divide by 255"
            )
        array = np.floor(array.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))  # L, LA, RGB or RGBA by shape


def tensor_pictures(x: torch.Tensor, prep: Preprocessing | None) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 pictures of a preprocessed ``(C, H, W)``/``(N, C, H, W)`` tensor:
    un-normalised with ``prep`` when its channels match, else each image stretched to [0, 1];
    one channel is replicated to grey, more than three keep the first three."""
    batch = (x[None] if x.dim() == 3 else x).detach().float().cpu()
    if batch.dim() != 4:
        raise ValueError(
            f"images must be (C, H, W) or (N, C, H, W) when given as a tensor, got shape "
            f"{tuple(x.shape)}"
        )
    if prep is not None and batch.shape[1] == prep.channels:
        unit = denormalize(batch, prep)
    else:
        flat = batch.reshape(len(batch), -1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp(min=1e-12)
        unit = (batch - low) / span
    colour = unit[:, :3] if unit.shape[1] >= 3 else unit[:, :1].expand(-1, 3, -1, -1)
    return (colour.permute(0, 2, 3, 1) * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8)
