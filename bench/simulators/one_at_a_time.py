"""One-at-a-time simulation (method.md section 5): one model call per token.

Each call shows the explanation, the excerpt's text up to and including the token, the token named
again (escaped, in quotes), and asks for its activation; the model answers with one number.

* ``logprobs`` -- the top logprobs of the first generated (non-whitespace) token give the EV
  (:func:`bench.simulators.parsing.value_logprobs`; with ``max_tokens`` >= 2 a value the tokenizer
  splits, "1","0", is chained with the second token).  Recorded as ``one_at_a_time/logprobs``.
* ``sampled`` -- logprob-free: the first integer of the answer (0..10); ``samples`` > 1 averages k
  answers (their histogram is the recorded distribution).  Recorded as ``one_at_a_time/sampled``.

An answer with no valid value gives EV 0 and counts as ``unparsed``.  The few-shot examples are two
tokens of each worked example (its strongest and its first silent token) with their values, so every
call shares the same cacheable prefix.  Costs ``tokens x samples`` calls per excerpt: the dry run
(``neuronbench run --dry-run ...``) says how many before anything is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.protocols import Capability, ChatMessage, GenerationRequest
from bench.records import ActivationRecord, Simulation, Usage
from bench.simulators.all_at_once import (
    DEFAULT_EXPLANATION_PREFIX,
    DEFAULT_FEW_SHOT,
    _parse_examples,
    check_sampling_fields,
    combine_samples,
    one_hot,
)
from bench.simulators.estimators import ESTIMATORS, EstimatorChoice, estimators_of
from bench.simulators.expected_value import expected_value_from_logprobs
from bench.simulators.parsing import first_answer_token, parse_answer, value_logprobs
from bench.simulators.prompt_format import END, START, escape_token

STRATEGY = "one_at_a_time"
ESTIMATOR_NEEDS: dict[str, frozenset[Capability]] = {
    name: ESTIMATORS[f"{STRATEGY}/{name}"] for name in estimators_of(STRATEGY)
}
LAST_TOKEN = "Last token: "
QUESTION = "How strongly does the neuron react to the last token? Answer with one whole number from 0 to 10."

DEFAULT_SYSTEM = (
    "You predict how strongly one neuron of a language model reacts to one token of a text, from an "
    "explanation of what the neuron looks for. You see the text up to and including that token between "
    f"{START} and {END}, then the token again in quotes (special characters escaped as \\n, \\t). Answer with "
    "one whole number from 0 (no reaction) to 10 (strongest reaction); most tokens are 0."
)


@dataclass(frozen=True)
class OneAtATimeSimulator(EstimatorChoice):
    """Simulate each token with its own call; ``estimator``: ``logprobs`` or ``sampled``.

    ``max_tokens``: tokens generated per answer.  2 (default) lets a value the tokenizer splits into
    "1","0" be read whole (sampled) or chained (logprobs); 1 is exact where "0".."10" are single
    tokens (OpenAI) and saves an output token per call.  ``samples`` / ``temperature`` /
    ``top_logprobs`` / ``top_k_taper`` as in the all-at-once simulator.
    """

    strategy = STRATEGY  # not a field: EstimatorChoice reads it

    llm: Any
    estimator: str = "logprobs"
    name: str = "one_at_a_time"
    few_shot: Any = field(default=DEFAULT_FEW_SHOT)
    system: str = DEFAULT_SYSTEM
    explanation_prefix: str = DEFAULT_EXPLANATION_PREFIX
    samples: int = 1
    temperature: float | None = None
    top_logprobs: int = 20
    top_k_taper: float = 0.0
    max_tokens: int = 2
    version: int = 1
    unit_kind: str = "mlp_neuron"  # set from units.kind by the run (for_unit_kind): what the prompt calls a unit

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_NEEDS:
            raise ValueError(
                f"estimator: {self.estimator!r} is not a one-at-a-time estimator; use one of "
                f"{', '.join(ESTIMATOR_NEEDS)} (or an all-at-once simulator preset)"
            )
        check_sampling_fields(self)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 8:
            raise ValueError(f"max_tokens: must be an integer in 1..8, got {self.max_tokens!r}")
        object.__setattr__(self, "few_shot", _parse_examples(self.few_shot))

    # ------------------------------------------------------------------------------------------------
    def for_unit_kind(self, kind: str) -> OneAtATimeSimulator:
        """This simulator with its fixed prompt text calling units ``kind``'s noun (:mod:`bench.unit_nouns`)."""
        from bench.unit_nouns import reword

        return replace(
            self, system=reword(self.system, kind), explanation_prefix=reword(self.explanation_prefix, kind),
            unit_kind=kind,
        )  # fmt: skip

    def _question(self, number: int, explanation: str, tokens: Sequence[str], position: int) -> str:
        from bench.unit_nouns import reword

        explanation = " ".join(explanation.strip().splitlines())
        text = "".join(tokens[: position + 1])
        header = reword(f"Neuron {number}\nExplanation of neuron {number}:", self.unit_kind)
        question = reword(QUESTION, self.unit_kind)
        return (
            f"{header} {self.explanation_prefix} {explanation}\n"
            f'Text:\n{START}{text}{END}\n{LAST_TOKEN}"{escape_token(tokens[position])}"\n{question}'
        )

    def _prefix(self) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.system)]
        number = 0
        for ex in self.few_shot:
            strongest = max(range(len(ex.values)), key=lambda i: (ex.values[i], -i), default=None)
            silent = next((i for i, v in enumerate(ex.values) if v == 0), None)
            for position in dict.fromkeys(p for p in (strongest, silent) if p is not None):
                number += 1
                messages.append(ChatMessage("user", self._question(number, ex.explanation, ex.tokens, position)))
                messages.append(ChatMessage("assistant", str(ex.values[position])))
        return messages

    @property
    def top_k(self) -> int | None:
        """The recorded ``k``: how many top logprobs each answer is read from (None: sampled answers)."""
        return self.top_logprobs if self.estimator == "logprobs" else None

    def build_requests(self, explanation: str, tokens: Sequence[str]) -> list[GenerationRequest]:
        """``len(tokens) x samples`` requests for one excerpt, token by token (exposed for tests)."""
        prefix = self._prefix()
        number = sum(1 for m in prefix if m.role == "user") + 1
        out = []
        for position in range(len(tokens)):
            messages = (*prefix, ChatMessage("user", self._question(number, explanation, tokens, position)))
            for i in range(self.samples):
                out.append(
                    GenerationRequest(
                        messages=messages,
                        max_tokens=self.max_tokens,
                        temperature=self.resolved_temperature,
                        sample_index=i,
                        top_logprobs=self.asked_top_logprobs if self.estimator == "logprobs" else 0,
                    )
                )
        return out

    def requests(self, explanation: str, records: Sequence[ActivationRecord]) -> list[GenerationRequest]:
        """Every request ``simulate`` sends for these records (dry runs count them)."""
        return [q for r in records for q in self.build_requests(explanation, r.tokens)]

    # ------------------------------------------------------------------------------------------------
    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        self.check_backend()
        requests = self.requests(explanation, records)
        generations = self.llm.generate(requests) if requests else []
        if len(generations) != len(requests):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(requests)} requests")
        usage = Usage()
        for g in generations:
            usage = usage + g.usage
        counts = {"chained_values": 0, "unresolved_one_or_ten": 0}
        sequences, k = [], 0
        for record in records:
            per_sample: list[list[list[float] | None]] = [[] for _ in range(self.samples)]
            for _position in record.tokens:
                for s in range(self.samples):
                    per_sample[s].append(self._read(generations[k], counts))
                    k += 1
            sequences.append(combine_samples(record, per_sample))
        meta = {
            "few_shot_examples": sum(1 for r in requests[:1] for m in r.messages if m.role == "assistant"),
            "llm": self.llm.name,
            "samples": self.samples,
            "temperature": self.resolved_temperature,
            "max_tokens": self.max_tokens,
            "version": self.version,
            **({"top_logprobs": self.top_logprobs, **counts} if self.estimator == "logprobs" else {}),
        }
        return Simulation(
            sequences=sequences,
            simulator=self.name,
            estimator=self.recorded_estimator,
            usage=usage,
            meta=meta,
            top_k=self.top_k,
            top_k_taper=self.recorded_taper,
        )

    def _read(self, generation: Any, counts: dict[str, int]) -> list[float] | None:
        if self.estimator == "sampled":
            return one_hot(parse_answer(generation.text))
        logprobs = self.tapered(generation.logprobs or [])
        index = first_answer_token(logprobs)
        if index is None:
            return None
        read = value_logprobs(logprobs, index)
        counts["chained_values"] += read.chained
        counts["unresolved_one_or_ten"] += read.unresolved
        return expected_value_from_logprobs(read.logprobs).distribution
