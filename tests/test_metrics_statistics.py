"""The paired comparison with the random-map baseline, on hand-made per-image values.

Each case is built from its differences: a method whose per-image advantage over the baseline
is known, for a lower-is-better metric (deletion AUC) and a higher-is-better one (insertion AUC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnnviz.metrics.statistics import (
    BASELINE,
    BETTER,
    MIN_PAIRED,
    Verdict,
    compare_with_baseline,
    paired_comparison,
    summarize_metrics,
)
from cnnviz.runs.evaluate_outputs import comparison_text, summary_lines

NOISE = np.array([0.30, 0.25, 0.40, 0.35, 0.28, 0.32, 0.38, 0.27])
"""The baseline's per-image values (8 images)."""
GAIN = np.array([0.10, 0.12, 0.08, 0.15, 0.11, 0.09, 0.13, 0.10])
"""A clear advantage on every image: mean 0.110, from 0.08 to 0.15."""
TIE = np.array([0.05, -0.05, 0.10, -0.10, 0.02, -0.02, 0.04, -0.04])
"""Differences that cancel: mean exactly 0."""


def test_a_clear_advantage_is_better_in_both_directions() -> None:
    lower = paired_comparison(NOISE - GAIN, NOISE, "lower")  # deletion: the method is lower
    higher = paired_comparison(NOISE + GAIN, NOISE, "higher")  # insertion: the method is higher
    for c in (lower, higher):
        assert c.verdict is Verdict.BETTER and c.n == 8
        assert c.advantage == pytest.approx(0.110)
        assert c.ci_low is not None and c.ci_high is not None
        assert 0.08 <= c.ci_low < 0.110 < c.ci_high <= 0.15  # inside the range of the differences
        # The normal approximation, mean ± 1.96·σ/√n with σ = 0.0209, is [0.0955, 0.1245]; BCa
        # moves it to the right, towards the long tail of the differences (0.15).
        assert c.ci_low == pytest.approx(0.0975, abs=0.002)
        assert c.ci_high == pytest.approx(0.127, abs=0.002)


def test_the_direction_decides_the_sign() -> None:
    """The same values are better for a lower-is-better metric and worse for the other one."""
    lower = paired_comparison(NOISE - GAIN, NOISE, "lower")
    higher = paired_comparison(NOISE - GAIN, NOISE, "higher")
    assert higher.verdict is Verdict.WORSE and higher.advantage == pytest.approx(-0.110)
    assert higher.ci_low == pytest.approx(-lower.ci_high, abs=0.003)  # mirror image
    assert higher.ci_high is not None and higher.ci_high < 0.0


def test_a_clear_disadvantage_is_worse() -> None:
    c = paired_comparison(NOISE + GAIN, NOISE, "lower")  # a deletion AUC above the noise's
    assert c.verdict is Verdict.WORSE and c.advantage == pytest.approx(-0.110)
    assert c.ci_high is not None and -0.15 <= c.ci_high < 0.0
    assert Verdict.WORSE.flagged and Verdict.NO_BETTER.flagged and not Verdict.BETTER.flagged


def test_a_tie_is_no_better() -> None:
    for better, values in (("lower", NOISE - TIE), ("higher", NOISE + TIE)):
        c = paired_comparison(values, NOISE, better)
        assert c.verdict is Verdict.NO_BETTER and c.advantage == pytest.approx(0.0, abs=1e-15)
        assert c.ci_low is not None and c.ci_high is not None
        assert -0.10 < c.ci_low < 0.0 < c.ci_high < 0.10


def test_identical_values_are_no_better() -> None:
    """A pointing game that hits where the noise hits: every difference 0, the interval [0, 0]."""
    hits = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    c = paired_comparison(hits, hits, "higher")
    assert (c.advantage, c.ci_low, c.ci_high, c.verdict) == (0.0, 0.0, 0.0, Verdict.NO_BETTER)


def test_a_better_than_half_interval_touching_zero_is_no_better() -> None:
    """Increase in Confidence: one image of 8 gains 100, the rest tie; the interval reaches 0."""
    ours = [100.0, 0, 0, 0, 0, 0, 0, 0]
    c = paired_comparison(ours, [0.0] * 8, "higher")
    assert c.advantage == pytest.approx(12.5) and c.ci_low == 0.0
    assert c.verdict is Verdict.NO_BETTER


def test_too_few_images_are_undecided_and_the_interval_is_seeded() -> None:
    assert MIN_PAIRED == 6
    assert 2 * 2.0**-5 > 0.05 >= 2 * 2.0**-6  # the sign test behind it
    few = paired_comparison(NOISE[:5] - GAIN[:5], NOISE[:5], "lower")
    assert few.verdict is Verdict.UNDECIDED and few.n == 5
    assert few.ci_low is not None and few.ci_low > 0.0  # an interval, but no verdict from it
    enough = paired_comparison(NOISE[:6] - GAIN[:6], NOISE[:6], "lower")
    assert enough.verdict is Verdict.BETTER
    assert enough == paired_comparison(NOISE[:6] - GAIN[:6], NOISE[:6], "lower")  # seeded
    single = paired_comparison([0.1], [0.3], "lower")
    assert (single.advantage, single.ci_low, single.verdict) == (
        pytest.approx(0.2),
        None,
        Verdict.UNDECIDED,
    )
    none = paired_comparison(NOISE - GAIN, NOISE, "lower", resamples=0)
    assert none.verdict is Verdict.UNDECIDED and none.ci_low is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([0.1, 0.2], [0.3], "lower")
    with pytest.raises(ValueError, match="'lower' or 'higher'"):
        paired_comparison([0.1], [0.3], "smaller")


def _rows(method: str, metric: str, values: Any) -> list[dict[str, Any]]:
    return [
        {"image": f"im{i}.png", "method": method, "metric": metric, "value": v}
        for i, v in enumerate(values)
    ]


def test_rows_are_paired_by_image() -> None:
    """A method's missing value drops that image from the pair; other images keep their order."""
    ours = [*list(NOISE - GAIN), None]
    rows = _rows("gradcam", "deletion_auc", ours) + _rows(BASELINE, "deletion_auc", [*NOISE, 0.9])
    rows += _rows("gradcam", "cascading_ssim", [0.1, 0.2])  # no baseline value: not compared
    rows.reverse()  # pairing goes by image, not by position
    summary = {
        (e["method"], e["metric"]): e for e in summarize_metrics(rows, resamples=500, seed=0)
    }
    mine = summary["gradcam", "deletion_auc"]
    assert mine["n"] == 8 and mine["n_paired"] == 8 and mine["verdict"] == "better"
    assert mine["advantage"] == pytest.approx(0.110) and mine["baseline"] == BASELINE
    assert summary[BASELINE, "deletion_auc"]["verdict"] == "baseline"
    assert summary["gradcam", "cascading_ssim"]["verdict"] == ""
    assert summary["gradcam", "cascading_ssim"]["advantage"] is None
    alone = summarize_metrics(_rows("gradcam", "deletion_auc", NOISE), resamples=500, seed=0)
    assert alone[0]["verdict"] == "" and alone[0]["baseline"] is None
    plain = summarize_metrics(rows, resamples=500, seed=0, baseline=None)
    assert "verdict" not in plain[0]
    entries = compare_with_baseline(rows, plain, resamples=500, seed=0)
    assert [e["verdict"] for e in entries] == [e["verdict"] for e in summary.values()]


def test_every_metric_has_a_direction() -> None:
    from cnnviz.metrics.localisation import REFERENCE_MAPS
    from cnnviz.runs.evaluate import EvaluateSettings

    assert BETTER["deletion_auc"] == "lower" and BETTER["insertion_auc"] == "higher"
    assert BASELINE in REFERENCE_MAPS and BASELINE in EvaluateSettings().methods


def test_the_words_and_numbers_of_a_verdict() -> None:
    entry = {
        "method": "saliency",
        "metric": "deletion_auc",
        "n": 50,
        "mean": 0.148,
        "ci_low": 0.12,
        "ci_high": 0.17,
        "better": "lower",
        "baseline": BASELINE,
        "n_paired": 50,
        "advantage": -0.034,
        "advantage_ci_low": -0.07,
        "advantage_ci_high": 0.002,
        "verdict": "no_better",
    }
    assert comparison_text(entry) == (
        "no better than random-map (Δ −0.034 [−0.070, +0.002], n = 50)"
    )
    base = {**entry, "method": BASELINE, "mean": 0.114, "verdict": "baseline"}
    few = {**entry, "n_paired": 3, "verdict": "undecided"}
    assert comparison_text(few).startswith("undecided against random-map (6 images needed)")
    drop = {**entry, "metric": "average_drop", "mean": 61.25, "ci_low": 50.0, "ci_high": 70.0}
    drop |= {"advantage": 12.5, "advantage_ci_low": 4.0, "advantage_ci_high": 20.0}
    lines = summary_lines([entry, {**drop, "verdict": "better"}, base], ["saliency", BASELINE])
    assert lines[1:] == [
        "saliency: deletion_auc ↓ 0.148 [0.120, 0.170] — no better than random-map "
        "(Δ −0.034 [−0.070, +0.002], n = 50)",
        "random-map: deletion_auc ↓ 0.114 [0.120, 0.170] — the baseline",
        "saliency: average_drop ↓ 61.2 [50.0, 70.0] — better than random-map "
        "(Δ +12.5 [+4.0, +20.0], n = 50)",
    ]
    assert summary_lines([entry], ["saliency"])[0].startswith("No baseline: random-map was not")
