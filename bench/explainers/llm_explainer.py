"""The LLM explainer (method.md section 4): a few-shot prompt, one completed lead-in per sample.

The prompt variant (wording, lead-in, worked examples) is plain config -- ``conf/prompt/*.yaml`` --
parsed into a :class:`PromptSpec`.  Layout of the chat:

* system: the task and the format;
* per worked example: a user message with its excerpts, an assistant message
  ``"<lead_in> <explanation>"``;
* the target unit's excerpts as the last user message; the model completes ``lead_in``.

Every unit's excerpts are normalised to 0-10 against the max over *its shown* excerpts
(bench/normalize.py); when fewer than 20 % of a unit's values are non-zero, its non-zero lines are
repeated once more on their own.  When the prompt does not fit ``llm.max_context`` (counted with the
backend's tokenizer when it has ``count_tokens``, else ~4 characters per token), example excerpts are
dropped first (from the example with the most excerpts, its last one; one per example kept), then
whole examples (last first), then the target's lowest
excerpts; what was dropped is recorded in the explanation's meta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench.errors import UserError
from bench.normalize import normalize_records
from bench.protocols import Capability, ChatMessage, ContextLimited, GenerationRequest, TokenCounting
from bench.records import ActivationRecord, Explanation, UnitId
from bench.simulators.prompt_format import END, START, format_lines

NONZERO_REPEAT_BELOW = 0.2  # repeat non-zero lines when fewer than 20 % of values are non-zero


class ExplanationError(RuntimeError):
    """The model's answer was unusable (e.g. empty); ``raw`` keeps what it wrote."""

    def __init__(self, message: str, raw: Sequence[str]) -> None:
        super().__init__(f"{message}; raw completions: {list(raw)!r}")
        self.raw = list(raw)


@dataclass(frozen=True)
class ExampleUnit:
    explanation: str
    records: tuple[ActivationRecord, ...]


@dataclass(frozen=True)
class PromptSpec:
    """One prompt variant (a plain config node)."""

    name: str
    version: int
    system: str
    lead_in: str
    examples: tuple[ExampleUnit, ...] = ()
    unit_header: str = "Neuron {number}"
    activations_header: str = "Activations:"
    nonzero_header: str = "Same activations, non-zero lines only:"

    @classmethod
    def parse(cls, raw: Any) -> PromptSpec:
        if isinstance(raw, PromptSpec):
            return raw
        if hasattr(raw, "_content"):  # an OmegaConf node passed without _convert_
            from omegaconf import OmegaConf

            raw = OmegaConf.to_container(raw, resolve=True)
        if not isinstance(raw, Mapping):
            raise ValueError("prompt: must be a prompt variant node (see conf/prompt/v1.yaml)")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"prompt: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        missing = {"name", "version", "system", "lead_in"} - set(raw)
        if missing:
            raise ValueError(f"prompt: missing keys {sorted(missing)}")
        examples = []
        for k, ex in enumerate(raw.get("examples") or ()):
            if not isinstance(ex, Mapping) or "explanation" not in ex or not ex.get("records"):
                raise ValueError(f"prompt: example {k} needs an explanation and records (tokens, activations)")
            try:
                records = tuple(
                    ActivationRecord(
                        tokens=[str(t) for t in r["tokens"]], activations=[float(a) for a in r["activations"]]
                    )
                    for r in ex["records"]
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"prompt: example {k} has a bad record: {err}") from None
            examples.append(ExampleUnit(str(ex["explanation"]), records))
        values = {k: str(v) for k, v in raw.items() if k not in ("examples", "version")}
        try:
            version = int(raw["version"])
        except (TypeError, ValueError):
            raise ValueError(f"prompt: version must be an integer, got {raw['version']!r}") from None
        spec = cls(examples=tuple(examples), version=version, **values)
        if not spec.lead_in.strip():
            raise ValueError("prompt: lead_in must not be empty")
        return spec

    def for_unit_kind(self, kind: str) -> PromptSpec:
        """The variant with its fixed text calling units ``kind``'s noun (:mod:`bench.unit_nouns`); the worked
        examples' explanations are left as written."""
        from bench.unit_nouns import reword

        return replace(
            self,
            system=reword(self.system, kind),
            lead_in=reword(self.lead_in, kind),
            unit_header=reword(self.unit_header, kind),
            activations_header=reword(self.activations_header, kind),
            nonzero_header=reword(self.nonzero_header, kind),
        )


def format_unit(spec: PromptSpec, number: int, records: Sequence[ActivationRecord]) -> str:
    """One unit's user message: header, its excerpts, and the non-zero repeat when values are sparse."""
    normalized = normalize_records(records)
    parts = [spec.unit_header.format(number=number), "\n", spec.activations_header, "\n"]
    for record, values in zip(records, normalized, strict=True):
        parts.append(f"{START}\n{format_lines(record.tokens, values)}{END}\n")
    total = sum(len(v) for v in normalized)
    nonzero = sum(1 for vs in normalized for v in vs if v > 0)
    if total and nonzero / total < NONZERO_REPEAT_BELOW and nonzero:
        parts.append(spec.nonzero_header + "\n")
        for record, values in zip(records, normalized, strict=True):
            kept = [(t, v) for t, v in zip(record.tokens, values, strict=True) if v > 0]
            if kept:
                parts.append(f"{START}\n{format_lines([t for t, _ in kept], [v for _, v in kept])}{END}\n")
    return "".join(parts)


def build_messages(
    spec: PromptSpec, examples: Sequence[ExampleUnit], records: Sequence[ActivationRecord]
) -> tuple[ChatMessage, ...]:
    messages = [ChatMessage("system", spec.system)]
    for k, ex in enumerate(examples, start=1):
        messages.append(ChatMessage("user", format_unit(spec, k, ex.records)))
        messages.append(ChatMessage("assistant", f"{spec.lead_in} {ex.explanation}"))
    messages.append(ChatMessage("user", format_unit(spec, len(examples) + 1, records)))
    return tuple(messages)


def clean_answer(raw: str) -> str:
    """The explanation in a completion: first line, stripped, without a final full stop."""
    line = raw.split("\n", 1)[0].strip()
    if line.endswith(".") and not line.endswith(".."):
        line = line[:-1].rstrip()
    return line


@dataclass(frozen=True)
class LLMExplainer:
    """Few-shot explanations from an LLM backend (any :class:`~bench.protocols.LLMClient`)."""

    llm: Any
    prompt: Any
    samples: int = 1
    temperature: float = 1.0
    max_tokens: int = 60
    name: str = "llm"
    version: int = 1

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples: must be >= 1")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError("temperature: must be in [0, 5]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens: must be >= 1")
        object.__setattr__(self, "prompt", PromptSpec.parse(self.prompt))

    def for_unit_kind(self, kind: str) -> LLMExplainer:
        """This explainer with its prompt worded for ``kind``'s units (:mod:`bench.unit_nouns`)."""
        return replace(self, prompt=self.prompt.for_unit_kind(kind))

    # ------------------------------------------------------------------------------------------------
    def _count(self, messages: Sequence[ChatMessage]) -> int:
        if isinstance(self.llm, TokenCounting):
            return int(self.llm.count_tokens(messages, self.prompt.lead_in))
        chars = sum(len(m.content) + 16 for m in messages) + len(self.prompt.lead_in)
        return math.ceil(chars / 4)

    def fit_prompt(self, records: Sequence[ActivationRecord]) -> tuple[tuple[ChatMessage, ...], dict[str, Any]]:
        """The messages for ``records`` within the token budget, and what was dropped to get there."""
        if not records:
            raise ValueError("no records to explain")
        budget = self.llm.max_context if isinstance(self.llm, ContextLimited) else None
        examples = [list(ex.records) for ex in self.prompt.examples]
        explanations = [ex.explanation for ex in self.prompt.examples]
        target = list(records)
        dropped = {"example_records": 0, "examples": 0, "target_records": 0}

        def build() -> tuple[ChatMessage, ...]:
            units = [ExampleUnit(e, tuple(r)) for e, r in zip(explanations, examples, strict=True)]
            return build_messages(self.prompt, units, target)

        messages = build()
        n_tokens = self._count(messages)
        while budget is not None and n_tokens + self.max_tokens > budget:
            longest = max(range(len(examples)), key=lambda k: (len(examples[k]), k), default=None)
            if longest is not None and len(examples[longest]) > 1:
                examples[longest].pop()
                dropped["example_records"] += 1
            elif examples:
                examples.pop()
                explanations.pop()
                dropped["examples"] += 1
            elif len(target) > 1:
                target.pop()
                dropped["target_records"] += 1
            else:
                raise ValueError(
                    f"the explainer prompt needs {n_tokens} tokens + {self.max_tokens} to generate, more than "
                    f"max_context={budget} even with one excerpt and no examples"
                )
            messages = build()
            n_tokens = self._count(messages)
        return messages, {"prompt_tokens": n_tokens, "dropped": dropped}

    @property
    def required_capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.GENERATE})

    @property
    def resolved_temperature(self) -> float:
        """The sampling temperature sent (checked against the backend's range before any call)."""
        return self.temperature

    def dry_run_requests(self, records: Sequence[ActivationRecord]) -> list[GenerationRequest]:
        """The requests ``explain`` would send for ``records``, without counting tokens with the
        backend's tokenizer (dry runs must not load anything; the budget fit is skipped)."""
        messages = build_messages(self.prompt, self.prompt.examples, records)
        return [
            GenerationRequest(
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                sample_index=i,
                stop=("\n",),
                assistant_prefix=self.prompt.lead_in,
            )
            for i in range(self.samples)
        ]

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]:
        offered = frozenset(self.llm.capabilities)
        if Capability.GENERATE not in offered:
            raise UserError(
                f"explainer {self.name!r} needs text generation, which backend "
                f"{self.llm.name!r} does not offer"
            )
        messages, fit = self.fit_prompt(records)
        requests = [
            GenerationRequest(
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                sample_index=i,
                stop=("\n",),
                assistant_prefix=self.prompt.lead_in,
            )
            for i in range(self.samples)
        ]
        generations = self.llm.generate(requests)
        good: list[tuple[int, Any, str]] = []
        failed: list[tuple[int, Any, str]] = []
        for i, gen in enumerate(generations):
            text = clean_answer(gen.text)
            (good if text else failed).append((i, gen, text))
        if not good:
            raise ExplanationError(
                f"{self.name}: the model wrote no explanation for {unit.key}", [g.text for _, g, _ in failed]
            )
        out = []
        for i, gen, text in good:
            meta = {
                "prompt": self.prompt.name,
                "prompt_version": self.prompt.version,
                "explainer_version": self.version,
                "llm": self.llm.name,
                "sample_index": i,
                "temperature": self.temperature,
                "raw": gen.text,
                "usage": asdict(gen.usage),
                **fit,
                # what the server counted (usage) where it answered; the fit's own count otherwise
                "prompt_tokens": gen.usage.input_tokens or fit["prompt_tokens"],
                "prompt_tokens_counted": fit["prompt_tokens"],
            }
            if failed:
                meta["failed_samples"] = [{"sample_index": j, "raw": g.text} for j, g, _ in failed]
            out.append(Explanation(text=text, explainer=self.name, meta=meta, usage=gen.usage))
        return out
