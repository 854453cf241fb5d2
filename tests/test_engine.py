"""The request engine (bench/engine.py): many units in flight, their requests coalesced per backend.

The engine alone with plain functions, then the pipeline with a coalescing fake LLM (every stage of
N units is ONE backend call, results equal to one unit at a time), then batch mode against the
loopback batch endpoints (N units -> one provider batch job per stage)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest_models import tiny_run
from fake_servers import FakeLLMServer, benchmark_responder

from bench.engine import EngineStopped, RequestEngine, gather
from bench.errors import UserError


def _wait_until(predicate, what: str) -> None:
    """Poll for a state another thread reaches (never a timing assertion: only the order is forced)."""
    deadline = time.monotonic() + 300  # a bound for a starved CI machine, never a measurement
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.001)
    raise AssertionError(f"never reached: {what}")


def test_one_call_per_flush_in_unit_order_whatever_the_arrival_order() -> None:
    engine = RequestEngine()
    calls: list[list[str]] = []

    def send(items: list[str]) -> list[str]:
        calls.append(list(items))
        return [i.upper() for i in items]

    n = 5

    def unit(i: int) -> list[str]:
        # units arrive in reverse order: unit i waits until the n-1-i later units are queued
        _wait_until(lambda: engine.waiting >= n - 1 - i, f"{n - 1 - i} waiting")
        first = engine.gather("g", [f"u{i}a", f"u{i}b"], send)
        second = engine.gather("g", [f"u{i}c"], send)  # the next stage: again one call for all
        return first + second

    got = dict(engine.run_units(unit, list(range(n)), workers=n))
    assert got == {i: [f"U{i}A", f"U{i}B", f"U{i}C"] for i in range(n)}
    assert calls == [[f"u{i}{s}" for i in range(n) for s in "ab"], [f"u{i}c" for i in range(n)]]
    assert engine.stats.calls == 2 and engine.stats.requests == 3 * n


def test_more_units_than_workers_and_units_without_requests() -> None:
    engine = RequestEngine()
    sizes: list[int] = []

    def send(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [x + 1 for x in items]

    def unit(i: int) -> int:
        if i % 3 == 0:
            return -1  # no LLM request at all (e.g. a cached unit): must not block the others
        return engine.gather("g", [i], send)[0]

    got = dict(engine.run_units(unit, list(range(10)), workers=4))
    assert got == {i: (-1 if i % 3 == 0 else i + 1) for i in range(10)}
    assert sum(sizes) == 6 and max(sizes) <= 4


def test_a_failing_request_fails_its_own_unit_only() -> None:
    engine = RequestEngine()

    def send(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("the server refused 'bad'")
        return [f"ok:{i}" for i in items]

    def unit(name: str) -> str:
        try:
            return engine.gather("g", [name], send)[0]
        except ValueError as err:
            return f"failed: {err}"

    got = dict(engine.run_units(unit, ["a", "bad", "c"], workers=3))
    assert got == {"a": "ok:a", "bad": "failed: the server refused 'bad'", "c": "ok:c"}
    assert engine.stats.retried_alone == 3


def test_a_user_error_stops_every_unit() -> None:
    engine = RequestEngine()

    def send(items: list[int]) -> list[int]:
        raise UserError("budget.max_usd reached")

    with pytest.raises(UserError, match="budget"):
        list(engine.run_units(lambda i: engine.gather("g", [i], send), list(range(4)), workers=4))
    with pytest.raises(EngineStopped):  # a stopped engine takes no more requests
        _as_worker(engine, lambda: engine.gather("g", [1], lambda xs: xs))


def _as_worker(engine: RequestEngine, fn) -> None:
    from bench import engine as module

    module._LOCAL.worker = engine
    try:
        fn()
    finally:
        module._LOCAL.worker = None


def test_callers_outside_a_run_go_straight_to_the_backend() -> None:
    seen: list[list[int]] = []
    assert gather("g", [1, 2], lambda xs: seen.append(xs) or [x * 2 for x in xs]) == [2, 4]
    assert seen == [[1, 2]]
    engine = RequestEngine()  # not a worker of this engine either
    assert engine.gather("g", [3], lambda xs: [x * 2 for x in xs]) == [6]


def test_two_backends_flush_together() -> None:
    """Unit A waits on the explainer's backend while unit B waits on the simulator's: neither queue may
    wait for the other (the barrier counts workers waiting on ANY backend)."""
    engine = RequestEngine()
    calls: list[tuple[str, list[int]]] = []

    def backend(name: str):
        def send(items: list[int]) -> list[int]:
            calls.append((name, list(items)))
            return items

        return send

    def unit(i: int) -> int:
        return engine.gather("explainer" if i % 2 else "simulator", [i], backend("x" if i % 2 else "s"))[0]

    assert dict(engine.run_units(unit, [0, 1, 2, 3], workers=4)) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert sorted(calls) == [("s", [0, 2]), ("x", [1, 3])]
    assert engine.stats.flushes == 1


# ---------------------------------------------------------------------------------------------------
# The pipeline on the engine
# ---------------------------------------------------------------------------------------------------
def _pipeline(tmp: Path, subject: Path, corpus: Path, *extra: str):
    """validate + pipeline.run, returning the outcome and the built parts (to count backend calls)."""
    from bench.config import compose, validate
    from bench.pipeline import run
    from bench.run.folder import JsonlSink

    overrides = [
        *tiny_run(subject, corpus),
        "explainer=token_list",
        "simulator=smollm2_all_at_once",
        "~simulator.llm",
        "+simulator.llm={_target_:bench.llm.fake.FakeLLM,coalesce:true}",
        "units.count=5",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]
    cfg = compose(overrides)
    settings, parts = validate(cfg)
    run_dir = tmp / "run"
    run_dir.mkdir(parents=True)
    outcome = run(settings, parts, JsonlSink(run_dir / "results.jsonl"), [], run_dir, progress=False)
    return outcome, parts


def test_every_stage_of_all_units_is_one_backend_call_with_unchanged_results(subject, corpus, tmp_path) -> None:
    one, one_parts = _pipeline(tmp_path / "one", subject, corpus, "engine.units_in_flight=1", "scorer=[correlation]")
    many, many_parts = _pipeline(
        tmp_path / "many", subject, corpus, "engine.units_in_flight=64", "scorer=[correlation]"
    )
    n = len(many.results)
    assert n >= 5 and all(r.status == "ok" for r in many.results)
    calls_one = one_parts.simulator.llm.backend_calls
    calls_many = many_parts.simulator.llm.backend_calls
    assert len(calls_one) == 2 * n  # one unit at a time: simulate + control per unit
    assert len(calls_many) == 2  # all units in flight: one call for the simulations, one for the controls
    assert sum(size for _, size in calls_many) == sum(size for _, size in calls_one)
    for a, b in zip(one.results, many.results, strict=True):
        assert a.unit == b.unit and a.explanation.text == b.explanation.text
        assert {k: v.value for k, v in a.scores.items()} == pytest.approx(
            {k: v.value for k, v in b.scores.items()}, nan_ok=True
        )
    assert one.summary == pytest.approx(many.summary, nan_ok=True)


def test_batch_mode_sends_one_provider_batch_per_stage_for_all_units(subject, corpus, tmp_path, monkeypatch) -> None:
    """Anthropic Message Batches on the loopback server: 5 units -> one job for the explanations, one for
    the simulations, one for the controls (one per unit and stage before the engine: 15)."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    with FakeLLMServer(api_key="sk-loopback") as server:
        server.responder = benchmark_responder
        args = [
            "run",
            "--no-progress",
            "explainer=anthropic",
            "simulator=anthropic_all_at_once_sampled",
            *[
                f"{role}.llm.{key}"
                for role in ("explainer", "simulator")
                for key in (f"base_url={server.root}", "api_key_env=NB_TEST_KEY", "batch=true", "batch_poll_s=0.001")
            ],
            *tiny_run(subject, corpus),
            "units.count=5",
            "scorer=[correlation]",
            "tracking=none",
            f"output_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
        assert main(args) == 0
        jobs = list(server.batches.values())
        requests_per_job = [len(b["requests"]) for b in jobs]
    results = [
        json.loads(x) for x in next((tmp_path / "runs").iterdir()).joinpath("results.jsonl").read_text().splitlines()
    ]
    assert len(results) == 5 and all(r["status"] == "ok" for r in results)
    assert len(jobs) == 3, requests_per_job
    assert requests_per_job[0] == 5  # one explanation request per unit, in one job


def test_units_in_flight_auto_takes_every_unit_for_batch_backends_only() -> None:
    from types import SimpleNamespace

    from bench.engine import BATCH_UNITS_IN_FLIGHT_CAP, DEFAULT_UNITS_IN_FLIGHT, units_in_flight

    batch, direct = SimpleNamespace(batch=True), SimpleNamespace(batch=False)
    assert units_in_flight(None, [direct, None], 1000) == DEFAULT_UNITS_IN_FLIGHT
    assert units_in_flight(None, [direct, batch], 1000) == 1000  # one provider job per stage for the run
    assert units_in_flight(None, [batch], 10**6) == BATCH_UNITS_IN_FLIGHT_CAP
    assert units_in_flight(7, [batch], 1000) == 7  # an explicit setting wins
