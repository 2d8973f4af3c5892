"""What ``cnnviz evaluate`` writes and says once every image is scored.

``results.csv`` (one row per image × method × metric), ``summary.csv`` (per method × metric: the
mean with its interval), ``results.json``, the plots and the self-contained ``index.html``. The
numbers come from :mod:`cnnviz.runs.evaluate` as plain values
(:class:`EvaluationOutputs`); nothing here computes a metric.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnviz.metrics.sanity import SanityResult
from cnnviz.metrics.statistics import BETTER, METRIC_GROUPS
from cnnviz.models.loaded import LoadedModel
from cnnviz.outputs.files import atomic_write_bytes, write_json
from cnnviz.outputs.manifest import environment_info, model_record
from cnnviz.render.figures import (
    curves_figure,
    figure_to_png_bytes,
    road_figure,
    sanity_maps_figure,
    similarity_figure,
)
from cnnviz.render.html import png_bytes_data_uri, render_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROW_FIELDS = ("image", "method", "layer", "target_index", "target_name", "metric", "value", "note")
"""The columns of ``results.csv``."""

SUMMARY_FIELDS = ("method", "metric", "n", "mean", "ci_low", "ci_high", "better")
"""The columns of ``summary.csv``."""


@dataclass(frozen=True)
class EvaluationOutputs:
    """Everything an evaluation writes, as values.

    ``settings`` is the run's :class:`~cnnviz.runs.evaluate.EvaluateSettings` as a dict (tuples
    as lists); ``summary`` comes from :func:`cnnviz.metrics.statistics.summarize_metrics`;
    ``thumbs`` are the page's rows of maps (``title``, ``label``, ``input`` and ``cells`` of
    ``method`` and ``src``, data URIs).
    """

    loaded: LoadedModel
    methods: tuple[str, ...]
    settings: Mapping[str, Any]
    rows: Sequence[Mapping[str, Any]]
    summary: Sequence[Mapping[str, Any]]
    curves: Mapping[str, dict[str, list[np.ndarray]]]
    road: Mapping[str, list[tuple[np.ndarray, np.ndarray]]]
    sanity: Mapping[str, SanityResult]
    failures: Sequence[Mapping[str, Any]]
    thumbs: Sequence[Mapping[str, Any]]


def write_results(out_dir: Path, outputs: EvaluationOutputs) -> dict[str, str]:
    """Write the CSVs, the JSON, the plots and the page into ``out_dir``; ``{role: file name}``."""
    files = {
        "results_csv": "results.csv",
        "summary_csv": "summary.csv",
        "results_json": "results.json",
        "html": "index.html",
    }
    atomic_write_bytes(out_dir / files["results_csv"], csv_text(outputs.rows, ROW_FIELDS).encode())
    summary_csv = csv_text(outputs.summary, SUMMARY_FIELDS).encode()
    atomic_write_bytes(out_dir / files["summary_csv"], summary_csv)
    pngs: dict[str, tuple[bytes, str]] = {}
    for name, (fig, caption) in _figures(outputs).items():
        pngs[name] = (figure_to_png_bytes(fig), caption)
        files[name] = f"{name}.png"
        atomic_write_bytes(out_dir / files[name], pngs[name][0])
    sanity = {
        n: {
            "layer": r.layer,
            "steps": list(r.steps),
            "mean": {
                m: [float(v) if math.isfinite(v) else None for v in r.mean(m)] for m in r.similarity
            },
        }
        for n, r in outputs.sanity.items()
    }
    write_json(
        out_dir / files["results_json"],
        {
            "rows": list(outputs.rows),
            "summary": list(outputs.summary),
            "settings": dict(outputs.settings),
            "sanity": sanity,
            "model": model_record(outputs.loaded),
            "environment": environment_info(),
            "failures": list(outputs.failures),
        },
    )
    html = _render_html(outputs, pngs)
    atomic_write_bytes(out_dir / files["html"], html.encode("utf-8"))
    return files


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV with the header ``fields`` (``None`` as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
    return buffer.getvalue()


def _figures(outputs: EvaluationOutputs) -> dict[str, tuple[Figure, str]]:
    figures: dict[str, tuple[Figure, str]] = {}
    if outputs.curves:
        figures["curves"] = (curves_figure(dict(outputs.curves)), "Deletion and insertion curves")
    if outputs.road:
        percentages = outputs.settings["road_percentages"]
        figures["road"] = (road_figure(dict(outputs.road), percentages), "ROAD")
    if outputs.sanity:
        figures["sanity"] = (
            similarity_figure(outputs.sanity),
            "Cascading parameter randomisation",
        )
        figures["sanity-maps"] = (
            sanity_maps_figure(outputs.sanity, cmap=outputs.settings["cmap"]),
            "Maps under cascading randomisation (first image)",
        )
    return figures


# -- the page --------------------------------------------------------------------------------


def _render_html(outputs: EvaluationOutputs, pngs: dict[str, tuple[bytes, str]]) -> str:
    table: dict[str, dict[str, Any]] = {}
    for entry in outputs.summary:
        table.setdefault(entry["metric"], {})[entry["method"]] = entry
    groups = outputs.settings["metrics"]
    metrics = [m for group in groups for m in METRIC_GROUPS[group] if m in table]
    figures = [
        {"name": n, "caption": caption, "src": png_bytes_data_uri(data)}
        for n, (data, caption) in pngs.items()
    ]
    return render_page(
        "evaluate.html.j2",
        model=model_record(outputs.loaded),
        environment=environment_info(),
        methods=list(outputs.methods),
        metrics=metrics,
        table=table,
        better=BETTER,
        figures=figures,
        thumbs=list(outputs.thumbs),
        rows=list(outputs.rows),
        failures=list(outputs.failures),
        settings=dict(outputs.settings),
    )
