"""The layers of ``bench/llm``: no import cycle, every module importable on its own, providers as pure
request builders and response parsers (plain dicts in, values out: no network, no SDK), batch jobs split
at the providers' request and byte limits."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.llm.batch import anthropic as anthropic_batch
from bench.llm.batch import openai as openai_batch
from bench.llm.batch.state import plan_jobs
from bench.llm.providers.anthropic import EPHEMERAL, messages_request, parse_messages
from bench.llm.providers.openai import (
    FOLD_INSTRUCTION,
    chat_request,
    completions_request,
    parse_chat,
    parse_completions,
)
from bench.protocols import ChatMessage, GenerationRequest

LLM_DIR = Path(__file__).resolve().parents[1] / "bench" / "llm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(LLM_DIR.rglob("*.py")):
        parts = list(path.relative_to(LLM_DIR.parents[1]).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ``bench.llm`` modules a module imports at run time: top-level *and* function-local imports
    (a lazy import closes a cycle too), not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    return found


def test_bench_llm_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them: drop package -> child edges
    graph = {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}
    assert "bench.llm.batch.state" in graph and "bench.llm.client" in graph  # the walk found the layers

    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles in bench.llm: {cycles}"
    # the layers point one way: the engine uses batch state; batch state, providers and types never the engine
    assert "bench.llm.batch.state" in graph["bench.llm.client"]
    for low in ("bench.llm.batch.state", "bench.llm.types", "bench.llm.errors", "bench.llm.providers.openai"):
        assert "bench.llm.client" not in graph[low]


def test_every_bench_llm_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = sorted(_modules())
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for mod in [m for m in sys.modules if m.startswith('bench')]:\n"
        "        del sys.modules[mod]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules) > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


# ---------------------------------------------------------------------------------------------------
# OpenAI: builder and parsers
# ---------------------------------------------------------------------------------------------------
def _req(**kw: object) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("system", "Be terse."), ChatMessage("user", "Name it.")), **kw)


def test_openai_chat_request_official_vs_compatible_seed_stops_and_logprobs() -> None:
    r = _req(max_tokens=7, stop=("a", "b", "c", "d", "e"), top_logprobs=3, sample_index=2)
    official = chat_request(r, model="gpt-4o-mini", official=True, prefill_mode="fold", seed=5)
    assert official.params["max_completion_tokens"] == 7 and "max_tokens" not in official.params
    assert official.params["stop"] == ["a", "b", "c", "d"]  # the API takes 4; all are applied client-side
    assert official.params["seed"] == (5 * 1_000_003 + 2) % 2**31
    assert official.params["logprobs"] is True and official.params["top_logprobs"] == 3
    assert official.prompt_chars == len("Be terse.") + len("Name it.")
    compatible = chat_request(r, model="m", official=False, prefill_mode="fold", seed=None)
    assert compatible.params["max_tokens"] == 7 and "seed" not in compatible.params
    with pytest.raises(ValueError, match="without logprobs"):
        chat_request(r, model="m", official=True, prefill_mode="fold", seed=0, logprobs_allowed=False, name="x")


def test_openai_prefill_modes() -> None:
    r = _req(assistant_prefix="<start>\n")
    fold = chat_request(r, model="m", official=True, prefill_mode="fold", seed=None)
    assert fold.fold == "<start>\n" and fold.extra == {}
    assert fold.params["messages"][-1] == {"role": "user", "content": "Name it." + FOLD_INSTRUCTION + "<start>\n"}
    cont = chat_request(r, model="m", official=False, prefill_mode="continue_final_message", seed=None)
    assert cont.fold is None and cont.params["messages"][-1] == {"role": "assistant", "content": "<start>\n"}
    assert cont.extra == {"continue_final_message": True, "add_generation_prompt": False}
    trailing = chat_request(r, model="m", official=False, prefill_mode="trailing_assistant", seed=None)
    assert trailing.extra == {} and trailing.params["messages"][-1]["role"] == "assistant"


def test_openai_parse_chat_from_json() -> None:
    body = {
        "choices": [
            {
                "message": {"role": "assistant", "content": "rain"},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [
                        {"token": "rain", "logprob": -0.1, "top_logprobs": [{"token": "rain", "logprob": -0.1}]}
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 8}},
    }
    value = parse_chat(body)
    assert value["result"] == {"text": "rain", "logprobs": [["rain", -0.1, [["rain", -0.1]]]], "finish_reason": "stop"}
    assert value["usage"] == {"input_tokens": 12, "cached_input_tokens": 8, "output_tokens": 1}
    bare = parse_chat({"choices": [{"message": {"content": None}, "finish_reason": "length"}]})
    assert bare["result"]["text"] == "" and bare["result"]["logprobs"] is None and bare["usage"] == {}
    with pytest.raises(ValueError, match="no choices"):
        parse_chat({"choices": []})


def test_openai_completions_request_and_parse() -> None:
    params, extra = completions_request("m", "a b", echo=True, k=5)
    assert params["echo"] is True and params["logprobs"] == 5 and extra == {"prompt_logprobs": 5}
    assert completions_request("m", ["a", "b"], echo=False, k=5)[1] == {}
    body = {
        "choices": [
            {"index": 1, "logprobs": {"tokens": ["y"], "top_logprobs": [{"y": -1.0}]}},
            {"index": 0, "logprobs": {"tokens": ["x"], "top_logprobs": None}, "prompt_logprobs": [None, {"7": {}}]},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    value = parse_completions(body)
    assert [c["tokens"] for c in value["result"]["choices"]] == [["x"], ["y"]]  # in choice order
    assert value["result"]["choices"][0]["prompt_logprobs"] == [None, {"7": {}}]
    assert value["usage"]["input_tokens"] == 3


# ---------------------------------------------------------------------------------------------------
# Anthropic: builder and parser
# ---------------------------------------------------------------------------------------------------
def test_anthropic_messages_request_caching_prefill_and_stops() -> None:
    r = GenerationRequest(
        messages=(
            ChatMessage("system", "Rules."),
            ChatMessage("user", "Example"),
            ChatMessage("assistant", "Answer"),
            ChatMessage("user", "Now"),
        ),
        assistant_prefix="<start> \n",
        stop=("\n\n", "  ", "<end>"),
        temperature=0.5,
    )
    payload = messages_request(r, model="claude-haiku-4-5", prompt_caching=True)
    assert payload.params["system"] == [{"type": "text", "text": "Rules.", "cache_control": EPHEMERAL}]
    turns = payload.params["messages"]
    assert turns[1]["content"] == [{"type": "text", "text": "Answer", "cache_control": EPHEMERAL}]  # few-shot end
    assert turns[-1] == {"role": "assistant", "content": "<start>"} and payload.cut == " \n"
    assert payload.params["stop_sequences"] == ["<end>"]  # whitespace-only stops are refused by the API
    assert payload.extra == {"temperature": 0.5}
    plain = messages_request(r, model="m", prompt_caching=False)
    assert "cache_control" not in json.dumps(plain.params)
    with pytest.raises(ValueError, match="cannot return logprobs"):
        messages_request(_req(top_logprobs=2), model="m", prompt_caching=True, name="claude")


def test_anthropic_parse_messages_counts_cache_reads_and_writes_in_the_prompt() -> None:
    body = {
        "content": [{"type": "text", "text": "ra"}, {"type": "tool_use"}, {"type": "text", "text": "in"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "output_tokens": 2,
        },
    }
    value = parse_messages(body)
    assert value["result"] == {"text": "rain", "stop_reason": "end_turn"}
    assert value["usage"] == {
        "input_tokens": 160,
        "cached_input_tokens": 100,
        "cache_write_tokens": 50,
        "output_tokens": 2,
    }
    with pytest.raises(ValueError, match="no content"):
        parse_messages({"usage": {}})


# ---------------------------------------------------------------------------------------------------
# Batch jobs at the providers' limits
# ---------------------------------------------------------------------------------------------------
def test_plan_jobs_splits_at_request_and_byte_limits() -> None:
    assert plan_jobs([], 10, 100) == []
    assert plan_jobs([1] * 25, 10, 10_000) == [(0, 10), (10, 20), (20, 25)]  # request limit
    assert plan_jobs([40] * 5, 100, 100) == [(0, 2), (2, 4), (4, 5)]  # byte limit: 80 fits, 120 does not
    assert plan_jobs([150, 10], 100, 100) == [(0, 1), (1, 2)]  # an oversized request still gets its own job


def test_provider_limits_and_request_sizes() -> None:
    assert (openai_batch.MAX_REQUESTS, openai_batch.MAX_BYTES) == (50_000, 200 * 1024 * 1024)
    assert (anthropic_batch.MAX_REQUESTS, anthropic_batch.MAX_BYTES) == (100_000, 256 * 1024 * 1024)
    api = openai_batch.OpenAIBatches("http://x/v1", parse_chat)
    body = {"model": "m", "messages": [{"role": "user", "content": "é" * 10}]}
    line = openai_batch.batch_line("k", api.endpoint, body)
    assert api.item_bytes("k", body) == len(line.encode()) + 1 and json.loads(line)["url"] == "/v1/chat/completions"
    claude = anthropic_batch.AnthropicBatches("http://x", parse_messages)
    assert (
        claude.item_bytes("k", body)
        == len(json.dumps({"custom_id": "k", "params": body}, ensure_ascii=False).encode()) + 1
    )


# ---------------------------------------------------------------------------------------------------
# In-process clients get the wrapper's counters and spend meters too
# ---------------------------------------------------------------------------------------------------
def test_in_process_clients_share_the_counters_and_the_spend_meters() -> None:
    import pickle

    from bench.llm.fake import FakeLLM
    from bench.llm.spend import metering
    from bench.protocols import SlotRequest

    llm = FakeLLM(responses=("rain and snow",))
    with metering() as meter:
        gens = llm.generate([_req(max_tokens=5), _req(max_tokens=5, sample_index=1)])
        slots = llm.slot_distributions(
            [SlotRequest(messages=(ChatMessage("user", "rain"), ChatMessage("assistant", "rain\t")), slots=(5,))]
        )
    stats = llm.stats
    assert stats.calls == 3 and meter.total.calls == 3
    assert stats.input_tokens == sum(g.usage.input_tokens for g in gens) + slots[0].usage.input_tokens > 0
    assert stats.output_tokens == sum(g.usage.output_tokens for g in gens) > 0
    assert stats.dollars == 0.0 and stats.as_metrics("cost/backend/simulator/")["cost/backend/simulator/calls"] == 3
    copy = pickle.loads(pickle.dumps(llm))  # launchers ship components: a fresh meter travels
    assert copy == llm and copy.stats.calls == 0
