"""Reading a folder run's results back: ``cnnviz.open_results(DIR)``, for either layout.

``DIR`` is the ``--out`` folder of ``cnnviz explain|gradcam|saliency``. With ``--store zarr`` it
holds ``results.zarr`` (:mod:`cnnviz.outputs.result_store`), read through zarr: maps are zarr
arrays, read chunk by chunk only when indexed. With the default file layout it holds one
``.npy`` per image and target, listed by ``manifest.json`` (or, for a run that was killed
before writing it, by the records); :class:`NpyMaps` then stands for the ``(N, T, h, w)`` array
and loads only the files an index selects. Either way an interrupted run opens, and ``complete``
says which images are whole::

    >>> results = cnnviz.open_results("out")
    >>> results                             # in Jupyter: a summary table
    >>> layer = results.maps("gradcam")     # lazy (N, T, h, w)
    >>> first = layer[0]                    # (T, h, w) NumPy: only this image is read
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.errors import OutputError
from cnnviz.outputs.files import atomic_write_bytes
from cnnviz.outputs.manifest import MANIFEST_NAME
from cnnviz.outputs.records import RECORDS_DIR, read_records
from cnnviz.outputs.result_store import (
    DONE,
    FAILED,
    PENDING,
    RESOLUTIONS,
    STATUS_NAMES,
    STORE_NAME,
    open_store_group,
)

TABLE_COLUMNS = (
    "input", "sha256", "method", "target_rank", "target_index", "label", "score", "probability",
    "status",
)  # fmt: skip


class NpyMaps:
    """The maps of a file-layout run as a lazy ``(N, T, h, w)`` float32 array: indexing loads
    the selected images' ``.npy`` files only (missing ones read as NaN)."""

    def __init__(self, root: Path, files: list[list[str | None]], shape: tuple[int, ...]) -> None:
        self.root, self.files, self.shape = root, files, shape
        self.dtype = np.dtype(np.float32)
        self.ndim = len(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _image(self, i: int) -> np.ndarray:
        maps = np.full(self.shape[1:], np.nan, np.float32)
        for t, name in enumerate(self.files[i]):
            if name is not None:
                maps[t] = np.load(self.root / name, allow_pickle=False)
        return maps

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            return self._image(range(self.shape[0])[first])[rest]
        chosen = np.arange(self.shape[0])[first]
        stacked = np.stack([self._image(int(i)) for i in np.atleast_1d(chosen)])
        return stacked[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"NpyMaps(shape={self.shape}, dtype=float32, {self.root})"


class Results:
    """A folder run's results, read lazily (:func:`open_results`).

    ``paths``: the inputs, in the run's order; ``methods``; ``status``: ``"done"``,
    ``"failed"`` or ``"pending"`` per image and ``complete`` its boolean mask; :meth:`maps`,
    :meth:`targets`, :meth:`labels`, :meth:`scores`, :meth:`probabilities` per method (the first
    by default), ``(N, T)`` each, and :meth:`rows` the table of ``results.csv``.
    """

    layout: str

    def __init__(self, root: Path, paths: list[str], methods: list[str], status: np.ndarray):
        self.root, self.paths, self.methods = root, paths, methods
        self.status = np.array([STATUS_NAMES[int(s)] for s in status], dtype=object)
        self.complete = np.asarray(status == DONE, dtype=bool)
        self.class_names: list[str] = []
        self.model: dict[str, Any] = {}  # the manifest's model record (name, preprocessing, …)
        self.layers: dict[str, str | None] = {}  # method → the layer its maps come from

    def layer(self, method: str | None = None) -> str | None:
        """The layer ``method``'s maps come from (``None``: an input-space method)."""
        return self.layers.get(self._method(method))

    def __len__(self) -> int:
        return len(self.paths)

    def _method(self, method: str | None) -> str:
        if method is None:
            if not self.methods:
                raise OutputError(f"{self.root} holds no method's results; run cnnviz explain.")
            return self.methods[0]
        if method not in self.methods:
            raise OutputError(
                f"{self.root} holds no {method!r} results; it holds {', '.join(self.methods)}."
            )
        return method

    def maps(self, method: str | None = None, resolution: str = "layer") -> Any:
        """The lazy ``(N, T, h, w)`` maps of ``method`` at the ``layer`` or ``input`` resolution."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        return self._maps(self._method(method), resolution)

    def _maps(self, method: str, resolution: str) -> Any:
        raise NotImplementedError

    def targets(self, method: str | None = None) -> np.ndarray:
        """``(N, T)`` class indices (-1: none, or not complete)."""
        return self._values(self._method(method), "targets")

    def scores(self, method: str | None = None) -> np.ndarray:
        """``(N, T)`` the targets' scores (NaN: not complete)."""
        return self._values(self._method(method), "scores")

    def probabilities(self, method: str | None = None) -> np.ndarray:
        """``(N, T)`` the targets' probabilities (NaN: none, or not complete)."""
        return self._values(self._method(method), "probabilities")

    def _values(self, method: str, name: str) -> np.ndarray:
        raise NotImplementedError

    def labels(self, method: str | None = None) -> list[list[str]]:
        """The targets' class names, per image (empty for images not complete)."""
        names = self.class_names
        return [
            [names[t] if 0 <= t < len(names) else str(t) for t in row if t >= 0]
            for row in self.targets(method).tolist()
        ]

    def sha256(self) -> list[str]:
        """Each input's SHA-256 in hex (``""``: unknown)."""
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        """The table: one row per image, method and target (one row per method for an image
        that is not complete, its target columns empty)."""
        rows: list[dict[str, Any]] = []
        hashes = self.sha256()
        for method in self.methods:
            targets, scores = self.targets(method), self.scores(method)
            probabilities, labels = self.probabilities(method), self.labels(method)
            for i, path in enumerate(self.paths):
                base = {"input": path, "sha256": hashes[i], "method": method}
                if not self.complete[i]:
                    empty = dict.fromkeys(TABLE_COLUMNS[3:-1], None)
                    rows.append({**base, **empty, "status": self.status[i]})
                    continue
                for t, label in enumerate(labels[i]):
                    p = float(probabilities[i, t])
                    rows.append(
                        {
                            **base,
                            "target_rank": t,
                            "target_index": int(targets[i, t]),
                            "label": label,
                            "score": float(scores[i, t]),
                            "probability": None if np.isnan(p) else p,
                            "status": self.status[i],
                        }
                    )
        order = {m: k for k, m in enumerate(self.methods)}
        index = {p: k for k, p in enumerate(self.paths)}
        rows.sort(key=lambda r: (index[r["input"]], order[r["method"]]))
        return rows

    def counts(self) -> dict[str, int]:
        """How many images are done, failed and pending."""
        return {name: int((self.status == name).sum()) for name in STATUS_NAMES.values()}

    def summary(self) -> dict[str, Any]:
        """What ``manifest.json`` says of the results: layout, counts and map shapes."""
        shapes = {}
        for method in self.methods:
            shapes[method] = {
                res: list(self._maps(method, res).shape)
                for res in RESOLUTIONS
                if self.has(method, res)
            }
        return {"layout": self.layout, "images": len(self), **self.counts(), "maps": shapes}

    def has(self, method: str, resolution: str) -> bool:
        """Whether ``method``'s maps at ``resolution`` were kept."""
        return True

    def _line(self) -> str:
        c = self.counts()
        line = f"{c['done']} of {len(self)} images complete"
        return line + (f", {c['failed']} failed" if c["failed"] else "")

    def __repr__(self) -> str:
        return (
            f"<cnnviz results ({self.layout}) in {self.root}: {self._line()}; "
            f"methods {', '.join(self.methods) or 'none'}>"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{html.escape(str(shape))}</td></tr>"
            for m, shapes in self.summary()["maps"].items()
            for shape in [shapes.get("layer")]
        )
        return (
            f"<div><b>cnnviz results</b> ({html.escape(self.layout)}) in "
            f"<code>{html.escape(str(self.root))}</code>: {html.escape(self._line())}"
            f"<table><tr><th>method</th><th>layer maps (N, T, h, w)</th></tr>{rows}</table></div>"
        )


class ZarrResults(Results):
    """Results of a ``--store zarr`` run: views of ``results.zarr``."""

    layout = "zarr"

    def __init__(self, root: Path, group: Any) -> None:
        self.group = group
        attrs = dict(group.attrs)
        super().__init__(root, list(attrs["inputs"]), list(attrs["methods"]), group["status"][:])
        self.class_names = list(attrs.get("class_names", []))
        self.attrs = attrs
        self.model = dict(attrs.get("model", {}))
        self.layers = dict(attrs.get("layers", {}))

    def has(self, method: str, resolution: str) -> bool:
        return f"{method}/{resolution}" in self.group

    def _maps(self, method: str, resolution: str) -> Any:
        if not self.has(method, resolution):
            raise OutputError(
                f"{self.root} keeps the maps at the layer's resolution only; run again with "
                "--store-input-maps to keep them at the input's, or upsample these."
            )
        return self.group[f"{method}/{resolution}"]

    def _values(self, method: str, name: str) -> np.ndarray:
        return np.asarray(self.group[f"{method}/{name}"][:])

    def sha256(self) -> list[str]:
        return [bytes(row).hex() if any(row) else "" for row in self.group["sha256"][:]]


class FileResults(Results):
    """Results of a file-layout run, from ``manifest.json`` (or the records)."""

    layout = "files"

    def __init__(
        self,
        root: Path,
        items: list[dict[str, Any]],
        failed: Sequence[str],
        model: dict[str, Any] | None = None,
    ) -> None:
        paths = sorted({str(i["input"]) for i in items} | set(failed))
        methods = list(dict.fromkeys(str(i["method"]) for i in items))
        index = {p: k for k, p in enumerate(paths)}
        done = {(str(i["input"]), str(i["method"])) for i in items}
        status = np.full(len(paths), PENDING, np.uint8)
        for p in paths:
            if all((p, m) in done for m in methods):
                status[index[p]] = DONE
            elif p in failed:
                status[index[p]] = FAILED
        super().__init__(root, paths, methods, status)
        self.items, self.index = items, index
        self.count = 1 + max((int(i.get("target_rank", 0)) for i in items), default=0)
        names: dict[int, str] = {}
        for item in items:
            if item.get("target_index") is not None:
                names[int(item["target_index"])] = str(item["target_name"])
        self.class_names = [names.get(k, str(k)) for k in range(1 + max(names, default=-1))]
        self.model = dict(model or {})
        self.layers = {str(i["method"]): i.get("layer") for i in items}

    def _of(self, method: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["method"] == method]

    def _maps(self, method: str, resolution: str) -> NpyMaps:
        key, shape_key = (
            ("raw_layer", "layer_shape") if resolution == "layer" else ("raw_input", "input_shape")
        )
        files: list[list[str | None]] = [[None] * self.count for _ in self.paths]
        shape: tuple[int, ...] = (0, 0)
        for item in self._of(method):
            files[self.index[str(item["input"])]][int(item["target_rank"])] = item["files"][key]
            shape = tuple(item[shape_key])
        return NpyMaps(self.root, files, (len(self.paths), self.count, *shape))

    def _values(self, method: str, name: str) -> np.ndarray:
        kind, fill = (np.int64, -1) if name == "targets" else (np.float64, np.nan)
        values = np.full((len(self.paths), self.count), fill, dtype=kind)
        field = {"targets": "target_index", "scores": "score", "probabilities": "probability"}
        for item in self._of(method):
            value = item.get(field[name])
            if value is not None:
                values[self.index[str(item["input"])], int(item["target_rank"])] = value
        return values

    def sha256(self) -> list[str]:
        def digest(path: str) -> str:
            try:
                return hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                return ""

        return [digest(p) for p in self.paths]


def open_results(folder: str | Path) -> Results:
    """The results of the folder run into ``folder`` (its ``--out``), read lazily.

    Raises:
        OutputError: ``folder`` holds neither layout (nor is a ``results.zarr``).
    """
    root = Path(folder)
    for path in (root / STORE_NAME, root):
        group = open_store_group(path)
        if group is not None:
            return ZarrResults(root if path != root else root.parent, group)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise OutputError(f"{manifest} does not read ({e}); run the folder again.") from e
        failed = [str(f.get("input")) for f in data.get("failures", [])]
        return FileResults(root, list(data.get("items", [])), failed, data.get("model"))
    if (root / RECORDS_DIR).is_dir():  # killed before its manifest: the records say it all
        items = [item for record in read_records(root) for item in record["items"]]
        return FileResults(root, items, [])
    raise OutputError(
        f"{root} holds no cnnviz results: expected {STORE_NAME} (a run with --store zarr) or "
        f"{MANIFEST_NAME} or {RECORDS_DIR}/ (a run with the default file layout); give the "
        "--out folder of cnnviz explain, gradcam or saliency."
    )


def write_table(results: Results, path: Path) -> None:
    """Write :meth:`Results.rows` as CSV (atomically)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in results.rows():
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))
