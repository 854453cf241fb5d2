"""One run: units -> records -> explain -> simulate -> score -> sinks.

Every stage's output is written as soon as it exists (explanations, then unit results), so an
interrupted run resumes where it stopped; a unit that fails at any stage becomes a ``failed``
:class:`UnitResult` with the stage and reason -- counted, never dropped, never a zero.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from bench.aggregate import aggregate, backend_metrics, write_score_correlations
from bench.config import RunSettings
from bench.errors import UserError
from bench.explainers.best_of_k import explain_unit
from bench.failures import is_transient
from bench.llm.spend import metering
from bench.protocols import (
    Dataset,
    RecordSource,
    RunParts,
    Scorer,
    ScoringContext,
    Simulator,
    Sink,
    SourceMining,
    Subject,
)
from bench.records import Explanation, Score, Simulation, UnitRecord, UnitResult, Usage
from bench.run.folder import FAILED_SPEND, ExplanationStore, JsonlSink, RunFolder, write_train_excerpts
from bench.run.shards import explain_shard, shard_units
from bench.scorers import metrics
from bench.scorers.calibration import CalibrationError, fit_calibration
from bench.scorers.correlation import pooled
from bench.simulators.parsing import SimulationParseError
from bench.splits import make_splits

log = logging.getLogger(__name__)

CONTROL_SCORE = "correlation/top_and_random"
# The cost/<stage>/... bucket that a failure's spend counts in, by the stage where the unit failed.
COST_STAGE = {"explain": "explainer", "simulate": "simulator", "score": "scorer", "control": "control"}


@dataclass
class RunOutcome:
    results: list[UnitResult]
    summary: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    run_dir: Path | None = None  # the run folder (results.jsonl ...); set by the CLI / Python API


def choose_units(layer: int, width: int, count: int, indices: Sequence[int] | None, seed: int) -> list[int]:
    """Explicit indices, or ``count`` distinct indices sampled with a seed (per layer)."""
    import numpy as np

    if indices is not None:
        bad = [i for i in indices if i >= width]
        if bad:
            raise UserError(
                f"config error at 'units.indices': {bad} out of range; layer {layer} has {width} units (0..{width - 1})"
            )
        return list(dict.fromkeys(indices))
    if count > width:
        raise UserError(f"config error at 'units.count': {count} exceeds the layer width {width}")
    rng = np.random.default_rng([seed, layer])
    return sorted(int(i) for i in rng.choice(width, size=count, replace=False))


def derangement(n: int, shift: int, seed: int) -> list[int] | None:
    """A fixed seeded derangement: a cyclic shift of a random order (no unit gets its own explanation)."""
    import numpy as np

    if n < 2 or shift % n == 0:
        return None
    order = np.random.default_rng(seed).permutation(n)
    target = [0] * n
    for pos, unit in enumerate(order):
        target[int(unit)] = int(order[(pos + shift) % n])
    return target


def as_finished(fn: Any, keys: Sequence[Any], workers: int) -> Any:
    """Yield ``(key, fn(key))`` as each unit finishes, ``workers`` units in flight on the request
    engine (:mod:`bench.engine`: their LLM requests coalesce per backend).  Results are consumed --
    and written -- by the caller's thread, one at a time."""
    from bench.engine import active, running

    engine = active()
    if engine is not None:
        yield from engine.run_units(fn, keys, workers)
        return
    with running() as engine:
        yield from engine.run_units(fn, keys, workers)


def in_flight(settings: RunSettings, parts: RunParts, pending: int) -> int:
    """``engine.units_in_flight``, or its automatic value for these parts' LLM backends."""
    from bench.engine import units_in_flight
    from bench.protocols import WrapsExplainer

    explainer = parts.explainer
    inner = explainer.explainer.llm if isinstance(explainer, WrapsExplainer) else None  # best-of-k wraps one
    return units_in_flight(settings.engine.units_in_flight, [explainer.llm, parts.simulator.llm, inner], pending)


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) < 2000 else text[:2000] + " ..."


def run(
    settings: RunSettings,
    parts: RunParts,
    store: JsonlSink,
    mirrors: Sequence[Sink],
    run_dir: Path,
    progress: bool = True,
    retry_failed: bool = False,
) -> RunOutcome:
    """records -> explanations (all units) -> per unit: simulate, score, control -> sinks -> summary.

    Units finished by an earlier run are kept, except failed ones whose failure was transient (an
    outage: :mod:`bench.failures`) -- and, with ``retry_failed``, every failed one: those are redone."""
    from tqdm.auto import tqdm

    subject, simulator = parts.subject, parts.simulator
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = _runner(settings, run_dir)
    if runner is not None:
        runner.premine()  # runner=ray with GPUs: each layer mined in its own task, into the record cache
    records, provenance = load_records(settings, subject, parts.dataset)
    write_train_excerpts(run_dir, records, settings.units.examples_per_split)  # what the explainer saw (viewer)
    explained = ExplanationStore(RunFolder(run_dir).explanations)
    context = UnitContext(settings, parts, records, provenance)
    own = dict.fromkeys(shard_units(settings.shard, list(records)))  # every unit, or this shard's slice (in order)
    whole = records if settings.shard is None else {}  # a shard explains below
    explanations = explain_all(
        settings, parts.explainer, simulator, whole, run_dir, progress, retry_failed=retry_failed, store=explained,
        runner=runner, context=context,
    )  # fmt: skip
    if settings.shard is not None:  # the control borrows every unit's explanation: shards share them (run/shards.py)
        explanations = explain_shard(
            settings.shard, settings.control.enabled, RunFolder(run_dir), records, explained,
            lambda keys, retry: explain_all(settings, parts.explainer, simulator, {k: records[k] for k in keys},
                                            run_dir, False, retry_failed=retry, store=explained, runner=runner,
                                            context=context),
            retry_failed, in_flight(settings, parts, len(records)),
        )  # fmt: skip
    controls = assign_controls(settings, [k for k in records if explanations[k][0] is not None])

    done = store.finished_units()
    previous = {r.unit.key: r for r in store.previous_results() if r.unit.key in own}
    retry = {k for k, r in previous.items() if r.status == "failed" and (retry_failed or r.transient)}
    carried = {k: previous[k].extras.get(FAILED_SPEND) or {} for k in retry}  # earlier attempts' spend
    store.forget(retry)
    for key in retry:
        done.discard(key)
        del previous[key]

    def unit_result(key: str) -> UnitResult:
        explanation, error = explanations[key]
        if explanation is None:
            failure = explained.items.get(key) or {}
            result = UnitResult(
                unit=records[key].unit,
                status="failed",
                error=error,
                stage="explain",
                extras={"provenance": provenance},
                transient=bool(failure.get("transient")),
            )
        else:
            result = scored[key] if key in scored else score_task(context, key, score_payload(key))
        spend = {k: Usage(**v) for k, v in carried.get(key, {}).items() if k != "explainer"}
        spend["explainer"] = explained.failed_spend(key)  # every failed explaining attempt, earlier runs' too
        for stage, usage in (result.extras.get(FAILED_SPEND) or {}).items():
            spend[stage] = spend.get(stage, Usage()) + Usage(**usage)
        spent = {k: asdict(v) for k, v in spend.items() if v != Usage()}
        result.extras.pop(FAILED_SPEND, None)
        if spent:
            result.extras[FAILED_SPEND] = spent
        return result

    def score_payload(key: str) -> tuple[Explanation, list[str]]:
        explanation = explanations[key][0]
        assert explanation is not None
        return explanation, [explanations[c][0].text for c in controls.get(key, [])]  # type: ignore[union-attr]

    def lost_unit(key: str, why: str) -> UnitResult:
        explanation = explanations[key][0]
        return UnitResult(
            unit=records[key].unit, status="failed", explanation=explanation, error=why, stage="simulate",
            extras={"provenance": provenance}, transient=True,
        )  # fmt: skip

    pending = [k for k in own if k not in done]
    scored: dict[str, UnitResult] = {}  # scored elsewhere (runner=ray), finished here
    if runner is not None:
        remote = [k for k in pending if explanations[k][0] is not None]
        items = [(k, score_payload(k)) for k in remote]
        finished = _finish(runner.map("score", items, lost=lost_unit), scored, unit_result, pending)
    else:
        finished = as_finished(unit_result, pending, in_flight(settings, parts, len(pending)))
    sinks: list[Sink] = [store, *mirrors]
    for key, result in tqdm(finished, total=len(pending), desc="simulate+score", disable=not progress):
        for sink in sinks:
            sink.write(result)
        previous[key] = result
    results = [previous[k] for k in own if k in previous]  # in unit order, however they finished
    if settings.shard is None:  # the files in unit order too (a shard's: the merge orders them)
        store.order(list(records))
        explained.order(list(records))

    if runner is not None:
        runner.close()
    summary = aggregate(results, settings.scoring.bootstrap_resamples, settings.scoring.confidence, settings.seed)
    summary.update(backend_metrics(parts))  # retries, cache hits, dollars of the HTTP backends (this process)
    if settings.shard is None:  # a shard's slice is not the run: the merge writes them
        write_score_correlations(results, run_dir)  # score_correlations.{json,csv}: how scorers agree across units
    warnings = specificity_warnings(summary, settings) + unparsed_warnings(summary, settings, simulator)
    warnings += outage_warnings(results, "re-run the same command to retry them")
    return RunOutcome(results=results, summary=summary, warnings=warnings)


def outage_warnings(results: Sequence[UnitResult], retry: str) -> list[str]:
    """One warning counting the units that failed from an outage (a re-run retries them), if any."""
    outages = sum(1 for r in results if r.status == "failed" and r.transient)
    if not outages:
        return []
    return [
        f"{outages} unit(s) failed from an outage (connection error, timeout, 429/5xx after retries, expired "
        f"batch): {retry}"
    ]


@dataclass(frozen=True)
class UnitContext:
    """What a unit's work needs besides its key: built once per process (the driver's, or each
    ``runner=ray`` worker's own from the same config)."""

    settings: RunSettings
    parts: RunParts
    records: dict[str, UnitRecord]
    provenance: dict[str, Any]


ExplainOutcome = tuple[Explanation | None, str | None, bool, Usage]  # explanation, error, transient, failed spend


def explain_task(context: UnitContext, key: str, _payload: Any = None) -> ExplainOutcome:
    """Explain one unit (best-of-k reranks here); a failure is returned with what it spent."""
    settings, record = context.settings, context.records[key]
    with metering() as meter:  # what this unit's explaining spent, should it fail
        try:
            splits = make_splits(record, settings.units.examples_per_split)
            found = explain_unit(context.parts.explainer, context.parts.simulator, record.unit, splits)
            if not found:
                raise RuntimeError("explainer returned no explanation")
            return found[0], None, False, Usage()
        except UserError:
            raise  # a user mistake (missing package, bad key ...) stops the run with one line
        except Exception as err:  # noqa: BLE001 - a failed unit is recorded, the run goes on
            log.debug("explain failed for %s", key, exc_info=True)
            return None, _error_text(err), is_transient(err), meter.total


def score_task(context: UnitContext, key: str, payload: tuple[Explanation, Sequence[str]]) -> UnitResult:
    """Simulate, score and control one explained unit; a failed one carries what its scoring spent."""
    explanation, control_texts = payload
    parts = context.parts
    with metering() as meter:  # what this unit's scoring spent, should it fail
        result = score_unit(
            context.settings, context.records[key], explanation, parts.simulator,
            list(parts.scorers.values()), parts.subject, control_texts, context.provenance,
        )  # fmt: skip
    if result.status == "failed":  # spend not on a kept record (the simulation's usage is)
        kept = result.simulation.usage if result.simulation is not None else Usage()
        result.extras[FAILED_SPEND] = {COST_STAGE.get(result.stage or "", "simulator"): _minus(meter.total, kept)}
    return result


TASKS: dict[str, Callable[..., Any]] = {"explain": explain_task, "score": score_task}


def _runner(settings: RunSettings, run_dir: Path) -> Any:
    """The runner that executes units elsewhere (``runner.kind=ray``), or None: this process's engine."""
    if settings.runner.kind == "local":
        return None
    from bench.runners.ray_runner import RayRunner

    return RayRunner(settings, run_dir)


def _finish(remote: Any, done: dict[str, Any], finish: Any, keys: Sequence[str]) -> Any:
    """Finish units whose work ran elsewhere (``done`` filled from ``remote`` as each arrives), then
    the rest (failed explanations: nothing to run remotely) -- each through ``finish`` here."""
    for key, value in remote:
        done[key] = value
        yield key, finish(key)
    for key in keys:
        if key not in done:
            yield key, finish(key)


def check_layers(settings: RunSettings, info: Any, dataset: Any = None) -> None:
    """Every requested layer exists (the subject's config alone says so: no weights loaded); an SAE's
    folder is read and checked too (``cfg.json`` and the weights' hash: no model needed)."""
    if isinstance(dataset, RecordSource):  # published records: the files' layers (GPT-2 XL: 48)
        dataset.check_units(settings.units)
        return
    if settings.units.kind == "sae_latent":
        sae_layer(settings)
    for layer in settings.units.layers or []:
        if layer >= info.n_layers:
            raise UserError(
                f"config error at 'units.layers': layer {layer} out of range; "
                f"{info.model} has {info.n_layers} layers (0..{info.n_layers - 1})"
            )


def load_records(
    settings: RunSettings, subject: Subject, dataset: Dataset
) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
    """The chosen units' records and their provenance.

    Dispatch point: record sources that need no mining plug in here by ``settings.units.kind``;
    every kind read from the subject is mined by :func:`mine_records`.
    """
    if settings.units.kind == "synthetic":  # rules over the corpus's tokens: no forward pass
        from bench.subject.synthetic import load_synthetic_records

        return load_synthetic_records(settings, subject, dataset)
    if isinstance(dataset, RecordSource):  # published records read from files: no mining
        return dataset.unit_records(settings.units)
    return mine_records(settings, subject, dataset)


def sae_layer(settings: RunSettings) -> int:
    """The layer an SAE reads (from its cfg.json); one line if ``units.layers`` names another."""
    from bench.subject.architectures import parse_site
    from bench.subject.sae import load_sae

    sae = settings.units.sae
    spec = load_sae(sae.path, sae.release, sae.sae_id, settings.cache_dir).spec
    _, layer = parse_site(spec.hook_name)
    layers = settings.units.layers
    if layer is None or (layers and list(layers) != [layer]):
        raise UserError(
            f"config error at 'units.layers': the SAE reads {spec.hook_name!r}; set units.layers=null (or [{layer}])"
        )
    return layer


def mine_records(
    settings: RunSettings, subject: Subject, dataset: Dataset
) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
    """Every requested source mined in ONE streaming pass (cached on disk per source), then the chosen units."""
    if not isinstance(subject, SourceMining):
        return _mine_records_per_layer(settings, subject, dataset)
    from bench.subject.record_cache import load_or_mine_sources
    from bench.subject.sae import load_sae
    from bench.subject.units import build_sources

    units = settings.units
    info = subject.info
    excerpts = dataset.excerpts(subject.tokenizer, seed=settings.seed)
    check_layers(settings, info)
    if units.kind == "mlp_neuron" and units.site is None:  # widths known from the config: refuse before mining
        for layer in units.layers or []:
            choose_units(layer, info.width, units.count, units.indices, units.seed)
    sae = load_sae(units.sae.path, units.sae.release, units.sae.sae_id, settings.cache_dir) if (
        units.kind == "sae_latent") else None  # fmt: skip
    sources = build_sources(subject, units.kind, units.layers or [], sae, units.site)
    subject.register_sources(sources)
    provenance = {
        "subject": asdict(info),
        "excerpts": excerpts.fingerprint,
        "units": {"kind": units.kind, "sources": [s.describe for s in sources]},
    }
    mined = load_or_mine_sources(
        subject, excerpts, sources, settings.mining.top_k, settings.mining.random_k, settings.seed,
        settings.cache_dir, settings.mining.shard_excerpts,
    )  # fmt: skip
    records: dict[str, UnitRecord] = {}
    for source, (layer_mined, strings) in zip(sources, mined, strict=True):
        layer_records = layer_mined.lazy_records(excerpts.token_ids, strings, kind=source.kind)
        for index in choose_units(source.layer, len(layer_records), units.count, units.indices, units.seed):
            rec = layer_records[index]
            records[rec.unit.key] = rec
    return records, provenance


def _mine_records_per_layer(
    settings: RunSettings, subject: Subject, dataset: Dataset
) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
    """A plugin subject without ``mine_sources``: MLP neurons, one pass per layer (``mine_layer`` / ``mine``)."""
    from bench.subject.record_cache import load_or_mine

    if settings.units.kind != "mlp_neuron":
        raise UserError(f"config error at 'units.kind': subject {type(subject).__name__} can only mine mlp_neuron")
    info = subject.info
    excerpts = dataset.excerpts(subject.tokenizer, seed=settings.seed)
    provenance = {"subject": asdict(info), "excerpts": excerpts.fingerprint}
    records: dict[str, UnitRecord] = {}
    check_layers(settings, info)
    for layer in settings.units.layers or []:
        chosen = choose_units(layer, info.width, settings.units.count, settings.units.indices, settings.units.seed)
        layer_records = load_or_mine(
            subject, excerpts, layer, settings.mining.top_k, settings.mining.random_k, settings.seed, settings.cache_dir
        )
        for index in chosen:
            rec = layer_records[index]
            records[rec.unit.key] = rec
    return records, provenance


def explain_all(
    settings: RunSettings,
    explainer: Any,
    simulator: Simulator,
    records: dict[str, UnitRecord],
    run_dir: Path,
    progress: bool,
    retry_failed: bool = False,
    store: ExplanationStore | None = None,
    runner: Any = None,
    context: UnitContext | None = None,
) -> dict[str, tuple[Explanation | None, str | None]]:
    """Explain every unit first (resumable via explanations.jsonl): the control borrows them.

    A failure recorded by an earlier run is kept unless it was transient (or ``retry_failed``)."""
    from tqdm.auto import tqdm

    explained = store if store is not None else ExplanationStore(RunFolder(run_dir).explanations)
    explanations: dict[str, tuple[Explanation | None, str | None]] = {}

    if context is None:  # explaining reads only the explainer and simulator of the parts
        no_subject, no_dataset = cast(Subject, None), cast(Dataset, None)
        parts = RunParts(subject=no_subject, dataset=no_dataset, explainer=explainer, simulator=simulator, scorers={})
        context = UnitContext(settings, parts, records, {})

    def explain(key: str) -> ExplainOutcome:
        return explain_task(context, key)

    retry: set[str] = set()
    for key in records:
        cached = explained.get(key)
        if cached is not None and cached[0] is None and (retry_failed or explained.items[key].get("transient")):
            retry.add(key)
        elif cached is not None:
            explanations[key] = cached
    earlier = {key: explained.failed_spend(key) for key in retry}
    explained.forget(retry)
    pending = [k for k in records if k not in explanations]
    if runner is not None:
        finished = runner.map("explain", [(k, None) for k in pending], lost=lambda k, why: (None, why, True, Usage()))
    else:
        finished = as_finished(explain, pending, in_flight(settings, context.parts, len(pending)))
    for key, (explanation, error, transient, spent) in tqdm(
        finished, total=len(pending), desc="explain", disable=not progress
    ):
        explained.add(key, explanation, error, transient, spent + earlier.get(key, Usage()))
        explanations[key] = (explanation, error)
    return explanations


def assign_controls(settings: RunSettings, keys: list[str]) -> dict[str, list[str]]:
    """Unit -> the units whose explanations serve as its shuffled control (seeded derangements)."""
    controls: dict[str, list[str]] = {k: [] for k in keys}
    if settings.control.enabled:
        for shift in range(1, min(settings.control.repeats, len(keys) - 1) + 1):  # distinct donors only
            perm = derangement(len(keys), shift, settings.seed)
            if perm is None:
                continue
            for i, key in enumerate(keys):
                controls[key].append(keys[perm[i]])
    return controls


def score_unit(
    settings: RunSettings,
    record: UnitRecord,
    explanation: Explanation,
    simulator: Simulator,
    scorers: Sequence[Any],
    subject: Any,
    control_texts: Sequence[str],
    provenance: dict[str, Any],
) -> UnitResult:
    """Simulate the scoring (and calibration) split, run every scorer, then the shuffled control."""
    extras: dict[str, Any] = {"provenance": provenance}
    stage = "simulate"
    simulation = None
    try:
        splits = make_splits(record, settings.units.examples_per_split)
        scoring = splits.get(settings.scoring.split)
        scored = [*scoring.top, *scoring.random]
        calibrate = settings.scoring.calibration != "none" and any(s.needs_calibration for s in scorers)
        cal_records = [*splits.calibration.top, *splits.calibration.random] if calibrate else []
        # One simulate() for both splits: their requests go out together (a round trip fewer per
        # unit on API backends); the usage of both stays on the simulation.
        both = simulator.simulate(explanation.text, [*scored, *cal_records])
        simulation = replace(both, sequences=both.sequences[: len(scored)])
        extras["estimator"] = estimator_record(simulation)  # estimator, k, unreadable rate: in every result
        top_sims = simulation.sequences[: len(scoring.top)]
        random_sims = simulation.sequences[len(scoring.top) :]
        calibration_sims, calibrator, problem = None, None, None
        if calibrate:
            calibration_sims = both.sequences[len(scored) :]
            real, sim = pooled(calibration_sims)
            try:
                calibrator = fit_calibration(settings.scoring.calibration, sim, real)
            except CalibrationError as err:
                problem = str(err)
        elif settings.scoring.calibration == "none":
            calibrator = fit_calibration("none", [], [])
        stage = "score"
        ctx = ScoringContext(
            unit=record,
            explanation=explanation,
            scoring_top=top_sims,
            scoring_random=random_sims,
            scoring_records=[*scoring.top, *scoring.random],
            calibration=calibration_sims,
            calibrator=calibrator,
            calibration_problem=problem,
            subject=subject,
            simulator=simulator,
        )
        scores: dict[str, Score] = {}
        for scorer in scorers:
            scores.update(run_scorer(scorer, ctx, extras))
        if ctx.details:
            extras["scorers"] = ctx.details
        stage = "control"
        scores.update(
            control_scores(simulator, explanation, scores, control_texts, [*scoring.top, *scoring.random], extras)
        )
    except UserError:
        raise  # a user mistake stops the run with one line; finished units are already saved
    except Exception as err:  # noqa: BLE001 - a failed unit is recorded with its stage and reason
        log.debug("unit %s failed at %s", record.unit.key, stage, exc_info=True)
        extras["traceback"] = traceback.format_exc(limit=8)
        if isinstance(err, SimulationParseError):  # a simulator answer that did not parse, kept whole
            extras["raw_response"] = err.raw_response
        return UnitResult(
            unit=record.unit,
            status="failed",
            explanation=explanation,
            simulation=simulation,
            error=_error_text(err),
            stage=stage,
            extras=extras,
            transient=is_transient(err),
        )
    return UnitResult(
        unit=record.unit, status="ok", explanation=explanation, simulation=simulation, scores=scores, extras=extras
    )


def _minus(a: Usage, b: Usage) -> dict[str, Any]:
    """``a - b`` field by field, as a Usage dict (never below 0: ``b`` is part of ``a``)."""
    return {
        f: max(getattr(a, f) - getattr(b, f), 0)
        for f in ("calls", "input_tokens", "cached_input_tokens", "output_tokens")
    } | {"dollars": a.dollars - b.dollars}


def estimator_record(simulation: Simulation) -> dict[str, Any]:
    """How the scored simulation read its values: one stable place per result (leaderboards read it)."""
    rate = simulation.unparsed_rate
    return {
        "estimator": simulation.estimator,
        "top_k": simulation.top_k,
        "top_k_taper": simulation.top_k_taper,
        "unparsed_tokens": simulation.unparsed_tokens,
        "tokens": simulation.total_tokens,
        "unparsed_rate": None if math.isnan(rate) else rate,
    }


def run_scorer(scorer: Scorer, ctx: ScoringContext, extras: dict[str, Any]) -> dict[str, Score]:
    """One scorer's scores; if it fails, its headline score is NaN with the reason and the other
    scorers still run (the failure counts in that score's ``failure_rate``, never as a 0)."""
    try:
        return scorer.score(ctx)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - recorded per scorer, with its traceback
        log.debug("scorer %s failed for %s", scorer.name, ctx.unit.unit.key, exc_info=True)
        extras.setdefault("scorer_errors", {})[scorer.name] = traceback.format_exc(limit=8)
        return {scorer.name: Score(scorer.name, math.nan, f"scorer failed: {_error_text(err)}")}


def control_scores(
    simulator: Simulator,
    explanation: Explanation,
    scores: dict[str, Score],
    control_texts: Sequence[str],
    scoring_records: Sequence[Any],
    extras: dict[str, Any],
) -> dict[str, Score]:
    """Score the same excerpts with other units' explanations; specificity = real - control."""
    if not control_texts:
        return {}
    values, usage = [], Usage()
    for text in control_texts:
        sim = simulator.simulate(text, scoring_records)
        usage = usage + sim.usage
        real, pred = pooled(sim.sequences)
        values.append(metrics.correlation(CONTROL_SCORE, real, pred).value)
    extras["control"] = {"explanations": list(control_texts), "scores": values, "usage": asdict(usage)}
    finite = [v for v in values if not math.isnan(v)]
    control = (
        Score(f"control/{CONTROL_SCORE}", sum(finite) / len(finite))
        if finite
        else Score(f"control/{CONTROL_SCORE}", math.nan, "control simulations were constant")
    )
    real_score = scores.get(CONTROL_SCORE)
    if real_score is None or not real_score.ok or not control.ok:
        why = real_score.reason if real_score is not None and not real_score.ok else control.reason
        spec = Score(f"specificity/{CONTROL_SCORE}", math.nan, f"undefined: {why}")
    else:
        spec = Score(f"specificity/{CONTROL_SCORE}", real_score.value - control.value)
    return {control.name: control, spec.name: spec}


def specificity_warnings(summary: dict[str, float], settings: RunSettings) -> list[str]:
    """Warn when the specificity CI includes 0: the simulator does not respond to explanations."""
    low = summary.get(f"score/specificity/{CONTROL_SCORE}/ci_low")
    high = summary.get(f"score/specificity/{CONTROL_SCORE}/ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return []
    if low <= 0 <= high:
        return [
            f"the simulator does not respond to explanations: specificity CI [{low:.3f}, {high:.3f}] includes 0 "
            "(scores with a shuffled explanation are as good as with the real one)"
        ]
    return []


def unparsed_warnings(summary: dict[str, float], settings: RunSettings, simulator: Simulator) -> list[str]:
    """Warn when more simulated tokens than ``warn_on.unparsed_rate`` had no readable value: their EV
    fell back to 0, so the scores describe the estimator's blind spot as much as the explanation."""
    rate = summary.get("simulation/unparsed_rate", math.nan)
    limit = settings.warn_on.unparsed_rate
    if rate is None or math.isnan(rate) or rate <= limit:
        return []
    estimator, k = simulator.recorded_estimator, simulator.top_k
    head = (
        f"{rate:.1%} of simulated tokens had no readable value (EV 0; warn_on.unparsed_rate={limit:g}) "
        f"with estimator {estimator}"
    )
    if estimator.endswith("/prompt_logprobs") and k is not None:
        return [
            f"{head} at k={k}: no value 0..10 was among the top {k} tokens; raise simulator.top_logprobs (and "
            "the vLLM server's --max-logprobs with simulator.llm.slot_top_k), or use "
            "simulator.estimator=prompt_logprobs_exact on an in-process model"
        ]
    if k is not None:
        return [f"{head} at k={k}: raise simulator.top_logprobs, or check the simulator's answers"]
    return [f"{head}: the simulator's answers did not parse; check its prompt and model"]


def check_failure_rate(summary: dict[str, float], settings: RunSettings) -> None:
    """Raise :class:`~bench.errors.RunFailed` (exit 1) when every unit failed or the failure rate
    exceeds ``fail_on.failure_rate``; the results are already written."""
    from bench.errors import RunFailed

    total, failed = summary.get("units/total", 0.0), summary.get("units/failed", 0.0)
    if not total:
        return
    rate, limit = failed / total, settings.fail_on.failure_rate
    if failed == total or rate > limit:
        raise RunFailed(
            f"run failed: {int(failed)} of {int(total)} units failed (failure rate {rate:.3f}, "
            f"fail_on.failure_rate={limit:g}); see the failed units' stage and error in results.jsonl"
        )
