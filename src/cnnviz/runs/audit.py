"""``cnnviz audit RESULTS --out DIR``: the SpRAy audit of a folder run's maps, written as files.

Reads the maps of a ``cnnviz explain`` run (either layout, :func:`cnnviz.open_results`): for each
complete image its first target's map at the layer's resolution and the class it explains. Then
:func:`cnnviz.audit.clusters.audit_maps` clusters each class and flags clusters, and
:func:`audit_results` writes into ``DIR``:

* ``index.html``: eigenvalue plots, per cluster its prototype, a mosaic of members and statistics;
* ``audit.csv``: one row per image: its class, cluster, flags and where its evidence lies;
* ``clusters.csv``: one row per cluster;
* ``audit.json``: the settings, and per class its eigenvalues and clusters.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.audit.clusters import Audit, AuditSettings, audit_maps
from cnnviz.audit.spray import GRID, mass_grids
from cnnviz.audit.truth import read_labels, read_masks
from cnnviz.errors import AuditError, ImageLoadError
from cnnviz.inputs.preprocess import Preprocessing
from cnnviz.outputs.files import atomic_write_bytes, write_json
from cnnviz.outputs.records import prepare_out_dir
from cnnviz.outputs.results import Results, open_results
from cnnviz.render.audit_page import audit_page

logger = logging.getLogger(__name__)

PLACEMENT_FIELDS = [
    "corner",
    "corner_name",
    "border",
    "centre",
    "on_object",
    "coverage",
    "centre_x",
    "centre_y",
]
"""Where the evidence lies (:class:`~cnnviz.audit.placement.Placement`): columns of both tables."""

IMAGE_FIELDS = ["image", "class", "cluster", "flags", *PLACEMENT_FIELDS, "true_label"]
"""The columns of ``audit.csv``."""

CLUSTER_FIELDS = [
    "class", "cluster", "size", "share", "flags", *PLACEMENT_FIELDS, "correct", "labelled"
]  # fmt: skip
"""The columns of ``clusters.csv``."""


READ_BLOCK = 512
"""Images whose maps are read at once: a saliency run's 224 × 224 maps of 50,000 images would
take 10 GB in memory, their 8 × 8 mass distributions take 26 MB."""


@dataclass(frozen=True)
class RunMaps:
    """What an audit reads from a run: per complete image its path, its first target's map as a
    mass distribution (:func:`~cnnviz.audit.spray.mass_grids`, read block by block) and on demand
    at the layer's resolution, and the class it explains; the run's model record, method, layer.
    """

    paths: list[Path]
    grids: np.ndarray  # (n, g, g') mass distributions
    raw_map: Callable[[int], np.ndarray]  # image k's (h, w) map, read when drawn
    classes: np.ndarray  # (n,) class indices
    class_names: dict[int, str]
    model: dict[str, Any]
    method: str
    layer: str | None

    @property
    def preprocessing(self) -> Preprocessing:
        """How the run's model saw the images (from its manifest)."""
        return Preprocessing.from_dict(self.model["preprocessing"])


def run_maps(results: Results, method: str | None = None, grid: int = GRID) -> RunMaps:
    """The maps of ``method`` (the run's only method if ``None``) of ``results``' complete images.

    Raises:
        AuditError: several methods and none chosen, an unknown method, or no complete image.
    """
    methods = list(results.methods)
    if not results.model.get("preprocessing"):
        raise AuditError(
            f"{results.root} does not say how its model saw the images (its manifest is "
            "missing: the run was interrupted); finish it with cnnviz explain … --resume."
        )
    if method is None:
        if len(methods) != 1:
            raise AuditError(
                f"the results hold maps of {len(methods)} methods ({', '.join(methods)}); "
                "choose one with --method."
            )
        method = methods[0]
    if method not in methods:
        raise AuditError(f"the results hold no {method!r} maps; they hold {', '.join(methods)}.")
    done = np.flatnonzero(np.asarray(results.complete, dtype=bool))
    if done.size == 0:
        raise AuditError(
            f"{results.root} holds no complete image; run cnnviz explain (or --resume) first."
        )
    stored = results.maps(method, "layer")
    grids = []
    for start in range(0, len(results), READ_BLOCK):
        wanted = done[(done >= start) & (done < start + READ_BLOCK)] - start
        if wanted.size:
            block = np.asarray(stored[start : start + READ_BLOCK], dtype=np.float32)
            grids.append(mass_grids(block[wanted, 0], grid))

    def raw_map(k: int) -> np.ndarray:
        values: np.ndarray = np.asarray(stored[int(done[k])], dtype=np.float32)[0]
        return values

    targets = np.asarray(results.targets(method), dtype=np.int64)[done, 0]
    labels = results.labels(method)
    names = dict(enumerate(results.class_names))
    names.update({int(targets[k]): str(labels[i][0]) for k, i in enumerate(done.tolist())})
    return RunMaps(
        paths=[Path(results.paths[i]) for i in done.tolist()],
        grids=np.concatenate(grids),
        raw_map=raw_map,
        classes=targets,
        class_names=names,
        model=dict(results.model),
        method=method,
        layer=results.layer(method),
    )


def _csv_text(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in fields})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return "" if value is None else value


def image_rows(audit: Audit, run: RunMaps, labels: np.ndarray | None) -> list[dict[str, Any]]:
    """``audit.csv``'s rows, in the run's image order."""
    rows: list[dict[str, Any]] = []
    by_image: dict[int, dict[str, Any]] = {}
    for audited in audit.classes:
        stats = audited.placements
        for local, i in enumerate(audited.members.tolist()):
            cluster = audited.clusters[int(audit.image_cluster[i])]
            by_image[i] = {
                "cluster": cluster.index,
                "flags": list(cluster.flags),
                **stats.row(local),
            }
    for i, path in enumerate(run.paths):
        truth = None if labels is None or labels[i] == -1 else labels[i]
        rows.append(
            {
                "image": str(path),
                "class": run.class_names[int(run.classes[i])],
                "cluster": -1,
                "true_label": None
                if truth is None
                else run.class_names.get(int(truth), str(truth)),
                **by_image.get(i, {}),
            }
        )
    return rows


def cluster_rows(audit: Audit) -> list[dict[str, Any]]:
    """``clusters.csv``'s rows: by class, then cluster."""
    return [
        {
            "class": audited.label,
            "cluster": cluster.index,
            "size": cluster.size,
            "share": cluster.size / audited.members.size,
            "flags": list(cluster.flags),
            **cluster.where.record(),
            "correct": cluster.correct,
            "labelled": cluster.labelled if cluster.correct is not None else None,
        }
        for audited in audit.classes
        for cluster in audited.clusters
    ]


def _pictures(run: RunMaps) -> Any:
    """Image ``i`` as the model saw it (decoded on demand), ``None`` if it cannot be read."""
    from cnnviz.inputs.decode import decode_input  # lazy: only the page's mosaics decode

    prep = run.preprocessing

    def picture(i: int) -> np.ndarray | None:
        try:
            shown, _, _ = decode_input(run.paths[i], prep)
        except (ImageLoadError, OSError) as e:
            logger.warning("cannot draw %s in the audit page: %s", run.paths[i], e)
            return None
        return np.asarray(shown)

    return picture


def audit_results(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    method: str | None = None,
    labels: str | Path | None = None,
    boxes: str | Path | None = None,
    settings: AuditSettings | None = None,
) -> Audit:
    """Audit the run in ``results_dir`` and write the audit into ``out_dir`` (module docstring).

    Raises:
        AuditError: too few maps per class, labels or boxes that name no image of the run, a
            method the run does not hold.
    """
    settings = settings or AuditSettings()
    run = run_maps(open_results(results_dir), method, settings.grid)
    index = {name: c for c, name in run.class_names.items()}
    truth = None if labels is None else read_labels(Path(labels), run.paths, index)
    masks = None if boxes is None else read_masks(Path(boxes), run.paths, run.preprocessing)
    names = [run.class_names.get(c, str(c)) for c in range(max(run.class_names) + 1)]
    audit = audit_maps(run.grids, run.classes, names, labels=truth, masks=masks, settings=settings)
    out = prepare_out_dir(Path(out_dir))
    files = ["index.html", "audit.csv", "clusters.csv", "audit.json"]
    atomic_write_bytes(
        out / "audit.csv", _csv_text(image_rows(audit, run, truth), IMAGE_FIELDS).encode()
    )
    atomic_write_bytes(
        out / "clusters.csv", _csv_text(cluster_rows(audit), CLUSTER_FIELDS).encode()
    )
    write_json(out / "audit.json", _record(audit, run, results_dir))
    page = audit_page(
        audit,
        run.raw_map,
        _pictures(run),
        [p.name for p in run.paths],
        context={
            "model": run.model,
            "method": run.method,
            "layer": run.layer,
            "source": str(results_dir),
            "files": files,
            "with_boxes": masks is not None,
        },
    )
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return audit


def _record(audit: Audit, run: RunMaps, source: str | Path) -> dict[str, Any]:
    return {
        "source": str(source),
        "model": run.model,
        "method": run.method,
        "layer": run.layer,
        "settings": {
            "neighbours": audit.settings.neighbours,
            "max_clusters": audit.settings.max_clusters,
            "grid": audit.settings.grid,
            "min_images": audit.settings.fewest(),
            "seed": audit.settings.seed,
        },
        "skipped_classes": audit.skipped,
        "classes": [
            {
                "class": audited.label,
                "maps": int(audited.members.size),
                "eigenvalues": [float(v) for v in audited.spectrum.eigenvalues],
                "clusters": [row for row in cluster_rows(audit) if row["class"] == audited.label],
            }
            for audited in audit.classes
        ],
    }
