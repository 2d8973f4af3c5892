"""The versioned ``manifest.json`` of every run: what was written, from what, with which versions.

Each run's folder holds a ``manifest.json`` with a schema version, the library/torch/python
versions, the model, method and layer, one entry per written item and one per failure. A run
writes its files first and the manifest last, describing them (the report's manifest records
are taken from the data each page was rendered from).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnviz import __version__
from cnnviz.outputs.files import to_json_text, write_json

if TYPE_CHECKING:
    from cnnviz.models.loaded import LoadedModel

SCHEMA_VERSION: int = 1
"""Version of the manifest layout; bumped on any incompatible change."""

MANIFEST_NAME = "manifest.json"


def _version(package: str) -> str:
    """The package's version without importing it when not yet imported (importing torchvision
    costs seconds); an imported module's ``__version__`` carries local tags such as ``+cu130``."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_info() -> dict[str, str]:
    """Versions that make a result reproducible: cnnviz, torch, torchvision, python, platform."""
    return {
        "cnnviz": __version__,
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def utc_now_iso() -> str:
    """Now as an ISO-8601 UTC timestamp with seconds (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What one cnnviz run wrote, and with what: the content of ``manifest.json``.

    ``items`` holds one record per input (its files, target, scores …) and ``failures`` one per
    input that could not be processed (``{"input": …, "error": …}``). ``created`` and
    ``environment`` are filled in when not given.
    """

    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=utc_now_iso)
    command: str
    model: dict[str, Any]
    method: str | None = None
    layer: str | None = None
    items: tuple[dict[str, Any], ...] = ()
    failures: tuple[dict[str, Any], ...] = ()
    environment: dict[str, str] = field(default_factory=environment_info)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command:
            raise ValueError(f"Manifest.command must be a non-empty str, got {self.command!r}")
        for name in ("model", "environment", "extra"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"Manifest.{name} must be a dict, got {type(getattr(self, name))}")
        for name in ("items", "failures"):
            records = tuple(getattr(self, name))
            if not all(isinstance(r, Mapping) for r in records):
                raise TypeError(f"Manifest.{name} must be a sequence of dicts")
            object.__setattr__(self, name, records)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready deep copy (tuples become lists)."""
        result: dict[str, object] = json.loads(to_json_text(dataclasses.asdict(self)))
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Read back :meth:`to_dict` output; unknown keys are ignored, newer schemas refused."""
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"Manifest schema version {version!r} is not supported (this cnnviz reads up to "
                f"{SCHEMA_VERSION}); upgrade cnnviz."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    """Write ``out_dir/manifest.json`` atomically; returns its path."""
    path = Path(out_dir) / MANIFEST_NAME
    write_json(path, manifest.to_dict())
    return path


def read_manifest(path: Path) -> Manifest:
    """Load a ``manifest.json`` (or the one inside a folder) written by :func:`write_manifest`."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """The manifest's description of a model."""
    return {
        "name": loaded.name,
        "architecture": loaded.architecture,
        "weights": loaded.weights,
        "num_classes": len(loaded.class_names),
        "preprocessing": loaded.preprocessing.to_dict(),
    }
