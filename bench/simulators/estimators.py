"""Which simulator strategy x estimator needs which backend capabilities (method.md section 5).

Every LLM simulator records one of these names as ``Simulation.estimator``; config validation
(:func:`bench.config._check_compatibility`) refuses a backend that cannot serve the chosen one, before
any call, and names the estimators that backend *can* serve (:func:`estimators_for`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from bench.errors import UserError
from bench.protocols import Capability, LLMClient

GENERATE, GENERATED, PROMPT = Capability.GENERATE, Capability.GENERATED_LOGPROBS, Capability.PROMPT_LOGPROBS
EXACT = Capability.EXACT_PROMPT_LOGPROBS

# "<strategy>/<estimator>" -> capabilities the backend must offer; in order of fidelity per strategy.
ESTIMATORS: dict[str, frozenset[Capability]] = {
    # (a) distribution at every "unknown" of the prompt, read from its top k tokens (the reference definition:
    # the same numbers in-process and on vLLM for the same recorded k) ...
    "all_at_once/prompt_logprobs": frozenset({PROMPT}),
    # ... or from the whole vocabulary (in-process models only; an API returns at most its top k)
    "all_at_once/prompt_logprobs_exact": frozenset({PROMPT, EXACT}),
    "all_at_once/generated_logprobs": frozenset({GENERATE, GENERATED}),  # (b) top logprobs of written values
    "all_at_once/sampled": frozenset({GENERATE}),  # (c) logprob-free: parsed integers, k samples averaged
    "one_at_a_time/logprobs": frozenset({GENERATE, GENERATED}),  # top logprobs of one generated token
    "one_at_a_time/sampled": frozenset({GENERATE}),  # logprob-free: the integer written, k samples averaged
}


def estimators_of(strategy: str) -> list[str]:
    """The estimator names (without the strategy) of one strategy, e.g. ``all_at_once``."""
    return [name.split("/", 1)[1] for name in ESTIMATORS if name.startswith(strategy + "/")]


def estimators_for(capabilities: Iterable[Capability | str]) -> list[str]:
    """Every ``strategy/estimator`` a backend with these capabilities can serve."""
    offered = {Capability(c) for c in capabilities}
    return [name for name, needs in ESTIMATORS.items() if needs <= offered]


def refusal(estimator: str, llm: LLMClient) -> str | None:
    """One line saying why ``llm`` cannot serve ``estimator`` (and what it can serve), or None."""
    needs = ESTIMATORS[estimator]
    offered = frozenset(llm.capabilities)
    missing = needs - offered
    if not missing:
        return None
    can = estimators_for(offered)
    return (
        f"{estimator} needs {', '.join(sorted(str(c) for c in missing))}, which backend {llm.name!r} does not offer; "
        f"estimators it can serve: {', '.join(can) if can else 'none'}"
    )


class EstimatorChoice:
    """What every LLM simulator strategy says about its estimator: what it needs and how it is
    recorded.  A subclass sets ``strategy`` and has an ``estimator``, ``llm``, ``temperature``,
    ``samples``, ``top_logprobs`` and ``top_k_taper`` field, and a ``top_k`` property (None when the
    estimator reads no top-k logprobs)."""

    strategy: ClassVar[str]
    estimator: str
    llm: Any
    temperature: float | None
    samples: int
    top_logprobs: int
    top_k_taper: float

    @property
    def top_k(self) -> int | None:
        raise NotImplementedError

    @property
    def recorded_taper(self) -> float | None:
        """The ramp width of the top-k cut recorded with every result (0: the reference's hard cut); None
        when the estimator reads no top-k logprobs."""
        return float(self.top_k_taper) if self.top_k is not None else None

    @property
    def asked_top_logprobs(self) -> int:
        """Alternatives asked for per generated token: ``k``, plus the (k+1)-th that sets a taper's ramp."""
        from bench.simulators.topk_values import read_k

        return read_k(self.top_logprobs, self.top_k_taper)

    def tapered(self, logprobs: list[Any]) -> list[Any]:
        """Generated tokens' alternatives cut to the top ``k`` by the one definition
        (:func:`bench.simulators.topk_values.visible_top`); as they are without a taper (a backend
        returns exactly the ``k`` asked for)."""
        if not self.top_k_taper or self.top_k is None:
            return logprobs
        from dataclasses import replace

        from bench.simulators.topk_values import visible_top

        k, taper = self.top_k, self.top_k_taper
        return [
            replace(t, top=visible_top(sorted(t.top.items(), key=lambda kv: -float(kv[1])), k, taper)) for t in logprobs
        ]

    @property
    def required_capabilities(self) -> frozenset[Capability]:
        return ESTIMATORS[self.recorded_estimator]

    @property
    def recorded_estimator(self) -> str:
        return f"{self.strategy}/{self.estimator}"

    @property
    def resolved_temperature(self) -> float:
        """Sampling needs a temperature: 1.0 when several samples are averaged, else greedy 0."""
        if self.temperature is not None:
            return float(self.temperature)
        return 1.0 if self.samples > 1 else 0.0

    def check_backend(self) -> None:
        """Refuse a backend that cannot serve this estimator -- before any call."""
        problem = refusal(self.recorded_estimator, self.llm)
        if problem:
            raise UserError(f"simulator estimator {problem}")
