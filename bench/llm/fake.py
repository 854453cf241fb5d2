"""A deterministic fake :class:`~bench.protocols.LLMClient` for tests and dry runs.

No model, no network.  Generations are canned (``responses``, chosen by sample index) or come from
``generate_fn(request) -> str``.  Slot distributions follow a readable rule: the token on a slot's
line gets value 10 when it is one of the words of the explanation (the last user message), else 0,
spread over neighbouring values by ``sharpness``; ``slot_fn(request, slot_index) -> {value: p}``
replaces the rule.  ``supports`` decides which capabilities it claims, so refusals can be tested.
Generation requests that carry a simulator question (all-at-once write-back or one-at-a-time, see
:func:`simulator_answer`) are answered by the same rule, with top logprobs at every value; any other
generation gets the canned ``responses``.  Every request is appended to ``calls`` (for "nothing was
called" checks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.protocols import (
    Capability,
    Generation,
    GenerationRequest,
    SlotRequest,
    SlotResult,
    TokenLogprobs,
)
from bench.records import Usage
from bench.simulators.prompt_format import END, START, UNKNOWN, unescape_token

_WORD = re.compile(r"\w+")
_EXPLANATION = re.compile(r"^Explanation of neuron \d+: (.*)$", re.MULTILINE)
_LAST_TOKEN = '\nLast token: "'


def simulator_answer(
    messages: Sequence[Any], unparsed_tokens: Sequence[str] = ()
) -> list[tuple[str, int | None]] | None:
    """The fake simulator's answer to a generation prompt, as (piece, value or None) pairs, or None.

    Recognises the one-at-a-time question (a ``Last token: "..."`` line) and the all-at-once
    write-back (an excerpt of ``token<TAB>unknown`` lines in the last user message).  A token gets 10
    when it is one of the explanation's words, else 0; tokens in ``unparsed_tokens`` get the text
    ``unsure`` (no value).  Used by :class:`FakeLLM` and the loopback test servers.
    """
    users = [m for m in messages if _role(m) == "user"]
    if not users:
        return None
    text = _text(users[-1])
    found = _EXPLANATION.findall(text)
    if not found:
        return None
    words = {w.lower() for w in _WORD.findall(found[-1])}

    def value(token: str) -> int | None:
        if token.strip() in unparsed_tokens:
            return None
        return 10 if token.strip() and token.strip().lower() in words else 0

    if _LAST_TOKEN in text:
        line = text.split(_LAST_TOKEN, 1)[1].split("\n", 1)[0]
        v = value(unescape_token(line[: line.rfind('"')] if '"' in line else line))
        return [(str(v), v) if v is not None else ("unsure", None)]
    if START not in text or f"\t{UNKNOWN}" not in text:
        return None
    body = text.split(START + "\n", 1)[1].split(END, 1)[0]
    pieces: list[tuple[str, int | None]] = [(START + "\n", None)]
    for line in body.split("\n"):
        if "\t" not in line:
            continue
        written = line.rsplit("\t", 1)[0]
        v = value(unescape_token(written))
        pieces += [(written, None), ("\t", None), ((str(v), v) if v is not None else ("unsure", None)), ("\n", None)]
    return [*pieces, (END, None)]


def _role(m: Any) -> str:
    return m.role if hasattr(m, "role") else str(m.get("role"))


def _text(m: Any) -> str:
    content = m.content if hasattr(m, "content") else m.get("content")
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return str(content or "")


@dataclass(frozen=True)
class FakeLLM:
    name: str = "fake"
    responses: tuple[str, ...] = ("words that look like the top tokens",)
    generate_fn: Any = None
    slot_fn: Any = None
    sharpness: float = 2.0  # p(v) proportional to exp(-sharpness * |v - target|)
    value_mass: float = 1.0  # total probability the rule puts on the values (the rest: other tokens)
    unparsed_tokens: tuple[str, ...] = ()  # tokens (stripped) that get no mass on any value
    supports: tuple[str, ...] = ("generate", "generated_logprobs", "prompt_logprobs", "exact_prompt_logprobs")
    max_context: int | None = None
    version: int = 1
    coalesce: bool = False  # like a batch/in-process backend: the request engine gathers many units' requests
    calls: list[Any] = field(default_factory=list, compare=False, repr=False)
    backend_calls: list[tuple[str, int]] = field(default_factory=list, compare=False, repr=False)  # (kind, size)

    def __post_init__(self) -> None:
        known = {c.value for c in Capability}
        bad = [s for s in self.supports if s not in known]
        if bad:
            raise ValueError(f"supports: unknown capabilities {bad}; use {', '.join(sorted(known))}")
        if not self.responses and self.generate_fn is None:
            raise ValueError("responses: give at least one response or a generate_fn")
        if self.sharpness < 0:
            raise ValueError("sharpness: must be >= 0")
        if not 0.0 <= self.value_mass <= 1.0:
            raise ValueError("value_mass: must be in [0, 1]")
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "supports", tuple(self.supports))
        object.__setattr__(self, "unparsed_tokens", tuple(self.unparsed_tokens))

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(Capability(s) for s in self.supports)

    def _require(self, cap: Capability) -> None:
        if cap not in self.capabilities:
            raise RuntimeError(
                f"{self.name} does not offer {cap.value} (it offers: {', '.join(sorted(self.supports))})"
            )

    # ------------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.coalesce:
            from bench.engine import gather

            return gather(("fake/generate", id(self)), list(requests), self._generate_now)
        return self._generate_now(requests)

    def _generate_now(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self._require(Capability.GENERATE)
        self.backend_calls.append(("generate", len(requests)))
        out = []
        for r in requests:
            self.calls.append(r)
            if r.top_logprobs:
                self._require(Capability.GENERATED_LOGPROBS)
            answer = simulator_answer(r.messages, self.unparsed_tokens) if self.generate_fn is None else None
            if answer is not None:
                out.append(self._simulator_generation(r, answer))
                continue
            text = (
                self.generate_fn(r)
                if self.generate_fn is not None
                else self.responses[r.sample_index % len(self.responses)]
            )
            cuts = [text.find(s) for s in r.stop if s and s in text]
            if cuts:
                text = text[: min(cuts)]
            logprobs = None
            if r.top_logprobs:
                logprobs = [
                    TokenLogprobs(token=piece, logprob=0.0, top={piece: 0.0}) for piece in re.findall(r"\s*\S+", text)
                ]
            prompt_chars = sum(len(m.content) for m in r.messages) + len(r.assistant_prefix)
            out.append(
                Generation(
                    text=text,
                    logprobs=logprobs,
                    usage=Usage(calls=1, input_tokens=prompt_chars // 4, output_tokens=len(text) // 4 + 1),
                )
            )
        return out

    def _value_logprobs(self, target: int) -> dict[str, float]:
        if self.value_mass <= 0:
            return {"unsure": 0.0}
        weights = [math.exp(-self.sharpness * abs(v - target)) for v in range(11)]
        total = sum(weights)
        return {str(v): math.log(self.value_mass * w / total) for v, w in enumerate(weights) if w > 0}

    def _simulator_generation(self, r: GenerationRequest, answer: list[tuple[str, int | None]]) -> Generation:
        text, logprobs = "", []
        for piece, target in answer:
            if r.stop and any(s and s in text + piece for s in r.stop):
                break
            if len(logprobs) >= r.max_tokens:
                break
            text += piece
            top = self._value_logprobs(target) if target is not None else {piece: 0.0}
            logprobs.append(TokenLogprobs(token=piece, logprob=top.get(piece, 0.0), top=top))
        prompt_chars = sum(len(m.content) for m in r.messages) + len(r.assistant_prefix)
        return Generation(
            text=text,
            logprobs=logprobs if r.top_logprobs else None,
            usage=Usage(calls=1, input_tokens=prompt_chars // 4, output_tokens=len(logprobs)),
        )

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]:
        if self.coalesce:
            from bench.engine import gather

            return gather(("fake/slots", id(self)), list(requests), self._slots_now)
        return self._slots_now(requests)

    def _slots_now(self, requests: Sequence[SlotRequest]) -> list[SlotResult]:
        self._require(Capability.PROMPT_LOGPROBS)
        self.backend_calls.append(("slots", len(requests)))
        out = []
        for r in requests:
            self.calls.append(r)
            probs = [
                self.slot_fn(r, k) if self.slot_fn is not None else self._rule(r, slot)
                for k, slot in enumerate(r.slots)
            ]
            chars = sum(len(m.content) for m in r.messages)
            out.append(
                SlotResult(
                    probabilities=probs,
                    usage=Usage(calls=1, input_tokens=chars // 4),
                    meta={"multi_token_values": "single_token", "fake_rule": self.slot_fn is None},
                )
            )
        return out

    # ------------------------------------------------------------------------------------------------
    def _rule(self, r: SlotRequest, slot: int) -> dict[str, float]:
        content = r.messages[-1].content
        users = [m.content for m in r.messages[:-1] if m.role == "user"]
        words = {w.lower() for w in _WORD.findall(users[-1])} if users else set()
        line_start = content.rfind("\n", 0, slot) + 1
        token = unescape_token(content[line_start:slot].removesuffix("\t")).strip()
        if token in self.unparsed_tokens:
            return {v: 0.0 for v in r.values}
        target = 10 if token and token.lower() in words else 0
        weights = []
        for v in r.values:
            try:
                weights.append(math.exp(-self.sharpness * abs(int(v) - target)))
            except ValueError:
                weights.append(0.0)
        total = sum(weights) or 1.0
        return {v: self.value_mass * w / total for v, w in zip(r.values, weights, strict=True)}
