"""What an audit knows about the images beyond the maps: true labels and object boxes or masks.

* ``--labels FILE``: a CSV with the header ``image,label``; ``label`` is a class name of the model
  or its index.
* ``--boxes FILE``: the ground-truth file of ``cnnviz evaluate`` (CSV ``image,x0,y0,x1,y1`` or JSON
  with boxes and/or mask files, :mod:`cnnviz.metrics.localisation`), in the original image's
  pixels; each becomes a mask at the model's input, resized and cropped as the image was.

An image is named by its path relative to the folder of the run's inputs, or by its file name.
A row naming no image of the run is an error that lists the names; an image without a row is
audited without that knowledge.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from cnnviz.errors import AuditError
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.metrics.localisation import GroundTruth, load_ground_truth

logger = logging.getLogger(__name__)

T = TypeVar("T")
_LABEL_FIELDS = ["image", "label"]


def inputs_root(paths: Sequence[Path]) -> Path | None:
    """The deepest folder holding every input (names in the files are relative to it)."""
    if not paths:
        return None
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents))


def image_key(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` in POSIX form (its file name if outside ``root``)."""
    if root is not None:
        try:
            return Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name


def matched(
    entries: Mapping[str, T], paths: Sequence[Path], what: str, source: Path
) -> list[T | None]:
    """Per image the entry naming it (by relative path, else file name), or ``None``.

    Raises:
        AuditError: entries that name no image (up to five are listed).
    """
    root = inputs_root(paths)
    found: list[T | None] = []
    used: set[str] = set()
    for path in paths:
        key = image_key(Path(path), root)
        name = Path(path).name
        if key in entries:
            found.append(entries[key])
            used.add(key)
        elif name in entries:
            found.append(entries[name])
            used.add(name)
        else:
            found.append(None)
    unknown = sorted(set(entries) - used)
    if unknown:
        listed = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise AuditError(
            f"{source}: {len(unknown)} {what} row(s) name no image of the results ({listed}); "
            f"name images by their path relative to {root} or by file name."
        )
    missing = sum(entry is None for entry in found)
    if missing:
        logger.warning("%d of %d image(s) have no %s in %s", missing, len(found), what, source)
    return found


def read_labels(path: Path, paths: Sequence[Path], classes: Mapping[str, int]) -> np.ndarray:
    """Per image its true class index from the CSV ``path`` (``-1``: no row for it).

    A label is a class name (``classes`` maps the names the maps explain to their indices; any
    other name gets a negative index of its own, below ``-1``, so it never equals an explained
    class) or an index.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"Cannot read the labels {path} ({e}); give a CSV image,label.") from e
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != _LABEL_FIELDS:
        raise AuditError(f"{path}: the CSV header must be exactly {','.join(_LABEL_FIELDS)}.")
    index = dict(classes)
    labels: dict[str, int] = {}
    for number, row in enumerate(reader, start=2):
        value = (row["label"] or "").strip()
        if not value:
            raise AuditError(f"{path}, row {number}: the label is empty; give a class name.")
        if value not in index and not value.isdigit():
            index[value] = -2 - len(index)  # below -1 (unknown): never an explained class
        labels[(row["image"] or "").strip()] = index[value] if value in index else int(value)
    found = matched(labels, paths, "label", Path(path))
    return np.array([-1 if v is None else v for v in found], dtype=np.int64)


def read_masks(
    path: Path, paths: Sequence[Path], preprocessing: Preprocessing
) -> list[np.ndarray | None]:
    """Per image its object mask at the model's input from the ground-truth file ``path``."""
    from PIL import Image  # lazy: only audits with boxes read image sizes

    truth = load_ground_truth(path)
    found: list[GroundTruth | None] = matched(truth, paths, "box", Path(path))
    masks: list[np.ndarray | None] = []
    for image, entry in zip(paths, found, strict=True):
        if entry is None:
            masks.append(None)
            continue
        try:
            with Image.open(image) as opened:
                width, height = opened.size
        except OSError as e:
            raise AuditError(f"Cannot read the size of {image} ({e}) for its boxes.") from e
        masks.append(entry.model_mask((height, width), preprocessing).numpy())
    return masks
