"""All-at-once simulation: one model call per excerpt (method.md section 5), three estimators.

``estimator`` picks how the activation of every token is read (recorded as ``all_at_once/<estimator>``):

* ``prompt_logprobs`` (a) -- the prompt shows a few example neurons whose excerpts switch from
  ``unknown`` to real values part-way through, then the target excerpt with **every** value written
  as ``unknown`` (an assistant prefill).  The backend returns the distribution over "0".."10" at the
  start of each ``unknown``; its expected value is the simulated activation.  As in the reference
  (method.md section 5) it is read from the **top ``top_logprobs`` tokens** only (values outside them
  count as 0, the rest is renormalised; a slot with no value among them is *unparsed*) -- the same
  definition on every backend (:mod:`bench.simulators.topk_values`), so a local model and a vLLM
  server give the same numbers.  Needs prompt logprobs (local transformers models, vLLM).
* ``prompt_logprobs_exact`` -- the same prompt, the distribution over the whole vocabulary (no value is
  ever out of sight).  Only in-process models can compute it; HTTP backends are refused in one line.
* ``generated_logprobs`` (b) -- the user message holds the excerpt with every value ``unknown``; the
  model writes it back as ``token<TAB>value`` lines (the few-shot answers show how).  The lines are
  matched back to the excerpt's tokens (:func:`bench.simulators.parsing.match_lines`) and the top
  logprobs at each written value give the EV.  Needs logprobs of generated tokens (OpenAI chat).
* ``sampled`` (c) -- the same prompt, logprob-free: the written integers are the prediction;
  ``samples`` > 1 averages k samples (their histogram is the recorded distribution).  Any backend
  that generates text (Anthropic, Ollama ...).

Tokens with no valid value get EV 0 and are counted as ``unparsed``.  A response whose lines do not
match the excerpt raises :class:`~bench.simulators.parsing.SimulationParseError` with the raw
response (with k samples: only when no sample matches; the others are kept in ``meta``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.protocols import (
    VALUE_STRINGS,
    Capability,
    ChatMessage,
    Generation,
    GenerationRequest,
    SlotRequest,
    SlotTopK,
)
from bench.records import ActivationRecord, SequenceSimulation, Simulation, Usage
from bench.simulators.estimators import ESTIMATORS, EstimatorChoice, estimators_for, estimators_of
from bench.simulators.expected_value import expected_value_from_logprobs, expected_value_from_probabilities
from bench.simulators.parsing import (
    SimulationParseError,
    match_lines,
    parse_value,
    preamble,
    token_at,
    token_starts,
    value_logprobs,
)
from bench.simulators.prompt_format import (
    END,
    START,
    UNKNOWN,
    escape_token,
    format_excerpt,
    format_unknown_excerpt,
)

STRATEGY = "all_at_once"
# Which backend capabilities each all-at-once estimator needs (method.md 5 (a)-(c)).
ESTIMATOR_NEEDS: dict[str, frozenset[Capability]] = {
    name: ESTIMATORS[f"{STRATEGY}/{name}"] for name in estimators_of(STRATEGY)
}
GENERATION_ESTIMATORS = ("generated_logprobs", "sampled")
SLOT_ESTIMATORS = ("prompt_logprobs", "prompt_logprobs_exact")
OPENAI_TOP_LOGPROBS = 20  # the most alternatives per generated token OpenAI's chat API returns
WRITE_BACK = (
    f"Write the excerpt again between {START} and {END}, one line per token as token<TAB>activation, in the "
    f"same order, copying every token exactly as written above (escapes included) and replacing each "
    f"{UNKNOWN} with a whole number from 0 to 10."
)

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
    """The all-at-once estimators a backend with these capabilities can serve."""
    return [name.split("/", 1)[1] for name in estimators_for(capabilities) if name.startswith(f"{STRATEGY}/")]


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
class AllAtOnceSimulator(EstimatorChoice):
    """Simulate every token of an excerpt in one call (``estimator``: see the module docstring).

    ``samples``: calls per excerpt whose per-token distributions are averaged (generation estimators;
    for ``sampled`` the histogram of the k integers).  ``temperature``: null means 0 for one sample and
    1.0 for several.  ``top_logprobs``: the ``k`` of every top-logprob estimator, recorded as
    ``Simulation.top_k``: alternatives asked for at every generated token (OpenAI: <= 20), and for
    ``prompt_logprobs`` the tokens visible at every slot (<= 100; a vLLM server must allow it with
    ``--max-logprobs``).  ``top_k_taper``: 0 cuts at rank k as the reference does (a step: engines whose
    logprobs differ by float noise can disagree on a token at the cut); τ > 0 ramps the cut over τ nats
    above the (k+1)-th token, which is read too (:mod:`bench.simulators.topk_values`); recorded.
    """

    strategy = STRATEGY  # not a field: EstimatorChoice reads it

    llm: Any
    estimator: str = "prompt_logprobs"
    name: str = "all_at_once"
    few_shot: Any = field(default=DEFAULT_FEW_SHOT)
    system: str = DEFAULT_SYSTEM
    explanation_prefix: str = DEFAULT_EXPLANATION_PREFIX
    samples: int = 1
    temperature: float | None = None
    top_logprobs: int = 20
    top_k_taper: float = 0.0
    version: int = 1
    unit_kind: str = "mlp_neuron"  # set from units.kind by the run (for_unit_kind): what the prompt calls a unit

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_NEEDS:
            raise ValueError(
                f"estimator: {self.estimator!r} is not an all-at-once estimator; use one of "
                f"{', '.join(ESTIMATOR_NEEDS)} (or simulator=<..._one_at_a_time> for the one-at-a-time strategy)"
            )
        check_sampling_fields(self, max_top=100 if self.estimator == "prompt_logprobs" else OPENAI_TOP_LOGPROBS)
        if self.estimator in SLOT_ESTIMATORS and self.samples != 1:
            raise ValueError(f"samples: {self.estimator} reads distributions, not samples; samples must be 1")
        cap = self.llm.slot_top_k if isinstance(self.llm, SlotTopK) else None
        if self.estimator == "prompt_logprobs" and isinstance(cap, int) and self.asked_top_logprobs > cap:
            plus = " + 1 (top_k_taper > 0 reads the (k+1)-th token too)" if self.top_k_taper else ""
            raise ValueError(
                f"top_logprobs: {self.top_logprobs}{plus} exceeds simulator.llm.slot_top_k={cap} (the most the "
                f"server returns per position, its --max-logprobs); lower top_logprobs or raise both"
            )
        object.__setattr__(self, "few_shot", _parse_examples(self.few_shot))

    # ------------------------------------------------------------------------------------------------
    # Prompts
    # ------------------------------------------------------------------------------------------------
    def build_request(self, explanation: str, tokens: Sequence[str]) -> SlotRequest:
        """The chat messages and slot offsets for one excerpt (prompt_logprobs; exposed for tests)."""
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
        return SlotRequest(
            messages=tuple(messages),
            slots=tuple(slots),
            values=VALUE_STRINGS,
            top_k=self.top_k,
            top_k_taper=self.top_k_taper if self.top_k is not None else 0.0,
        )

    def build_generation_requests(self, explanation: str, tokens: Sequence[str]) -> list[GenerationRequest]:
        """The ``samples`` chat requests for one excerpt (generation estimators; exposed for tests)."""
        messages = [ChatMessage("system", self.system)]
        for k, ex in enumerate(self.few_shot, start=1):
            messages.append(ChatMessage("user", self._write_back_text(k, ex.explanation, ex.tokens)))
            messages.append(ChatMessage("assistant", format_excerpt(ex.tokens, ex.values).rstrip("\n")))
        messages.append(ChatMessage("user", self._write_back_text(len(self.few_shot) + 1, explanation, tokens)))
        budget = 16 + sum(len(escape_token(t).encode("utf-8")) + 4 for t in tokens)  # <= one token per byte
        return [
            GenerationRequest(
                messages=tuple(messages),
                max_tokens=budget,
                temperature=self.resolved_temperature,
                sample_index=i,
                stop=(END,),
                top_logprobs=self.asked_top_logprobs if self.estimator == "generated_logprobs" else 0,
            )
            for i in range(self.samples)
        ]

    def requests(self, explanation: str, records: Sequence[ActivationRecord]) -> list[Any]:
        """Every request ``simulate`` sends for these records (dry runs count them)."""
        live = [r for r in records if r.tokens]
        if self.estimator in SLOT_ESTIMATORS:
            return [self.build_request(explanation, r.tokens) for r in live]
        return [q for r in live for q in self.build_generation_requests(explanation, r.tokens)]

    def for_unit_kind(self, kind: str) -> AllAtOnceSimulator:
        """This simulator with its fixed prompt text calling units ``kind``'s noun (:mod:`bench.unit_nouns`)."""
        from bench.unit_nouns import reword

        return replace(
            self, system=reword(self.system, kind), explanation_prefix=reword(self.explanation_prefix, kind),
            unit_kind=kind,
        )  # fmt: skip

    def _user_text(self, number: int, explanation: str) -> str:
        from bench.unit_nouns import reword

        explanation = " ".join(explanation.strip().splitlines())
        header = reword(f"Neuron {number}\nExplanation of neuron {number}:", self.unit_kind)
        return f"{header} {self.explanation_prefix} {explanation}\nPredict its activation on every token."

    def _write_back_text(self, number: int, explanation: str, tokens: Sequence[str]) -> str:
        excerpt = format_excerpt(tokens, [UNKNOWN] * len(tokens))
        return f"{self._user_text(number, explanation)}\n{excerpt}{WRITE_BACK}"

    # ------------------------------------------------------------------------------------------------
    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        self.check_backend()
        if self.estimator in SLOT_ESTIMATORS:
            return self._simulate_slots(explanation, records)
        return self._simulate_generated(explanation, records)

    @property
    def top_k(self) -> int | None:
        """The recorded ``k``: how many top logprobs each value is read from (None: exact or sampled)."""
        if self.estimator in ("prompt_logprobs", "generated_logprobs"):
            return self.top_logprobs
        return None

    def _meta(self) -> dict[str, Any]:
        return {
            "few_shot_examples": len(self.few_shot),
            "llm": self.llm.name,
            "version": self.version,
        }

    def _simulate_generated(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        live = [i for i, r in enumerate(records) if r.tokens]
        requests = [q for i in live for q in self.build_generation_requests(explanation, records[i].tokens)]
        generations = self.llm.generate(requests) if requests else []
        if len(generations) != len(requests):
            raise RuntimeError(f"backend returned {len(generations)} generations for {len(requests)} requests")
        usage = Usage()
        for g in generations:
            usage = usage + g.usage
        counts = {"chained_values": 0, "unresolved_one_or_ten": 0, "skipped_preambles": 0}
        mismatched: list[dict[str, Any]] = []
        by_record: dict[int, list[Generation]] = {}
        for n, i in enumerate(live):
            by_record[i] = generations[n * self.samples : (n + 1) * self.samples]
        sequences = []
        for i, record in enumerate(records):
            per_sample: list[list[list[float] | None]] = []
            errors: list[SimulationParseError] = []
            for g in by_record.get(i, []):
                try:
                    per_sample.append(self._read_generation(g, record.tokens, counts))
                except SimulationParseError as err:
                    errors.append(err)
            if errors and not per_sample:
                if len(errors) == 1:
                    raise errors[0]
                raise SimulationParseError(
                    f"none of the {len(errors)} samples matched the excerpt ({errors[0].args[0].split('; raw')[0]})",
                    [g.text for g in by_record[i]],
                )
            mismatched += [{"excerpt": i, "error": str(e).split("; raw")[0], "raw": e.raw_response} for e in errors]
            sequences.append(combine_samples(record, per_sample))
        meta = {
            **self._meta(),
            "samples": self.samples,
            "temperature": self.resolved_temperature,
            **({"top_logprobs": self.top_logprobs, **counts} if self.estimator == "generated_logprobs" else {}),
            "skipped_preambles": counts["skipped_preambles"],  # responses with text before the first token line
            "mismatched_samples": mismatched,
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

    def _read_generation(
        self, generation: Generation, tokens: Sequence[str], counts: dict[str, int]
    ) -> list[list[float] | None]:
        """Per token: the distribution over 0..10 read from one response, or None (unparsed)."""
        text = generation.text
        lines = match_lines(text, tokens, what=f"{self.recorded_estimator} response")
        counts["skipped_preambles"] += bool(preamble(text, tokens))
        if self.estimator == "sampled":
            return [one_hot(parse_value(line.value_text)) for line in lines]
        logprobs = generation.logprobs
        if logprobs is None:
            raise SimulationParseError(f"{self.llm.name} returned no logprobs for a generated_logprobs request", text)
        logprobs = self.tapered(logprobs)
        starts = token_starts(text, logprobs)
        out: list[list[float] | None] = []
        for line in lines:
            found = token_at(starts, logprobs, line.value_start)
            if found is None:
                out.append(None)
                continue
            read = value_logprobs(logprobs, *found)
            counts["chained_values"] += read.chained
            counts["unresolved_one_or_ten"] += read.unresolved
            out.append(expected_value_from_logprobs(read.logprobs).distribution)
        return out

    def _simulate_slots(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
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
            **self._meta(),
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


# ---------------------------------------------------------------------------------------------------
# Shared by the generation estimators (also used by the one-at-a-time simulator)
# ---------------------------------------------------------------------------------------------------
def check_sampling_fields(obj: Any, max_top: int = OPENAI_TOP_LOGPROBS) -> None:
    """``__post_init__`` checks of ``samples`` / ``temperature`` / ``top_logprobs`` (ValueError "field: ...")."""
    if isinstance(obj.samples, bool) or not isinstance(obj.samples, int) or obj.samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {obj.samples!r}")
    if obj.temperature is not None and not 0.0 <= float(obj.temperature) <= 2.0:
        raise ValueError(f"temperature: must be in [0, 2] or null (auto), got {obj.temperature}")
    top = obj.top_logprobs
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= max_top:
        why = "OpenAI's maximum" if max_top == 20 else "prompt logprobs"
        raise ValueError(f"top_logprobs: must be an integer in 1..{max_top} ({why}), got {top!r}")
    from bench.simulators.topk_values import check_taper, read_k

    taper = check_taper(obj.top_k_taper)
    # generated tokens' alternatives are asked of the API, whose cap is max_top (OpenAI: 20); a prompt-logprob
    # server's cap is simulator.llm.slot_top_k, checked against the same read_k in __post_init__
    if obj.top_k is not None and max_top <= OPENAI_TOP_LOGPROBS and read_k(top, taper) > max_top:
        raise ValueError(
            f"top_k_taper: a taper reads the (k+1)-th token too, so top_logprobs must be <= {max_top - 1} "
            f"(got {top}, the API returns at most {max_top}); lower top_logprobs or set top_k_taper=0"
        )


def one_hot(value: int | None) -> list[float] | None:
    if value is None:
        return None
    return [1.0 if v == value else 0.0 for v in range(len(VALUE_STRINGS))]


def combine_samples(record: ActivationRecord, per_sample: Sequence[Sequence[list[float] | None]]) -> SequenceSimulation:
    """Average each token's distribution over the samples that parsed it; unparsed when none did."""
    expected, dists, unparsed = [], [], 0
    for t in range(len(record.tokens)):
        parsed = [s[t] for s in per_sample if s[t] is not None]
        if not parsed:
            unparsed += 1
            expected.append(0.0)
            dists.append([0.0] * len(VALUE_STRINGS))
            continue
        mean = [sum(d[v] for d in parsed if d is not None) / len(parsed) for v in range(len(VALUE_STRINGS))]
        ev = expected_value_from_probabilities(dict(zip(VALUE_STRINGS, mean, strict=True)))
        expected.append(ev.value)
        dists.append(ev.distribution or [0.0] * len(VALUE_STRINGS))
    return SequenceSimulation(
        tokens=list(record.tokens),
        expected=expected,
        true_activations=list(record.activations),
        unparsed=unparsed,
        distributions=dists,
    )
