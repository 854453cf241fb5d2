"""Plain values shared by the engine, the providers and the batch support: a request (:class:`Job`), its
:class:`Outcome`, the backend's :class:`Limits`, its counters (:class:`BackendStats`) and a dry run's
:class:`CostEstimate`.  Imports nothing else from ``bench.llm`` but :mod:`bench.llm.pricing`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.llm.pricing import Prices


@dataclass(frozen=True)
class BackendStats:
    """Running totals of one backend instance (a snapshot).  ``calls`` counts HTTP requests sent,
    retries included; ``dollars`` is NaN when tokens were spent at unknown prices."""

    calls: int = 0  # batch mode: one per request answered (or failed) in a batch
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    batches: int = 0  # batch jobs submitted (batch mode); their requests count in ``calls``
    retry_waits_s: tuple[float, ...] = ()

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat slash-named metrics, e.g. ``as_metrics("cost/simulator/")``."""
        return {f"{prefix}{name}": float(getattr(self, name)) for name in (*COUNT_FIELDS, "dollars")}


# BackendStats' integer counters (everything but ``dollars`` and the retry waits)
COUNT_FIELDS = (
    "calls",
    "cache_hits",
    "retries",
    "failures",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "batches",
)


@dataclass
class Job:
    """One HTTP request: ``send(client)`` performs it and returns the JSON-able value to cache,
    ``{"result": ..., "usage": {input_tokens, cached_input_tokens, cache_write_tokens, output_tokens}}``."""

    key: str
    send: Callable[[Any], Awaitable[dict[str, Any]]]
    est_tokens: int = 1
    input_chars: int = 0  # prompt size, for the budget's upper-bound dollars (tokens ~ chars / 4)
    max_output: int = 0  # output tokens the request may write
    request: dict[str, Any] = field(default_factory=dict)  # what goes on the wire (for inspection)


@dataclass
class Outcome:
    value: dict[str, Any] | None
    cached: bool = False
    attempts: int = 0
    error: BaseException | None = None
    batched: bool = False  # answered through a batch job (billed at batch prices)


@dataclass(frozen=True)
class Limits:
    concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    timeout_s: float


class CostEstimate(NamedTuple):
    """What a batch would cost: HTTP calls (cache hits excluded), prompt tokens (chars / 4), and
    dollars with every call assumed to write its full ``max_tokens`` (an upper bound; NaN: no prices)."""

    calls: int
    input_tokens: int
    dollars: float


def estimate_tokens(text_chars: int) -> int:
    return max(1, math.ceil(text_chars / 4))


def call_dollars(prices: Prices | None, usage: dict[str, Any]) -> float:
    """Dollars of one call's usage dict; NaN when tokens were spent at unknown prices."""
    inp = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cached_input_tokens") or 0)
    write = int(usage.get("cache_write_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    if prices is None:
        return math.nan if inp + out else 0.0
    return prices.dollars(inp, cached, out, write)
