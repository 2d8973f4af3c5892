"""Folders of synthetic shapes and a seeded shapes_vgg11 checkpoint, for the tests that run
`cnnviz explain` on a folder in other processes (nothing to train, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file


def write_shapes(folder: Path, count: int, *, seed: int, suffix: str = ".png") -> None:
    """``count`` shapes images ``shape-NN<suffix>`` (JPEG at quality 92 for ``.jpg``)."""
    from cnnviz.data.shapes import make_shapes  # lazy: only the folder tests draw shapes

    folder.mkdir(parents=True, exist_ok=True)
    batch = make_shapes(count, seed=seed)
    for i in range(count):
        pixels = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        options = {"quality": 92} if suffix == ".jpg" else {}
        Image.fromarray(pixels).save(folder / f"shape-{i:02d}{suffix}", **options)


def seeded_checkpoint(path: Path, *, seed: int) -> Path:
    """A shapes_vgg11 state dict with weights drawn under ``torch.manual_seed(seed)``."""
    from cnnviz.models.shapes_vgg11 import build_shapes_vgg11  # lazy: as above

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in build_shapes_vgg11().state_dict().items()}
    save_file(state, str(path))
    return path
