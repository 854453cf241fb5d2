"""The contracts every swappable part implements.

Implementations live in the plural folders (``bench/llm/``, ``bench/explainers/`` ...) or in
``plugins/``; a YAML file in ``conf/`` names one by ``_target_``.  Constructors must be cheap (no model
loads, no network): the CLI instantiates every part to validate a config before any work starts, and
parts load their heavy resources lazily on first use.

Each contract lists EVERY member the pipeline, the config checks, ``--dry-run`` and the scorers read,
so nothing is probed with ``getattr``: a part declares them all (a simulator without an LLM declares
``llm: ClassVar[None] = None``), and :func:`bench.config.build_parts` refuses one that lacks a member
in one line.  Data members are read-only properties here, so a dataclass field, a ``ClassVar`` or a
property all satisfy them.  What only some parts can do is a small Protocol of its own (a
capability: ``Reranks``, ``PlansSimulations``, ``RecordSource``, ``SourceMining``, ``ReadyCheck``,
``PaidAPI`` ...), asked with ``isinstance``; a part has it by declaring its members, no subclassing.
Caution: on Python 3.11 ``isinstance`` against a Protocol evaluates every member (properties too), so
capabilities list only cheap members and nothing asks ``isinstance(x, Subject)`` (its ``model`` loads
the weights); :func:`missing_members` looks members up statically instead.
:mod:`bench.conformance` makes mypy check every shipped part against its contracts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    default -- the whole vocabulary in-process (exact), ``slot_top_k`` over HTTP.  ``top_k_taper`` > 0:
    the cut at rank ``top_k`` is a ramp of that width in nats, set by the (k+1)-th token (the backend
    reads one more alternative; :func:`bench.simulators.topk_values.visible_top`).
    """

    messages: tuple[ChatMessage, ...]
    slots: tuple[int, ...]
    values: tuple[str, ...] = VALUE_STRINGS
    top_k: int | None = None
    top_k_taper: float = 0.0


@dataclass(frozen=True)
class SlotResult:
    probabilities: list[dict[str, float]]  # one dict per slot: value string -> probability
    usage: Usage = field(default_factory=Usage)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. how multi-token values were handled


@runtime_checkable
class LLMClient(Protocol):
    """One model behind one API.  Batched: a list of requests in, a list of answers out, same order."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]: ...


# Optional capabilities of a backend.  A backend has them by declaring the members (no subclassing);
# callers ask with ``isinstance(llm, ReadyCheck)`` ... instead of probing attribute names.
@runtime_checkable
class ReadyCheck(Protocol):
    """A backend that can say before any work that it will be able to answer (HTTP backends)."""

    def check_ready(self) -> None:
        """Raise :class:`~bench.errors.UserError` when it cannot run (API key unset, cache not writable)."""
        ...

    def check_server(self) -> list[str] | None:
        """Ask the server once (no model load); raise ``UserError`` when it is down or lacks the model."""
        ...


@runtime_checkable
class TemperatureLimited(Protocol):
    """A backend that accepts sampling temperatures only in ``temperature_range`` (Anthropic: 0..1)."""

    @property
    def temperature_range(self) -> tuple[float, float]: ...


@runtime_checkable
class ContextLimited(Protocol):
    """A backend with a context window of ``max_context`` tokens (None: unknown); explainers fit their
    prompts into it."""

    @property
    def max_context(self) -> int | None: ...


@runtime_checkable
class TokenCounting(Protocol):
    """A backend that counts a prompt's tokens with its own tokenizer (else: characters / 4)."""

    def count_tokens(self, messages: Sequence[ChatMessage], assistant_prefix: str = "") -> int: ...


@runtime_checkable
class SlotTopK(Protocol):
    """A backend that reads prompt distributions from the top ``slot_top_k`` logprobs (an HTTP server's cap)."""

    @property
    def slot_top_k(self) -> int: ...


class BackendCounters(Protocol):
    def as_metrics(self, prefix: str) -> dict[str, float]: ...


@runtime_checkable
class CountsCalls(Protocol):
    """A backend that keeps running totals (calls incl. retries, cache hits, tokens, dollars): logged as
    ``cost/backend/<role>/...`` metrics at the end of a run."""

    @property
    def stats(self) -> BackendCounters: ...


@runtime_checkable
class PaidAPI(Protocol):
    """A provider billed per token: what ``--dry-run`` needs to price its calls and count batch jobs."""

    @property
    def model(self) -> str: ...

    @property
    def api_key_env(self) -> str | None: ...

    @property
    def batch(self) -> bool: ...

    def resolved_prices(self, batched: bool = False) -> Any:
        """Per-token prices (``bench.llm.pricing.Prices``; batch mode: times the batch discount), None: unknown."""
        ...

    def batch_jobs(self, requests: Sequence[Any], repeat: int = 1) -> int:
        """Provider batch jobs these requests (times ``repeat``) would fill (0 when not in batch mode)."""
        ...


# ---------------------------------------------------------------------------------------------------
# Method components
# ---------------------------------------------------------------------------------------------------
@runtime_checkable
class Explainer(Protocol):
    """Writes explanations of a unit from its train records (top excerpts).

    ``llm`` is the backend it writes with (``None``: no LLM, e.g. published explanations);
    ``required_capabilities`` what that backend must offer (checked before any call)."""

    @property
    def name(self) -> str: ...

    @property
    def llm(self) -> LLMClient | None: ...

    @property
    def required_capabilities(self) -> frozenset[Capability]: ...

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]: ...


@runtime_checkable
class WrapsExplainer(Protocol):
    """An explainer that delegates the writing to another one (best-of-k): config checks, ``--dry-run``
    and cost counters look through it to the backend that writes."""

    @property
    def explainer(self) -> Explainer: ...

    @property
    def k(self) -> int:
        """Explanations the inner explainer writes per unit (each one simulated to rerank them)."""
        ...


@runtime_checkable
class Reranks(Protocol):
    """An explainer that writes several candidates and keeps the best by a ``rerank(text)`` score (the
    pipeline binds the run's simulator on the calibration split); ``explain`` alone cannot rank."""

    def explain_reranked(
        self, unit: UnitId, records: Sequence[ActivationRecord], rerank: Callable[[str], Any]
    ) -> list[Explanation]: ...


@runtime_checkable
class PlansExplanations(Protocol):
    """An explainer that can list the requests it would send for a unit (``--dry-run``), without sending."""

    def dry_run_requests(self, records: Sequence[ActivationRecord]) -> list[GenerationRequest]: ...


@runtime_checkable
class Simulator(Protocol):
    """Predicts per-token activations (0-10 scale) of excerpts from an explanation alone.

    ``estimator`` is the configured name, ``recorded_estimator`` the full one recorded with every
    result (e.g. ``"all_at_once/prompt_logprobs"``; equal to ``estimator`` for simulators with one way
    of reading values); ``top_k`` how many alternatives per token a logprob estimator reads (``None``:
    not a top-k reading) and ``recorded_taper`` the ramp width of its cut (0: the reference's hard cut;
    ``None``: not a top-k reading); ``llm`` the backend (``None``: no LLM, e.g. the proxies)."""

    @property
    def name(self) -> str: ...

    @property
    def estimator(self) -> str: ...

    @property
    def recorded_estimator(self) -> str: ...

    @property
    def top_k(self) -> int | None: ...

    @property
    def recorded_taper(self) -> float | None: ...

    @property
    def llm(self) -> LLMClient | None: ...

    @property
    def required_capabilities(self) -> frozenset[Capability]: ...

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation: ...


@runtime_checkable
class PlansSimulations(Protocol):
    """A simulator that can list the requests it would send (``--dry-run``), without sending."""

    def requests(self, explanation: str, records: Sequence[ActivationRecord]) -> Sequence[Any]: ...


@runtime_checkable
class SamplingTemperature(Protocol):
    """A component that sends a sampling temperature (checked against ``TemperatureLimited`` backends).
    ``resolved_temperature`` is what is actually sent (a simulator's default when its field is null)."""

    @property
    def resolved_temperature(self) -> float: ...


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
    subject: Subject | None = None
    simulator: Simulator | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    """Scores of one unit from its simulations.  ``needs_calibration``: reads ``ctx.calibrator`` (the
    pipeline then simulates the calibration split); ``needs_subject``: runs the subject model again
    (ablation, output-centric: undefined for units the subject does not compute); ``llm`` the judge
    backend it asks, if any (checked, priced and counted like the others)."""

    @property
    def name(self) -> str: ...

    @property
    def needs_calibration(self) -> bool: ...

    @property
    def needs_subject(self) -> bool: ...

    @property
    def llm(self) -> LLMClient | None: ...

    def score(self, ctx: ScoringContext) -> dict[str, Score]: ...


@runtime_checkable
class Sink(Protocol):
    """A mirror of results as units finish (MLflow ...).  The run's JSONL is the resumable source of
    truth (``bench.tracking.jsonl.JsonlSink``); mirrors never decide what is finished."""

    def write(self, result: UnitResult) -> None: ...

    def close(self, summary: dict[str, float], results: list[UnitResult]) -> None: ...

    def abort(self) -> None:
        """The run stopped early (an exception, Ctrl-C): mark the mirror's record unfinished; never raises."""
        ...


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


@runtime_checkable
class Dataset(Protocol):
    """A corpus cut into ``n_excerpts`` windows of ``excerpt_len`` tokens (both are config fields)."""

    @property
    def name(self) -> str: ...

    @property
    def n_excerpts(self) -> int: ...

    @property
    def excerpt_len(self) -> int: ...

    def excerpts(self, tokenizer: Any, seed: int) -> ExcerptSet: ...


@runtime_checkable
class RecordSource(Protocol):
    """A dataset that holds unit records itself (published ``NeuronRecord`` files): the pipeline reads
    them instead of mining the subject, and the files decide which layers exist."""

    def check_units(self, units: Any) -> None:
        """Every requested layer / index has a record (one line naming the ``units.`` key otherwise)."""
        ...

    def unit_records(self, units: Any) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
        """The chosen units' records and their provenance."""
        ...


@runtime_checkable
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


@runtime_checkable
class MinesInBatches(Protocol):
    """A subject that mines ``batch_size`` excerpts per forward pass on ``resolved_device`` (recorded
    with the cached records)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def resolved_device(self) -> str: ...


@runtime_checkable
class LayerMining(Protocol):
    """A subject that returns one layer's mined arrays (``MinedLayer``): records are then cached on disk.
    A plugin subject with only :meth:`Subject.mine` is mined without the cache."""

    def mine_layer(self, excerpts: ExcerptSet, layer: int, top_k: int, random_k: int, seed: int) -> Any: ...

    def token_strings(self, ids: np.ndarray) -> dict[int, str]: ...


@runtime_checkable
class SourceMining(LayerMining, Protocol):
    """A subject that mines any activation sources (MLP neurons, SAE latents, attention heads) in one
    pass, and remembers them so that scorers find a unit's source (ablation, output-centric)."""

    def mine_sources(
        self,
        excerpts: ExcerptSet,
        sources: list[Any],
        top_k: int,
        random_k: int,
        seed: int,
        start: int = 0,
        stop: int | None = None,
    ) -> list[Any]: ...

    def register_sources(self, sources: list[Any]) -> None: ...

    def source_for(self, unit: UnitId) -> Any: ...


# ---------------------------------------------------------------------------------------------------
# The parts of one run
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunParts:
    """The built (not yet loaded) components of one run, as :func:`bench.config.validate` returns them
    and the pipeline, ``--dry-run``, judge-check, cards and the cost counters read them.  Swap one with
    ``dataclasses.replace(parts, simulator=...)``."""

    subject: Subject
    dataset: Dataset
    explainer: Explainer
    simulator: Simulator
    scorers: Mapping[str, Scorer]  # config name (``scorer=[...]``) -> scorer, in config order


CONTRACTS: dict[str, type] = {
    "subject": Subject,
    "dataset": Dataset,
    "explainer": Explainer,
    "simulator": Simulator,
    "scorer": Scorer,
}


def members(contract: type) -> list[str]:
    """The attribute and method names a Protocol declares (its own and those of the Protocols it extends)."""
    names: dict[str, None] = {}
    for klass in reversed(contract.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in [*getattr(klass, "__annotations__", {}), *vars(klass)]:
            if not name.startswith("_"):
                names[name] = None
    return list(names)


def missing_members(component: object, contract: type) -> list[str]:
    """The members of ``contract`` that ``component`` lacks ([] when it implements it).

    Looked up statically: unlike ``isinstance(x, Subject)`` on Python 3.11 this runs no property (a
    subject's ``model`` would load the weights)."""
    import inspect

    absent = object()
    return [name for name in members(contract) if inspect.getattr_static(component, name, absent) is absent]
