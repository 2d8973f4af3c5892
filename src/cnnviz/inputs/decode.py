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
from cnnviz.inputs.images import load_image_with_notes
from cnnviz.inputs.preprocess import Preprocessing, resize_and_crop
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
    picture: np.ndarray  # (H, W, 3) uint8, resized and cropped like the model input
    tensor: torch.Tensor  # (3, H, W) preprocessed
    notes: tuple[str, ...]


def model_tensor(picture: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """The normalised ``(3, H, W)`` float32 tensor of a resized and cropped picture.

    The same arithmetic as :func:`cnnviz.inputs.preprocess.preprocess_image` (bit for bit), starting
    from the resized and cropped pixels, so each image is resized once.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1).contiguous()
    scaled = pixels.to(torch.float32) / 255.0
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1)
    return (scaled - mean) / std


def decode_input(path: Path, prep: Preprocessing) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """Picture (resized and cropped, uint8), model tensor and loading notes of one image file
    (raises :class:`~cnnviz.errors.ImageLoadError` for a file that cannot be decoded)."""
    image, notes = load_image_with_notes(path)
    picture = np.array(resize_and_crop(image, prep), dtype=np.uint8)  # writable copy
    return picture, model_tensor(picture, prep), notes


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
    """Decode and preprocess each path in this process; a failure is logged, recorded, skipped."""
    for index, (path, stem) in enumerate(zip(paths, unique_stems(list(paths)), strict=True)):
        try:
            picture, tensor, notes = decode_input(path, loaded.preprocessing)
        except CnnvizError as e:
            failure = failure_record(path, e, "load")
            logger.warning("skipped %s: %s", path, failure["error"])
            failures.append(failure)
            continue
        yield LoadedImage(index, path, stem, picture, tensor, tuple(notes))
