"""Folders of synthetic shapes and a seeded shapes_vgg11 checkpoint, for the tests that run
`cnnviz explain` on a folder in other processes (nothing to train, deterministic); a tiny net
and random images for the library-level folder runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnviz.inputs.preprocess import Preprocessing


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


class TinyNet(nn.Module):
    """A 3-class conv net on 16×16 RGB with seeded weights, for fast library-level runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.conv(x).relu().mean(dim=(2, 3)))
        return logits


TINY_PREP = Preprocessing(input_size=(16, 16), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)


def random_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` random 16×16 PNGs ``imgNN.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
