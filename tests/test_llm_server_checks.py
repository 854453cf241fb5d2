"""Fail early and loudly (issue 13): each HTTP backend's server is asked once, before any model loads;
context lengths and token counts come from the server; client-side prompt rendering is checked."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from fake_servers import FakeLLMServer, chatml_render

from bench.errors import UserError
from bench.llm.anthropic_backend import AnthropicModel
from bench.llm.openai_backend import OpenAIChatModel
from bench.protocols import ChatMessage


def vllm(server: FakeLLMServer, tmp_path: Path, **kw: Any) -> OpenAIChatModel:
    fields: dict[str, Any] = {
        "model": "qwen",
        "base_url": server.base_url,
        "api_key_env": None,
        "cache_dir": str(tmp_path / "c"),
        "prompt_logprobs": True,
        "max_retries": 0,
    }
    fields.update(kw)
    return OpenAIChatModel(**fields)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_model_the_server_does_not_serve_is_one_line_naming_the_served_ones(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bench.config import check_servers
    from bench.protocols import RunParts

    with FakeLLMServer(models=("qwen", "llama")) as server:
        llm = vllm(server, tmp_path, model="gpt-4o-mini")
        with pytest.raises(UserError) as info:
            parts = RunParts(
                subject=None,  # type: ignore[arg-type]
                dataset=None,  # type: ignore[arg-type]
                explainer=SimpleNamespace(llm=None),  # type: ignore[arg-type]
                simulator=SimpleNamespace(llm=llm),  # type: ignore[arg-type]
                scorers={},
            )
            check_servers(parts)
        assert server.count("/v1/completions") == server.count("/v1/chat/completions") == 0  # no model call
    message = str(info.value)
    assert message.startswith("simulator.llm: model 'gpt-4o-mini' is not served by http://127.0.0.1:")
    assert message.endswith("it serves: qwen, llama (set model to one of them)") and "\n" not in message


def test_a_down_server_is_one_line_before_any_work(tmp_path: Path) -> None:
    llm = OpenAIChatModel(
        model="qwen", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env=None, cache_dir=str(tmp_path)
    )

    async def no_sleep(seconds: float) -> None:
        return None

    llm.engine.sleep = no_sleep
    with pytest.raises(UserError, match=r"did not answer the model list \(connection error.*start it, or fix base_url"):
        llm.check_server()


def test_the_served_model_passes_once_and_reports_its_context_length(tmp_path: Path) -> None:
    with FakeLLMServer(models=("qwen",), max_model_len=2048) as server:
        llm = vllm(server, tmp_path)
        assert llm.max_context is None  # unknown until the server is asked
        assert llm.check_server() == ["qwen"]
        assert llm.check_server() == ["qwen"] and server.count("/v1/models") == 1  # asked once
        assert llm.max_context == 2048
        assert vllm(server, tmp_path, context_length=1000).max_context == 1000  # config wins
    with FakeLLMServer() as server:  # a server without a model list: nothing to check, no error
        assert vllm(server, tmp_path, prompt_logprobs=False).check_server() is None


def test_anthropic_model_list_is_checked_too_and_aliases_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with FakeLLMServer(models=("claude-haiku-4-5-20251001",)) as server:
        llm = AnthropicModel(model="claude-nope", base_url=server.root, cache_dir=str(tmp_path))
        with pytest.raises(UserError, match="it serves: claude-haiku-4-5-20251001"):
            llm.check_server()
        # the API lists dated snapshots; the alias a preset names is served all the same
        alias = AnthropicModel(model="claude-haiku-4-5", base_url=server.root, cache_dir=str(tmp_path))
        assert alias.check_server() == ["claude-haiku-4-5-20251001"]


def test_client_rendering_is_compared_with_the_servers_once(tmp_path: Path) -> None:
    with FakeLLMServer(models=("qwen",)) as server:
        llm = vllm(server, tmp_path)
        llm.check_server()
        assert llm.check_rendering() == "equal" and server.count("/tokenize") == 4
        server.chat_render = lambda messages, gen: "<s>" + chatml_render(messages, gen)  # the server differs
        with pytest.raises(UserError, match="chat_template 'chatml' renders prompts differently from the server"):
            vllm(server, tmp_path).check_server()
        assert vllm(server, tmp_path, chat_template="plain", prompt_logprobs=False).check_server() == ["qwen"]


def test_token_counts_come_from_the_server(tmp_path: Path) -> None:
    from fake_servers import tokenize

    from bench.llm.openai_backend import render_chat

    messages = (ChatMessage("system", "s"), ChatMessage("user", "the\t10\nrain\t0\n" * 20))
    with FakeLLMServer(models=("qwen",)) as server:
        llm = vllm(server, tmp_path)
        expected = len(tokenize(render_chat("chatml", messages) + "lead"))
        assert llm.count_tokens(messages, "lead") == expected
    # no /tokenize (the official API): a conservative estimate, above the characters/4 rule of thumb
    official = OpenAIChatModel(cache_dir=str(tmp_path))
    chars = sum(len(m.content) for m in messages)
    assert official.count_tokens(messages) > chars / 4


def test_the_explainer_trims_examples_to_the_servers_context_and_records_server_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context too small for every example: examples are dropped (method.md section 4), not the unit."""
    from bench.explainers.llm_explainer import LLMExplainer
    from bench.records import ActivationRecord, UnitId

    records = [ActivationRecord([" rain", " fell", " on", " the", " roof"], [5.0, 0.0, 0.0, 0.0, 1.0])] * 3
    with FakeLLMServer(models=("qwen",), max_model_len=400) as server:
        server.responder = lambda body: "rain"
        llm = vllm(server, tmp_path, prompt_logprobs=False)
        llm.check_server()
        import yaml

        prompt = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "prompt" / "v1.yaml").read_text())
        [e] = LLMExplainer(llm=llm, prompt=prompt, temperature=0.0, max_tokens=20).explain(UnitId(0, 1), records)
        usage_prompt = server.log[-1]
    assert e.text == "rain" and sum(e.meta["dropped"].values()) > 0
    assert e.meta["prompt_tokens_counted"] + 20 <= 400
    assert e.meta["prompt_tokens"] == e.usage.input_tokens > 0  # the server's own count
    assert usage_prompt["path"] == "/v1/chat/completions"


def test_the_cli_stops_in_one_line_with_exit_2_before_any_model_loads(capsys: pytest.CaptureFixture) -> None:
    from bench.cli import main

    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["run", "explainer=openai_compatible", f"explainer.llm.base_url={url}", "tracking=none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"neuronbench: explainer.llm: the LLM server at {url} did not answer the model list")
