"""The sample photos shipped with cnnviz (CC0; licence in ``cnnviz/data/samples/LICENSE.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_samples() -> list[Path]:
    """The sample photos shipped with cnnviz (``chelsea.jpg``, ``coffee.jpg``), sorted by name.

    They live in ``cnnviz/data/samples`` (licence in ``LICENSE.md`` there) and are found with
    :mod:`importlib.resources`, so this works from a source checkout and from an installed wheel.
    """
    root = resources.files("cnnviz").joinpath("data").joinpath("samples")
    return sorted(Path(str(entry)) for entry in root.iterdir() if entry.name.endswith(".jpg"))
