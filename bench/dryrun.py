"""``neuronbench run --dry-run``: what a configuration would send, before anything is spent.

Per stage (explain, rerank for best-of-k, simulate, calibrate, control): LLM calls, provider batch jobs
(batch mode: one per stage and flush of ``engine.units_in_flight`` units, split at the provider's
request and byte limits), prompt tokens and an upper bound of output tokens and dollars -- and whether
that fits ``budget.max_usd``.
The components build their real requests (the same code ``simulate`` / ``explain`` use) for synthetic
excerpts of the dataset's length, so the counts follow the strategy and estimator exactly (one-at-a-time:
one call per token and sample).  Nothing is loaded, mined or called; no API key is needed.

Estimates: prompt tokens are characters / 4 of the synthetic prompts (real excerpts differ); output
tokens assume every call writes its ``max_tokens`` (an upper bound), and dollars follow from the
backend's prices (``0`` for local models, ``unknown`` when an API backend has no prices; times
``batch_discount`` in batch mode).  Answers
already in the response cache would cost nothing; scorers that call LLMs themselves are not counted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.config import RunSettings
from bench.protocols import (
    Explainer,
    GenerationRequest,
    LLMClient,
    PaidAPI,
    PlansExplanations,
    PlansSimulations,
    RunParts,
    Simulator,
    SlotRequest,
    WrapsExplainer,
)
from bench.records import ActivationRecord

PLACEHOLDER_EXPLANATION = "words about rain and wet weather"
PLACEHOLDER_TOKEN = " word"


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    backend: str
    calls: int
    input_tokens: int
    output_tokens: int
    dollars: float
    note: str = ""
    batch_jobs: int = 0  # provider batch jobs (batch mode): one per stage across all units, split at its limits


def synthetic_records(count: int, length: int) -> list[ActivationRecord]:
    """Excerpts of ``length`` five-character tokens with a few non-zero activations."""
    acts = [float(i % 7 == 3) * (1 + i % 5) for i in range(length)]
    return [ActivationRecord([PLACEHOLDER_TOKEN] * length, list(acts)) for _ in range(count)]


def _backend_name(llm: LLMClient | None) -> str:
    return "-" if llm is None else str(llm.name)


def _prices(llm: LLMClient | None) -> Any:
    """The backend's prices; None for local backends (free) -- ``False`` marks unknown prices."""
    if not isinstance(llm, PaidAPI):
        return None
    prices = llm.resolved_prices(batched=bool(llm.batch))  # batch: prices x batch_discount
    return prices or False


def _batch_jobs(llm: LLMClient | None, requests: Sequence[Any], repeat: int, flush: tuple[int, int] | None) -> int:
    """Provider batch jobs of one stage: the request engine sends each flush of ``units_in_flight`` units'
    requests as one call (split at the provider's limits), so a stage takes ceil(units / in flight)
    flushes.  ``flush``: (units, units in flight); None: everything in one call."""
    if not isinstance(llm, PaidAPI):
        return 0
    plan = llm.batch_jobs
    if flush is None or flush[0] < 1:
        return int(plan(requests, repeat))
    n_units, in_flight = flush
    per_unit = max(repeat // n_units, 1)
    size = max(1, min(in_flight, n_units))
    full, rest = divmod(n_units, size)
    return full * int(plan(requests, per_unit * size)) + (int(plan(requests, per_unit * rest)) if rest else 0)


def _cost(
    stage: str,
    llm: LLMClient | None,
    requests: Sequence[Any],
    repeat: int = 1,
    note: str = "",
    flush: tuple[int, int] | None = None,
) -> StageEstimate:
    calls = inp = out = 0
    for r in requests:
        chars = sum(len(m.content) for m in r.messages)
        if isinstance(r, GenerationRequest):
            chars += len(r.assistant_prefix)
            out += r.max_tokens
        elif isinstance(r, SlotRequest):
            out += 1 if isinstance(llm, PaidAPI) else 0
        calls += 1
        inp += max(1, math.ceil(chars / 4))
    calls, inp, out = calls * repeat, inp * repeat, out * repeat
    prices = _prices(llm)
    dollars = 0.0 if prices is None else (math.nan if prices is False else prices.dollars(inp, 0, out))
    jobs = _batch_jobs(llm, requests, repeat, flush)
    return StageEstimate(stage, _backend_name(llm), calls, inp, out, dollars, note, jobs)


def _simulator_requests(simulator: Simulator, records: Sequence[ActivationRecord]) -> list[Any] | None:
    if not isinstance(simulator, PlansSimulations):
        return None
    return list(simulator.requests(PLACEHOLDER_EXPLANATION, records))


def _explainer_requests(explainer: Explainer, records: Sequence[ActivationRecord]) -> list[Any] | None:
    return explainer.dry_run_requests(records) if isinstance(explainer, PlansExplanations) else None


def estimate_run(settings: RunSettings, parts: RunParts) -> list[StageEstimate]:
    """Per-stage estimates for a validated configuration (see the module docstring)."""
    units = settings.units
    per_layer = len(dict.fromkeys(units.indices)) if units.indices is not None else units.count
    n_units = per_layer * len(units.layers or [0])  # an SAE (layers null) reads one layer
    n = units.examples_per_split
    length = int(parts.dataset.excerpt_len)
    explainer, simulator = parts.explainer, parts.simulator
    scorers = list(parts.scorers.values())
    from bench.pipeline import in_flight as units_in_flight

    in_flight = units_in_flight(settings, parts, n_units)
    cost = functools.partial(_cost, flush=(n_units, in_flight))
    out: list[StageEstimate] = []

    inner = explainer.explainer if isinstance(explainer, WrapsExplainer) else None
    k = int(explainer.k) if isinstance(explainer, WrapsExplainer) else 1
    writer = inner if inner is not None else explainer
    train = synthetic_records(n, length)
    requests = _explainer_requests(writer, train)
    if requests is None:
        out.append(StageEstimate("explain", _backend_name(writer.llm), 0, 0, 0, 0.0, "no LLM"))
    else:
        if inner is not None and requests:  # best-of-k samples k explanations per unit
            requests = [requests[0]] * k
        out.append(cost("explain", writer.llm, requests, repeat=n_units))
    sim_llm = simulator.llm
    scoring = synthetic_records(2 * n, length)
    sim_requests = _simulator_requests(simulator, scoring)
    if sim_requests is None:
        out.append(StageEstimate("simulate", "-", 0, 0, 0, 0.0, "no LLM"))
        return out
    if inner is not None:
        out.append(cost("rerank", sim_llm, sim_requests, repeat=n_units * k, note=f"best-of-{k} on calibration"))
    out.append(cost("simulate", sim_llm, sim_requests, repeat=n_units, note=f"{settings.scoring.split} split"))
    if settings.scoring.calibration != "none" and any(s.needs_calibration for s in scorers):
        out.append(cost("calibrate", sim_llm, sim_requests, repeat=n_units, note="calibration split"))
    if settings.control.enabled and n_units >= 2:
        out.append(cost("control", sim_llm, sim_requests, repeat=n_units * settings.control.repeats))
    return out


def _money(value: float) -> str:
    return "unknown" if math.isnan(value) else f"${value:,.4f}"


def format_estimate(settings: RunSettings, parts: RunParts, title: str = "") -> str:
    """The dry-run table for one configuration."""
    stages = estimate_run(settings, parts)
    units = settings.units
    per_layer = len(dict.fromkeys(units.indices)) if units.indices is not None else units.count
    n_units = per_layer * len(units.layers or [0])  # an SAE (layers null) reads one layer
    length = int(parts.dataset.excerpt_len)
    strategy = parts.simulator.recorded_estimator
    batched = any(s.batch_jobs for s in stages)
    jobs_head = f" {'batch jobs':>10}" if batched else ""
    lines = [
        f"neuronbench dry run{': ' + title if title else ''}",
        f"  {n_units} units, {2 * units.examples_per_split} scored excerpts each of {length} tokens; "
        f"simulator estimator {strategy}",
        f"  {'stage':<10} {'backend':<32} {'calls':>9}{jobs_head} {'input tokens':>14} {'output tokens':>14} "
        f"{'dollars':>12}",
    ]
    total = StageEstimate("total", "", 0, 0, 0, 0.0)
    for s in stages:
        jobs = f" {s.batch_jobs:>10,}" if batched else ""
        lines.append(
            f"  {s.stage:<10} {s.backend[:32]:<32} {s.calls:>9,}{jobs} {s.input_tokens:>14,} {s.output_tokens:>14,} "
            f"{_money(s.dollars):>12}" + (f"  ({s.note})" if s.note else "")
        )
        total = StageEstimate(
            "total",
            "",
            total.calls + s.calls,
            total.input_tokens + s.input_tokens,
            total.output_tokens + s.output_tokens,
            total.dollars + s.dollars,
            batch_jobs=total.batch_jobs + s.batch_jobs,
        )
    jobs = f" {total.batch_jobs:>10,}" if batched else ""
    lines.append(
        f"  {'total':<10} {'':<32} {total.calls:>9,}{jobs} {total.input_tokens:>14,} {total.output_tokens:>14,} "
        f"{_money(total.dollars):>12}"
    )
    if batched:
        lines.append(
            "  batch jobs: one per stage and flush of engine.units_in_flight units, split at the provider's limits "
            "(OpenAI 50,000 requests / 200 MB, Anthropic 100,000 / 256 MB)"
        )
    lines += budget_notes(settings, total.dollars)
    with_llm = [name for name, scorer in parts.scorers.items() if scorer.llm is not None]
    if with_llm:
        lines.append(f"  not counted: LLM calls of scorer(s) {', '.join(with_llm)}")
    lines += caching_notes(stages, parts)
    lines.append(
        "  input tokens ~ characters/4 of synthetic excerpts; output tokens and dollars are upper bounds (every "
        "call writes max_tokens); cached answers cost nothing; nothing was loaded or called"
    )
    return "\n".join(lines)


def budget_notes(settings: RunSettings, dollars: float) -> list[str]:
    """Whether the planned dollars fit ``budget.max_usd`` (the run stops before a call would pass it)."""
    cap = settings.budget.max_usd
    if cap is None:
        return []
    if math.isnan(dollars):
        return [f"  budget: cannot check budget.max_usd=${cap:,.4f}: dollars unknown (give the backend's prices)"]
    if dollars > cap:
        return [
            f"  budget: the planned spend (up to {_money(dollars)}) EXCEEDS budget.max_usd=${cap:,.4f}: the run would "
            "stop before finishing (finished units kept); raise budget.max_usd or run fewer units"
        ]
    return [f"  budget: the planned spend (up to {_money(dollars)}) fits budget.max_usd=${cap:,.4f}"]


def caching_notes(stages: Sequence[StageEstimate], parts: RunParts) -> list[str]:
    """Where a provider's prompt cache could lower the bill: only prompts above its minimum length
    (:data:`bench.llm.pricing.CACHE_MIN_TOKENS`) are cached, so say per stage whether these are.  No
    cache discount is ever counted in the dollars (they stay an upper bound)."""
    from bench.config import llm_backends
    from bench.llm.pricing import cache_minimum

    by_name = {_backend_name(llm): llm for _, llm in llm_backends(parts)}
    notes: list[str] = []
    for s in stages:
        llm = by_name.get(s.backend)
        if not isinstance(llm, PaidAPI) or not s.calls:
            continue
        minimum = cache_minimum(str(llm.model))
        if minimum is None:
            continue
        per_call = s.input_tokens / s.calls
        verdict = "above it: cache reads could lower the dollars" if per_call >= minimum else "under it: never cached"
        notes.append(
            f"  prompt caching ({s.stage}): {llm.model} caches prompts of {minimum:,}+ tokens; these average "
            f"~{per_call:,.0f} -- {verdict} (no discount counted)"
        )
    return notes
