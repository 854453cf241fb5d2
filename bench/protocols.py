"""The contracts every swappable part implements.

Implementations live in the plural folders (``bench/llm/``, ``bench/explainers/`` ...) or in
``plugins/``; a YAML file in ``conf/`` names one by ``_target_``.  Constructors must be cheap (no model
loads, no network): the CLI instantiates every part to validate a config before any work starts, and
parts load their heavy resources lazily on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bench.records import (
    ActivationRecord,
    Explanation,
    Score,
    SequenceSimulation,
    Simulation,
    UnitId,
    UnitRecord,
    UnitResult,
    Usage,
)

if TYPE_CHECKING:
    import numpy as np

# The simulator's answer alphabet: the strings "0".."10" (method.md section 5).
VALUE_STRINGS: tuple[str, ...] = tuple(str(i) for i in range(11))


# ---------------------------------------------------------------------------------------------------
# LLM backends
# ---------------------------------------------------------------------------------------------------
class Capability(StrEnum):
    """What an LLM backend can return; simulators declare which ones they need."""

    GENERATE = "generate"  # sampled / greedy text
    GENERATED_LOGPROBS = "generated_logprobs"  # top logprobs of generated tokens
    PROMPT_LOGPROBS = "prompt_logprobs"  # distributions at positions inside the prompt (top-k, as APIs return)
    # ... over the whole vocabulary (in-process models): what the exact estimators need; HTTP servers
    # return only the top k alternatives per position (vLLM: at most its --max-logprobs)
    EXACT_PROMPT_LOGPROBS = "exact_prompt_logprobs"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion.  ``sample_index`` distinguishes k samples of the same prompt (caching)."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int = 60
    temperature: float = 1.0
    sample_index: int = 0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # > 0 asks for the top logprobs of every generated token
    assistant_prefix: str = ""  # text the assistant's reply is forced to start with


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token and the top alternatives at its position (log probabilities)."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass(frozen=True)
class Generation:
    text: str
    logprobs: list[TokenLogprobs] | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class SlotRequest:
    """Distributions over ``values`` at character offsets inside a prompt (prompt-logprob estimator).

    The prompt is ``messages`` rendered with the backend's chat template, the last message being an
    assistant message whose content is a prefill; ``slots`` are character offsets into that last
    message's content.  For each slot the backend returns P(value | everything before the slot) for
    every string in ``values`` -- exactly, including values its tokenizer splits into several tokens
    (e.g. "10" as "1","0").

    ``top_k``: read the distributions as an API returns them -- only the ``top_k`` most likely tokens at
    each position (and at each chaining step) are visible, everything else counts as 0 -- so that an
    in-process model and an HTTP server compute the same numbers (method.md section 5;
    :mod:`bench.simulators.topk_values` is the one definition both use).  ``None``: the backend's own
    default -- the whole vocabulary in-process (exact), ``slot_top_k`` over HTTP.
    """

    messages: tuple[ChatMessage, ...]
    slots: tuple[int, ...]
    values: tuple[str, ...] = VALUE_STRINGS
    top_k: int | None = None


@dataclass(frozen=True)
class SlotResult:
    probabilities: list[dict[str, float]]  # one dict per slot: value string -> probability
    usage: Usage = field(default_factory=Usage)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. how multi-token values were handled


@runtime_checkable
class LLMClient(Protocol):
    """One model behind one API.  Batched: a list of requests in, a list of answers out, same order."""

    name: str

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]: ...


# ---------------------------------------------------------------------------------------------------
# Method components
# ---------------------------------------------------------------------------------------------------
@runtime_checkable
class Explainer(Protocol):
    """Writes explanations of a unit from its train records (top excerpts)."""

    name: str

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]: ...


@runtime_checkable
class Simulator(Protocol):
    """Predicts per-token activations (0-10 scale) of excerpts from an explanation alone."""

    name: str
    estimator: str  # recorded with every result: e.g. "all_at_once/prompt_logprobs"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation: ...


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may look at for one unit.

    ``scoring_top`` / ``scoring_random`` are the simulations of the scoring split's two halves;
    ``calibration`` the simulation of the calibration split (for calibrated scores).  ``subject`` and
    ``simulator`` are given for scorers that need to run models again (ablation, controls).
    ``details`` is where a scorer may leave per-unit evidence under its own name (judge answers,
    promoted tokens, LLM usage as ``{"usage": asdict(Usage)}``); the pipeline keeps it in
    ``UnitResult.extras["scorers"]`` and counts the usage as the scorer's cost.
    """

    unit: UnitRecord
    explanation: Explanation
    scoring_top: list[SequenceSimulation]
    scoring_random: list[SequenceSimulation]
    scoring_records: list[ActivationRecord] = field(default_factory=list)  # top then random, as simulated
    calibration: list[SequenceSimulation] | None = None
    calibrator: Callable[[np.ndarray], np.ndarray] | None = None  # sim -> real scale, fitted on calibration
    calibration_problem: str | None = None  # why there is no calibrator (kept as the NaN reason)
    subject: Any = None
    simulator: Simulator | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    name: str
    needs_calibration: bool

    def score(self, ctx: ScoringContext) -> dict[str, Score]: ...


@runtime_checkable
class Sink(Protocol):
    """A mirror of results as units finish (MLflow ...).  The run's JSONL is the resumable source of
    truth (``bench.tracking.jsonl.JsonlSink``); mirrors never decide what is finished."""

    def write(self, result: UnitResult) -> None: ...

    def close(self, summary: dict[str, float], results: list[UnitResult]) -> None: ...


# ---------------------------------------------------------------------------------------------------
# Subject model and data
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectInfo:
    """How activations were produced: recorded with every result (house-style: TransformerLens lesson)."""

    model: str
    revision: str | None
    weights_sha256: str | None
    dtype: str
    family: str
    hook_site: str  # e.g. "model.layers.{layer}.mlp.down_proj:input"
    n_layers: int
    width: int  # units per layer
    randomize_seed: int | None = None  # set for the random-subject baseline (weights re-initialised)


@dataclass(frozen=True)
class ExcerptSet:
    """Fixed-length token windows of a corpus, tokenized by the subject's tokenizer."""

    token_ids: np.ndarray  # shape (n_excerpts, excerpt_len), int64
    fingerprint: str  # hash of everything that determined the excerpts (cache key part)
    description: dict[str, Any] = field(default_factory=dict)


class Dataset(Protocol):
    """A corpus cut into ``n_excerpts`` windows of ``excerpt_len`` tokens (both are config fields)."""

    name: str
    n_excerpts: int
    excerpt_len: int

    def excerpts(self, tokenizer: Any, seed: int) -> ExcerptSet: ...


class Subject(Protocol):
    """A transformers LM with hookable units."""

    @property
    def info(self) -> SubjectInfo: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def model(self) -> Any:
        """The loaded torch model (for ablation); ``info.hook_site`` says where its units live."""
        ...

    def mine(self, excerpts: ExcerptSet, layer: int, top_k: int, random_k: int, seed: int) -> list[UnitRecord]: ...
