"""The metric table of an evaluation: which metrics exist, which direction is better, means with
percentile-bootstrap 95 % intervals per method × metric, and each method's paired comparison
with the random-map baseline (docs/evaluation.md, "Is a method better than noise?")."""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "deletion": ("deletion_auc",),
    "insertion": ("insertion_auc",),
    "confidence": ("average_drop", "increase_in_confidence"),
    "road": ("road_morf", "road_lerf"),
    "pointing": ("pointing_game", "energy_pointing_game"),
    "sanity": ("cascading_spearman_abs", "cascading_spearman", "cascading_ssim", "cascading_hog"),
}
_LOWER_IS_BETTER = {"deletion_auc", "average_drop", "road_morf", *METRIC_GROUPS["sanity"]}
BETTER: dict[str, str] = {
    m: "lower" if m in _LOWER_IS_BETTER else "higher" for g in METRIC_GROUPS.values() for m in g
}
"""Whether a lower or a higher value of each metric is better."""

BASELINE = "random-map"
"""The reference map every method is compared with (uniform noise per pixel, seeded per image:
:func:`cnnviz.metrics.localisation.reference_map`): a method that scores no better than noise
on a metric has not shown, on that metric, that its maps follow the model."""

MIN_PAIRED = 6
"""Fewest images on which a method and the baseline must both have a value for a verdict: below
6 not even "better on every image" is significant at 5 % (a two-sided sign test's smallest
p-value is ``2·2⁻ⁿ``, 0.0625 for 5 images, 0.031 for 6), so no interval can honestly decide."""


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean (``numpy.random.default_rng(seed)``)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    mean = float(data.mean())
    if data.size == 1 or resamples < 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return mean, float(low), float(high)


def summarize_metrics(
    rows: Sequence[Mapping[str, Any]],
    *,
    resamples: int,
    seed: int,
    baseline: str | None = BASELINE,
) -> list[dict[str, Any]]:
    """Mean and 95 % interval per method × metric over the rows with a value, each compared
    with ``baseline`` (:func:`compare_with_baseline`; ``None``: no comparison fields)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["value"] is not None:
            groups.setdefault((row["method"], row["metric"]), []).append(float(row["value"]))
    summary = []
    for (method, metric), values in groups.items():
        mean, low, high = bootstrap_ci(values, resamples=resamples, seed=seed)
        entry = {"method": method, "metric": metric, "n": len(values), "mean": mean}
        summary.append({**entry, "ci_low": low, "ci_high": high, "better": BETTER.get(metric, "")})
    if baseline is None:
        return summary
    return compare_with_baseline(rows, summary, baseline=baseline, resamples=resamples, seed=seed)


# -- each method against the baseline ---------------------------------------------------------


class Verdict(str, enum.Enum):
    """How a method compares with the baseline on one metric (the ``verdict`` column)."""

    BETTER = "better"
    """The whole interval of the paired advantage lies above 0."""
    NO_BETTER = "no_better"
    """The interval contains 0: not shown to be better than noise (flagged)."""
    WORSE = "worse"
    """The whole interval lies below 0: worse than noise (flagged)."""
    UNDECIDED = "undecided"
    """Fewer than :data:`MIN_PAIRED` paired images, or no bootstrap resamples."""
    BASELINE = "baseline"
    """The baseline's own row."""
    NOT_COMPARED = ""
    """No baseline value for this metric: the baseline was not evaluated, or the metric does not
    apply to it (the sanity rows)."""

    @property
    def flagged(self) -> bool:
        """Whether the page, the CSV and the CLI warn about this cell."""
        return self in (Verdict.NO_BETTER, Verdict.WORSE)


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline on one metric, over the images both have a value for.

    ``advantage`` is the mean paired difference signed so that positive is better (``method −
    baseline`` for a higher-is-better metric, ``baseline − method`` for a lower-is-better one);
    ``ci_low``/``ci_high`` its bootstrap interval, ``None`` without resamples or a second image.
    """

    n: int
    advantage: float
    ci_low: float | None
    ci_high: float | None
    verdict: Verdict


def paired_comparison(
    values: Sequence[float],
    baseline: Sequence[float],
    better: str,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Compare a method's per-image ``values`` with the baseline's on the same images.

    ``values[i]`` and ``baseline[i]`` belong to one image; ``better`` is ``"lower"`` or
    ``"higher"`` (:data:`BETTER`). The interval is SciPy's BCa bootstrap of the mean paired
    difference (``scipy.stats.bootstrap`` with ``resamples`` resamples from
    ``numpy.random.default_rng(seed)``, so the same values give the same interval); constant
    differences give a point interval, and where BCa is undefined (every resample on one side of
    the estimate) the percentile interval is used. The verdict: :attr:`Verdict.BETTER` when the
    whole interval lies above 0, :attr:`Verdict.WORSE` below 0, :attr:`Verdict.NO_BETTER` when it
    contains 0, :attr:`Verdict.UNDECIDED` with fewer than :data:`MIN_PAIRED` images or no
    resamples (the interval is still given from 2 images on).

    >>> paired_comparison([0.1] * 6, [0.3] * 6, "lower").verdict
    <Verdict.BETTER: 'better'>
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    ours = np.asarray(values, dtype=np.float64)
    theirs = np.asarray(baseline, dtype=np.float64)
    if ours.shape != theirs.shape or ours.ndim != 1 or ours.size == 0:
        raise ValueError(
            "paired_comparison needs two equally long, non-empty sequences of per-image values; "
            f"got shapes {ours.shape} and {theirs.shape}"
        )
    diffs = ours - theirs if better == "higher" else theirs - ours
    advantage = float(diffs.mean())
    if diffs.size < 2 or resamples < 1:
        return Comparison(int(diffs.size), advantage, None, None, Verdict.UNDECIDED)
    low, high = _mean_interval(diffs, resamples=resamples, seed=seed, level=level)
    if diffs.size < MIN_PAIRED:
        verdict = Verdict.UNDECIDED
    elif low > 0.0:
        verdict = Verdict.BETTER
    elif high < 0.0:
        verdict = Verdict.WORSE
    else:
        verdict = Verdict.NO_BETTER
    return Comparison(int(diffs.size), advantage, low, high, verdict)


def _mean_interval(
    data: np.ndarray, *, resamples: int, seed: int, level: float
) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of ``data`` (two values or more), percentile where
    BCa is undefined."""
    if float(np.ptp(data)) == 0.0:
        return float(data[0]), float(data[0])
    # lazy: SciPy is imported only when an evaluation is summarised (docs/architecture.md)
    from scipy.stats import bootstrap

    low = high = math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's DegenerateDataWarning: the fallback follows
            result = bootstrap(
                (data,),
                np.mean,
                n_resamples=resamples,
                confidence_level=level,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            break
    return low, high


def compare_with_baseline(
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    *,
    baseline: str = BASELINE,
    resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The entries of ``summary`` (:func:`summarize_metrics`), each compared with ``baseline``.

    Each entry gains ``baseline`` (its name, or ``None`` where it has no value for the metric),
    ``n_paired``, ``advantage``, ``advantage_ci_low``, ``advantage_ci_high`` (``None`` where not
    compared) and ``verdict`` (a :class:`Verdict` value) from :func:`paired_comparison`. A method
    is paired with the baseline image by image (the rows' ``image``; a file listed twice pairs
    its occurrences in order), on the images where both have a value.
    """
    has_baseline = any(row["method"] == baseline for row in rows)
    per_image = _values_per_image(rows) if has_baseline else {}
    compared = []
    for entry in summary:
        method, metric = entry["method"], entry["metric"]
        theirs = per_image.get((baseline, metric), {})
        fields: dict[str, Any] = {"baseline": baseline if theirs else None, "n_paired": None}
        fields |= {"advantage": None, "advantage_ci_low": None, "advantage_ci_high": None}
        verdict = Verdict.BASELINE if method == baseline and theirs else Verdict.NOT_COMPARED
        if theirs and method != baseline and metric in BETTER:
            ours = per_image.get((method, metric), {})
            keys = [key for key in ours if key in theirs]
            verdict, fields["n_paired"] = Verdict.UNDECIDED, 0
            if keys:
                c = paired_comparison(
                    [ours[k] for k in keys],
                    [theirs[k] for k in keys],
                    BETTER[metric],
                    resamples=resamples,
                    seed=seed,
                )
                fields |= {"n_paired": c.n, "advantage": c.advantage}
                fields |= {"advantage_ci_low": c.ci_low, "advantage_ci_high": c.ci_high}
                verdict = c.verdict
        compared.append({**entry, **fields, "verdict": verdict.value})
    return compared


def _values_per_image(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], dict[tuple[str, int], float]]:
    """``{(method, metric): {(image, occurrence): value}}`` over the rows with a value."""
    per_image: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for row in rows:
        method, metric, image = row["method"], row["metric"], row["image"]
        occurrence = seen.get((method, metric, image), 0)
        seen[(method, metric, image)] = occurrence + 1
        if row["value"] is not None:
            per_image.setdefault((method, metric), {})[(image, occurrence)] = float(row["value"])
    return per_image
