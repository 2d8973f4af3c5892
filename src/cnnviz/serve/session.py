"""The explorer's state: one model, its images (given, bundled, uploaded), one cache with a byte
budget and one lock for the model (hooks are attached per call, so two requests may not run the
model at once; answers already cached need no lock)."""

from __future__ import annotations

import enum
import hashlib
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from cnnviz.api import announce_default_layer
from cnnviz.capture.forward import as_model_input
from cnnviz.capture.hooks import GradFrom, LayerCapture
from cnnviz.capture.targets import class_index, logits_of
from cnnviz.errors import CnnvizError
from cnnviz.inputs.decode import decode_input
from cnnviz.methods.layer_graph import LayerGraph, uses_layer_graph
from cnnviz.methods.registry import get_method, method_names, method_options
from cnnviz.models.loaded import LoadedModel
from cnnviz.options import SIGNS, MapStyle, values
from cnnviz.serve.cache import ByteBudgetCache, size_of
from cnnviz.serve.requests import not_found
from cnnviz.serve.uploads import UploadError, UploadLimits, checked_upload, store_upload

logger = logging.getLogger(__name__)

T = TypeVar("T")

COLORMAPS = ("jet", "viridis", "inferno", "magma", "turbo", "hot", "gray", "bwr", "RdBu_r")
"""The colour maps the page offers (any matplotlib name works through the API)."""

MAX_UPLOADS = 256
"""Uploads kept at once; the oldest goes (file and cache entries) when one more arrives."""

MAX_LISTED = 1000
"""Given images listed at most (a larger folder: the first ones, by name, and a notice)."""


@dataclass(frozen=True)
class ExplorerImage:
    """One image the explorer can show: an id that is never a path, a name for people, where it
    came from (``given``, ``sample`` or ``upload``) and the file (never sent to clients)."""

    id: str
    name: str
    source: str
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "source": self.source}


@dataclass(frozen=True)
class Prepared:
    """An image as the model takes it: ``picture`` ``(H, W, 3)`` uint8 as the model sees it
    (resized, cropped), ``x`` ``(1, C, H, W)`` on the model's device."""

    picture: np.ndarray
    x: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.picture.nbytes) + self.x.numel() * self.x.element_size()


def image_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ExplorerSession:
    """Everything one explorer serves, for ``loaded`` on ``images`` (files) and the bundled
    samples; uploads are written into ``folder`` (a temporary folder the server owns)."""

    def __init__(
        self,
        loaded: LoadedModel,
        images: Sequence[Path],
        *,
        folder: Path,
        samples: Sequence[Path] = (),
        cache_mb: float = 512,
        limits: UploadLimits | None = None,
    ) -> None:
        self.loaded = loaded
        self.module: nn.Module = loaded.module
        self.class_names = loaded.class_names
        self.folder = folder
        self.limits = limits or UploadLimits()
        self.cache = ByteBudgetCache(int(cache_mb * 1024 * 1024))
        self.lock = threading.RLock()
        self._images: OrderedDict[str, ExplorerImage] = OrderedDict()
        self._uploads: list[str] = []
        if len(images) > MAX_LISTED:
            logger.warning(
                "%d images given; the explorer lists the first %d", len(images), MAX_LISTED
            )
        for path, source in [(p, "given") for p in images[:MAX_LISTED]] + [
            (p, "sample") for p in samples
        ]:
            entry = ExplorerImage(image_id(str(path.resolve())), path.name, source, path)
            self._images.setdefault(entry.id, entry)
        self.default_layer = announce_default_layer(loaded)

    # -- images --------------------------------------------------------------------------------

    def images(self) -> list[ExplorerImage]:
        with self.lock:
            return list(self._images.values())

    def image(self, image_id: str) -> ExplorerImage:
        """The image with this id (404 otherwise: ids are looked up, never opened as paths)."""
        with self.lock:
            found = self._images.get(image_id)
        if found is None:
            raise not_found(f"Image {image_id[:40]!r}")
        return found

    def add_upload(self, data: bytes, content_type: str, filename: str | None) -> ExplorerImage:
        """Check, store and decode an upload (:func:`~cnnviz.serve.uploads.checked_upload`)."""
        image_format = checked_upload(data, content_type, self.limits)
        digest, path = store_upload(data, image_format, self.folder)
        name = Path(filename or f"upload.{image_format.lower()}").name[:120] or "upload"
        entry = ExplorerImage(digest, name, "upload", path)
        try:
            self.prepared_entry(entry)
        except CnnvizError as e:
            path.unlink(missing_ok=True)
            raise UploadError(str(e), 422) from e
        with self.lock:
            if entry.id not in self._images:
                self._images[entry.id] = entry
                self._uploads.append(entry.id)
            while len(self._uploads) > MAX_UPLOADS:
                gone = self._images.pop(self._uploads.pop(0))
                gone.path.unlink(missing_ok=True)
        return entry

    def prepared(self, image_id: str) -> Prepared:
        return self.prepared_entry(self.image(image_id))

    def prepared_entry(self, entry: ExplorerImage) -> Prepared:
        """The decoded, preprocessed image (cached)."""

        def make() -> Prepared:
            picture, tensor, _ = decode_input(entry.path, self.loaded.preprocessing)
            return Prepared(picture, as_model_input(self.module, tensor))

        return self.cache.get_or_make(("prepared", entry.id), make)

    # -- the model -----------------------------------------------------------------------------

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` with the model to itself."""
        with self.lock:
            return work()

    def cached(
        self, key: tuple[Any, ...], make: Callable[[], T], size: Callable[[T], int] = size_of
    ) -> T:
        """The cached answer for ``key``, or ``make()``'s (``size`` bytes), computed with the
        model locked (and looked up again under the lock: another request may have just made
        it)."""
        found = self.cache.get(key)
        if found is not None:
            return found  # type: ignore[no-any-return]  # what make() returned for this key

        def locked() -> T:
            again = self.cache.get(key)
            if again is not None:
                return again  # type: ignore[no-any-return]
            return self.cache.get_or_make(key, make, size)

        return self.run(locked)

    def graph(self, image_id: str, layer: str) -> LayerGraph:
        """The image's forward pass kept with its graph above ``layer`` (cached): every CAM for
        every class at that layer is answered from it."""
        x = self.prepared(image_id).x
        return self.cached(("graph", image_id, layer), lambda: LayerGraph(self.module, x, layer))

    def logits(self, image_id: str) -> torch.Tensor:
        """The model's ``(K,)`` output on the image: the output of its graph at the automatic
        layer, which the first map then uses too (one forward pass for both), else one forward."""

        def make() -> torch.Tensor:
            if self.default_layer is not None:
                output = self.graph(image_id, self.default_layer).output
            else:
                with LayerCapture(self.module, [], grad=GradFrom.NONE) as capture:
                    output = capture.forward(self.prepared(image_id).x)
            logits: torch.Tensor = logits_of(output)[0].detach().float().cpu()
            return logits

        return self.cached(("logits", image_id), make)

    def predictions(self, image_id: str, k: int) -> list[dict[str, Any]]:
        logits = self.logits(image_id)
        probabilities = logits.softmax(0)
        top = probabilities.topk(min(k, len(probabilities)))
        return [
            {
                "index": int(i),
                "label": self.class_names[int(i)],
                "probability": float(p),
                "logit": float(logits[int(i)]),
            }
            for p, i in zip(top.values, top.indices, strict=True)
        ]

    def class_of(self, target: str | None, image_id: str) -> int:
        """A class index from the query's ``class`` (index or exact name), or the prediction."""
        if target is None:
            return int(self.logits(image_id).argmax())
        return class_index(target, self.class_names, len(self.class_names))

    # -- descriptions ------------------------------------------------------------------------

    def info(self, version: str) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "model": {
                "name": loaded.name,
                "architecture": loaded.architecture,
                "weights": loaded.weights,
                "classes": len(loaded.class_names),
                "input": list(loaded.preprocessing.input_shape),
            },
            "default_layer": self.default_layer,
            "default_method": "gradcam" if self.default_layer is not None else "saliency",
            "methods": [method_description(name) for name in method_names()],
            "signs": list(SIGNS),
            "styles": values(MapStyle),
            "colormaps": list(COLORMAPS),
            "limits": {
                "upload_bytes": self.limits.max_bytes,
                "upload_pixels": self.limits.max_pixels,
            },
            "version": version,
        }


HIDDEN_OPTIONS = frozenset({"preprocessing", "mask"})
"""Method options the page does not offer: the explorer supplies the model's preprocessing, and
Feature Ablation's segmentation ``mask`` is a tensor (Python only)."""


def method_description(name: str) -> dict[str, Any]:
    """A registry method for the page: names, paper, whether it needs a layer, whether it is
    answered from a cached forward pass (``fast``), and its options with their defaults."""
    cls = get_method(name)
    parameters = inspect.signature(cls.__init__).parameters
    options = []
    for option in method_options(cls):
        if option in HIDDEN_OPTIONS:
            continue
        parameter = parameters[option]
        default = parameter.default
        shown = default.value if isinstance(default, enum.Enum) else default
        if isinstance(shown, tuple) and all(isinstance(v, str) for v in shown):
            shown = ",".join(shown)  # as a query value says it
        elif shown is inspect.Parameter.empty or not isinstance(shown, bool | int | float | str):
            shown = None if shown is inspect.Parameter.empty or shown is None else str(shown)
        kind = type(shown).__name__ if shown is not None else str(parameter.annotation)
        options.append({"name": option, "default": shown, "type": kind})
    return {
        "name": cls.name,
        "title": cls.title,
        "summary": cls.summary,
        "paper": cls.paper,
        "needs_layer": cls.needs_layer,
        "fast": uses_layer_graph(cls),
        "options": options,
    }
