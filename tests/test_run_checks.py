"""End-of-run checks: all-failed runs exit non-zero, unreadable simulations end with a warning."""

from __future__ import annotations

import math

import pytest

from bench.config import compose, validate
from bench.errors import ConfigError, RunFailed
from bench.llm.fake import FakeLLM
from bench.pipeline import check_failure_rate, estimator_record, unparsed_warnings
from bench.records import SequenceSimulation, Simulation
from bench.simulators.all_at_once import AllAtOnceSimulator


def settings(*overrides: str):
    return validate(compose(["explainer=token_list", *overrides]))[0]


def test_every_unit_failed_exits_non_zero_whatever_the_threshold() -> None:
    with pytest.raises(RunFailed, match="3 of 3 units failed") as info:
        check_failure_rate({"units/total": 3.0, "units/failed": 3.0}, settings())
    assert info.value.exit_code == 1
    check_failure_rate({"units/total": 3.0, "units/failed": 2.0}, settings())  # default 1.0: only all-failed
    check_failure_rate({"units/total": 0.0, "units/failed": 0.0}, settings())  # nothing ran: nothing to judge


def test_failure_rate_above_the_configured_threshold_exits_non_zero() -> None:
    strict = settings("fail_on.failure_rate=0.2")
    check_failure_rate({"units/total": 10.0, "units/failed": 2.0}, strict)  # 0.2 is not above 0.2
    with pytest.raises(RunFailed, match=r"failure rate 0\.300, fail_on\.failure_rate=0\.2"):
        check_failure_rate({"units/total": 10.0, "units/failed": 3.0}, strict)
    with pytest.raises(ConfigError, match="fail_on.failure_rate"):
        settings("fail_on.failure_rate=1.5")


def test_a_high_unparsed_rate_warns_what_to_change() -> None:
    sim = AllAtOnceSimulator(llm=FakeLLM(), top_logprobs=20)
    [warning] = unparsed_warnings({"simulation/unparsed_rate": 0.42}, settings(), sim)
    assert "42.0% of simulated tokens" in warning and "k=20" in warning
    assert "simulator.top_logprobs" in warning and "--max-logprobs" in warning
    assert unparsed_warnings({"simulation/unparsed_rate": 0.01}, settings(), sim) == []
    assert unparsed_warnings({"simulation/unparsed_rate": math.nan}, settings(), sim) == []
    assert unparsed_warnings({"simulation/unparsed_rate": 0.42}, settings("warn_on.unparsed_rate=0.5"), sim) == []
    exact = AllAtOnceSimulator(llm=FakeLLM(), estimator="prompt_logprobs_exact")
    [other] = unparsed_warnings({"simulation/unparsed_rate": 0.42}, settings(), exact)
    assert "did not parse" in other and "k=" not in other


def test_every_result_records_estimator_k_and_unparsed_rate() -> None:
    seqs = [SequenceSimulation(["a", "b"], [0.0, 1.0], [0.0, 1.0], unparsed=1), SequenceSimulation(["c"], [2.0], [2.0])]
    record = estimator_record(Simulation(seqs, "s", "all_at_once/prompt_logprobs", top_k=20, top_k_taper=0.1))
    assert record == {
        "estimator": "all_at_once/prompt_logprobs",
        "top_k": 20,
        "top_k_taper": 0.1,
        "unparsed_tokens": 1,
        "tokens": 3,
        "unparsed_rate": pytest.approx(1 / 3),
    }
    assert estimator_record(Simulation([], "s", "all_at_once/sampled"))["unparsed_rate"] is None


def test_the_simulator_records_its_k() -> None:
    from bench.records import ActivationRecord

    records = [ActivationRecord([" cat", " dog"], [1.0, 0.0])]
    llm = FakeLLM()
    top = AllAtOnceSimulator(llm=llm, top_logprobs=7).simulate("cat", records)
    assert top.estimator == "all_at_once/prompt_logprobs" and top.top_k == 7
    exact = AllAtOnceSimulator(llm=llm, estimator="prompt_logprobs_exact").simulate("cat", records)
    assert exact.estimator == "all_at_once/prompt_logprobs_exact" and exact.top_k is None
    assert [r.top_k for r in llm.calls] == [7, None]  # the k travels with every request to the backend


def test_the_summary_records_k_where_all_units_share_it() -> None:
    from bench.aggregate import aggregate
    from bench.records import UnitId, UnitResult

    def result(index: int, top_k: int | None) -> UnitResult:
        seq = SequenceSimulation(["a", "b"], [0.0, 1.0], [0.0, 1.0], unparsed=1)
        sim = Simulation([seq], "s", "all_at_once/prompt_logprobs", top_k=top_k)
        return UnitResult(unit=UnitId(0, index), status="ok", simulation=sim)

    summary = aggregate([result(0, 20), result(1, 20)], resamples=100)
    assert summary["simulation/top_k"] == 20.0 and summary["simulation/unparsed_rate"] == 0.5
    assert math.isnan(aggregate([result(0, 20), result(1, None)], resamples=100)["simulation/top_k"])


def test_dry_run_says_where_the_providers_prompt_cache_applies() -> None:
    from bench.dryrun import format_estimate

    run, parts = validate(compose(["explainer=openai", "simulator=openai_all_at_once_logprobs"]))
    text = format_estimate(run, parts)
    assert "prompt caching (simulate): gpt-4o-mini caches prompts of 1,024+ tokens" in text
    assert "under it: never cached" in text  # all-at-once prompts of the default run are ~800 tokens
    run, parts = validate(compose(["explainer=smollm2"]))
    assert "prompt caching" not in format_estimate(run, parts)  # local models: no provider, no note
