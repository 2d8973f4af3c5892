"""What ``cnnviz evaluate`` writes and says once every image is scored.

``results.csv`` (one row per image × method × metric), ``summary.csv`` (per method × metric: the
mean with its interval and the comparison with the random-map baseline), ``results.json``, the
plots, the self-contained ``index.html`` and the lines the CLI prints
(:func:`summary_lines`). The numbers come from :mod:`cnnviz.runs.evaluate` as plain values
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
from cnnviz.metrics.statistics import BASELINE, BETTER, METRIC_GROUPS, MIN_PAIRED, Verdict
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

SUMMARY_FIELDS = (
    *("method", "metric", "n", "mean", "ci_low", "ci_high", "better"),
    *("baseline", "n_paired", "advantage", "advantage_ci_low", "advantage_ci_high", "verdict"),
)
"""The columns of ``summary.csv`` (:func:`cnnviz.metrics.statistics.compare_with_baseline`)."""

PERCENT_METRICS = frozenset({"average_drop", "increase_in_confidence"})
"""Metrics in per cent, shown with one decimal (the others, in [0, 1] or [−1, 1], with three)."""


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


# -- what the numbers mean -------------------------------------------------------------------


def number(metric: str, value: float, *, signed: bool = False) -> str:
    """``value`` of ``metric`` as printed: one decimal for per-cent metrics, else three; a
    typographic minus sign, and ``+`` for a positive ``signed`` value."""
    digits = 1 if metric in PERCENT_METRICS else 3
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "−")


def comparison_text(entry: Mapping[str, Any]) -> str:
    """What one summary entry's comparison with the baseline says, in words and numbers:
    ``"no better than random-map (Δ −0.034 [−0.070, +0.002], n = 50)"``; empty where nothing
    was compared (see :class:`~cnnviz.metrics.statistics.Verdict`)."""
    words, numbers = comparison_parts(entry)
    return f"{words} ({numbers})" if numbers else words


def comparison_parts(entry: Mapping[str, Any]) -> tuple[str, str]:
    """:func:`comparison_text` in two parts: the verdict in words (``"no better than
    random-map"``) and the numbers that decide it (``"Δ −0.034 [−0.070, +0.002], n = 50"``)."""
    verdict = Verdict(entry.get("verdict") or "")
    baseline, metric = entry.get("baseline") or BASELINE, entry["metric"]
    if verdict is Verdict.NOT_COMPARED:
        return "", ""
    if verdict is Verdict.BASELINE:
        return "the baseline", ""
    n, advantage = entry["n_paired"], entry["advantage"]
    if advantage is None:
        return f"not compared with {baseline}: no image has a value for both", ""
    delta = f"Δ {number(metric, advantage, signed=True)}"
    low, high = entry["advantage_ci_low"], entry["advantage_ci_high"]
    if low is not None and high is not None:
        delta += f" [{number(metric, low, signed=True)}, {number(metric, high, signed=True)}]"
    delta += f", n = {n}"
    if verdict is Verdict.UNDECIDED:
        why = f"{MIN_PAIRED} images needed" if n < MIN_PAIRED else "no bootstrap resamples"
        return f"undecided against {baseline} ({why})", delta
    words = {
        Verdict.BETTER: "better than",
        Verdict.NO_BETTER: "no better than",
        Verdict.WORSE: "worse than",
    }
    return f"{words[verdict]} {baseline}", delta


def _ordered_metrics(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics of ``summary`` in the order of :data:`METRIC_GROUPS` (others last)."""
    present = dict.fromkeys(e["metric"] for e in summary)
    known = [m for group in METRIC_GROUPS.values() for m in group if m in present]
    return known + [m for m in present if m not in known]


def summary_lines(summary: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    """The CLI's account of an evaluation: a line saying how to read it (or that there is no
    baseline), then per metric and method its mean, interval, direction and verdict, e.g.
    ``"saliency: deletion_auc ↓ 0.148 [0.120, 0.170] — no better than random-map (Δ −0.034
    [−0.070, +0.002], n = 50)"``."""
    if BASELINE in methods:
        lines = [
            f"Means with 95 % intervals (↓ lower is better, ↑ higher); each method against "
            f"{BASELINE} (noise, in --methods by default) on the same images: Δ = mean "
            "advantage per image (positive: better) with its 95 % bootstrap interval; 'no "
            "better' when it contains 0, 'worse' when it lies below (docs/evaluation.md)."
        ]
    else:
        lines = [
            f"No baseline: {BASELINE} was not among the methods, so nothing says whether these "
            f"numbers beat noise (add {BASELINE} to --methods)."
        ]
    order = {m: i for i, m in enumerate(methods)}
    entries = sorted(summary, key=lambda e: order.get(e["method"], len(order)))
    for metric in _ordered_metrics(summary):
        for e in (e for e in entries if e["metric"] == metric):
            arrow = {"lower": " ↓", "higher": " ↑"}.get(e.get("better") or "", "")
            interval = f"[{number(metric, e['ci_low'])}, {number(metric, e['ci_high'])}]"
            text = f"{e['method']}: {metric}{arrow} {number(metric, e['mean'])} {interval}"
            verdict = comparison_text(e)
            lines.append(f"{text} — {verdict}" if verdict else text)
    return lines


# -- the page --------------------------------------------------------------------------------


def _render_html(outputs: EvaluationOutputs, pngs: dict[str, tuple[bytes, str]]) -> str:
    table: dict[str, dict[str, Any]] = {}
    for entry in outputs.summary:
        verdict = Verdict(entry.get("verdict") or "")
        words, numbers = comparison_parts(entry)
        cell = {
            **entry,
            "flagged": verdict.flagged,
            "verdict_words": words,
            "verdict_numbers": numbers,
        }
        table.setdefault(entry["metric"], {})[entry["method"]] = cell
    groups = outputs.settings["metrics"]
    metrics = [m for group in groups for m in METRIC_GROUPS[group] if m in table]
    figures = [
        {"name": n, "caption": caption, "src": png_bytes_data_uri(data)}
        for n, (data, caption) in pngs.items()
    ]
    flagged = sum(cell["flagged"] for cells in table.values() for cell in cells.values())
    return render_page(
        "evaluate.html.j2",
        model=model_record(outputs.loaded),
        environment=environment_info(),
        methods=list(outputs.methods),
        metrics=metrics,
        table=table,
        better=BETTER,
        baseline=BASELINE if BASELINE in outputs.methods else None,
        baseline_name=BASELINE,
        min_paired=MIN_PAIRED,
        flagged=flagged,
        figures=figures,
        thumbs=list(outputs.thumbs),
        rows=list(outputs.rows),
        failures=list(outputs.failures),
        settings=dict(outputs.settings),
    )
