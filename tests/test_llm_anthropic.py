"""AnthropicModel through the official ``anthropic`` SDK against a loopback server (tests/fake_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_servers import FakeLLMServer

from bench.errors import UserError
from bench.llm.anthropic_backend import AnthropicModel
from bench.llm.errors import BackendError
from bench.protocols import Capability, ChatMessage, GenerationRequest, LLMClient, SlotRequest

KEY = "sk-ant-test-DO-NOT-LEAK-9876543210"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY, models=("claude-haiku-4-5",)) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def make(server: FakeLLMServer, tmp_path: Path, **kw: Any) -> AnthropicModel:
    fields: dict[str, Any] = {"base_url": server.root, "cache_dir": str(tmp_path / "c")}
    fields.update(kw)
    client = AnthropicModel(**fields)

    async def no_sleep(seconds: float) -> None:
        return None

    client.engine.sleep = no_sleep
    return client


def few_shot(final: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=(
            ChatMessage("system", "You explain neurons."),
            ChatMessage("user", "Example excerpt"),
            ChatMessage("assistant", "Example explanation"),
            ChatMessage("user", final),
        ),
        **kw,
    )


def test_generate_with_prefill_cache_control_and_temperature(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    assert isinstance(client, LLMClient) and client.capabilities == {Capability.GENERATE}
    server.responder = lambda body: " the word 'cat'"
    [gen] = client.generate(
        [few_shot("Explain", assistant_prefix="the main thing this neuron does is find", temperature=0.7)]
    )
    assert gen.text == " the word 'cat'"
    body = server.log[-1]["body"]
    assert body["temperature"] == 0.7 and body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 60
    assert body["system"] == [{"type": "text", "text": "You explain neurons.", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Example explanation", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"][-1] == {"role": "assistant", "content": "the main thing this neuron does is find"}
    assert server.log[-1]["headers"].get("authorization") == f"Bearer {KEY}"
    assert server.log[-1]["headers"].get("x-stainless-retry-count") == "0"


def test_prompt_cache_reads_are_reported(server: FakeLLMServer, tmp_path: Path) -> None:
    server.cache_min_tokens = 0  # this short prompt would be under every model's caching minimum
    client = make(server, tmp_path)
    first, second = client.generate([few_shot("REPLY: a"), few_shot("REPLY: b")])
    assert first.text == "a" and second.text == "b"
    reads = first.usage.cached_input_tokens + second.usage.cached_input_tokens
    stats = client.stats
    assert reads > 0 and stats.cache_write_tokens > 0 and stats.cached_input_tokens == reads
    # input_tokens is the whole prompt: the same for both calls whether it was read from the cache or not
    assert first.usage.input_tokens == second.usage.input_tokens
    write, fresh = stats.cache_write_tokens, stats.input_tokens - reads - stats.cache_write_tokens
    expected = fresh * 1.00 + reads * 0.10 + write * 1.25 + stats.output_tokens * 5.00
    assert stats.dollars == pytest.approx(expected / 1e6)


@pytest.mark.parametrize("model,minimum", [("claude-haiku-4-5", 4096), ("claude-sonnet-4-5", 1024)])
def test_prefixes_under_the_models_caching_minimum_are_not_cached(
    server: FakeLLMServer, tmp_path: Path, model: str, minimum: int
) -> None:
    """Haiku 4.5 caches prefixes of 4,096+ tokens, Sonnet 1,024+: a 2,000-token prefix only on Sonnet."""
    from bench.protocols import ChatMessage

    server.models = (model,)
    client = make(server, tmp_path, model=model)
    system = ChatMessage("system", "rules " * 2000)
    reqs = [
        GenerationRequest(
            messages=(
                system,
                ChatMessage("user", "ex"),
                ChatMessage("assistant", "ans"),
                ChatMessage("user", f"REPLY: {i}"),
            )
        )
        for i in range(2)
    ]
    client.generate(reqs)
    stats = client.stats
    cached = stats.cached_input_tokens + stats.cache_write_tokens
    assert (cached > 0) == (minimum < 2000), (model, stats)


def test_trailing_whitespace_of_a_prefill_is_moved_to_the_reply(server: FakeLLMServer, tmp_path: Path) -> None:
    server.responder = lambda body: "\n3"
    [gen] = make(server, tmp_path).generate([few_shot("go", assistant_prefix="Activation:\n")])
    assert server.log[-1]["body"]["messages"][-1]["content"] == "Activation:"
    assert gen.text == "3"


def test_no_caching_markers_when_disabled(server: FakeLLMServer, tmp_path: Path) -> None:
    make(server, tmp_path, prompt_caching=False).generate([few_shot("REPLY: x")])
    body = server.log[-1]["body"]
    assert body["system"] == [{"type": "text", "text": "You explain neurons."}]
    assert all(isinstance(m["content"], str) for m in body["messages"])


def test_consecutive_roles_are_joined_and_stops_filtered(server: FakeLLMServer, tmp_path: Path) -> None:
    request = GenerationRequest(
        messages=(ChatMessage("user", "part one"), ChatMessage("user", "REPLY: alpha\nbeta")), stop=("\n", "STOP")
    )
    [gen] = make(server, tmp_path, prompt_caching=False).generate([request])
    body = server.log[-1]["body"]
    assert body["messages"] == [{"role": "user", "content": "part one\n\nREPLY: alpha\nbeta"}]
    assert body["stop_sequences"] == ["STOP"]  # whitespace-only stops are applied client-side
    assert gen.text == "alpha"


def test_rerun_makes_no_http_call_and_samples_stay_distinct(server: FakeLLMServer, tmp_path: Path) -> None:
    requests = [few_shot("REPLY: s", sample_index=i) for i in range(3)]
    make(server, tmp_path).generate(requests)
    assert server.count() == 3
    again = make(server, tmp_path)
    out = again.generate(requests)
    assert server.count() == 3 and again.stats.cache_hits == 3 and all(g.usage.calls == 0 for g in out)


@pytest.mark.parametrize(
    "fault", [{"status": 529}, {"status": 500}, {"status": 429, "retry_after": "4"}, {"disconnect": True}]
)
def test_transient_errors_are_retried(server: FakeLLMServer, tmp_path: Path, fault: dict[str, Any]) -> None:
    server.faults.append(fault)
    client = make(server, tmp_path)
    assert client.generate([few_shot("REPLY: ok")])[0].text == "ok"
    assert client.stats.retries == 1 and server.count() == 2
    if "retry_after" in fault:
        assert client.stats.retry_waits_s == (4.0,)


def test_unknown_model_is_a_clear_error(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, model="claude-nope")
    with pytest.raises(BackendError) as info:
        client.generate([few_shot("x")])
    assert "HTTP 404: The model `claude-nope` does not exist [not_found_error]" in str(info.value)
    assert server.count() == 1 and client.stats.retries == 0


def test_server_validation_message_is_passed_through(server: FakeLLMServer, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="temperature: range: 0..1"):
        make(server, tmp_path).generate([few_shot("x", temperature=1.5)])


def test_logprobs_and_slots_are_refused_before_any_call(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    with pytest.raises(ValueError, match="cannot return logprobs"):
        client.generate([few_shot("x", top_logprobs=5)])
    with pytest.raises(NotImplementedError, match="no prompt logprobs"):
        client.slot_distributions([SlotRequest(messages=(ChatMessage("assistant", "a"),), slots=(0,))])
    assert server.count() == 0


def test_missing_key_is_a_one_line_user_error(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    client = make(server, tmp_path)
    with pytest.raises(UserError) as info:
        client.check_ready()
    assert "ANTHROPIC_API_KEY" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        client.generate([few_shot("x")])
    assert server.count() == 0


def test_key_never_in_repr_or_cache_files(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path)
    client.generate([few_shot("REPLY: a"), few_shot("REPLY: b", sample_index=1)])
    for text in (repr(client), str(client.stats), repr(client.engine)):
        assert KEY not in text
    client.close()
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert files and all(KEY.encode() not in p.read_bytes() for p in files)


def test_estimate_is_offline(server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    client = make(server, tmp_path)
    calls, tokens, dollars = client.estimate([few_shot("x" * 100, max_tokens=40)] * 3)
    assert calls == 3 and tokens > 0 and 0 < dollars < 0.01 and server.count() == 0


def test_slow_server_times_out_and_is_retried(server: FakeLLMServer, tmp_path: Path) -> None:
    server.faults.append({"delay": 1.0})
    client = make(server, tmp_path, timeout_s=0.2)
    assert client.generate([few_shot("REPLY: late")])[0].text == "late"
    assert client.stats.retries == 1 and client.stats.calls == 2
