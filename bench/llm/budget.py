"""The run's dollar cap (``budget.max_usd``): stop cleanly *before* a call would exceed it.

Every priced LLM request goes through the shared engine (:class:`bench.llm.client.Engine`), which asks
the process's :class:`Budget` for a reservation before sending: the request's upper-bound dollars (its
prompt at characters / 4 and its full ``max_tokens``, the dry run's estimate) must fit under the cap
together with what this run already spent and what requests in flight have reserved.  When it does not
fit, :class:`BudgetExceeded` (a :class:`~bench.errors.UserError`) stops the run with one line; the
pipeline lets user errors through, so units already finished stay in ``results.jsonl`` and a re-run
with a higher cap resumes them -- requests answered before the stop come from the response cache and
are not paid again.

Why reservations: many units' threads (and one backend's many concurrent requests) call at once; a
check against the spent dollars alone would let every one of them through at the edge of the cap.  A
reservation is released when its request ends; the dollars actually billed (from the response's usage)
are added to ``spent`` as each answer arrives.

The cap counts what *this process* spends for the run (a re-run starts at zero and pays only for
requests not yet answered).  Free backends (local models, unpriced local servers) never reserve.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from bench.errors import UserError

CONTINUE = (
    "raise budget.max_usd and re-run the same command (finished units are kept, answered requests are not paid again)"
)


class BudgetExceeded(UserError):
    """The next request would take the run's spend past ``budget.max_usd``."""


@dataclass(frozen=True)
class BudgetState:
    """A snapshot: the cap (None: no cap), dollars spent, dollars reserved by requests in flight."""

    max_usd: float | None
    spent: float
    reserved: float

    @property
    def remaining(self) -> float:
        return math.inf if self.max_usd is None else max(self.max_usd - self.spent, 0.0)


class Budget:
    """Thread-safe spent + reserved dollars under an optional cap."""

    def __init__(self, max_usd: float | None = None) -> None:
        if max_usd is not None and (isinstance(max_usd, bool) or not math.isfinite(max_usd) or max_usd < 0):
            raise ValueError(f"max_usd: must be a number >= 0 or null (no cap), got {max_usd!r}")
        self.max_usd = None if max_usd is None else float(max_usd)
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0

    def state(self) -> BudgetState:
        with self._lock:
            return BudgetState(self.max_usd, self._spent, self._reserved)

    def reserve(self, dollars: float, label: str) -> float:
        """Reserve ``dollars`` for one request (or one batch job) of backend ``label``; returns the amount
        to :meth:`release` when it ends.  Raises :class:`BudgetExceeded` when it would not fit, and a
        :class:`UserError` when a cap is set but the backend's prices are unknown (NaN)."""
        if self.max_usd is None or dollars <= 0:
            return 0.0
        if math.isnan(dollars):
            raise UserError(
                f"budget.max_usd is set but the prices of LLM backend {label!r} are unknown, so its spend cannot "
                "be capped; give the backend's prices (USD per 1M tokens, e.g. prices: {input: 0.15, output: 0.6}) "
                "or set budget.max_usd=null"
            )
        with self._lock:
            if self._spent + self._reserved + dollars > self.max_usd:
                raise BudgetExceeded(
                    f"budget.max_usd reached: spent ${self._spent:.4f} of ${self.max_usd:.4f} "
                    f"(${max(self.max_usd - self._spent, 0.0):.4f} remaining, ${self._reserved:.4f} reserved by "
                    f"requests in flight); the next request to {label} could cost up to ${dollars:.4f} -- {CONTINUE}"
                )
            self._reserved += dollars
            return dollars

    def release(self, reserved: float) -> None:
        if reserved:
            with self._lock:
                self._reserved = max(self._reserved - reserved, 0.0)

    def spend(self, dollars: float) -> None:
        """Add the dollars billed for an answer (NaN -- unknown prices -- adds nothing)."""
        if dollars and not math.isnan(dollars):
            with self._lock:
                self._spent += dollars


_CURRENT = Budget()
_CURRENT_LOCK = threading.Lock()


def current() -> Budget:
    """The process's budget (no cap until :func:`install` sets one)."""
    return _CURRENT


def install(max_usd: float | None) -> Budget:
    """Start a fresh budget for a run: cap ``max_usd`` (None: no cap), nothing spent yet."""
    global _CURRENT
    with _CURRENT_LOCK:
        _CURRENT = Budget(max_usd)
        return _CURRENT
