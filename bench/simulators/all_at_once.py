"""All-at-once simulation with prompt logprobs (method.md section 5, estimator (a)).

One model call per excerpt.  The prompt shows a few example neurons whose excerpts switch from
``unknown`` to real values part-way through, then the target excerpt with **every** value written as
``unknown``.  The backend returns the distribution over "0".."10" at the start of each ``unknown`` (the
position right after the token's tab): the expected value of that distribution is the simulated
activation.  Tokens with no probability mass on any value get EV 0 and are counted as ``unparsed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.protocols import VALUE_STRINGS, Capability, ChatMessage, SlotRequest
from bench.records import ActivationRecord, SequenceSimulation, Simulation, Usage
from bench.simulators.expected_value import expected_value_from_probabilities
from bench.simulators.prompt_format import END, START, UNKNOWN, escape_token, format_unknown_excerpt

# Which backend capabilities each all-at-once estimator needs (method.md 5 (a)-(c)); implemented here:
ESTIMATOR_NEEDS: dict[str, frozenset[Capability]] = {
    "prompt_logprobs": frozenset({Capability.PROMPT_LOGPROBS}),
}
PLANNED_ESTIMATORS: dict[str, frozenset[Capability]] = {
    "generated_logprobs": frozenset({Capability.GENERATE, Capability.GENERATED_LOGPROBS}),
    "sampled": frozenset({Capability.GENERATE}),
}

DEFAULT_SYSTEM = (
    "You predict how strongly one neuron of a language model reacts to each token of a text excerpt, "
    "from an explanation of what the neuron looks for.\n"
    f"An excerpt is written between {START} and {END}, one token per line as token<TAB>activation. "
    "Activations are whole numbers from 0 (no reaction) to 10 (strongest reaction); most tokens are 0. "
    f'"{UNKNOWN}" stands for an activation that has not been predicted yet. Special characters inside '
    "tokens are escaped (\\n, \\t)."
)
DEFAULT_EXPLANATION_PREFIX = "the main thing this neuron does is find"

# Synthetic worked examples: values on the 0-10 scale; lines before ``first_revealed`` read "unknown".
DEFAULT_FEW_SHOT: tuple[dict[str, Any], ...] = (
    {
        "explanation": "words about rain and wet weather",
        "tokens": ["The", " forecast", " warns", " of", " heavy", " rain", " and", " drizzle", " all", " week", "."],
        "values": [0, 0, 0, 0, 1, 10, 0, 8, 0, 0, 0],
        "first_revealed": 4,
    },
    {
        "explanation": 'the second word of place names that start with "New"',
        "tokens": ["She", " moved", " from", " New", " Jersey", " to", " New", " York", " last", " year"],
        "values": [0, 0, 0, 0, 9, 0, 0, 10, 0, 0],
        "first_revealed": 3,
    },
)


@dataclass(frozen=True)
class SimulatorExample:
    explanation: str
    tokens: tuple[str, ...]
    values: tuple[int, ...]
    first_revealed: int


def supported_estimators(capabilities: frozenset[Capability] | set[Capability]) -> list[str]:
    """The implemented all-at-once estimators a backend with these capabilities can serve."""
    return [name for name, needs in ESTIMATOR_NEEDS.items() if needs <= set(capabilities)]


def _parse_examples(raw: Any) -> tuple[SimulatorExample, ...]:
    if hasattr(raw, "_content"):  # an OmegaConf node given without _convert_
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(raw, resolve=True)
    out = []
    for k, item in enumerate(raw or ()):
        if isinstance(item, SimulatorExample):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ValueError(f"few_shot: example {k} must be a mapping with explanation, tokens, values")
        unknown = set(item) - {"explanation", "tokens", "values", "first_revealed"}
        if unknown:
            raise ValueError(f"few_shot: example {k} has unknown keys {sorted(unknown)}")
        tokens, values = tuple(str(t) for t in item["tokens"]), tuple(int(v) for v in item["values"])
        if len(tokens) != len(values):
            raise ValueError(f"few_shot: example {k} has {len(tokens)} tokens but {len(values)} values")
        if any(not 0 <= v <= 10 for v in values):
            raise ValueError(f"few_shot: example {k} values must be integers 0..10")
        first = int(item.get("first_revealed", 0))
        if not 0 <= first <= len(tokens):
            raise ValueError(f"few_shot: example {k} first_revealed must be in 0..{len(tokens)}")
        out.append(SimulatorExample(str(item["explanation"]), tokens, values, first))
    return tuple(out)


@dataclass(frozen=True)
class AllAtOnceSimulator:
    """Simulate every token of an excerpt in one call; EV of the value distribution at each slot."""

    llm: Any
    estimator: str = "prompt_logprobs"
    name: str = "all_at_once"
    few_shot: Any = field(default=DEFAULT_FEW_SHOT)
    system: str = DEFAULT_SYSTEM
    explanation_prefix: str = DEFAULT_EXPLANATION_PREFIX
    version: int = 1

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_NEEDS:
            planned = f" ({', '.join(PLANNED_ESTIMATORS)} are not implemented yet)" if PLANNED_ESTIMATORS else ""
            raise ValueError(
                f"estimator: {self.estimator!r} is not supported; supported: {', '.join(ESTIMATOR_NEEDS)}{planned}"
            )
        object.__setattr__(self, "few_shot", _parse_examples(self.few_shot))

    @property
    def required_capabilities(self) -> frozenset[Capability]:
        return ESTIMATOR_NEEDS[self.estimator]

    @property
    def recorded_estimator(self) -> str:
        return f"all_at_once/{self.estimator}"

    def check_backend(self) -> None:
        """Refuse a backend that cannot serve this estimator -- before any call."""
        offered = frozenset(self.llm.capabilities)
        missing = self.required_capabilities - offered
        if missing:
            can = supported_estimators(offered)
            raise UserError(
                f"simulator estimator {self.estimator!r} needs {', '.join(sorted(missing))}, which backend "
                f"{getattr(self.llm, 'name', type(self.llm).__name__)!r} does not offer; estimators it can serve: "
                f"{', '.join(can) if can else 'none of the implemented ones'}"
            )

    # ------------------------------------------------------------------------------------------------
    def build_request(self, explanation: str, tokens: Sequence[str]) -> SlotRequest:
        """The chat messages and slot offsets for one excerpt (exposed for tests and inspection)."""
        messages = [ChatMessage("system", self.system)]
        for k, ex in enumerate(self.few_shot, start=1):
            messages.append(ChatMessage("user", self._user_text(k, ex.explanation)))
            lines = [
                f"{escape_token(t)}\t{UNKNOWN if i < ex.first_revealed else v}\n"
                for i, (t, v) in enumerate(zip(ex.tokens, ex.values, strict=True))
            ]
            messages.append(ChatMessage("assistant", f"{START}\n{''.join(lines)}{END}\n"))
        messages.append(ChatMessage("user", self._user_text(len(self.few_shot) + 1, explanation)))
        body, slots = format_unknown_excerpt(tokens)
        messages.append(ChatMessage("assistant", body))
        return SlotRequest(messages=tuple(messages), slots=tuple(slots), values=VALUE_STRINGS)

    def _user_text(self, number: int, explanation: str) -> str:
        explanation = " ".join(explanation.strip().splitlines())
        return (
            f"Neuron {number}\nExplanation of neuron {number}: {self.explanation_prefix} {explanation}\n"
            f"Predict its activation on every token."
        )

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        self.check_backend()
        requests = [self.build_request(explanation, r.tokens) for r in records]
        live = [i for i, r in enumerate(records) if r.tokens]
        results = self.llm.slot_distributions([requests[i] for i in live]) if live else []
        if len(results) != len(live):
            raise RuntimeError(f"backend returned {len(results)} results for {len(live)} requests")
        by_record = dict(zip(live, results, strict=True))

        sequences, usage = [], Usage()
        handled: dict[str, Any] = {}
        mass = []
        for i, record in enumerate(records):
            expected, dists, unparsed = [], [], 0
            result = by_record.get(i)
            if result is not None:
                usage = usage + result.usage
                handled = handled or {
                    k: v for k, v in result.meta.items() if k not in ("slots", "prompt_tokens", "shared_prefix_tokens")
                }
                if len(result.probabilities) != len(record.tokens):
                    raise RuntimeError(
                        f"backend returned {len(result.probabilities)} slots for {len(record.tokens)} tokens"
                    )
                for probs in result.probabilities:
                    mass.append(sum(max(0.0, float(probs.get(v, 0.0))) for v in VALUE_STRINGS))
                    ev = expected_value_from_probabilities(probs)
                    expected.append(ev.value)
                    if ev.distribution is None:
                        unparsed += 1
                        dists.append([0.0] * len(VALUE_STRINGS))
                    else:
                        dists.append(ev.distribution)
            sequences.append(
                SequenceSimulation(
                    tokens=list(record.tokens),
                    expected=expected,
                    true_activations=list(record.activations),
                    unparsed=unparsed,
                    distributions=dists,
                )
            )
        meta = {
            "value_handling": handled,
            "mean_value_mass": sum(mass) / len(mass) if mass else None,
            "few_shot_examples": len(self.few_shot),
            "llm": getattr(self.llm, "name", type(self.llm).__name__),
            "version": self.version,
        }
        return Simulation(
            sequences=sequences, simulator=self.name, estimator=self.recorded_estimator, usage=usage, meta=meta
        )
