"""OpenAI chat completions and (vLLM) completions: request builder and response parsers, pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.protocols import GenerationRequest

FOLD_INSTRUCTION = "\n\nBegin your reply with exactly this text, then continue it:\n"


@dataclass(frozen=True)
class ChatPayload:
    """What one chat request sends: SDK parameters, ``extra_body`` (vLLM options), and the prefix to strip
    from the reply when the prefill was folded into the last user message (``fold``)."""

    params: dict[str, Any]
    extra: dict[str, Any]
    fold: str | None
    prompt_chars: int


def chat_request(
    r: GenerationRequest,
    *,
    model: str,
    official: bool,
    prefill_mode: str,
    seed: int | None,
    logprobs_allowed: bool = True,
    name: str = "",
) -> ChatPayload:
    """The chat-completions body for ``r``; ``official``: the OpenAI API (``max_completion_tokens``), else an
    OpenAI-compatible server (``max_tokens``).  ``prefill_mode``: ``fold``, ``continue_final_message`` or
    ``trailing_assistant`` (see :mod:`bench.llm.openai_backend`)."""
    messages = [{"role": m.role, "content": m.content} for m in r.messages]
    extra: dict[str, Any] = {}
    fold: str | None = None
    if r.assistant_prefix:
        if prefill_mode == "fold":
            fold = r.assistant_prefix
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if users:
                i = users[-1]
                messages[i] = {**messages[i], "content": messages[i]["content"] + FOLD_INSTRUCTION + fold}
            else:
                messages.append({"role": "user", "content": FOLD_INSTRUCTION.lstrip() + fold})
        else:
            messages.append({"role": "assistant", "content": r.assistant_prefix})
            if prefill_mode == "continue_final_message":
                extra = {"continue_final_message": True, "add_generation_prompt": False}
    params: dict[str, Any] = {"model": model, "messages": messages, "temperature": r.temperature}
    params["max_completion_tokens" if official else "max_tokens"] = r.max_tokens
    if r.stop:
        params["stop"] = list(r.stop[:4])  # the API takes at most 4; all are applied client-side
    if seed is not None:
        params["seed"] = (seed * 1_000_003 + r.sample_index) % 2**31
    if r.top_logprobs > 0:
        if not logprobs_allowed:
            raise ValueError(f"{name} is configured without logprobs (generated_logprobs: false)")
        params["logprobs"] = True
        params["top_logprobs"] = r.top_logprobs
    return ChatPayload(params, extra, fold, sum(len(m["content"]) for m in messages))


def completions_request(
    model: str, prompt: str | list[str], echo: bool, k: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``/v1/completions`` body reading ``k`` logprobs per position (``echo``: of the prompt too, with
    vLLM's ``prompt_logprobs``); returns (SDK parameters, ``extra_body``)."""
    params: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": k,
        "echo": echo,
    }
    return params, ({"prompt_logprobs": k} if echo else {})


def parse_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (JSON) -> ``{"result": {text, logprobs, finish_reason}, "usage": {...}}``;
    ``logprobs`` is ``[[token, logprob, [[alternative, logprob], ...]], ...]`` or None."""
    choices = body.get("choices") or []
    if not choices:
        raise ValueError("the response has no choices")
    choice = choices[0]
    logprobs = None
    content = (choice.get("logprobs") or {}).get("content")
    if content is not None:
        logprobs = [
            [t["token"], t["logprob"], [[a["token"], a["logprob"]] for a in (t.get("top_logprobs") or [])]]
            for t in content
        ]
    text = (choice.get("message") or {}).get("content") or ""
    return {
        "result": {"text": text, "logprobs": logprobs, "finish_reason": choice.get("finish_reason")},
        "usage": parse_usage(body.get("usage")),
    }


def parse_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage -> ``{input_tokens, cached_input_tokens, output_tokens}`` (prompt-cache reads included)."""
    if not usage:
        return {}
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "cached_input_tokens": int(details.get("cached_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def parse_completions(body: dict[str, Any]) -> dict[str, Any]:
    """A completions answer (JSON) -> ``{"result": {"choices": [{tokens, top_logprobs, prompt_logprobs}]}}``
    in choice order (vLLM's ``prompt_logprobs`` sits on each choice)."""
    choices = body.get("choices") or []
    if not choices:
        raise ValueError("the response has no choices")
    out = []
    for choice in sorted(choices, key=lambda c: c.get("index") or 0):
        lp = choice.get("logprobs") or {}
        out.append(
            {
                "tokens": list(lp["tokens"]) if lp.get("tokens") is not None else None,
                "top_logprobs": list(lp["top_logprobs"]) if lp.get("top_logprobs") is not None else None,
                "prompt_logprobs": choice.get("prompt_logprobs"),
            }
        )
    return {"result": {"choices": out}, "usage": parse_usage(body.get("usage"))}
