"""Decoding the images of a folder run: a ``torch.utils.data`` dataset over image files that never
raises for a bad file, the collate function that turns decoded images into a :class:`Batch`, and
the worker settings of the ``DataLoader`` (:func:`worker_init`, :func:`auto_workers`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cnnviz.inputs.images  # noqa: F401  # loaded before DataLoader workers fork (see ImageFiles)
from cnnviz.inputs.decode import decode_input, failure_record
from cnnviz.inputs.preprocess import Preprocessing


@dataclass(frozen=True)
class Decoded:
    """One decoded input: its picture and model tensor, or the error that stopped it."""

    index: int
    picture: np.ndarray | None
    tensor: torch.Tensor | None
    notes: tuple[str, ...]
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Batch:
    """The decoded images of one chunk of the input list, stacked, and its failures."""

    indices: list[int]  # decoded images, in input order
    pictures: torch.Tensor | None  # (n, H, W, 3) uint8 (a tensor: shared memory between processes)
    tensors: torch.Tensor | None  # (n, C, H, W), C = the model's input channels
    notes: list[tuple[str, ...]]
    failures: list[tuple[int, dict[str, Any]]]


class ImageFiles(torch.utils.data.Dataset[Decoded]):
    """Decodes one input per index; never raises for a bad file (the error is returned)."""

    def __init__(self, paths: Sequence[Path], prep: Preprocessing, tag: str) -> None:
        self.paths, self.prep, self.tag = list(paths), prep, tag
        # Import the decoders here, in the parent, so forked workers start with them loaded
        # (torchvision's first import takes seconds, which each worker would otherwise pay).
        import torchvision.transforms.v2.functional  # noqa: F401  # lazy: only folder runs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        path = self.paths[index]
        try:
            picture, tensor, notes = decode_input(path, self.prep)
        except Exception as e:  # reported per file (a bug says so); the run goes on
            return Decoded(index, None, None, (), failure_record(path, e, self.tag))
        return Decoded(index, picture, tensor, tuple(notes), None)


def collate(decoded: list[Decoded]) -> Batch:
    """Stack the decoded images of one chunk into a :class:`Batch`."""
    pictures = [torch.from_numpy(d.picture) for d in decoded if d.picture is not None]
    tensors = [d.tensor for d in decoded if d.tensor is not None]
    return Batch(
        indices=[d.index for d in decoded if d.error is None],
        pictures=torch.stack(pictures) if pictures else None,
        tensors=torch.stack(tensors) if tensors else None,
        notes=[d.notes for d in decoded if d.error is None],
        failures=[(d.index, d.error) for d in decoded if d.error is not None],
    )


def worker_init(_worker_id: int) -> None:
    """Signal settings of a decoding process."""
    # The parent handles Ctrl-C and SIGTERM and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def auto_workers(batches: int) -> int:
    """Decoding processes for a run of ``batches`` batches: none for one batch, else up to 2."""
    return 0 if batches <= 1 else min(2, os.cpu_count() or 1)
