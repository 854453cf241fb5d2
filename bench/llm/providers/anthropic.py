"""Anthropic messages: request builder and response parser, pure functions (see
:mod:`bench.llm.anthropic_backend` for the rules they implement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.protocols import GenerationRequest

EPHEMERAL = {"type": "ephemeral"}


@dataclass(frozen=True)
class MessagesPayload:
    """SDK parameters, ``extra_body`` (``temperature``: SDK 2.14 has no such parameter), the whitespace cut
    from the prefill (to cut from the reply too) and the prompt's size in characters."""

    params: dict[str, Any]
    extra: dict[str, Any]
    cut: str
    prompt_chars: int


def messages_request(r: GenerationRequest, *, model: str, prompt_caching: bool, name: str = "") -> MessagesPayload:
    """The messages body for ``r``: system messages as one (cacheable) block, same-role turns joined, the
    few-shot prefix marked for prompt caching, the prefill as a trailing assistant turn (no trailing
    whitespace: the API refuses it), whitespace-only stop strings dropped."""
    if r.top_logprobs > 0:
        raise ValueError(f"{name} cannot return logprobs (top_logprobs={r.top_logprobs} requested)")
    system = "\n\n".join(m.content for m in r.messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for m in r.messages:
        if m.role == "system":
            continue
        if turns and turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    if prompt_caching and len(turns) >= 2 and turns[-1]["role"] == "user":
        shared = turns[-2]  # end of the few-shot prefix
        turns[-2] = {
            "role": shared["role"],
            "content": [{"type": "text", "text": shared["content"], "cache_control": EPHEMERAL}],
        }
    cut = ""
    if r.assistant_prefix:
        prefill = r.assistant_prefix.rstrip()
        cut = r.assistant_prefix[len(prefill) :]
        if prefill:
            if turns and turns[-1]["role"] == "assistant":
                turns[-1]["content"] += prefill
            else:
                turns.append({"role": "assistant", "content": prefill})
    params: dict[str, Any] = {"model": model, "max_tokens": r.max_tokens, "messages": turns}
    if system:
        block: dict[str, Any] = {"type": "text", "text": system}
        if prompt_caching:
            block["cache_control"] = EPHEMERAL
        params["system"] = [block]
    stops = [s for s in r.stop if s.strip()]
    if stops:
        params["stop_sequences"] = stops
    chars = len(system) + sum(len(m.content) for m in r.messages) + len(r.assistant_prefix)
    return MessagesPayload(params, {"temperature": r.temperature}, cut, chars)


def parse_messages(body: dict[str, Any]) -> dict[str, Any]:
    """A message (JSON) -> ``{"result": {text, stop_reason}, "usage": {...}}``; ``input_tokens`` is the whole
    prompt (uncached + cache reads + cache writes), ``cached_input_tokens`` the reads."""
    content = body.get("content")
    if content is None:
        raise ValueError("the response has no content")
    text = "".join(block.get("text") or "" for block in content if block.get("type") == "text")
    u = body.get("usage") or {}
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    return {
        "result": {"text": text, "stop_reason": body.get("stop_reason")},
        "usage": {
            "input_tokens": int(u.get("input_tokens") or 0) + read + write,
            "cached_input_tokens": read,
            "cache_write_tokens": write,
            "output_tokens": int(u.get("output_tokens") or 0),
        },
    }
