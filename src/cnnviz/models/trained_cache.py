"""The cache of the models cnnviz trains itself (``shapes_vgg11``, ``shapes_vgg11_watermark``).

Each model is trained on first use and kept as ``<cache>/<name>-v<version>-<hash>.safetensors``
with a JSON sidecar of its recipe and metrics. The hash covers the whole recipe (data generator,
architecture, training settings), so changing any of them trains afresh rather than loading stale
weights. One process trains under a lock file while others wait and then load its result; files
are written to a temporary name and renamed, the weights last, so their presence marks the cache
complete. The models' own modules say what they train; this one only says where it lies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cnnviz import __version__
from cnnviz.errors import CheckpointError
from cnnviz.outputs.files import atomic_write_bytes, file_lock

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)


def shapes_cache_dir() -> Path:
    """Where trained models are cached: ``$CNNVIZ_CACHE`` if set, else ``~/.cache/cnnviz``."""
    env = os.environ.get("CNNVIZ_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cnnviz"


def cache_path(
    name: str, version: int, recipe: dict[str, Any], cache_dir: Path | None = None
) -> Path:
    """``<cache_dir>/<name>-v<version>-<first 10 hex of sha256(recipe)>.safetensors``."""
    blob = json.dumps(recipe, sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()[:10]
    directory = Path(cache_dir) if cache_dir is not None else shapes_cache_dir()
    return directory / f"{name}-v{version}-{digest}.safetensors"


def load_or_train(
    path: Path,
    *,
    name: str,
    recipe: dict[str, Any],
    build: Callable[[], M],
    train: Callable[[], tuple[M, dict[str, float]]],
    retrain: bool = False,
    expected_seconds: float = 100.0,
) -> M:
    """The model cached at ``path``, trained with ``train()`` and saved there first if absent.

    ``build()`` makes the untrained architecture the cached weights are loaded into. Safe to call
    from several processes at once (see the module docstring). ``retrain`` trains again and
    overwrites the file.

    Raises:
        CheckpointError: the cached file exists but cannot be read or does not fit the model.
    """
    if path.exists() and not retrain:
        return load_weights(path, build, name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists() and not retrain:  # trained by another process while we waited
            return load_weights(path, build, name=name)
        logger.info("training %s (first use, ~%.0f s)…", name, expected_seconds)
        model, metrics = train()
        logger.info(
            "%s: held-out accuracy %.3f after %.0f s; saved to %s",
            name,
            metrics.get("heldout_accuracy", float("nan")),
            metrics.get("seconds", float("nan")),
            path,
        )
        save_weights(model, metrics, path, name=name, recipe=recipe)
    return model


def load_weights(path: Path, build: Callable[[], M], *, name: str) -> M:
    """``build()`` with the weights of ``path`` (strict), in eval mode.

    Raises:
        CheckpointError: the file cannot be read or does not fit, naming how to retrain.
    """
    from safetensors.torch import load_file  # lazy: only checkpoint files need it

    model = build()
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as e:  # safetensors raises its own error types; keep the cause
        raise CheckpointError(
            f"The cached {name} weights {path} cannot be loaded ({type(e).__name__}: {e}). "
            f"Delete the file or call load_{name}(retrain=True)."
        ) from e
    return model.eval()


def save_weights(
    model: nn.Module, metrics: dict[str, float], path: Path, *, name: str, recipe: dict[str, Any]
) -> None:
    """Write the JSON sidecar, then the weights (whose presence marks the cache complete)."""
    from safetensors.torch import save  # lazy: only when the cache is written

    info = {
        "model": name,
        "cnnviz": __version__,
        "recipe": recipe,
        "metrics": metrics,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, indent=2).encode("utf-8"))
    atomic_write_bytes(path, save(state, metadata={"recipe": json.dumps(recipe)}))
