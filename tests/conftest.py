"""Shared test set-up: no network, an empty torch hub cache, and the bundled sample images.

Set at import, before any test module imports torch, timm or huggingface_hub:
``CNNVIZ_OFFLINE=1`` (cnnviz never downloads) and ``HF_HUB_OFFLINE=1`` (nor does timm).
``TORCH_HOME`` points at a fresh temporary directory for the whole session, so no test sees
weights cached on the developer's machine; a test that plants a checkpoint there should use
``monkeypatch.setenv("TORCH_HOME", str(tmp_path))`` to keep it to itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["CNNVIZ_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "src" / "cnnviz" / "data" / "samples"


@pytest.fixture(scope="session", autouse=True)
def _empty_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty ``TORCH_HOME`` for the session (restored afterwards)."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        patch.setenv("CNNVIZ_OFFLINE", "1")
        yield home


@pytest.fixture
def samples_dir() -> Path:
    """The bundled sample photographs (``coffee.jpg``, ``chelsea.jpg``)."""
    return SAMPLES_DIR
