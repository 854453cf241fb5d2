"""Every simulator strategy x estimator: parsing, the fake backend, the loopback servers through the
official SDKs, refusals at config time, mismatches recorded with the raw response, dry runs, keys."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

from bench.config import compose, validate
from bench.errors import ConfigError
from bench.llm.anthropic_backend import AnthropicModel
from bench.llm.fake import FakeLLM
from bench.llm.openai_backend import OpenAIChatModel
from bench.protocols import TokenLogprobs
from bench.records import ActivationRecord as R
from bench.records import Explanation, UnitId, UnitRecord, UnitStats
from bench.simulators.all_at_once import AllAtOnceSimulator
from bench.simulators.estimators import ESTIMATORS, estimators_for
from bench.simulators.expected_value import expected_value_from_logprobs
from bench.simulators.one_at_a_time import OneAtATimeSimulator
from bench.simulators.parsing import SimulationParseError, match_lines, parse_answer, preamble, value_logprobs
from bench.simulators.prompt_format import escape_token

WEIRD = [" cat", "\t", "\n", 'say "hi"', "é", "\\n", "\u2028", "", " the", "猫", "a\tb\nc"]
SIMPLE = [R([" the", " cat", " sat", "."], [0.0, 5.0, 0.0, 1.0]), R([" a", " dog"], [0.0, 0.0])]


def _lines(tokens: list[str], values: list[object], escape: bool = True) -> str:
    return "".join(f"{escape_token(t) if escape else t}\t{v}\n" for t, v in zip(tokens, values, strict=True))


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------
def test_lines_are_matched_back_with_tabs_newlines_quotes_and_non_ascii() -> None:
    values = list(range(len(WEIRD)))
    text = "Sure, here it is:\n<start>\n" + _lines(WEIRD, values) + "<end>\ntrailing chatter"
    matched = match_lines(text, WEIRD)
    assert [m.value_text for m in matched] == [str(v) for v in values]
    for m in matched:  # value offsets point at the value in the raw text
        assert text[m.value_start : m.value_start + len(m.value_text)] == m.value_text
    # written unescaped: a literal tab stays in the token (split at the last tab), a literal newline
    # joins two lines, a dropped leading space and NFD-composed characters still match
    literal = '\t\t3\n\n\t4\nsay "hi"\t5\ncat\t6\ne\u0301\t7\n'
    assert [m.value_text for m in match_lines(literal, ["\t", "\n", 'say "hi"', " cat", "é"])] == list("34567")


@pytest.mark.parametrize(
    "text,problem",
    [
        (_lines([" the", " dog"], [0, 1]), "expected token ' cat'"),
        (_lines([" the"], [0]), "only 1 of 2 tokens"),
        (_lines([" the", " cat", " extra"], [0, 1, 2]), "is extra"),
        (_lines([" the", " cat"], [0, 1]) + "I think so", "unexpected text"),
    ],
)
def test_a_mismatch_raises_with_the_raw_response(text: str, problem: str) -> None:
    with pytest.raises(SimulationParseError, match=problem) as info:
        match_lines(text, [" the", " cat"])
    assert info.value.raw_response == text and "raw response" in str(info.value)


def test_a_preamble_without_start_marker_is_skipped_and_recorded() -> None:
    # method.md 5 (c): "Here you go:" before the token lines and no <start> marker used to fail the unit
    tokens = [" the", " cat", " sat"]
    text = "Here you go:\nToken\tActivation\n" + _lines(tokens, [0, 7, 1]) + "<end>"
    assert [m.value_text for m in match_lines(text, tokens)] == ["0", "7", "1"]
    assert preamble(text, tokens) == "Here you go:\nToken\tActivation\n"
    assert preamble("<start>\n" + _lines(tokens, [0, 7, 1]), tokens) == ""  # the marker still rules
    with pytest.raises(SimulationParseError, match="expected token ' the'"):  # no line matches: still a failure
        match_lines("Here you go:\n" + _lines([" dog", " cat", " sat"], [0, 7, 1]), tokens)
    sim = AllAtOnceSimulator(llm=FakeLLM(generate_fn=lambda r: text), estimator="sampled")
    out = sim.simulate("cats", [R(tokens, [0.0, 5.0, 0.0])])
    assert out.sequences[0].expected == [0.0, 7.0, 1.0] and out.meta["skipped_preambles"] == 1


def test_value_logprobs_handle_merged_prefixes_whitespace_and_split_ten() -> None:
    lp = math.log
    merged = [TokenLogprobs("\t3", lp(0.6), {"\t3": lp(0.6), "\t 4": lp(0.2), "\tunknown": lp(0.1), " x": lp(0.1)})]
    read = value_logprobs(merged, 0, "\t")
    assert expected_value_from_logprobs(read.logprobs).value == pytest.approx((3 * 0.6 + 4 * 0.2) / 0.8)
    split = [
        TokenLogprobs("1", lp(0.5), {"1": lp(0.5), "0": lp(0.5)}),
        TokenLogprobs("0", lp(0.8), {"0": lp(0.8), "\n": lp(0.2)}),
    ]
    read = value_logprobs(split, 0)
    assert read.chained and math.exp(read.logprobs["10"]) == pytest.approx(0.4)
    assert math.exp(read.logprobs["1"]) == pytest.approx(0.1)
    ambiguous = value_logprobs([TokenLogprobs("0", lp(0.7), {"0": lp(0.7), "1": lp(0.3)})], 0)
    assert ambiguous.unresolved and not ambiguous.chained
    assert parse_answer(" 7\n") == 7 and parse_answer("Answer: 10") == 10 and parse_answer("eleven") is None
    assert parse_answer("12") is None


# ---------------------------------------------------------------------------------------------------
# Every estimator on the fake backend
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,recorded,calls",
    [
        (lambda llm: AllAtOnceSimulator(llm=llm), "all_at_once/prompt_logprobs", 2),
        (lambda llm: AllAtOnceSimulator(llm=llm, estimator="generated_logprobs"), "all_at_once/generated_logprobs", 2),
        (lambda llm: AllAtOnceSimulator(llm=llm, estimator="sampled", samples=3), "all_at_once/sampled", 6),
        (lambda llm: OneAtATimeSimulator(llm=llm), "one_at_a_time/logprobs", 6),
        (lambda llm: OneAtATimeSimulator(llm=llm, estimator="sampled", samples=2), "one_at_a_time/sampled", 12),
    ],
)
def test_every_estimator_on_the_fake_backend(make, recorded: str, calls: int) -> None:
    llm = FakeLLM(unparsed_tokens=("sat",))
    out = make(llm).simulate("the cat", SIMPLE)
    assert out.estimator == recorded and recorded in ESTIMATORS
    assert len(llm.calls) == calls and out.usage.calls == calls
    cat, sat = out.sequences[0].expected[1], out.sequences[0].expected[2]
    assert cat > 5 > out.sequences[0].expected[3] and sat == 0.0
    assert out.sequences[0].unparsed == 1 and out.unparsed_tokens == 1  # counted, not hidden
    assert out.sequences[1].unparsed == 0 and len(out.sequences[1].expected) == 2
    assert all(len(d) == 11 for d in out.sequences[0].distributions)


def test_weird_tokens_round_trip_through_generation_estimators() -> None:
    records = [R(WEIRD, [0.0] * len(WEIRD))]
    for sim in (
        AllAtOnceSimulator(llm=FakeLLM(), estimator="generated_logprobs"),
        AllAtOnceSimulator(llm=FakeLLM(), estimator="sampled"),
        OneAtATimeSimulator(llm=FakeLLM(), estimator="sampled"),
    ):
        out = sim.simulate('cat "hi" 猫', records)
        assert out.unparsed_tokens == 0
        high = [t for t, ev in zip(WEIRD, out.sequences[0].expected, strict=True) if ev > 5]
        assert high == [" cat", " the", "猫"], (sim.recorded_estimator, high)  # "the" is in the lead-in


def test_sampled_estimator_averages_k_samples_and_keeps_mismatched_ones() -> None:
    answers = iter(["3", "5", "oops", "1", "10", "n/a"])
    llm = FakeLLM(generate_fn=lambda r: next(answers))
    out = OneAtATimeSimulator(llm=llm, estimator="sampled", samples=3).simulate("x", [R(["a", "b"], [0.0, 1.0])])
    assert out.sequences[0].expected == pytest.approx([4.0, 5.5]) and out.sequences[0].unparsed == 0
    assert out.sequences[0].distributions[0][3] == pytest.approx(0.5) and out.meta["temperature"] == 1.0

    good = "<start>\n" + _lines([" a"], [4]) + "<end>"
    texts = iter([good, "<start>\nnonsense\t2\n<end>", good])
    sim = AllAtOnceSimulator(llm=FakeLLM(generate_fn=lambda r: next(texts)), estimator="sampled", samples=3)
    out = sim.simulate("x", [R([" a"], [1.0])])
    assert out.sequences[0].expected == [4.0]
    assert len(out.meta["mismatched_samples"]) == 1 and "nonsense" in out.meta["mismatched_samples"][0]["raw"]


def test_a_mismatch_fails_the_unit_at_simulate_with_the_raw_response() -> None:
    from bench import pipeline

    settings, parts = validate(
        compose(["explainer=token_list", "units.examples_per_split=1", "scorer=[correlation]", "control.enabled=false"])
    )
    raw = "<start>\n the\t0\n completely\t3\n different\t0\n<end>"
    simulator = AllAtOnceSimulator(llm=FakeLLM(generate_fn=lambda r: raw), estimator="sampled")
    recs = [R([" the", " cat", " sat"], [0.0, float(i), 0.0]) for i in range(7)]
    record = UnitRecord(UnitId(1, 2), top=recs[:4], random=recs[4:], stats=UnitStats(1, 0.0, 1.0, 0.0, 0.0))
    result = pipeline.score_unit(
        settings, record, Explanation("cats", "test"), simulator, list(parts.scorers.values()), None, [], {}
    )
    assert result.status == "failed" and result.stage == "simulate" and not result.scores
    assert "expected token ' cat', got ' completely'" in result.error and "raw response" in result.error
    assert result.extras["raw_response"] == raw.removesuffix("<end>")  # as returned (cut at the stop string)


# ---------------------------------------------------------------------------------------------------
# Loopback servers through the official SDKs
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(api_key="sk-test") as srv:
        srv.responder = benchmark_responder
        srv.next_token = simulating_next_token
        yield srv


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")


def _http(kind: str, server: FakeLLMServer, tmp: Path):
    common = {"cache_dir": str(tmp / "llm-cache"), "backoff_initial_s": 0.0, "backoff_max_s": 0.0}
    if kind == "openai":
        return OpenAIChatModel(base_url=server.base_url, name="openai/gpt-4o-mini", **common)
    if kind == "vllm":
        return OpenAIChatModel(
            model="Qwen/Qwen2.5-1.5B-Instruct",
            base_url=server.base_url,
            prompt_logprobs=True,
            api_key_env="OPENAI_API_KEY",
            **common,
        )
    return AnthropicModel(base_url=server.root, **common)


@pytest.mark.parametrize(
    "kind,make,recorded",
    [
        (
            "openai",
            lambda llm: AllAtOnceSimulator(llm=llm, estimator="generated_logprobs"),
            "all_at_once/generated_logprobs",
        ),
        ("openai", lambda llm: AllAtOnceSimulator(llm=llm, estimator="sampled"), "all_at_once/sampled"),
        ("openai", lambda llm: OneAtATimeSimulator(llm=llm, max_tokens=2), "one_at_a_time/logprobs"),
        ("openai", lambda llm: OneAtATimeSimulator(llm=llm, estimator="sampled"), "one_at_a_time/sampled"),
        ("anthropic", lambda llm: AllAtOnceSimulator(llm=llm, estimator="sampled", samples=2), "all_at_once/sampled"),
        ("anthropic", lambda llm: OneAtATimeSimulator(llm=llm, estimator="sampled"), "one_at_a_time/sampled"),
        ("vllm", lambda llm: AllAtOnceSimulator(llm=llm), "all_at_once/prompt_logprobs"),
        (
            "vllm",
            lambda llm: AllAtOnceSimulator(llm=llm, estimator="generated_logprobs"),
            "all_at_once/generated_logprobs",
        ),
        ("vllm", lambda llm: OneAtATimeSimulator(llm=llm, max_tokens=2), "one_at_a_time/logprobs"),
    ],
)
def test_every_served_estimator_through_the_sdks(kind, make, recorded, server, keys, tmp_path) -> None:
    llm = _http(kind, server, tmp_path)
    try:
        sim = make(llm)
        records = [R([" the", " cat", " sat", "\t", "é"], [0.0, 5.0, 0.0, 0.0, 0.0]), R([" dog"], [1.0])]
        out = sim.simulate("the cat", records)
        assert out.estimator == recorded and out.unparsed_tokens == 0
        ev = out.sequences[0].expected
        assert ev[1] > 5 and ev[0] > 5 and max(ev[2], ev[3], ev[4]) < 3, ev  # the explanation's words stand out
        assert out.usage.calls > 0 and out.usage.input_tokens > 0
        assert llm.stats.calls == out.usage.calls
        if kind != "vllm":
            assert out.usage.dollars > 0 and llm.stats.dollars == pytest.approx(out.usage.dollars)
        if recorded.endswith("/logprobs") and kind == "openai":  # the fake server splits "10" into "1","0"
            assert out.meta["chained_values"] > 0
        again = make(llm).simulate("the cat", records)  # cached: no new call, nothing spent
        assert again.sequences[0].expected == ev and again.usage.calls == 0 and again.usage.dollars == 0
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------------
# Refusals at config time, per backend
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,offers",
    [
        (
            ["simulator=smollm2_all_at_once", "llm@simulator.llm=openai_gpt4o_mini"],
            "all_at_once/generated_logprobs, all_at_once/sampled, one_at_a_time/logprobs, one_at_a_time/sampled",
        ),
        (
            ["simulator=openai_all_at_once_logprobs", "llm@simulator.llm=anthropic_claude"],
            "all_at_once/sampled, one_at_a_time/sampled",
        ),
        (
            ["simulator=openai_one_at_a_time", "llm@simulator.llm=anthropic_claude"],
            "all_at_once/sampled, one_at_a_time/sampled",
        ),
        (
            ["simulator=vllm_all_at_once_prompt_logprobs", "llm@simulator.llm=ollama"],
            "all_at_once/sampled, one_at_a_time/sampled",
        ),
        (["~simulator.llm", "+simulator.llm={_target_:bench.llm.fake.FakeLLM,supports:[]}"], "none"),
        (  # the full-vocabulary estimator: only in-process models can compute it
            ["simulator=vllm_all_at_once_prompt_logprobs", "simulator.estimator=prompt_logprobs_exact"],
            "all_at_once/prompt_logprobs, all_at_once/generated_logprobs, all_at_once/sampled, "
            "one_at_a_time/logprobs, one_at_a_time/sampled",
        ),
    ],
)
def test_unservable_estimators_are_refused_at_config_time(overrides: list[str], offers: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose(["explainer=token_list", *overrides]))
    message = str(info.value)
    assert message.startswith("config error at 'simulator.estimator': ") and "\n" not in message
    assert message.endswith(f"estimators it can serve: {offers}"), message


def test_every_estimator_is_served_by_local_and_vllm_backends() -> None:
    for option in ("smollm2_all_at_once", "vllm_all_at_once_prompt_logprobs"):
        for estimator in ("prompt_logprobs", "generated_logprobs", "sampled"):
            validate(compose([f"simulator={option}", f"simulator.estimator={estimator}"]))
    # the offline default keeps today's numbers: it reads the whole vocabulary, recorded as such
    _, parts = validate(compose([]))
    assert parts.simulator.recorded_estimator == "all_at_once/prompt_logprobs_exact"
    assert parts.simulator.build_request("x", ["a"]).top_k is None  # type: ignore[attr-defined]
    for option in ("smollm2_one_at_a_time", "vllm_one_at_a_time"):
        for estimator in ("logprobs", "sampled"):
            validate(compose([f"simulator={option}", f"simulator.estimator={estimator}"]))
    assert estimators_for(["generate"]) == ["all_at_once/sampled", "one_at_a_time/sampled"]
    with pytest.raises(ConfigError, match="explainer.llm"):
        validate(compose(["~explainer.llm", "+explainer.llm={_target_:bench.llm.fake.FakeLLM,supports:[]}"]))


# ---------------------------------------------------------------------------------------------------
# Dry run and missing keys
# ---------------------------------------------------------------------------------------------------
def test_dry_run_counts_calls_per_stage_without_keys_or_models(capsys, monkeypatch, tmp_path) -> None:
    from bench.cli import main
    from bench.dryrun import estimate_run

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    args = [
        "explainer=openai",
        "simulator=openai_one_at_a_time",
        "units.count=3",
        "units.examples_per_split=1",
        "dataset.excerpt_len=8",
        "scorer=[correlation]",
        f"cache_dir={tmp_path}",
    ]
    assert main(["run", "--dry-run", *args]) == 0
    printed = capsys.readouterr().out
    assert "one_at_a_time/logprobs" in printed and "total" in printed and "$" in printed
    stages = {s.stage: s for s in estimate_run(*validate(compose(args)))}
    assert stages["explain"].calls == 3
    assert stages["simulate"].calls == stages["calibrate"].calls == stages["control"].calls == 3 * 2 * 8
    assert stages["simulate"].output_tokens == 3 * 2 * 8  # one token per answer
    assert stages["simulate"].dollars > 0 and stages["explain"].backend == "openai/gpt-4o-mini"
    aao = {s.stage: s for s in estimate_run(*validate(compose([*args, "simulator=anthropic_all_at_once_sampled"])))}
    assert aao["simulate"].calls == 3 * 2 * 3  # units x excerpts x samples
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()


def test_missing_api_key_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env["NEURONBENCH_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "explainer=openai"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "explainer.llm" in lines[0] and "OPENAI_API_KEY" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()
