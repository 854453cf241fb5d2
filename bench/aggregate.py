"""Aggregates over units: mean, median, bootstrap CI, fraction >= 0.8 -- with failures beside them.

A unit that failed, or a score that is NaN, is *counted* (``n_failed``, ``n_nan``) and left out of
the average: never averaged in as 0, never silently dropped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.records import UnitResult, Usage

GOOD_SCORE = 0.8


@dataclass(frozen=True)
class Summary:
    """One score aggregated over units."""

    name: str
    n: int  # units with a finite value
    n_nan: int  # units where the score is NaN (reason kept per unit)
    mean: float
    median: float
    ci_low: float
    ci_high: float
    frac_ge_0_8: float


def bootstrap_ci(values: Sequence[float], resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy); NaN with fewer than 2 values."""
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return math.nan, math.nan
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (data,),
            np.mean,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(name: str, values: Sequence[float], resamples: int, confidence: float, seed: int) -> Summary:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    n_nan = len(values) - len(finite)
    if not finite:
        return Summary(name, 0, n_nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(finite, resamples, confidence, seed)
    arr = np.asarray(finite)
    return Summary(
        name=name,
        n=len(finite),
        n_nan=n_nan,
        mean=float(arr.mean()),
        median=float(np.median(arr)),
        ci_low=low,
        ci_high=high,
        frac_ge_0_8=float((arr >= GOOD_SCORE).mean()),
    )


def score_names(results: Iterable[UnitResult]) -> list[str]:
    names: dict[str, None] = {}
    for r in results:
        for k in r.scores:
            names.setdefault(k, None)
    return list(names)


def aggregate(
    results: Sequence[UnitResult], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Flat, slash-named metrics for a run (``score/<name>/mean`` ...) with failure counts beside them."""
    ok = [r for r in results if r.status == "ok"]
    failed = len(results) - len(ok)
    out: dict[str, float] = {
        "units/total": float(len(results)),
        "units/ok": float(len(ok)),
        "units/failed": float(failed),
        "units/failure_rate": failed / len(results) if results else math.nan,
    }
    for name in score_names(ok):
        s = summarize(
            name, [r.scores[name].value if name in r.scores else math.nan for r in ok], resamples, confidence, seed
        )
        for field in ("mean", "median", "ci_low", "ci_high", "frac_ge_0_8", "n", "n_nan"):
            out[f"score/{name}/{field}"] = float(getattr(s, field))
    sims = [r.simulation for r in ok if r.simulation is not None]
    total_tokens = sum(s.total_tokens for s in sims)
    unparsed = sum(s.unparsed_tokens for s in sims)
    out["simulation/tokens"] = float(total_tokens)
    out["simulation/unparsed_tokens"] = float(unparsed)
    out["simulation/unparsed_rate"] = unparsed / total_tokens if total_tokens else math.nan
    usage = {"explainer": Usage(), "simulator": Usage(), "control": Usage()}
    for r in results:
        if r.explanation is not None:
            usage["explainer"] += r.explanation.usage
        if r.simulation is not None:
            usage["simulator"] += r.simulation.usage
        usage["simulator"] += Usage(**r.extras.get("calibration_usage", {}))
        usage["control"] += Usage(**r.extras.get("control", {}).get("usage", {}))
    for stage, total in usage.items():
        for field in ("calls", "input_tokens", "cached_input_tokens", "output_tokens"):
            out[f"cost/{stage}/{field}"] = float(getattr(total, field))
    return out
