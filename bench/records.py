"""Typed records that cross component boundaries.

Everything a component hands to another is one of these frozen dataclasses, so the pipeline, the
JSONL results and MLflow artifacts all speak the same vocabulary.  Field names follow the
reference's public data format (method.md section 8) where one exists, so records can be exported
to, and read from, the published GPT-2 files.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class UnitId:
    """One unit of the subject model: (layer, index) of a kind such as an MLP neuron."""

    layer: int
    index: int
    kind: str = "mlp_neuron"

    @property
    def key(self) -> str:
        """A stable string id, used as the JSONL/MLflow key of a unit (e.g. ``mlp_neuron/L15/42``)."""
        return f"{self.kind}/L{self.layer}/{self.index}"

    @classmethod
    def from_key(cls, key: str) -> UnitId:
        kind, layer, index = key.split("/")
        return cls(layer=int(layer.removeprefix("L")), index=int(index), kind=kind)


@dataclass(frozen=True)
class ActivationRecord:
    """One excerpt: the subject tokenizer's token strings and the unit's raw activation per token.

    ``token_ids`` (when the record was mined here) lets scorers run the subject on the exact excerpt
    again (ablation); token strings alone do not round-trip through a tokenizer.
    """

    tokens: list[str]
    activations: list[float]
    token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(f"ActivationRecord has {len(self.tokens)} tokens but {len(self.activations)} activations")

    @property
    def max_activation(self) -> float:
        return max(self.activations) if self.activations else -math.inf


@dataclass(frozen=True)
class UnitStats:
    """Summary statistics over every token the miner saw for a unit."""

    count: int
    mean: float
    variance: float
    skewness: float
    kurtosis: float


@dataclass(frozen=True)
class UnitRecord:
    """What mining keeps per unit: top excerpts (by max activation, descending) and a random sample."""

    unit: UnitId
    top: list[ActivationRecord]
    random: list[ActivationRecord]
    stats: UnitStats


@dataclass(frozen=True)
class SplitRecords:
    """One split: its top-activating half and its random half (method.md section 2)."""

    top: list[ActivationRecord]
    random: list[ActivationRecord]

    def select(self, which: str) -> list[ActivationRecord]:
        """Records for a scoring set: ``top_and_random`` (default), ``top_only`` or ``random_only``."""
        if which == "top_and_random":
            return [*self.top, *self.random]
        if which == "top_only":
            return list(self.top)
        if which == "random_only":
            return list(self.random)
        raise ValueError(f"unknown scoring set {which!r}: use top_and_random, top_only or random_only")


@dataclass(frozen=True)
class Splits:
    train: SplitRecords
    calibration: SplitRecords
    valid: SplitRecords
    test: SplitRecords

    def get(self, name: str) -> SplitRecords:
        if name not in ("train", "calibration", "valid", "test"):
            raise ValueError(f"unknown split {name!r}: use train, calibration, valid or test")
        return getattr(self, name)


@dataclass(frozen=True)
class Usage:
    """Token usage of LLM calls, summed; ``calls`` counts requests actually sent (cache hits excluded).

    ``dollars`` is what those calls cost at the backend's prices (0 for local models and cache hits,
    NaN when tokens were spent at unknown prices; JSON ``null`` reads back as NaN).
    """

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0

    def __post_init__(self) -> None:
        if self.dollars is None:
            object.__setattr__(self, "dollars", math.nan)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            dollars=self.dollars + other.dollars,
        )


@dataclass(frozen=True)
class Explanation:
    """A one-line explanation and who wrote it (explainer name, prompt variant and version)."""

    text: str
    explainer: str
    meta: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class SequenceSimulation:
    """Predicted activations for one excerpt, on the simulator's 0-10 scale.

    ``expected`` is the expected value per token; ``distributions`` (optional) the probabilities of
    the values 0..10 per token.  ``unparsed`` counts tokens whose prediction fell back to 0 because
    no valid value was returned (method.md section 5) -- counted, never hidden.
    """

    tokens: list[str]
    expected: list[float]
    true_activations: list[float]
    unparsed: int = 0
    distributions: list[list[float]] | None = None


@dataclass(frozen=True)
class Simulation:
    """All excerpts a simulator predicted for one explanation, plus how it did it.

    ``estimator``, ``top_k`` and ``top_k_taper`` say how values were read: ``top_k`` is the k of a
    top-logprob estimator (the same k means the same numbers on every backend), ``None`` for exact or
    sampled estimators; ``top_k_taper`` the width in nats of the ramp that replaces the hard cut at rank
    k (0: the reference's hard cut; None: no top-k reading, or a result written before it existed).
    """

    sequences: list[SequenceSimulation]
    simulator: str
    estimator: str
    usage: Usage = field(default_factory=Usage)
    meta: dict[str, Any] = field(default_factory=dict)
    top_k: int | None = None
    top_k_taper: float | None = None

    @property
    def unparsed_tokens(self) -> int:
        return sum(s.unparsed for s in self.sequences)

    @property
    def total_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.sequences)

    @property
    def unparsed_rate(self) -> float:
        """Tokens with no readable value (EV 0 fallback), of all tokens; NaN without tokens."""
        return self.unparsed_tokens / self.total_tokens if self.total_tokens else math.nan


@dataclass(frozen=True)
class Score:
    """One scalar score.  ``value`` is NaN exactly when ``reason`` says why; never a silent 0."""

    name: str
    value: float
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return not math.isnan(self.value)


@dataclass(frozen=True)
class UnitResult:
    """Everything one unit produced in one run; one JSONL line of the run's results."""

    unit: UnitId
    status: str  # "ok" or "failed"
    explanation: Explanation | None = None
    simulation: Simulation | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    error: str | None = None
    stage: str | None = None  # where a failure happened: mine, explain, simulate, score
    extras: dict[str, Any] = field(default_factory=dict)
    transient: bool = False  # a failure from an outage (bench.failures): re-running the command retries it

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; NaN becomes ``None`` as in the reference's files.

        Equal to ``_nan_to_none(asdict(self))`` in one walk without ``asdict``'s deep copies: built once
        per unit for results.jsonl, it was a fifth of the pipeline's own CPU per unit."""
        return _json_ready(self)


def _json_ready(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, NaN as ``None``; anything else as is (copied if mutable)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_ready(getattr(value, f.name)) for f in fields(value)}
    return _nan_to_none(copy.deepcopy(value))


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def unit_result_from_json(data: dict[str, Any]) -> UnitResult:
    """Inverse of :meth:`UnitResult.to_json` (``None`` scores back to NaN)."""

    def usage(d: dict[str, Any] | None) -> Usage:
        return Usage(**d) if d else Usage()

    expl = data.get("explanation")
    sim = data.get("simulation")
    return UnitResult(
        unit=UnitId(**data["unit"]),
        status=data["status"],
        explanation=(
            Explanation(
                text=expl["text"],
                explainer=expl["explainer"],
                meta=expl.get("meta", {}),
                usage=usage(expl.get("usage")),
            )
            if expl
            else None
        ),
        simulation=(
            Simulation(
                sequences=[SequenceSimulation(**s) for s in sim["sequences"]],
                simulator=sim["simulator"],
                estimator=sim["estimator"],
                usage=usage(sim.get("usage")),
                meta=sim.get("meta", {}),
                top_k=sim.get("top_k"),
                top_k_taper=sim.get("top_k_taper"),
            )
            if sim
            else None
        ),
        scores={
            k: Score(name=v["name"], value=math.nan if v["value"] is None else v["value"], reason=v.get("reason"))
            for k, v in data.get("scores", {}).items()
        },
        error=data.get("error"),
        stage=data.get("stage"),
        extras=data.get("extras", {}),
        transient=bool(data.get("transient", False)),
    )
