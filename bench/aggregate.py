"""Aggregates over units: mean, median, bootstrap CI, fraction >= 0.8 -- with failures beside them.

A unit that failed, or a score that is NaN, is *counted* (``n_failed``, ``n_nan``, and per score
``failure_rate`` = units without a value / all units) and left out of the average: never averaged in
as 0, never silently dropped.  :func:`score_correlation_matrix` says how the scorers agree across units.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.escape import csv_cell
from bench.records import UnitResult, Usage

if TYPE_CHECKING:
    from bench.protocols import RunParts

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
        # units without a value for this score (failed at any stage, or NaN with a reason), of all units
        out[f"score/{name}/failure_rate"] = (failed + s.n_nan) / len(results)
    sims = [r.simulation for r in ok if r.simulation is not None]
    total_tokens = sum(s.total_tokens for s in sims)
    unparsed = sum(s.unparsed_tokens for s in sims)
    out["simulation/tokens"] = float(total_tokens)
    out["simulation/unparsed_tokens"] = float(unparsed)
    out["simulation/unparsed_rate"] = unparsed / total_tokens if total_tokens else math.nan
    ks = {s.top_k for s in sims}  # the k of a top-logprob estimator (NaN: exact, sampled, or mixed)
    k = ks.pop() if len(ks) == 1 else None
    out["simulation/top_k"] = float(k) if k is not None else math.nan
    tapers = {s.top_k_taper or 0.0 for s in sims if s.top_k is not None}  # the ramp of its cut (0: hard)
    out["simulation/top_k_taper"] = tapers.pop() if len(tapers) == 1 else math.nan
    usage = {"explainer": Usage(), "simulator": Usage(), "control": Usage()}
    for r in results:
        if r.explanation is not None:
            usage["explainer"] += r.explanation.usage
        if r.simulation is not None:
            usage["simulator"] += r.simulation.usage
        usage["control"] += Usage(**r.extras.get("control", {}).get("usage", {}))
        for scorer, details in (r.extras.get("scorers") or {}).items():  # judge LLMs, re-simulations
            if isinstance(details, dict) and details.get("usage"):
                usage[f"scorer/{scorer}"] = usage.get(f"scorer/{scorer}", Usage()) + Usage(**details["usage"])
        for stage, spent in (r.extras.get("failed_spend") or {}).items():  # failed attempts were paid for too
            usage[stage] = usage.get(stage, Usage()) + Usage(**spent)
    usage["total"] = sum(usage.values(), Usage())
    for stage, total in usage.items():
        for field in ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "dollars"):
            out[f"cost/{stage}/{field}"] = float(getattr(total, field))
    return out


def backend_metrics(parts: RunParts) -> dict[str, float]:
    """This process's counters of every HTTP LLM backend in the run (calls incl. retries, cache hits,
    retries, failures, tokens, dollars) as ``cost/backend/<role>/<counter>`` metrics."""
    from bench.protocols import CountsCalls, WrapsExplainer

    explainer = parts.explainer
    writer_llm = explainer.llm or (explainer.explainer.llm if isinstance(explainer, WrapsExplainer) else None)
    out: dict[str, float] = {}
    for role, llm in (("explainer", writer_llm), ("simulator", parts.simulator.llm)):
        if isinstance(llm, CountsCalls):
            out.update(llm.stats.as_metrics(f"cost/backend/{role}/"))
    return out


def score_correlation_matrix(
    results: Sequence[UnitResult], names: Sequence[str] | None = None, min_pairs: int = 3
) -> dict[str, Any]:
    """Spearman rank correlation between every pair of per-unit scores, across the ok units.

    Each pair uses the units where both scores are finite (``n``); fewer than ``min_pairs`` such units,
    or a score constant over them, gives ``None`` (NaN) -- never 0.  JSON-ready: ``scores`` names the
    rows and columns of ``rho`` and ``n``.
    """
    ok = [r for r in results if r.status == "ok"]
    names = list(names) if names is not None else score_names(ok)
    values = np.array(
        [[r.scores[n].value if n in r.scores else math.nan for n in names] for r in ok], dtype=np.float64
    ).reshape(len(ok), len(names))
    k = len(names)
    rho = np.full((k, k), math.nan)
    count = np.zeros((k, k), dtype=int)
    from scipy.stats import spearmanr

    for i in range(k):
        for j in range(i, k):
            both = np.isfinite(values[:, i]) & np.isfinite(values[:, j])
            count[i, j] = count[j, i] = int(both.sum())
            x, y = values[both, i], values[both, j]
            if both.sum() >= max(2, min_pairs) and np.ptp(x) > 0 and np.ptp(y) > 0:
                rho[i, j] = rho[j, i] = float(spearmanr(x, y).statistic)
    return {
        "method": "spearman",
        "units": len(ok),
        "min_pairs": min_pairs,
        "scores": names,
        "rho": [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in rho],
        "n": count.tolist(),
    }


def correlation_matrix_csv(matrix: dict[str, Any]) -> str:
    """The ``rho`` square as CSV (first column and header: score names; empty cell: undefined)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["score", *(csv_cell(n) for n in matrix["scores"])])
    for name, row in zip(matrix["scores"], matrix["rho"], strict=True):
        writer.writerow([csv_cell(name), *("" if v is None else v for v in row)])
    return buf.getvalue()


SCORE_CORRELATIONS = ("score_correlations.json", "score_correlations.csv")


def write_score_correlations(results: Sequence[UnitResult], run_dir: Path) -> list[Path]:
    """Write the scorer correlation matrix into the run folder (JSON and CSV); return the paths."""
    matrix = score_correlation_matrix(results)
    json_path, csv_path = (Path(run_dir) / name for name in SCORE_CORRELATIONS)
    json_path.write_text(json.dumps(matrix, indent=1))
    csv_path.write_text(correlation_matrix_csv(matrix))
    return [json_path, csv_path]
