"""Paired comparison of two runs on the same units: is explainer A better than explainer B?

Units are paired by id; the difference of a score is summarised by its mean, a bootstrap CI and a
paired sign-flip permutation p-value.  Units missing, failed or NaN in either run are counted and
left out of the pairing, never filled in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.aggregate import bootstrap_ci
from bench.errors import UserError
from bench.records import UnitResult
from bench.run.folder import load_config, load_results  # noqa: F401 - the readers `compare` is known by


@dataclass(frozen=True)
class PairedComparison:
    score: str
    n_pairs: int
    n_unpaired: int  # units present in only one run, failed, or NaN in either
    mean_a: float
    mean_b: float
    mean_diff: float  # a - b
    ci_low: float
    ci_high: float
    p_value: float
    p_exact: bool = True  # every sign flip enumerated (n <= EXACT_MAX_N); else a seeded Monte Carlo estimate


EXACT_MAX_N = 16  # 2^16 sign patterns: exact and still instant


def permutation_p_value(diffs: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided paired sign-flip permutation test of mean(diffs) == 0 (exact when 2^n is small)."""
    n = diffs.size
    observed = abs(diffs.mean())
    if n <= EXACT_MAX_N:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(resamples, n))
    means = np.abs((signs * diffs).mean(axis=1))
    return float((means >= observed - 1e-12).mean())


def compare(
    a: list[UnitResult], b: list[UnitResult], score: str, resamples: int = 5000, confidence: float = 0.95, seed: int = 0
) -> PairedComparison:
    def values(results: list[UnitResult]) -> dict[str, float]:
        return {
            r.unit.key: r.scores[score].value
            for r in results
            if r.status == "ok" and score in r.scores and not math.isnan(r.scores[score].value)
        }

    va, vb = values(a), values(b)
    if not any(score in r.scores for r in [*a, *b]):
        known = sorted({k for r in [*a, *b] for k in r.scores})
        raise UserError(f"compare: no score {score!r} in these runs; available: {', '.join(known)}")
    keys = sorted(set(va) & set(vb))
    all_keys = {r.unit.key for r in [*a, *b]}
    if not keys:
        return PairedComparison(score, 0, len(all_keys), *(math.nan,) * 6)
    xa = np.array([va[k] for k in keys])
    xb = np.array([vb[k] for k in keys])
    diffs = xa - xb
    low, high = bootstrap_ci(diffs, resamples, confidence, seed)
    return PairedComparison(
        score=score,
        n_pairs=len(keys),
        n_unpaired=len(all_keys) - len(keys),
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        mean_diff=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        p_value=permutation_p_value(diffs, resamples, seed) if diffs.size > 1 else math.nan,
        p_exact=diffs.size <= EXACT_MAX_N,
    )


def run_definition(results: list[UnitResult], config: dict[str, Any]) -> dict[str, Any]:
    """What two runs must share for their units to pair: subject (model, revision, weights, hook site),
    excerpts (fingerprint), which excerpts are scored (split, examples per split) and the unit set.
    Parts a run folder does not record (older runs, hand-made results) are left out of the check."""
    provenance: dict[str, Any] = next((r.extras["provenance"] for r in results if r.extras.get("provenance")), {})
    subject = provenance.get("subject") or {}
    return {
        "subject": subject.get("model"),
        "subject revision": subject.get("revision"),
        "subject weights": subject.get("weights_sha256"),
        "hook site": subject.get("hook_site"),
        "excerpts (fingerprint)": provenance.get("excerpts"),
        "scoring split": (config.get("scoring") or {}).get("split"),
        "examples per split": (config.get("units") or {}).get("examples_per_split"),
        "units": sorted(r.unit.key for r in results),
    }


def check_comparable(
    a: dict[str, Any],
    b: dict[str, Any],
    who: str = "compare",
    names: tuple[str, str] = ("A", "B"),
    hint: str = "pair runs over the same subject, excerpts and units",
) -> None:
    """Refuse, in one line, two runs whose units cannot be paired (see :func:`run_definition`): the one
    check behind ``neuronbench compare`` and the leaderboard's paired differences (``who`` says which
    command refuses, ``names`` which runs, ``hint`` what to do instead)."""
    na, nb = names
    for key in a:
        va, vb = a.get(key), b.get(key)
        if va is None or vb is None or va == vb:
            continue
        if key == "units":
            shared = len(set(va) & set(vb))
            detail = f"{na} has {len(va)} units, {nb} {len(vb)}, {shared} shared"
        else:
            detail = f"{na} {va}, {nb} {vb}"
        raise UserError(f"{who}: the runs differ in {key} ({detail}); {hint}")
