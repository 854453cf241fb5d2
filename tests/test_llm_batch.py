"""Batch mode (``batch: true``) through the official SDKs against the loopback batch endpoints
(tests/fake_servers.py): the OpenAI Batch API and Anthropic Message Batches -- round trips, resuming a
batch after a crash without submitting it again, per-request errors, cache hits, timeouts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_servers import FakeLLMServer

from bench.failures import is_transient
from bench.llm.anthropic_backend import AnthropicModel
from bench.llm.batch import BatchPending
from bench.llm.errors import BackendError
from bench.llm.openai_backend import OpenAIChatModel
from bench.protocols import ChatMessage, GenerationRequest

KEY = "sk-batch-test-DO-NOT-LEAK-0123456789"
BATCH_CREATE = {"openai": "/v1/batches", "anthropic": "/v1/messages/batches"}


class Crash(Exception):
    """Stands in for a process dying between submitting a batch and collecting it."""


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def make(provider: str, server: FakeLLMServer, cache: Path, **kw: Any) -> Any:
    """A batch-mode backend whose poll waits and backoffs are recorded, not slept."""
    fields: dict[str, Any] = {"cache_dir": str(cache), "batch": True, "batch_poll_s": 0.01, **kw}
    if provider == "openai":
        client: Any = OpenAIChatModel(model="gpt-4o-mini", base_url=server.base_url, **fields)
    else:
        client = AnthropicModel(model="claude-haiku-4-5", base_url=server.root, **fields)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    client.engine.sleep = fake_sleep
    client.engine.slept = slept  # type: ignore[attr-defined]
    return client


def req(text: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("system", "Be terse."), ChatMessage("user", text)), **kw)


def state_files(cache: Path) -> list[Path]:
    return sorted((cache / "batches").glob("*.json")) if (cache / "batches").exists() else []


def model_calls(server: FakeLLMServer) -> int:
    """Direct (non-batch) model requests the server answered."""
    return sum(1 for e in server.log if e["path"].endswith(("/chat/completions", "/messages")))


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------
def test_openai_batch_round_trip(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make("openai", server, tmp_path / "c")
    requests = [req(f"REPLY: answer {i}", top_logprobs=3, max_tokens=12) for i in range(3)]
    gens = client.generate(requests)
    assert [g.text for g in gens] == ["answer 0", "answer 1", "answer 2"]
    assert gens[0].logprobs is not None and gens[0].logprobs[0].token == "answer"
    assert len(gens[0].logprobs[0].top) == 3
    # wire: one upload, one batch, polls, one download -- and no direct model call
    assert server.count("/v1/files", "POST") == 1 and server.count("/v1/batches", "POST") == 1
    assert model_calls(server) == 0
    upload = next(iter(server.files.values()))
    assert upload["purpose"] == "batch"
    lines = [json.loads(line) for line in upload["data"].decode().splitlines()]
    jobs = [client._chat_plan(r)[0] for r in requests]
    assert [line["custom_id"] for line in lines] == [job.key for job in jobs]
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
    assert lines[0]["body"] == jobs[0].request and lines[0]["body"]["top_logprobs"] == 3
    create = next(e["body"] for e in server.log if e["path"] == "/v1/batches")
    assert create["endpoint"] == "/v1/chat/completions" and create["completion_window"] == "24h"
    assert server.log[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    # usage: one call per request at half the list price
    stats = client.stats
    assert stats.batches == 1 and stats.calls == 3 and stats.failures == 0
    assert all(g.usage.calls == 1 for g in gens)
    fresh = stats.input_tokens - stats.cached_input_tokens
    full = (fresh * 0.15 + stats.cached_input_tokens * 0.075 + stats.output_tokens * 0.60) / 1e6
    assert stats.dollars == pytest.approx(full * 0.5)
    assert sum(g.usage.dollars for g in gens) == pytest.approx(stats.dollars)
    assert state_files(tmp_path / "c") == []  # collected: nothing left to resume
    # the answers are in the ordinary response cache: a later run, batch or not, makes no call
    before = len(server.log)
    plain = OpenAIChatModel(model="gpt-4o-mini", base_url=server.base_url, cache_dir=str(tmp_path / "c"))
    again = plain.generate(requests)
    assert [g.text for g in again] == [g.text for g in gens] and len(server.log) == before
    assert plain.stats.cache_hits == 3 and plain.stats.calls == 0
    assert client.estimate(requests).calls == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_one_call_is_split_into_jobs_at_the_providers_byte_limit(
    provider: str, server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from bench.llm.batch.state import BatchMode

    client = make(provider, server, tmp_path / "c")
    requests = [req(f"REPLY: answer {i}", max_tokens=12) for i in range(5)]
    mode = client._batch_mode()
    one = max(mode.api.item_bytes(job.key, job.request) for job in map(client._request_job, requests))
    small = BatchMode(dataclasses.replace(mode.api, max_bytes=2 * one + 1), mode.poll_s, mode.timeout_s)
    monkeypatch.setattr(type(client), "_batch_mode", lambda self: small)
    assert [g.text for g in client.generate(requests)] == [f"answer {i}" for i in range(5)]
    assert client.stats.batches == 3  # 2 + 2 + 1 requests: no job over the byte limit
    assert server.count(BATCH_CREATE[provider], "POST") == 3 and model_calls(server) == 0


def test_anthropic_batch_round_trip(server: FakeLLMServer, tmp_path: Path) -> None:
    server.responder = lambda body: " the word 'cat'"
    client = make("anthropic", server, tmp_path / "c")
    requests = [req(f"Explain {i}", assistant_prefix="it finds ", temperature=0.5, stop=("\n",)) for i in range(2)]
    gens = client.generate(requests)
    assert [g.text for g in gens] == ["the word 'cat'"] * 2  # the prefill's trailing space cut from the reply
    assert server.count("/v1/messages/batches", "POST") == 1 and model_calls(server) == 0
    create = next(e["body"] for e in server.log if e["path"] == "/v1/messages/batches")
    keys = [client._plan(r)[0].key for r in requests]
    assert [r["custom_id"] for r in create["requests"]] == keys
    params = create["requests"][0]["params"]
    assert params["temperature"] == 0.5 and params["messages"][-1] == {"role": "assistant", "content": "it finds"}
    assert params["system"][0]["cache_control"] == {"type": "ephemeral"} and params["max_tokens"] == 60
    stats = client.stats
    assert stats.batches == 1 and stats.calls == 2 and stats.output_tokens > 0
    fresh = stats.input_tokens - stats.cached_input_tokens - stats.cache_write_tokens
    full = (
        fresh * 1.00 + stats.cached_input_tokens * 0.10 + stats.cache_write_tokens * 1.25 + stats.output_tokens * 5.0
    ) / 1e6
    assert stats.dollars == pytest.approx(full * 0.5)
    assert state_files(tmp_path / "c") == []
    again = make("anthropic", server, tmp_path / "c").generate(requests)
    assert [g.text for g in again] == [g.text for g in gens]
    assert server.count("/v1/messages/batches", "POST") == 1


# ---------------------------------------------------------------------------------------------------
# Resuming across a restart
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_restarted_process_collects_the_persisted_batch_instead_of_resubmitting(
    provider: str, server: FakeLLMServer, tmp_path: Path
) -> None:
    server.batch_polls = 3
    cache = tmp_path / "c"
    requests = [req(f"REPLY: resumed {i}") for i in range(4)]

    def crash(batch_id: str, status: str) -> None:
        raise Crash(f"process died while {batch_id} was {status}")

    first = make(provider, server, cache)
    first.engine.batch_hook = crash
    with pytest.raises(Crash):
        first.generate(requests)
    [saved] = state_files(cache)
    state = json.loads(saved.read_text())
    assert state["batch_id"] in server.batches and len(state["custom_ids"]) == 4
    assert server.count(BATCH_CREATE[provider], "POST") == 1
    first.close()

    second = make(provider, server, cache)  # a new process: same config, same requests
    polls: list[str] = []
    second.engine.batch_hook = lambda batch_id, status: polls.append(batch_id)
    gens = second.generate(requests)
    assert [g.text for g in gens] == [f"resumed {i}" for i in range(4)]
    assert server.count(BATCH_CREATE[provider], "POST") == 1  # the server saw ONE batch creation
    assert set(polls) == {state["batch_id"]}
    assert second.stats.batches == 0 and second.stats.calls == 4  # the tokens are accounted where collected
    assert state_files(cache) == [] and model_calls(server) == 0


def test_timeout_stops_with_a_user_error_and_a_rerun_collects(server: FakeLLMServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    requests = [req("REPLY: later")]
    with pytest.raises(BatchPending, match="re-run the same command later"):
        make("openai", server, cache, batch_timeout_s=0).generate(requests)  # 0: submit, save the id, stop
    assert len(state_files(cache)) == 1
    [gen] = make("openai", server, cache).generate(requests)
    assert gen.text == "later" and server.count("/v1/batches", "POST") == 1 and state_files(cache) == []


def test_a_batch_the_api_no_longer_knows_is_submitted_again(server: FakeLLMServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with pytest.raises(BatchPending):
        make("anthropic", server, cache, batch_timeout_s=0).generate([req("REPLY: again")])
    server.batches.clear()  # e.g. another account's key: retrieve answers 404
    [gen] = make("anthropic", server, cache).generate([req("REPLY: again")])
    assert gen.text == "again" and server.count("/v1/messages/batches", "POST") == 2
    assert state_files(cache) == []


def test_transient_failures_of_batch_calls_are_retried(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.extend([{"status": 500}, None, {"status": 429, "retry_after": "0"}, None, {"disconnect": True}])
    client = make("openai", server, tmp_path / "c", max_retries=3)
    [gen] = client.generate([req("REPLY: sturdy")])
    assert gen.text == "sturdy" and len(server.batches) == 1  # a refused create made no batch
    assert client.stats.retries == 3 and client.stats.failures == 0


# ---------------------------------------------------------------------------------------------------
# Errors, per request
# ---------------------------------------------------------------------------------------------------
def test_openai_failed_and_expired_requests_are_errors_not_empty_text(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make("openai", server, tmp_path / "c")
    ok, refused, expired = req("REPLY: fine"), req("REPLY: greedy", top_logprobs=25), req("REPLY: slow")
    slow_key = client._chat_plan(expired)[0].key
    server.batch_fault_fn = lambda cid, body: {"expired": True} if cid == slow_key else None
    plans = [client._chat_plan(r)[0] for r in (ok, refused, expired)]
    outcomes = client.engine.run(plans, batch=client._batch_mode())
    assert outcomes[0].error is None and outcomes[0].value["result"]["text"] == "fine"
    assert isinstance(outcomes[1].error, BackendError) and outcomes[1].error.status == 400
    assert "HTTP 400" in str(outcomes[1].error) and "top_logprobs" in str(outcomes[1].error)
    assert "batch_expired" in str(outcomes[2].error) and outcomes[2].value is None
    # an expired request is an outage (a re-run retries the unit), a refused one is the request's fault
    assert is_transient(outcomes[2].error) and not is_transient(outcomes[1].error)
    assert client.stats.failures == 2 and client.stats.calls == 3
    # generate() raises (the pipeline records the unit as failed), never returns empty text
    with pytest.raises(BackendError, match="top_logprobs"):
        client.generate([ok, refused])
    # failures are not cached: the next call submits only them, the good answer comes from the cache
    server.batch_fault_fn = None
    [gen] = client.generate([expired])
    assert gen.text == "slow"
    assert server.count("/v1/batches", "POST") == 3 and len(server.batches["batch_000003"]["requests"]) == 1


def test_anthropic_errored_and_expired_requests_are_errors(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make("anthropic", server, tmp_path / "c")
    hot, gone = req("REPLY: x", temperature=1.5), req("REPLY: y")
    gone_key = client._plan(gone)[0].key
    server.batch_fault_fn = lambda cid, body: {"expired": True} if cid == gone_key else None
    outcomes = client.engine.run(
        [client._plan(r)[0] for r in (req("REPLY: ok"), hot, gone)], batch=client._batch_mode()
    )
    assert outcomes[0].value["result"]["text"] == "ok"
    assert "temperature" in str(outcomes[1].error) and "invalid_request_error" in str(outcomes[1].error)
    assert "expired" in str(outcomes[2].error)
    assert is_transient(outcomes[2].error) and not is_transient(outcomes[1].error)
    with pytest.raises(BackendError, match="temperature"):
        client.generate([hot])


def test_a_failed_submission_fails_every_request_of_it(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRONG_KEY_VAR", "sk-wrong")
    client = make("anthropic", server, tmp_path / "c", api_key_env="WRONG_KEY_VAR")
    plans = [client._plan(r)[0] for r in (req("REPLY: a"), req("REPLY: b"))]
    outcomes = client.engine.run(plans, batch=client._batch_mode())
    assert all("HTTP 401" in str(o.error) for o in outcomes)
    with pytest.raises(BackendError, match="HTTP 401"):
        client.generate([req("REPLY: a")])
    assert state_files(tmp_path / "c") == [] and client.stats.batches == 0 and client.stats.failures == 3


# ---------------------------------------------------------------------------------------------------
# Cache hits, config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cache_hits_make_no_batch(provider: str, server: FakeLLMServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    requests = [req("REPLY: one"), req("REPLY: two")]
    make(provider, server, cache, batch=False).generate(requests)  # direct calls fill the cache
    before = len(server.log)
    client = make(provider, server, cache)
    gens = client.generate(requests)
    assert [g.text for g in gens] == ["one", "two"] and len(server.log) == before
    assert client.stats.batches == 0 and client.stats.cache_hits == 2
    assert all(g.usage.calls == 0 for g in gens)
    # a mix: only the miss goes up, in a batch of one
    client.generate([*requests, req("REPLY: three")])
    assert server.count(BATCH_CREATE[provider], "POST") == 1
    assert len(next(iter(server.batches.values()))["requests"]) == 1


def test_identical_requests_go_up_once(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make("openai", server, tmp_path / "c")
    a, b = client.generate([req("REPLY: same"), req("REPLY: same")])
    assert a.text == b.text == "same" and a.usage.calls == 1 and b.usage.calls == 0
    assert len(server.batches["batch_000001"]["requests"]) == 1


def test_batch_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="batch: needs cache"):
        OpenAIChatModel(batch=True, cache=False)
    with pytest.raises(ValueError, match="batch_discount"):
        AnthropicModel(batch_discount=0)
    with pytest.raises(ValueError, match="batch_poll_s"):
        OpenAIChatModel(batch_poll_s=0)
    with pytest.raises(ValueError, match="batch_timeout_s"):
        AnthropicModel(batch_timeout_s=-1)


def test_dry_run_estimates_batch_prices(tmp_path: Path) -> None:
    requests = [req("x" * 400, max_tokens=100)]
    plain = OpenAIChatModel(cache_dir=str(tmp_path))
    batched = OpenAIChatModel(cache_dir=str(tmp_path), batch=True)
    assert batched.estimate(requests).dollars == pytest.approx(plain.estimate(requests).dollars * 0.5)
    assert not math.isnan(batched.estimate(requests).dollars)
