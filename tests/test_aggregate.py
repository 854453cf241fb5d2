import math

import pytest

from bench.aggregate import aggregate, bootstrap_ci, summarize
from bench.records import Score, UnitId, UnitResult


def ok(i: int, value: float) -> UnitResult:
    return UnitResult(UnitId(0, i), "ok", scores={"correlation/top_and_random": Score("c", value)})


def test_failures_are_counted_not_averaged_as_zero():
    results = [ok(0, 0.9), ok(1, 0.5), UnitResult(UnitId(0, 2), "failed", error="boom", stage="explain")]
    s = aggregate(results, resamples=200)
    assert s["units/failed"] == 1 and s["units/failure_rate"] == pytest.approx(1 / 3)
    assert s["score/correlation/top_and_random/mean"] == pytest.approx(0.7)
    assert s["score/correlation/top_and_random/frac_ge_0_8"] == pytest.approx(0.5)
    assert s["score/correlation/top_and_random/n"] == 2


def test_nan_scores_counted_separately():
    results = [ok(0, 0.4), ok(1, math.nan), ok(2, 0.6)]
    s = aggregate(results, resamples=200)
    assert s["score/correlation/top_and_random/n_nan"] == 1
    assert s["score/correlation/top_and_random/median"] == pytest.approx(0.5)


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    values = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    low, high = bootstrap_ci(values, 1000, 0.95, seed=0)
    assert low < sum(values) / len(values) < high
    assert (low, high) == bootstrap_ci(values, 1000, 0.95, seed=0)
    assert all(math.isnan(v) for v in bootstrap_ci([0.3], 1000, 0.95, 0))


def test_summary_of_nothing_is_nan():
    s = summarize("x", [math.nan], 100, 0.95, 0)
    assert s.n == 0 and s.n_nan == 1 and math.isnan(s.mean)
