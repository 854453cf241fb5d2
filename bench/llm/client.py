"""The wrapper every HTTP LLM backend gets: limits, retries, the response cache, counters and the budget.

Providers only build requests and parse answers (:mod:`bench.llm.providers`); :class:`Engine` does the rest
for each backend instance, on the process-wide loop (:mod:`bench.llm.loop`):

* **Limits**: ``concurrency`` requests in flight (``asyncio.Semaphore``), ``requests_per_minute`` and
  ``tokens_per_minute`` leaky buckets (``aiolimiter``; the token bucket is charged with an estimate:
  prompt chars / 4 + ``max_tokens``).
* **Retries** (``tenacity``) on 408/429/5xx, timeouts and connection errors only, with exponential
  backoff and jitter; a ``Retry-After`` / ``retry-after-ms`` header is honoured (and pauses the whole
  backend until then, since the other requests would be refused too).  The SDKs' own retries are off,
  so every retry is ours and counted.  Any other failure (400/401/403/404/422, malformed JSON) is
  returned at once as a :class:`~bench.llm.errors.BackendError` carrying the server's message.
* **Cache**: answers are stored (:mod:`bench.llm.cache`) as soon as each request succeeds, so an
  interrupted batch keeps what it paid for.
* **Counters** (:class:`~bench.llm.types.BackendStats`): calls, cache hits, retries, failures, tokens,
  dollars, batches; each batch's spend also goes to the caller thread's meters (:mod:`bench.llm.spend`).
* **Budget** (:mod:`bench.llm.budget`): before a request is sent its upper-bound dollars are reserved
  against ``budget.max_usd``; a request that would not fit stops the run (``BudgetExceeded``).
* **Batch mode** (opt-in, :mod:`bench.llm.batch`): ``run(jobs, batch=...)`` sends the cache misses as
  provider batch jobs instead of one request each; answers land in the same cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.llm import budget as _budget
from bench.llm.cache import ResponseCache
from bench.llm.errors import BackendError, ErrorInfo
from bench.llm.loop import LOOP
from bench.llm.pricing import Prices
from bench.llm.types import COUNT_FIELDS, BackendStats, Job, Limits, Outcome, call_dollars, estimate_tokens
from bench.records import Usage

T = TypeVar("T")

_log = logging.getLogger(__name__)
RETRY_AFTER_CAP_S = 600.0  # never wait longer than this on a server's word
CLIENT_SLOTS = 16  # concurrent requests per SDK client (connection pool)


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)

    def add(self, **amounts: float) -> None:
        with self.lock:
            for name, amount in amounts.items():
                self.values[name] = self.values.get(name, 0) + amount

    def wait(self, seconds: float) -> None:
        with self.lock:
            self.waits.append(seconds)
            self.values["retries"] = self.values.get("retries", 0) + 1

    def snapshot(self) -> BackendStats:
        with self.lock:
            v = dict(self.values)
            waits = tuple(self.waits)
        ints = {k: int(v.get(k, 0)) for k in COUNT_FIELDS}
        return BackendStats(**ints, dollars=float(v.get("dollars", 0.0)), retry_waits_s=waits)


class InProcessMeter:
    """The shared wrapper's in-process half, for clients that run no HTTP (the local transformers model,
    the fake): the same counters (:class:`~bench.llm.types.BackendStats`, so ``cost/backend/<role>/...``
    covers them too) and the same per-thread spend meters (:mod:`bench.llm.spend`: a unit that fails
    mid-stage still carries what it computed).  Transport, retries, limits, the budget (they are free) and
    the response cache (their answers are recomputed: the record cache and the model's own KV-cache reuse
    are what make them cheap) do not apply.  Pickles as a fresh meter (launchers ship components)."""

    def __init__(self) -> None:
        self.counters = _Counters()

    def account(self, usages: Sequence[Usage]) -> None:
        """Count one call's answers and report their usage to this thread's meters."""
        from bench.llm.spend import record

        total = sum(usages, Usage())
        self.counters.add(
            calls=total.calls,
            input_tokens=total.input_tokens,
            cached_input_tokens=total.cached_input_tokens,
            output_tokens=total.output_tokens,
        )
        record(total)

    def stats(self) -> BackendStats:
        return self.counters.snapshot()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.counters = _Counters()


_METER_LOCK = threading.Lock()


def in_process_meter(client: Any) -> InProcessMeter:
    """``client``'s :class:`InProcessMeter`, created on first use outside its (frozen) dataclass fields."""
    meter = client.__dict__.get("_meter")
    if meter is None:
        with _METER_LOCK:
            meter = client.__dict__.get("_meter")
            if meter is None:
                meter = InProcessMeter()
                object.__setattr__(client, "_meter", meter)
    return meter


class Engine:
    """Runs :class:`Job` batches with the cache, limits, retries and counters of one backend."""

    def __init__(
        self,
        *,
        label: str,
        limits: Limits,
        cache: ResponseCache,
        prices: Prices | None,
        make_client: Callable[[], Any],
        classify: Callable[[BaseException], ErrorInfo],
        batch_prices: Prices | None = None,
    ) -> None:
        self.label = label
        self.limits = limits
        self.cache = cache
        self.prices = prices
        self.batch_prices = batch_prices if batch_prices is not None else prices
        self.make_client = make_client
        self.classify = classify
        self.counters = _Counters()
        # Injectable for tests: the coroutine function every backoff / Retry-After wait goes through.
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
        # Injectable for tests: called as hook(batch_id, status) after every batch poll (batch mode).
        self.batch_hook: Callable[[str, str], Any] | None = None
        self.rng = random.Random()
        self._bound: asyncio.AbstractEventLoop | None = None
        self._clients: list[Any] = []
        self._turn = 0
        self._sem: asyncio.Semaphore | None = None
        self._rpm: Any = None
        self._tpm: Any = None
        self._resume_at = 0.0

    def __repr__(self) -> str:  # never show the client (it holds the key)
        return f"Engine({self.label!r})"

    # ---------------------------------------------------------------------------------------------
    def stats(self) -> BackendStats:
        return self.counters.snapshot()

    def run(self, jobs: Sequence[Job], batch: Any = None) -> list[Outcome]:
        """Answer every job (cache first, then HTTP); failures are returned as ``Outcome.error``.

        ``batch`` (a :class:`bench.llm.batch.BatchMode`): send the cache misses as one batch job instead."""
        outcomes: list[Outcome | None] = []
        for job in jobs:
            hit = self.cache.get(job.key)
            outcomes.append(Outcome(hit, cached=True) if hit is not None else None)
        hits = sum(o is not None for o in outcomes)
        if hits:
            self.counters.add(cache_hits=hits)
        todo = [i for i, o in enumerate(outcomes) if o is None]
        if todo:
            missing = [jobs[i] for i in todo]
            if batch is None:
                fresh = LOOP.run(self._send_all(missing, batch))
            else:  # batch mode: every unit in flight adds its jobs to one provider batch (bench.engine)
                from bench.engine import gather

                fresh = gather(("batch", id(self)), missing, lambda js: LOOP.run(self._send_all(js, batch)))
            self._meter(fresh)  # in the caller's thread: each unit's meter sees its own spend
            for i, outcome in zip(todo, fresh, strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    async def arun(self, jobs: Sequence[Job], batch: Any = None) -> list[Outcome]:
        """Async twin of :meth:`run` (for callers that already run an event loop)."""
        outcomes = [self.cache.get(job.key) for job in jobs]
        hits = sum(o is not None for o in outcomes)
        if hits:
            self.counters.add(cache_hits=hits)
        todo = [i for i, o in enumerate(outcomes) if o is None]
        fresh = await LOOP.run_async(self._send_all([jobs[i] for i in todo], batch)) if todo else []
        self._meter(fresh)
        result = [Outcome(o, cached=True) if o is not None else None for o in outcomes]
        for i, outcome in zip(todo, fresh, strict=True):
            result[i] = outcome
        return [o for o in result if o is not None]

    async def _send_all(self, jobs: Sequence[Job], batch: Any) -> list[Outcome]:
        if batch is None:
            return await self._gather(jobs)
        from bench.llm.batch.state import run_batch

        self._bind()
        return await run_batch(self, jobs, batch)

    # ---------------------------------------------------------------------------------------------
    def job_dollars(self, job: Job, batched: bool = False) -> float:
        """Upper-bound dollars of one request (prompt characters / 4, every ``max_tokens`` written) at
        this backend's prices; NaN when they are unknown (0 for a job that declares no size)."""
        if not job.input_chars and not job.max_output:
            return 0.0
        prices = self.batch_prices if batched else self.prices
        if prices is None:
            return math.nan
        return prices.dollars(estimate_tokens(job.input_chars), 0, job.max_output)

    def reserve(self, jobs: Sequence[Job], batched: bool = False) -> float:
        """Reserve the upper-bound dollars of ``jobs`` against the run's budget before sending them
        (raises :class:`~bench.llm.budget.BudgetExceeded`); returns the amount to :meth:`release`."""
        budget = _budget.current()
        if budget.max_usd is None:
            return 0.0
        return budget.reserve(sum(self.job_dollars(job, batched) for job in jobs), self.label)

    def release(self, reserved: float) -> None:
        _budget.current().release(reserved)

    def close(self) -> None:
        clients, self._clients = self._clients, []
        bound, self._bound = self._bound, None  # the next batch binds afresh
        if clients and bound is not None and not bound.is_closed():
            try:
                LOOP.run(_close_all(clients))
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.cache.close()

    # ---------------------------------------------------------------------------------------------
    def _bind(self) -> None:
        """Create the loop-bound objects on first use on (or after a change of) the running loop."""
        loop = asyncio.get_running_loop()
        if self._bound is loop:
            return
        from aiolimiter import AsyncLimiter

        lim = self.limits
        # One SDK client per CLIENT_SLOTS concurrent requests: httpcore scans its whole pool for every
        # request, so smaller pools cost less CPU at high concurrency (about 10% at 64).
        self._clients = [self.make_client() for _ in range(math.ceil(lim.concurrency / CLIENT_SLOTS))]  # key read
        self._sem = asyncio.Semaphore(lim.concurrency)
        self._rpm = AsyncLimiter(lim.requests_per_minute, 60) if lim.requests_per_minute else None
        self._tpm = AsyncLimiter(lim.tokens_per_minute, 60) if lim.tokens_per_minute else None
        self._resume_at = 0.0
        self._bound = loop

    async def _gather(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Every job to its end -- also when one stops the run (the budget): requests already in flight
        finish and are cached (they are paid for), then the first such error is raised."""
        self._bind()
        done = await asyncio.gather(*(self._one(job) for job in jobs), return_exceptions=True)
        stop = next((d for d in done if isinstance(d, BaseException)), None)
        if stop is not None:
            raise stop
        return list(done)  # type: ignore[arg-type]

    def _retrying(self) -> Any:
        """The retry policy: transient failures only, backoff with jitter, Retry-After honoured."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        return AsyncRetrying(
            stop=stop_after_attempt(self.limits.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda e: self.classify(e).retryable),
            sleep=lambda seconds: self.sleep(seconds),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    async def _one(self, job: Job) -> Outcome:
        """One job, sent at most once across the processes sharing the cache (:meth:`ResponseCache.claim`)."""
        async with self.cache.claim(job.key) as hit:
            if hit is not None:  # another process (or a twin job here) answered it while we waited
                self.counters.add(cache_hits=1)
                return Outcome(hit, cached=True)
            return await self._send(job)

    async def _send(self, job: Job) -> Outcome:
        assert self._sem is not None
        attempts = 0

        async def attempt() -> dict[str, Any]:
            nonlocal attempts
            await self._pause_if_told()
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                await self._tpm.acquire(min(max(job.est_tokens, 1), self._tpm.max_rate))
            attempts += 1
            self.counters.add(calls=1)
            self._turn += 1
            return await job.send(self._clients[self._turn % len(self._clients)])

        reserved = 0.0
        try:
            async with self._sem:
                reserved = self.reserve([job])  # in flight only: queued requests hold no reservation
                try:
                    value = await self._retrying()(attempt)
                except Exception as err:  # noqa: BLE001 - every failure becomes a clear BackendError
                    self.counters.add(failures=1)
                    return Outcome(None, attempts=attempts, error=self._error(err, attempts))
            if self.cache.enabled:  # off the loop thread: a slow disk must not stall the other requests
                try:
                    await asyncio.to_thread(self.cache.set, job.key, value)
                except Exception as err:  # noqa: BLE001 - a full disk must not lose an answer already paid for
                    _log.warning("%s: could not write the response cache (%s: %s)", self.label, type(err).__name__, err)
            self._account(value.get("usage") or {})
            return Outcome(value, cached=False, attempts=attempts)
        finally:
            self.release(reserved)  # after the answer's dollars were spent: never under-counted

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """One request that is not a model call (batch upload, poll, download) under the same retry
        policy; raises :class:`BackendError` when it fails for good.  Not counted in ``calls``."""
        self._bind()
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            await self._pause_if_told()
            attempts += 1
            return await fn()

        try:
            return await self._retrying()(attempt)
        except Exception as err:  # noqa: BLE001 - every failure becomes a clear BackendError
            raise self._error(err, attempts) from err

    @property
    def client(self) -> Any:
        """An SDK client of the running loop (batch mode needs one, not a pool)."""
        self._bind()
        return self._clients[0]

    def _wait(self, state: Any) -> float:
        info = self.classify(state.outcome.exception())
        if info.retry_after is not None:
            return min(info.retry_after, RETRY_AFTER_CAP_S)
        base = min(self.limits.backoff_max_s, self.limits.backoff_initial_s * 2 ** (state.attempt_number - 1))
        return base / 2 + self.rng.uniform(0, base / 2)  # "equal jitter"

    async def _before_sleep(self, state: Any) -> None:
        seconds = float(state.next_action.sleep)
        self.counters.wait(seconds)
        info = self.classify(state.outcome.exception())
        if info.retry_after is not None:
            # The server asked us to back off: hold every request of this backend until then.
            loop = asyncio.get_running_loop()
            self._resume_at = max(self._resume_at, loop.time() + seconds)

    async def _pause_if_told(self) -> None:
        delay = self._resume_at - asyncio.get_running_loop().time()
        if delay > 0:
            await self.sleep(delay)

    def _error(self, err: BaseException, attempts: int) -> BackendError:
        info = self.classify(err)
        status = f"HTTP {info.status}: " if info.status is not None else ""
        tail = f" (gave up after {attempts} attempts)" if info.retryable else ""
        if info.retryable and info.status is None and "timed out" in info.message:
            tail = f" after {self.limits.timeout_s:g} s{tail}"
        error = BackendError(
            f"{self.label}: {status}{info.message}{tail}",
            status=info.status,
            retryable=info.retryable,
            attempts=attempts,
        )
        error.__cause__ = err
        return error

    def _account(self, usage: dict[str, Any], batched: bool = False) -> None:
        inp = int(usage.get("input_tokens") or 0)
        cached = int(usage.get("cached_input_tokens") or 0)
        write = int(usage.get("cache_write_tokens") or 0)
        out = int(usage.get("output_tokens") or 0)
        dollars = call_dollars(self.batch_prices if batched else self.prices, usage)
        self.counters.add(
            input_tokens=inp,
            cached_input_tokens=cached,
            cache_write_tokens=write,
            output_tokens=out,
            dollars=dollars,
        )
        _budget.current().spend(dollars)

    def _meter(self, outcomes: Sequence[Outcome]) -> None:
        """Report what these requests spent to the caller thread's meters (:mod:`bench.llm.spend`),
        failed ones included: a failed request's attempts were sent and count as calls."""
        from bench.llm.spend import record

        total = Usage()
        for outcome in outcomes:
            if outcome.value is not None:
                total = total + self.spent(outcome.value.get("usage") or {}, outcome)
            elif not outcome.cached:
                total = total + Usage(calls=outcome.attempts)
        record(total)

    def spent(self, usage: dict[str, Any], outcome: Outcome) -> Usage:
        """The :class:`~bench.records.Usage` of one answered job: a cache hit spent nothing."""
        if outcome.cached:
            return Usage()
        return Usage(
            calls=outcome.attempts,
            input_tokens=int(usage.get("input_tokens") or 0),
            cached_input_tokens=int(usage.get("cached_input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            dollars=call_dollars(self.batch_prices if outcome.batched else self.prices, usage),
        )


async def _close_all(clients: Sequence[Any]) -> None:
    for client in clients:
        await client.close()
