"""``neuronbench judge-check``: does a simulator (judge) read explanations at all?

On synthetic units (``units=synthetic``: rules with a known true explanation) each unit's scoring
split is simulated with three explanations -- its **true** one, a **shuffled** one (another synthetic
unit's true explanation, a fixed seeded derangement) and an **empty** one -- and optionally a fourth,
the configured **explainer**'s own.  Each is scored by the pooled correlation on the scoring split
(the run's headline score).  A judge that reads explanations scores the true one clearly higher.

The separation figure is, per unit, ``true - mean(shuffled, empty)``; its mean over units comes with
a bootstrap confidence interval (as every run's scores).  Also reported: each condition's mean and CI,
``true - shuffled`` and ``true - empty`` with their CIs, and the win rate (units whose true score beats
both controls).  It costs no API money with a local simulator and tells a judge that reads explanations
from one that does not before a real run.

A simulation that is constant on the scoring split (the empty explanation often gives one) has an
undefined correlation; for the separation it counts as 0 -- a constant prediction carries no
information about the unit -- and the number of such simulations is reported per condition.  A
simulation that *fails* (an error) is counted, and its unit is left out of the paired figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UserError

if TYPE_CHECKING:
    from bench.protocols import RunParts, Simulator

CONDITIONS = ("true", "shuffled", "empty")
SCORE = "correlation/top_and_random"


@dataclass(frozen=True)
class ConditionSummary:
    """One explanation condition over all units."""

    n: int  # units scored (finite or constant-as-0)
    n_failed: int  # simulations that raised (unit left out of paired figures)
    n_constant: int  # constant simulations (undefined correlation, counted as 0 for the separation)
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """Paired difference over units (mean and bootstrap CI)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class JudgeCheck:
    simulator: str
    estimator: str
    score: str
    confidence: float
    n_units: int
    n_excluded: int  # units whose real activations are constant on the scoring split (no correlation)
    conditions: dict[str, ConditionSummary]
    separation: Difference  # true - mean(shuffled, empty): the headline
    true_vs_shuffled: Difference
    true_vs_empty: Difference
    win_rate: float  # units where true beats both controls
    verdict: str
    units: list[dict[str, Any]] = field(default_factory=list)  # per unit: rule, texts, scores, errors

    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))


def _score(simulator: Simulator, text: str, records: Sequence[Any]) -> tuple[float | None, str | None, bool]:
    """(score, error, constant): the pooled correlation of one simulation, or the error it raised."""
    import numpy as np

    from bench.scorers import metrics
    from bench.scorers.correlation import pooled

    try:
        sim = simulator.simulate(text, records)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - counted per condition, never a score
        return None, f"{type(err).__name__}: {err}"[:500], False
    real, pred = pooled(sim.sequences)
    score = metrics.correlation(SCORE, real, pred)
    if score.ok:
        return score.value, None, False
    constant = bool(np.ptp(pred) == 0) if pred.size else True
    return (0.0 if constant else None), (None if constant else score.reason), constant


def _difference(values: Sequence[float], resamples: int, confidence: float, seed: int) -> Difference:
    import numpy as np

    from bench.aggregate import bootstrap_ci

    if not values:
        return Difference(0, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(values, resamples, confidence, seed)
    return Difference(len(values), float(np.mean(values)), low, high)


def judge_check(settings: Any, parts: RunParts, explain: bool = False, progress: bool = True) -> JudgeCheck:
    """Score the configured simulator on the configured synthetic units (see the module docstring)."""
    from tqdm.auto import tqdm

    from bench.explainers.best_of_k import explain_unit
    from bench.pipeline import derangement, load_records
    from bench.splits import make_splits
    from bench.subject.synthetic import true_explanations

    if settings.units.kind != "synthetic":
        raise UserError("judge-check needs synthetic units (units=synthetic): their true explanations are known")
    simulator = parts.simulator
    records, _ = load_records(settings, parts.subject, parts.dataset)
    truths = true_explanations(settings.units)
    keys = list(records)
    if len(keys) < 2:
        raise UserError("judge-check needs at least 2 synthetic units (units.count >= 2) for the shuffled control")
    perm = derangement(len(keys), 1, settings.seed)
    assert perm is not None  # n >= 2 and shift 1
    conditions = [*CONDITIONS, *(["explainer"] if explain else [])]
    rows: list[dict[str, Any]] = []
    for i, key in enumerate(tqdm(keys, desc="judge-check", disable=not progress)):
        record = records[key]
        splits = make_splits(record, settings.units.examples_per_split)
        scored = splits.get(settings.scoring.split).select("top_and_random")
        donor = records[keys[perm[i]]].unit.index
        texts: dict[str, str | None] = {"true": truths[record.unit.index], "shuffled": truths[donor], "empty": ""}
        row: dict[str, Any] = {"unit": key, "texts": texts, "scores": {}, "errors": {}, "constant": []}
        if explain:
            try:
                found = explain_unit(parts.explainer, simulator, record.unit, splits)
                texts["explainer"] = found[0].text if found else None
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 - counted as a failure of that condition
                texts["explainer"] = None
                row["errors"]["explainer"] = f"explain: {type(err).__name__}: {err}"[:500]
        real = [a for r in scored for a in r.activations]
        if max(real) == min(real):
            row["excluded"] = "the unit's real activations are constant on the scoring split"
            rows.append(row)
            continue
        for name in conditions:
            text = texts.get(name)
            if text is None:
                continue
            value, error, constant = _score(simulator, text, scored)
            row["scores"][name] = value
            if error:
                row["errors"][name] = error
            if constant:
                row["constant"].append(name)
        rows.append(row)
    return summarize(rows, conditions, simulator, settings)


def summarize(rows: list[dict[str, Any]], conditions: Sequence[str], simulator: Simulator, settings: Any) -> JudgeCheck:
    from bench.aggregate import summarize as summarize_scores

    resamples, confidence, seed = settings.scoring.bootstrap_resamples, settings.scoring.confidence, settings.seed
    used = [r for r in rows if "excluded" not in r]
    per_condition = {}
    for name in conditions:
        values = [r["scores"][name] for r in used if r["scores"].get(name) is not None]
        s = summarize_scores(name, values, resamples, confidence, seed)
        per_condition[name] = ConditionSummary(
            n=s.n,
            n_failed=sum(1 for r in used if name in r["errors"]),
            n_constant=sum(1 for r in used if name in r["constant"]),
            mean=s.mean,
            ci_low=s.ci_low,
            ci_high=s.ci_high,
        )
    paired = [r for r in used if all(r["scores"].get(c) is not None for c in CONDITIONS)]
    sep = [r["scores"]["true"] - (r["scores"]["shuffled"] + r["scores"]["empty"]) / 2 for r in paired]
    vs_shuffled = [r["scores"]["true"] - r["scores"]["shuffled"] for r in paired]
    vs_empty = [r["scores"]["true"] - r["scores"]["empty"] for r in paired]
    wins = [r["scores"]["true"] > max(r["scores"]["shuffled"], r["scores"]["empty"]) for r in paired]
    separation = _difference(sep, resamples, confidence, seed)
    return JudgeCheck(
        simulator=simulator.name,
        estimator=simulator.recorded_estimator,
        score=SCORE,
        confidence=confidence,
        n_units=len(rows),
        n_excluded=len(rows) - len(used),
        conditions=per_condition,
        separation=separation,
        true_vs_shuffled=_difference(vs_shuffled, resamples, confidence, seed),
        true_vs_empty=_difference(vs_empty, resamples, confidence, seed),
        win_rate=(sum(wins) / len(wins)) if wins else math.nan,
        verdict=verdict(separation),
        units=rows,
    )


def verdict(separation: Difference) -> str:
    if separation.n < 2 or math.isnan(separation.ci_low):
        return "undetermined: too few units scored under all three explanations"
    if separation.ci_low > 0:
        return "separates: true explanations score higher than shuffled and empty ones"
    if separation.ci_high < 0:
        return "inverted: true explanations score LOWER than shuffled and empty ones"
    return "does not separate: the CI includes 0 (the judge may not read explanations)"


def format_report(check: JudgeCheck) -> str:
    pct = f"{check.confidence:.0%}"
    lines = [
        f"judge-check: simulator {check.simulator} ({check.estimator}), score {check.score}, "
        f"{check.n_units} synthetic units ({check.n_excluded} excluded: constant real activations)",
    ]
    for name, c in check.conditions.items():
        lines.append(
            f"  {name:<10} mean {c.mean:+.3f}  {pct} CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}]  "
            f"n={c.n}  constant={c.n_constant}  failed={c.n_failed}"
        )
    for label, d in (("true - shuffled", check.true_vs_shuffled), ("true - empty", check.true_vs_empty)):
        lines.append(f"  {label:<16} {d.mean:+.3f}  {pct} CI [{d.ci_low:+.3f}, {d.ci_high:+.3f}]  (n={d.n})")
    s = check.separation
    lines.append(
        f"separation (true - mean of shuffled and empty): {s.mean:+.3f}  {pct} CI [{s.ci_low:+.3f}, {s.ci_high:+.3f}]"
        f"  win rate {check.win_rate:.0%} over {s.n} units"
    )
    lines.append(f"verdict: {check.verdict}")
    return "\n".join(lines)


def write_json(check: JudgeCheck, path: Path, overrides: Sequence[str] = ()) -> Path:
    """The report as JSON, with the overrides that reproduce it (``neuronbench judge-check <overrides>``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overrides": list(overrides), **check.to_json()}, indent=2))
    return path
