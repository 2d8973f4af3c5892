"""Image files to model inputs: decoded, resized and cropped once, normalised, with their notes.

:func:`decode_input` is what every run does with one file; :func:`load_inputs` does it for a list
in this process, recording (never raising for) a file that cannot be read. The folder run
(:mod:`cnnviz.runs.explain`) calls :func:`decode_input` from its DataLoader workers instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnviz.errors import CnnvizError
from cnnviz.inputs.images import image_mode, load_image_for, rgb_picture
from cnnviz.inputs.preprocess import Preprocessing, normalize_pixels, resize_and_crop
from cnnviz.outputs.files import unique_stems

if TYPE_CHECKING:
    from cnnviz.models.loaded import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedImage:
    """One decoded input: its path, safe output stem, picture and model tensor."""

    index: int  # position in the list of inputs
    path: Path
    stem: str
    picture: np.ndarray  # (H, W, 3) uint8 RGB to draw on, resized and cropped like the model input
    tensor: torch.Tensor  # (C, H, W) preprocessed, C = the preprocessing's channels
    notes: tuple[str, ...]


def model_tensor(pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """The normalised ``(C, H, W)`` float32 tensor of resized and cropped uint8 pixels, given as
    ``(H, W)`` (one channel) or ``(H, W, C)``, with ``C == prep.channels``.

    The same arithmetic as :func:`cnnviz.inputs.preprocess.preprocess_image` (bit for bit), starting
    from the resized and cropped pixels, so each image is resized once.
    """
    array = np.array(pixels)  # a writable, contiguous copy for torch.from_numpy
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C) pixels, got shape {array.shape}")
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return normalize_pixels(tensor, prep)


def decode_input(path: Path, prep: Preprocessing) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """Picture, model tensor and loading notes of one image file.

    The file is read in the mode of ``prep.channels`` (:func:`~cnnviz.inputs.images.load_image_for`)
    and resized and cropped once; the picture is that image as ``(H, W, 3)`` uint8 RGB to draw
    on (grey replicated, alpha composited on white), the tensor its ``(C, H, W)`` normalisation.

    Raises:
        ImageLoadError: a file that cannot be decoded, or a channel count no image file has.
    """
    image, notes = load_image_for(path, prep.channels)
    shown = resize_and_crop(image, prep)
    return rgb_picture(shown), model_tensor(np.array(shown), prep), notes


def failure_record(path: Path, error: BaseException, tag: str) -> dict[str, Any]:
    if isinstance(error, (CnnvizError, OSError)):
        text = str(error)
    else:  # a bug: keep the run going, but say so
        text = f"unexpected {type(error).__name__}: {error} (please report it)"
    if str(path) not in text:
        text = f"{path}: {text}"
    return {"input": str(path), "method": tag, "error": text.strip()}


def load_inputs(
    loaded: LoadedModel, paths: Sequence[Path], failures: list[dict[str, Any]]
) -> Iterator[LoadedImage]:
    """Decode and preprocess each path in this process; a failure is logged, recorded, skipped.

    Raises:
        ImageLoadError: at once, for a model whose channel count no image file has (not one
            failure per file).
    """
    image_mode(loaded.preprocessing.channels)
    for index, (path, stem) in enumerate(zip(paths, unique_stems(list(paths)), strict=True)):
        item = load_input(loaded, index, path, stem, failures)
        if item is not None:
            yield item


def load_input(
    loaded: LoadedModel, index: int, path: Path, stem: str, failures: list[dict[str, Any]]
) -> LoadedImage | None:
    """Decode and preprocess input ``index`` of a list (a rank's share takes them one by one);
    a failure is logged, recorded in ``failures`` and ``None`` returned."""
    try:
        picture, tensor, notes = decode_input(path, loaded.preprocessing)
    except CnnvizError as e:
        failure = failure_record(path, e, "load")
        logger.warning("skipped %s: %s", path, failure["error"])
        failures.append(failure)
        return None
    return LoadedImage(index, path, stem, picture, tensor, tuple(notes))
