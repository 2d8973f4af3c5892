"""The sample photos shipped with cnnviz (CC0; licence in ``cnnviz/data/samples/LICENSE.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch


def bundled_samples() -> list[Path]:
    """The sample photos shipped with cnnviz (``chelsea.jpg``, ``coffee.jpg``), sorted by name.

    They live in ``cnnviz/data/samples`` (licence in ``LICENSE.md`` there) and are found with
    :mod:`importlib.resources`, so this works from a source checkout and from an installed wheel.
    """
    root = resources.files("cnnviz").joinpath("data").joinpath("samples")
    return sorted(Path(str(entry)) for entry in root.iterdir() if entry.name.endswith(".jpg"))


def sample_crops(count: int, side: int, *, seed: int = 0) -> torch.Tensor:
    """The bundled photos (centre squares) and ``count`` seeded random square crops of them,
    each resized to ``side``: ``(2 + count, 3, side, side)`` floats in [0, 1].

    A small, fixed set of natural images to compare feature visualisations with (their
    activation-ratio check): crops from a quarter of the shorter side up to all of it, at
    random places, alternating between the photos.
    """
    import torchvision.transforms.v2.functional as TF  # lazy: torchvision only for the crops

    from cnnviz.inputs.images import load_image  # lazy: the decoder and Pillow, likewise

    generator = torch.Generator().manual_seed(seed)
    photos = [
        TF.to_dtype(TF.pil_to_tensor(load_image(p)), torch.float32, scale=True)
        for p in bundled_samples()
    ]
    pictures = [TF.resize(TF.center_crop(p, min(p.shape[1:])), [side, side]) for p in photos]
    for k in range(count):
        photo = photos[k % len(photos)]
        height, width = photo.shape[1:]
        shorter = min(height, width)
        crop = int(torch.randint(shorter // 4, shorter + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
        pictures.append(TF.resize(photo[:, top : top + crop, left : left + crop], [side, side]))
    return torch.stack(pictures)
