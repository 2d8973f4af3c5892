"""The metric table of an evaluation: which metrics exist, which direction is better, and means
with percentile-bootstrap 95 % intervals per method × metric."""

from __future__ import annotations

from collections.abc import Sequence
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
    rows: Sequence[dict[str, Any]], *, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Mean and 95 % interval per method × metric over the rows with a value."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["value"] is not None:
            groups.setdefault((row["method"], row["metric"]), []).append(float(row["value"]))
    summary = []
    for (method, metric), values in groups.items():
        mean, low, high = bootstrap_ci(values, resamples=resamples, seed=seed)
        entry = {"method": method, "metric": metric, "n": len(values), "mean": mean}
        summary.append({**entry, "ci_low": low, "ci_high": high, "better": BETTER.get(metric, "")})
    return summary
