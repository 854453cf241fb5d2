"""OpenAIChatModel through the official ``openai`` SDK against a loopback server (tests/fake_servers.py)."""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_servers import FakeLLMServer

from bench.errors import UserError
from bench.llm.errors import BackendError
from bench.llm.openai_backend import FOLD_INSTRUCTION, OpenAIChatModel, render_chat
from bench.protocols import Capability, ChatMessage, GenerationRequest, LLMClient, SlotRequest

KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def make(server: FakeLLMServer, tmp_path: Path, **kw: Any) -> OpenAIChatModel:
    """A backend on the loopback server whose backoff waits are recorded, not slept."""
    fields: dict[str, Any] = {"model": "gpt-4o-mini", "base_url": server.base_url, "cache_dir": str(tmp_path / "c")}
    fields.update(kw)
    client = OpenAIChatModel(**fields)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    client.engine.sleep = fake_sleep
    client.engine.slept = slept  # type: ignore[attr-defined]
    return client


def req(text: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("system", "You are terse."), ChatMessage("user", text)), **kw)


# ---------------------------------------------------------------------------------------------------
# Generation, logprobs, usage
# ---------------------------------------------------------------------------------------------------
def test_generate_text_logprobs_and_usage(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    assert isinstance(client, LLMClient)
    assert client.capabilities == {Capability.GENERATE, Capability.GENERATED_LOGPROBS}
    [gen] = client.generate([req("REPLY: 7 and 10", top_logprobs=5, max_tokens=20)])
    assert gen.text == "7 and 10"
    assert gen.logprobs is not None and [t.token for t in gen.logprobs] == ["7", " and", " ", "1", "0"]
    first = gen.logprobs[0]
    assert first.logprob == pytest.approx(math.log(0.7))
    assert len(first.top) == 5 and first.top["7"] == pytest.approx(math.log(0.7)) and "10" not in first.top
    assert gen.usage.calls == 1 and gen.usage.output_tokens == 5 and gen.usage.input_tokens > 0
    body = server.log[-1]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["max_tokens"] == 20 and "max_completion_tokens" not in body  # compatible server
    assert server.log[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert server.log[-1]["headers"].get("x-stainless-retry-count") == "0"


def test_no_logprobs_unless_asked(server: FakeLLMServer, tmp_path: Path) -> None:
    [gen] = make(server, tmp_path).generate([req("REPLY: hi")])
    assert gen.logprobs is None and "logprobs" not in server.log[-1]["body"]


def test_official_api_uses_max_completion_tokens(tmp_path: Path) -> None:
    client = OpenAIChatModel(model="gpt-4o-mini", cache_dir=str(tmp_path))
    job, _ = client._chat_plan(req("x", max_tokens=7))
    assert job.request["max_completion_tokens"] == 7 and "max_tokens" not in job.request
    assert client.resolved_base_url == "https://api.openai.com/v1" and client.name == "openai/gpt-4o-mini"
    assert client.estimate([req("x")]).calls == 1  # no network, no key needed for a dry run


def test_cached_prompt_tokens_are_reported(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)  # a prompt above OpenAI's 1,024-token caching minimum
    shots = (ChatMessage("system", "rules " * 1100), ChatMessage("user", "example"), ChatMessage("assistant", "answer"))
    a, b = client.generate(
        [GenerationRequest(messages=(*shots, ChatMessage("user", f"REPLY: unit {i}"))) for i in range(2)]
    )
    assert {a.usage.cached_input_tokens, b.usage.cached_input_tokens} != {0}
    stats = client.stats
    assert stats.cached_input_tokens == a.usage.cached_input_tokens + b.usage.cached_input_tokens
    assert stats.input_tokens == a.usage.input_tokens + b.usage.input_tokens
    expected = (stats.input_tokens - stats.cached_input_tokens) * 0.15 + stats.cached_input_tokens * 0.075
    assert stats.dollars == pytest.approx((expected + stats.output_tokens * 0.60) / 1e6)


def test_samples_get_their_own_seed_and_stops_apply(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, seed=3)
    stops = ("\n", "STOP", "x1", "x2", "and")
    gens = client.generate([req("REPLY: one and two", sample_index=i, stop=stops, top_logprobs=2) for i in range(2)])
    seeds = sorted(entry["body"]["seed"] for entry in server.log)
    assert seeds == [3 * 1_000_003, 3 * 1_000_003 + 1]
    assert all(len(entry["body"]["stop"]) == 4 for entry in server.log)  # the API takes 4 ...
    assert [g.text for g in gens] == ["one ", "one "]  # ... all are applied client-side
    assert [t.token for t in gens[0].logprobs or []] == ["one", " and"]  # tokens that start before the cut


# ---------------------------------------------------------------------------------------------------
# assistant_prefix
# ---------------------------------------------------------------------------------------------------
def test_prefix_folded_into_user_message_and_stripped(server: FakeLLMServer, tmp_path: Path) -> None:
    server.responder = lambda body: "Activations:\n a\t3"
    client = make(server, tmp_path)
    [gen] = client.generate([req("go", assistant_prefix="Activations:\n", top_logprobs=1)])
    messages = server.log[-1]["body"]["messages"]
    assert messages[-1] == {"role": "user", "content": "go" + FOLD_INSTRUCTION + "Activations:\n"}
    assert gen.text == " a\t3" and "".join(t.token for t in gen.logprobs or []) == " a\t3"


def test_prefix_as_vllm_continue_final_message(server: FakeLLMServer, tmp_path: Path) -> None:
    server.responder = lambda body: " continued"
    client = make(server, tmp_path, prefill="continue_final_message")
    [gen] = client.generate([req("go", assistant_prefix="Start:")])
    body = server.log[-1]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": "Start:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert gen.text == " continued"


# ---------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------
def test_k_samples_are_k_entries_and_a_rerun_makes_no_http_call(server: FakeLLMServer, tmp_path: Path) -> None:
    requests = [req("REPLY: sample", temperature=1.0, sample_index=i) for i in range(3)] + [req("REPLY: other")]
    first = make(server, tmp_path)
    out1 = first.generate(requests)
    assert server.count() == 4 and len(first.engine.cache) == 4
    # A new instance (as in a new process) with the same config: everything comes from disk.
    second = make(server, tmp_path)
    out2 = second.generate(requests)
    assert server.count() == 4
    assert [g.text for g in out2] == [g.text for g in out1]
    assert all(g.usage.calls == 0 and g.usage.input_tokens == 0 for g in out2)
    assert second.stats.cache_hits == 4 and second.stats.calls == 0
    assert second.estimate(requests).calls == 0


def test_cache_off_always_calls(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, cache=False)
    client.generate([req("REPLY: a")])
    client.generate([req("REPLY: a")])
    assert server.count() == 2


def test_a_failure_keeps_the_rest_of_the_batch_cached(server: FakeLLMServer, tmp_path: Path) -> None:
    server.fault_fn = lambda n, path, body: (
        {"status": 400, "message": "bad request"} if "poison" in str(body["messages"]) else None
    )
    client = make(server, tmp_path)
    batch = [req("REPLY: a"), req("poison"), req("REPLY: b")]
    with pytest.raises(BackendError, match="HTTP 400: bad request"):
        client.generate(batch)
    server.fault_fn = None
    out = client.generate(batch)
    assert server.count() == 4 and [g.text for g in out][0::2] == ["a", "b"]


# ---------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------
def test_429_retry_after_is_honoured_and_counted(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.append({"status": 429, "retry_after": "7"})
    client = make(server, tmp_path)
    [gen] = client.generate([req("REPLY: ok")])
    assert gen.text == "ok" and gen.usage.calls == 2
    assert client.stats.retries == 1 and client.stats.retry_waits_s == (7.0,) and client.stats.calls == 2
    assert 7.0 in client.engine.slept  # type: ignore[attr-defined]


def test_retry_after_ms(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.append({"status": 429, "retry_after_ms": "250"})
    client = make(server, tmp_path)
    client.generate([req("REPLY: ok")])
    assert client.stats.retry_waits_s == (0.25,)


def test_5xx_and_broken_connections_are_retried_with_backoff(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.extend([{"status": 500}, {"status": 503}, {"truncate": True}, {"disconnect": True}])
    client = make(server, tmp_path, backoff_initial_s=1.0, backoff_max_s=3.0)
    [gen] = client.generate([req("REPLY: survived")])
    assert gen.text == "survived" and server.count() == 5
    waits = client.stats.retry_waits_s
    assert client.stats.retries == 4 and len(waits) == 4
    bases = [1.0, 2.0, 3.0, 3.0]  # exponential, capped; equal jitter: base/2 <= wait <= base
    assert all(b / 2 <= w <= b for w, b in zip(waits, bases, strict=True))


@pytest.mark.parametrize("status,message", [(400, "Invalid 'messages'"), (401, "bad key"), (404, "no such model")])
def test_client_errors_are_not_retried(server: FakeLLMServer, tmp_path: Path, status: int, message: str) -> None:
    server.faults.append({"status": status, "message": message})
    client = make(server, tmp_path)
    with pytest.raises(BackendError) as info:
        client.generate([req("REPLY: x")])
    assert f"HTTP {status}: {message}" in str(info.value) and info.value.status == status
    assert server.count() == 1 and client.stats.retries == 0 and client.stats.failures == 1


def test_real_401_from_a_wrong_key(server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000000")
    with pytest.raises(BackendError, match="HTTP 401: Incorrect API key provided"):
        make(server, tmp_path).generate([req("x")])
    assert server.count() == 1


def test_malformed_json_is_a_clear_error_not_a_retry(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.append({"malformed": True})
    client = make(server, tmp_path)
    with pytest.raises(BackendError, match="malformed JSON"):
        client.generate([req("REPLY: x")])
    assert server.count() == 1


def test_slow_server_times_out_then_gives_up(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.extend([{"delay": 1.0}] * 3)
    client = make(server, tmp_path, timeout_s=0.2, max_retries=2)
    with pytest.raises(BackendError, match="timed out after 0.2 s .gave up after 3 attempts"):
        client.generate([req("REPLY: x")])
    assert client.stats.calls == 3 and client.stats.retries == 2


def test_timeout_then_success(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.append({"delay": 1.0})
    client = make(server, tmp_path, timeout_s=0.2)
    assert client.generate([req("REPLY: late")])[0].text == "late"
    assert client.stats.retries == 1


def test_a_third_of_calls_failing_transiently_still_completes(server: FakeLLMServer, tmp_path: Path) -> None:
    kinds = [{"status": 429, "retry_after": "0"}, {"status": 500}, {"status": 529}, {"disconnect": True}]
    server.fault_fn = lambda n, path, body: kinds[(n // 3) % len(kinds)] if n % 3 == 0 else None
    client = make(server, tmp_path, concurrency=6)
    requests = [req(f"REPLY: r{i}") for i in range(30)]
    out = client.generate(requests)
    assert [g.text for g in out] == [f"r{i}" for i in range(30)]
    faulted = sum(1 for e in server.log if e["n"] % 3 == 0)
    assert faulted >= 10 and client.stats.retries == faulted and server.count() == 30 + faulted
    assert sum(g.usage.calls for g in out) == server.count()


# ---------------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------------
def test_concurrency_is_limited(tmp_path: Path) -> None:
    with FakeLLMServer(api_key=KEY, latency_s=0.05) as server:
        make(server, tmp_path, concurrency=3).generate([req(f"REPLY: {i}") for i in range(12)])
        assert server.max_active == 3


def test_token_budget_is_charged(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, tokens_per_minute=1000, requests_per_minute=100)
    client.generate([req("REPLY: a", max_tokens=100)])
    engine = client.engine
    assert engine._tpm is not None and engine._tpm._level > 100 and engine._rpm._level >= 1


# ---------------------------------------------------------------------------------------------------
# Keys, readiness, construction
# ---------------------------------------------------------------------------------------------------
def test_missing_key_is_a_one_line_user_error(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    client = make(server, tmp_path)  # construction never reads the key
    with pytest.raises(UserError) as info:
        client.check_ready()
    assert "OPENAI_API_KEY" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        client.generate([req("x")])
    assert server.count() == 0
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert client.generate([req("REPLY: now")])[0].text == "now"  # no stale state after the failure


def test_key_never_in_repr_cache_files_or_errors(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    client.check_ready()
    client.generate([req("REPLY: a", top_logprobs=2), req("REPLY: b", sample_index=1)])
    server.faults.append({"status": 400, "message": "nope"})
    with pytest.raises(BackendError) as info:
        client.generate([req("REPLY: c")])
    client.close()
    for text in (repr(client), str(client.stats), repr(client.engine), str(info.value), repr(info.value)):
        assert KEY not in text
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert files and all(KEY.encode() not in p.read_bytes() for p in files)
    assert KEY.encode() not in pickle.dumps(client)


def test_api_key_env_must_be_a_name_and_is_never_echoed() -> None:
    with pytest.raises(ValueError) as info:
        OpenAIChatModel(api_key_env="sk-proj-abcdef123456")
    assert str(info.value).startswith("api_key_env:") and "sk-proj" not in str(info.value)


@pytest.mark.parametrize(
    "fields,problem",
    [
        ({"concurrency": 0}, "concurrency:"),
        ({"concurrency": "abc"}, "concurrency:"),
        ({"timeout_s": 0}, "timeout_s:"),
        ({"max_retries": -1}, "max_retries:"),
        ({"requests_per_minute": 0}, "requests_per_minute:"),
        ({"base_url": "localhost:8000"}, "base_url:"),
        ({"prefill": "magic"}, "prefill:"),
        ({"prompt_logprobs": True}, "prompt_logprobs:"),
        ({"chat_template": "nonsense"}, "chat_template:"),
        ({"prices": {"input": 1.0}}, "prices:"),
        ({"prices": {"input": 1.0, "output": 1.0, "bogus": 2.0}}, "prices:"),
        ({"model": ""}, "model:"),
    ],
)
def test_bad_fields_name_the_field(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as info:
        OpenAIChatModel(**fields)
    assert str(info.value).startswith(problem)


def test_pickle_and_equality_ignore_the_runtime(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    client.generate([req("REPLY: a")])
    clone = pickle.loads(pickle.dumps(client))
    assert clone == client and "_engine" not in clone.__dict__
    clone.generate([req("REPLY: a")])
    assert server.count() == 1  # the clone shares the on-disk cache


# ---------------------------------------------------------------------------------------------------
# Sync and async callers
# ---------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_sync_generate_inside_a_running_loop_and_agenerate(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    assert client.generate([req("REPLY: sync")])[0].text == "sync"
    out = await asyncio.gather(client.agenerate([req("REPLY: a1")]), client.agenerate([req("REPLY: a2")]))
    assert [o[0].text for o in out] == ["a1", "a2"]


def test_generate_from_worker_threads(server: FakeLLMServer, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = make(server, tmp_path)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda i: client.generate([req(f"REPLY: t{i}")])[0].text, range(8)))
    assert texts == [f"t{i}" for i in range(8)]


# ---------------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------------
def test_estimate(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    requests = [GenerationRequest(messages=(ChatMessage("user", "x" * 400),), max_tokens=100)] * 2
    calls, tokens, dollars = client.estimate(requests)
    assert (calls, tokens) == (2, 200)
    assert dollars == pytest.approx((200 * 0.15 + 200 * 0.60) / 1e6)
    assert server.count() == 0
    local = make(server, tmp_path, model="some-local-model")  # a local server of an unlisted model: free
    assert local.estimate(requests).dollars == 0.0
    unpriced = make(server, tmp_path, model="some-local-model", base_url=None)  # the official API: unknown
    assert math.isnan(unpriced.estimate(requests).dollars)
    priced = make(server, tmp_path, model="some-local-model", prices={"input": 1.0, "output": 2.0})
    assert priced.estimate(requests).dollars == pytest.approx((200 * 1.0 + 200 * 2.0) / 1e6)


# ---------------------------------------------------------------------------------------------------
# vLLM prompt logprobs
# ---------------------------------------------------------------------------------------------------
def slot_request() -> SlotRequest:
    prefill = "Neuron 1\nActivations:\na\tunknown\nb\tunknown"
    return SlotRequest(
        messages=(
            ChatMessage("system", "Predict."),
            ChatMessage("user", "Explanation: x"),
            ChatMessage("assistant", prefill),
        ),
        slots=(prefill.index("unknown"), prefill.rindex("unknown")),
    )


def test_slot_distributions_via_vllm_completions(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, model="qwen", prompt_logprobs=True, api_key_env="OPENAI_API_KEY")
    assert Capability.PROMPT_LOGPROBS in client.capabilities
    [result] = client.slot_distributions([slot_request()])
    # The toy model after a tab: "0" .5, "1" .25, "2" .1, "5" .05 ("unknown" .1); after "\t1": "0" .4,
    # "\n" .5, "5" .1 -- so P(10) = .25 * .4 and P(1) = .25 * (1 - .4 - .1).
    for probs in result.probabilities:
        assert (
            probs["0"] == pytest.approx(0.5) and probs["2"] == pytest.approx(0.1) and probs["5"] == pytest.approx(0.05)
        )
        assert probs["10"] == pytest.approx(0.1) and probs["1"] == pytest.approx(0.125) and probs["7"] == 0.0
    assert result.meta["chained_slots"] == 2 and result.meta["method"].startswith("vllm")
    echo, chain = server.log[0]["body"], server.log[1]["body"]
    assert echo["echo"] is True and echo["prompt_logprobs"] == 20 and echo["max_tokens"] == 1
    assert echo["prompt"].startswith("<|im_start|>system\nPredict.<|im_end|>\n")
    assert echo["prompt"].endswith("<|im_start|>assistant\n" + slot_request().messages[-1].content)
    assert isinstance(chain["prompt"], list) and len(chain["prompt"]) == 2  # one batched chaining call
    assert all(p.endswith("\t1") for p in chain["prompt"])
    assert result.usage.calls == 2
    again = make(server, tmp_path, model="qwen", prompt_logprobs=True).slot_distributions([slot_request()])
    assert server.count() == 2 and again[0].probabilities == result.probabilities


def test_slot_request_top_k_is_what_the_server_is_asked_and_read(server: FakeLLMServer, tmp_path: Path) -> None:
    """SlotRequest.top_k=2 (the simulator's k): only the 2 best tokens count at each slot and chaining step,
    even though vLLM adds the prompt's own token ("unknown", rank 3) to every position."""
    from dataclasses import replace

    client = make(server, tmp_path, model="qwen", prompt_logprobs=True)
    [result] = client.slot_distributions([replace(slot_request(), top_k=2)])
    for probs in result.probabilities:  # visible: "0" .5, "1" .25; after "\t1": "\n" .5, "0" .4 ("5" unseen)
        assert probs["0"] == pytest.approx(0.5) and probs["2"] == 0.0 and probs["5"] == 0.0
        assert probs["10"] == pytest.approx(0.1) and probs["1"] == pytest.approx(0.25 * (1 - 0.4))
    echo, chain = server.log[0]["body"], server.log[1]["body"]
    assert echo["prompt_logprobs"] == 2 and echo["logprobs"] == 2 and chain["logprobs"] == 2
    assert result.meta["top_k"] == 2
    with pytest.raises(ValueError, match="--max-logprobs >= 50"):
        client.slot_distributions([replace(slot_request(), top_k=50)])


def test_a_tapered_slot_request_asks_for_k_plus_one_and_ramps_the_cut(server: FakeLLMServer, tmp_path: Path) -> None:
    """top_k=2, top_k_taper=2: the server is asked for 3 logprobs at every position and chaining step; the
    3rd sets the floor and the two visible tokens keep the weight (logprob - floor) / 2 of their mass."""
    from dataclasses import replace

    client = make(server, tmp_path, model="qwen", prompt_logprobs=True)
    [result] = client.slot_distributions([replace(slot_request(), top_k=2, top_k_taper=2.0)])
    w0, w1 = math.log(0.5 / 0.1) / 2, math.log(0.25 / 0.1) / 2  # floor: "2" / "unknown" at .1
    zero_after_one = 0.4 * math.log(0.4 / 0.1) / 2  # after "\t1": "\n" .5, "0" .4, floor "5" .1
    for probs in result.probabilities:
        assert probs["0"] == pytest.approx(0.5 * w0) and probs["2"] == 0.0 and probs["5"] == 0.0
        assert probs["10"] == pytest.approx(0.25 * w1 * zero_after_one)
        assert probs["1"] == pytest.approx(0.25 * w1 * (1 - zero_after_one))
    echo, chain = server.log[0]["body"], server.log[1]["body"]
    assert echo["prompt_logprobs"] == 3 and echo["logprobs"] == 3 and chain["logprobs"] == 3
    assert result.meta["top_k"] == 2 and result.meta["top_k_taper"] == 2.0
    with pytest.raises(ValueError, match=r"top 21 logprobs \(k=20 plus the \(k\+1\)-th.*--max-logprobs >= 21"):
        client.slot_distributions([replace(slot_request(), top_k=20, top_k_taper=0.1)])


def test_a_simulator_k_above_the_server_cap_is_a_config_error(server: FakeLLMServer, tmp_path: Path) -> None:
    from bench.simulators.all_at_once import AllAtOnceSimulator

    client = make(server, tmp_path, model="qwen", prompt_logprobs=True, slot_top_k=20)
    with pytest.raises(ValueError, match="top_logprobs: 50 exceeds simulator.llm.slot_top_k=20"):
        AllAtOnceSimulator(llm=client, top_logprobs=50)
    assert AllAtOnceSimulator(llm=client, top_logprobs=20).build_request("x", ["a"]).top_k == 20
    with pytest.raises(ValueError, match=r"top_logprobs: 20 \+ 1 \(top_k_taper > 0 reads the \(k\+1\)-th"):
        AllAtOnceSimulator(llm=client, top_logprobs=20, top_k_taper=0.1)
    request = AllAtOnceSimulator(llm=client, top_logprobs=19, top_k_taper=0.1).build_request("x", ["a"])
    assert (request.top_k, request.top_k_taper) == (19, 0.1)
    assert server.count() == 0


def test_prompts_under_the_caching_minimum_are_never_cached(server: FakeLLMServer, tmp_path: Path) -> None:
    """OpenAI caches prompts of 1,024+ tokens only: the stand-in does the same, so costs can happen."""
    client = make(server, tmp_path)
    shots = (ChatMessage("system", "rules " * 500), ChatMessage("user", "example"), ChatMessage("assistant", "answer"))
    gens = client.generate([GenerationRequest(messages=(*shots, ChatMessage("user", f"REPLY: {i}"))) for i in range(3)])
    assert all(g.usage.input_tokens < 1024 for g in gens)
    assert [g.usage.cached_input_tokens for g in gens] == [0, 0, 0] and client.stats.cached_input_tokens == 0


def test_slot_distributions_fallback_to_legacy_top_logprobs(server: FakeLLMServer, tmp_path: Path) -> None:
    from fake_servers import _Handler

    original = _Handler._vllm_position
    try:
        _Handler._vllm_position = lambda self, dist, actual, k: None  # type: ignore[assignment,method-assign]
        client = make(server, tmp_path, model="qwen", prompt_logprobs=True)
        [result] = client.slot_distributions([slot_request()])
    finally:
        _Handler._vllm_position = original  # type: ignore[method-assign]
    assert result.probabilities[0]["0"] == pytest.approx(0.5)


def test_slot_that_does_not_start_a_token_is_refused(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, model="qwen", prompt_logprobs=True)
    bad = SlotRequest(messages=(ChatMessage("user", "u"), ChatMessage("assistant", "ab unknown")), slots=(4,))
    with pytest.raises(ValueError, match="does not start a server token"):
        client.slot_distributions([bad])


def test_chat_api_refuses_slots(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    with pytest.raises(NotImplementedError, match="no prompt logprobs"):
        client.slot_distributions([slot_request()])
    assert server.count() == 0


def test_render_chat_presets_and_jinja() -> None:
    msgs = (ChatMessage("system", "s"), ChatMessage("user", "u {braces}"))
    assert render_chat("chatml", msgs) == (
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu {braces}<|im_end|>\n<|im_start|>assistant\n"
    )
    jinja = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert render_chat(jinja, msgs) == "[system]s[user]u {braces}[assistant]"
    assert render_chat("plain", msgs, add_generation_prompt=False) == "system: s\n\nuser: u {braces}\n\n"


# ---------------------------------------------------------------------------------------------------
# Config presets
# ---------------------------------------------------------------------------------------------------
def test_every_llm_preset_builds_without_network_or_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from bench.config import build_component, conf_dir

    monkeypatch.delenv("OPENAI_API_KEY")
    paths = sorted((conf_dir() / "llm").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        # As composed under a run config: the presets interpolate the run's cache_dir and seed.
        root = OmegaConf.create({"cache_dir": "/tmp/nb-cache", "seed": 5, "llm": OmegaConf.load(path)})
        client = build_component(f"llm.{path.stem}", root.llm)
        assert isinstance(client, LLMClient) and Capability.GENERATE in client.capabilities
        assert client.version == root.llm.version >= 1 and "_engine" not in client.__dict__  # the file's version
        from bench.llm.local_transformers import LocalChatModel

        # API backends keep their response cache in <cache_dir>/llm; in-process models their weights in <cache_dir>
        expected = "/tmp/nb-cache" if isinstance(client, LocalChatModel) else "/tmp/nb-cache/llm"
        assert client.cache_dir == expected and client.seed == 5


def test_close_then_reuse(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    client.generate([req("REPLY: one")])
    client.close()
    assert client.generate([req("REPLY: two")])[0].text == "two"
    assert client.generate([req("REPLY: one")])[0].usage.calls == 0  # the cache reopened too
    assert client.stats.calls == 2 and client.stats.cache_hits == 1
