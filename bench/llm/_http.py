"""What every HTTP LLM backend shares: one event loop, limits, retries, the response cache, counters.

* **One event loop per process**, on a daemon thread.  Sync ``generate()`` submits its batch there and
  waits, so it works the same from plain code, from inside a running loop (notebooks, async tests)
  and from worker threads; the SDK clients, semaphores and rate limiters live on that loop and keep
  their state (connection pools, rate budgets) between batches.  A fork gets a fresh loop.
* **Limits** per backend instance: ``concurrency`` requests in flight (``asyncio.Semaphore``),
  ``requests_per_minute`` and ``tokens_per_minute`` leaky buckets (``aiolimiter``; the token bucket is
  charged with an estimate: prompt chars / 4 + ``max_tokens``).
* **Retries** (``tenacity``) on 408/429/5xx, timeouts and connection errors only, with exponential
  backoff and jitter; a ``Retry-After`` / ``retry-after-ms`` header is honoured (and pauses the whole
  backend until then, since the other requests would be refused too).  The SDKs' own retries are off,
  so every retry is ours and counted.  Any other failure (400/401/403/404/422, malformed JSON) is
  raised at once as a :class:`BackendError` carrying the server's message.
* **Cache**: answers are stored (:mod:`bench.llm.cache`) as soon as each request succeeds, so an
  interrupted batch keeps what it paid for.
* **Counters** (:class:`BackendStats`): calls, cache hits, retries, failures, tokens, dollars, batches.
* **Batch mode** (opt-in, :mod:`bench.llm.batch`): ``run(jobs, batch=...)`` sends the cache misses as one
  provider batch job instead of one request each; answers land in the same cache.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from bench.errors import UserError
from bench.llm.cache import ResponseCache, answer_shape
from bench.llm.pricing import Prices
from bench.records import Usage

T = TypeVar("T")

_log = logging.getLogger(__name__)
RETRY_AFTER_CAP_S = 600.0
CLIENT_SLOTS = (
    16  # concurrent requests per SDK client (connection pool)  # never wait longer than this on a server's word
)


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
class BackendError(RuntimeError):
    """A request that failed for good: refused by the server (not retryable) or out of retries.

    ``str(err)`` names the backend, the HTTP status and the server's own message; the pipeline records
    it as the unit's failure.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


class ErrorInfo(NamedTuple):
    retryable: bool
    status: int | None
    message: str
    retry_after: float | None


def describe_sdk_error(err: BaseException, sdk: Any) -> ErrorInfo:
    """Classify an exception raised by the ``openai`` or ``anthropic`` SDK (both share these classes)."""
    if isinstance(err, sdk.APITimeoutError):
        return ErrorInfo(True, None, "request timed out", None)
    if isinstance(err, sdk.APIConnectionError):
        cause = err.__cause__ or err.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return ErrorInfo(True, None, f"connection error{detail}", None)
    if isinstance(err, sdk.APIStatusError):
        status = int(err.status_code)
        retryable = status in (408, 429) or status >= 500
        return ErrorInfo(retryable, status, _server_message(err), parse_retry_after(err.response.headers))
    if isinstance(err, json.JSONDecodeError | UnicodeDecodeError):
        return ErrorInfo(False, None, f"malformed JSON in the response ({err})", None)
    return ErrorInfo(False, None, f"{type(err).__name__}: {err}", None)


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            kind = inner.get("type") or inner.get("code")
            return f"{inner['message']}" + (f" [{kind}]" if kind else "")
        if isinstance(inner, str):
            return inner
    return str(getattr(err, "message", None) or err)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def missing_key_error(env: str, backend: str) -> UserError:
    return UserError(
        f"environment variable {env} is not set: export {env}=<your key> (needed by LLM backend {backend!r}; "
        f"the config field api_key_env names the variable)"
    )


def read_api_key(env: str | None, backend: str) -> str:
    """The key from the environment variable named ``env``; ``None`` means the server needs none."""
    if env is None:
        return "EMPTY"
    value = os.environ.get(env, "").strip()
    if not value:
        raise missing_key_error(env, backend)
    return value


# ---------------------------------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------------------------------
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
        names = (
            "calls",
            "cache_hits",
            "retries",
            "failures",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "dollars",
            "batches",
        )
        return {f"{prefix}{name}": float(getattr(self, name)) for name in names}


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
        ints = {
            k: int(v.get(k, 0))
            for k in (
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
        }
        return BackendStats(**ints, dollars=float(v.get("dollars", 0.0)), retry_waits_s=waits)


# ---------------------------------------------------------------------------------------------------
# The process-wide event loop
# ---------------------------------------------------------------------------------------------------
class _LoopThread:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if self._loop is None or self._pid != os.getpid() or not alive:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="neuronbench-llm-loop", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait for it (callable from any thread, any loop)."""
        loop = self.loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync LLM call was made from inside the LLM event loop; await the async API")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop thread from another event loop without blocking it."""
        loop = self.loop()
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


LOOP = _LoopThread()


# ---------------------------------------------------------------------------------------------------
# The engine: one per backend instance
# ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One HTTP request: ``send(client)`` performs it and returns the JSON-able value to cache,
    ``{"result": ..., "usage": {input_tokens, cached_input_tokens, cache_write_tokens, output_tokens}}``."""

    key: str
    send: Callable[[Any], Awaitable[dict[str, Any]]]
    est_tokens: int = 1
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
        from bench.llm.batch import run_batch

        self._bind()
        return await run_batch(self, jobs, batch)

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
        self._bind()
        return list(await asyncio.gather(*(self._one(job) for job in jobs)))

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

        async with self._sem:
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
        self.counters.add(
            input_tokens=inp,
            cached_input_tokens=cached,
            cache_write_tokens=write,
            output_tokens=out,
            dollars=call_dollars(self.batch_prices if batched else self.prices, usage),
        )

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


def call_dollars(prices: Prices | None, usage: dict[str, Any]) -> float:
    """Dollars of one call's usage dict; NaN when tokens were spent at unknown prices."""
    inp = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cached_input_tokens") or 0)
    write = int(usage.get("cache_write_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    if prices is None:
        return math.nan if inp + out else 0.0
    return prices.dollars(inp, cached, out, write)


async def _close_all(clients: Sequence[Any]) -> None:
    for client in clients:
        await client.close()


# ---------------------------------------------------------------------------------------------------
# Dry runs
# ---------------------------------------------------------------------------------------------------
class CostEstimate(NamedTuple):
    """What a batch would cost: HTTP calls (cache hits excluded), prompt tokens (chars / 4), and
    dollars with every call assumed to write its full ``max_tokens`` (an upper bound; NaN: no prices)."""

    calls: int
    input_tokens: int
    dollars: float


def estimate_tokens(text_chars: int) -> int:
    return max(1, math.ceil(text_chars / 4))


# ---------------------------------------------------------------------------------------------------
# What both backends share: lazy runtime, readiness, stats, estimates, validation
# ---------------------------------------------------------------------------------------------------
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENGINE_LOCK = threading.Lock()


def check_url_parts(url: str) -> None:
    """A host and a numeric port, checked at config time (else every unit fails with ``InvalidURL``).

    The message quotes only the offending part: the URL may carry a key as userinfo.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("base_url: has no host; write it like http://localhost:8000/v1")
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(
            f"base_url: port {port!r} is not a number in 0..65535; write it like http://localhost:8000/v1"
        ) from None


def check_common_fields(obj: Any) -> None:
    """``__post_init__`` checks shared by the HTTP backends (``ValueError("field: problem")``)."""
    import re

    from bench.llm.pricing import check_prices

    kinds: dict[str, tuple[type, ...]] = {
        "model": (str,),
        "timeout_s": (int, float),
        "max_retries": (int,),
        "concurrency": (int,),
        "backoff_initial_s": (int, float),
        "backoff_max_s": (int, float),
        "cache": (bool,),
    }
    for name, types in kinds.items():
        value = getattr(obj, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{name}: must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    for name in ("requests_per_minute", "tokens_per_minute"):
        value = getattr(obj, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name}: must be a number or null, got {value!r}")
    if not obj.model:
        raise ValueError("model: give the model id the API serves, e.g. gpt-4o-mini")
    if obj.base_url is not None and not re.match(r"^https?://", obj.base_url):
        raise ValueError(f"base_url: must start with http:// or https://, got {obj.base_url!r}")
    if obj.base_url is not None:
        check_url_parts(obj.base_url)
    env = obj.api_key_env
    if env is not None and not re.match(_ENV_NAME, env):
        # Never echo it: a pasted key is the likely mistake.
        raise ValueError(
            "api_key_env: give the NAME of the environment variable that holds the key (e.g. "
            "OPENAI_API_KEY), not the key itself"
        )
    if not obj.timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0 seconds, got {obj.timeout_s}")
    if obj.max_retries < 0:
        raise ValueError(f"max_retries: must be >= 0, got {obj.max_retries}")
    if obj.concurrency < 1:
        raise ValueError(f"concurrency: must be >= 1, got {obj.concurrency}")
    for name in ("requests_per_minute", "tokens_per_minute"):
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name}: must be > 0 or null (no limit), got {value}")
    if obj.backoff_initial_s < 0 or obj.backoff_max_s < obj.backoff_initial_s:
        raise ValueError("backoff_max_s: need 0 <= backoff_initial_s <= backoff_max_s")
    check_prices(obj.prices)
    check_batch_fields(obj)


def check_batch_fields(obj: Any) -> None:
    """``batch``, ``batch_poll_s``, ``batch_timeout_s``, ``batch_discount`` (see :mod:`bench.llm.batch`)."""
    if not isinstance(obj.batch, bool):
        raise ValueError(f"batch: must be true or false, got {obj.batch!r}")
    for name in ("batch_poll_s", "batch_timeout_s", "batch_discount"):
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a number, got {value!r}")
    if not obj.batch_poll_s > 0:
        raise ValueError(f"batch_poll_s: must be > 0 seconds, got {obj.batch_poll_s}")
    if obj.batch_timeout_s < 0:
        raise ValueError(
            f"batch_timeout_s: must be >= 0 seconds (0: submit, then stop and collect on a re-run), got "
            f"{obj.batch_timeout_s}"
        )
    if not 0 < obj.batch_discount <= 1:
        raise ValueError(f"batch_discount: must be in (0, 1] (batch price / list price), got {obj.batch_discount}")
    if obj.batch and not obj.cache:
        raise ValueError(
            "batch: needs cache: true (batch answers and the ids of pending batches are kept in the cache folder)"
        )


class HTTPBackend:
    """Mixin for the frozen backend dataclasses: the runtime (engine, SDK client, cache) is created on
    first use, lives outside the dataclass fields (so it is neither config nor compared, hashed,
    pickled or shown by ``repr``), and never holds the API key anywhere but inside the SDK client."""

    name: str
    model: str
    base_url: str | None
    api_key_env: str | None
    cache_dir: str | None
    cache: bool
    prices: dict[str, float] | None
    timeout_s: float
    max_retries: int
    concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    backoff_initial_s: float
    backoff_max_s: float
    batch: bool
    batch_poll_s: float
    batch_timeout_s: float
    batch_discount: float

    # Subclasses provide these -------------------------------------------------------------------
    def _make_client(self) -> Any:
        raise NotImplementedError

    def _classify(self, err: BaseException) -> ErrorInfo:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        engine = self.__dict__.get("_engine")
        if engine is not None:
            return engine
        with _ENGINE_LOCK:
            engine = self.__dict__.get("_engine")
            if engine is not None:
                return engine
            from bench.llm import pricing
            from bench.llm.cache import default_cache_dir

            directory = (self.cache_dir or str(default_cache_dir())) if self.cache else None
            prices = pricing.resolve(self.model, self.prices)
            discount = float(getattr(self, "batch_discount", 1.0))
            engine = Engine(
                label=self.name,
                limits=Limits(
                    concurrency=self.concurrency,
                    requests_per_minute=self.requests_per_minute,
                    tokens_per_minute=self.tokens_per_minute,
                    max_retries=self.max_retries,
                    backoff_initial_s=self.backoff_initial_s,
                    backoff_max_s=self.backoff_max_s,
                    timeout_s=self.timeout_s,
                ),
                cache=ResponseCache(directory, well_formed=answer_shape),
                prices=prices,
                make_client=self._make_client,
                classify=self._classify,
                batch_prices=prices.scaled(discount) if prices is not None else None,
            )
            object.__setattr__(self, "_engine", engine)
            return engine

    @property
    def stats(self) -> BackendStats:
        """Running totals of this backend instance (calls, cache hits, retries, tokens, dollars)."""
        return self.engine.stats()

    def check_ready(self) -> None:
        """Fail fast, before any work: the API key variable is set and the cache folder is writable.

        Raises :class:`~bench.errors.UserError` with a one-line message.  Makes no network call.
        """
        read_api_key(self.api_key_env, self.name)
        try:
            self.engine.cache.check_writable()
        except OSError as err:
            raise UserError(
                f"LLM cache folder {self.engine.cache.directory} is not writable ({err}); "
                "set cache_dir or NEURONBENCH_CACHE"
            ) from None

    def check_server(self) -> list[str] | None:
        """Fail fast, before any model loads: list the server's models once (``GET /v1/models``).

        A server that is down or refuses the key, or a ``model`` it does not serve, is a one-line
        :class:`~bench.errors.UserError` (naming the served models).  What the listing says about the
        model (vLLM: ``max_model_len``) is kept for :attr:`server_context_length`.  Returns the served
        model ids, or None when the server has no model list (404).  Transient failures are retried
        twice, briefly: a down server must not keep the run waiting for minutes.
        """
        if "_served" in self.__dict__:
            return self.__dict__["_served"]
        served, info = LOOP.run(self._list_models())
        # an alias names the newest dated snapshot ("claude-haiku-4-5" -> "claude-haiku-4-5-20251001")
        known = served is None or not served or any(m == self.model or m.startswith(self.model + "-") for m in served)
        if not known:
            raise UserError(
                f"model {self.model!r} is not served by {self._server_url()}; it serves: {', '.join(served)} "
                "(set model to one of them)"
            )
        object.__setattr__(self, "_served", served)
        object.__setattr__(self, "_model_info", info)
        return served

    @property
    def server_context_length(self) -> int | None:
        """The served model's context length as the server reported it (vLLM's ``max_model_len``)."""
        info = self.__dict__.get("_model_info") or {}
        value = info.get("max_model_len") or info.get("context_length") or info.get("context_window")
        return int(value) if isinstance(value, int | float) and value > 0 else None

    def _server_url(self) -> str:
        return str(getattr(self, "resolved_base_url", None) or self.base_url or "the provider's API")

    async def _list_models(self) -> tuple[list[str] | None, dict[str, Any]]:
        engine = self.engine
        engine._bind()
        for attempt in range(3):
            try:
                page = await engine.client.models.list()
                rows = [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in page.data]
                served = [str(r.get("id")) for r in rows]
                info = next((r for r in rows if r.get("id") == self.model), {})
                if not info:
                    info = next((r for r in rows if str(r.get("id")).startswith(self.model + "-")), {})
                return served, info
            except Exception as err:  # noqa: BLE001 - every failure becomes one line
                problem = engine.classify(err)
                if problem.status in (404, 405):
                    return None, {}  # no model list on this server: nothing to check
                if problem.retryable and attempt < 2:
                    await engine.sleep(0.5 * 2**attempt)
                    continue
                status = f"HTTP {problem.status}: " if problem.status is not None else ""
                raise UserError(
                    f"the LLM server at {self._server_url()} did not answer the model list "
                    f"({status}{problem.message}); start it, or fix base_url / the API key"
                ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the HTTP client and the cache; a later call reopens them (the counters carry on)."""
        engine = self.__dict__.get("_engine")
        if engine is not None:
            engine.close()

    def _api_key(self) -> str:
        return read_api_key(self.api_key_env, self.name)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_engine"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def _estimate(self, keys: Sequence[str], prompt_chars: Sequence[int], max_tokens: Sequence[int]) -> CostEstimate:
        engine = self.engine
        calls = inp = out = 0
        for key, chars, mt in zip(keys, prompt_chars, max_tokens, strict=True):
            if engine.cache.enabled and key in engine.cache:
                continue
            calls += 1
            inp += estimate_tokens(chars)
            out += mt
        prices = engine.batch_prices if getattr(self, "batch", False) else engine.prices
        dollars = prices.dollars(inp, 0, out) if prices else (math.nan if calls else 0.0)
        return CostEstimate(calls=calls, input_tokens=inp, dollars=dollars)


# ---------------------------------------------------------------------------------------------------
# Text post-processing shared by the backends
# ---------------------------------------------------------------------------------------------------
def merge_top(pairs: Sequence[Sequence[Any]]) -> dict[str, float]:
    """``[[token, logprob], ...]`` -> ``{token: logprob}``, summing the probability of equal token texts."""
    out: dict[str, float] = {}
    for token, logprob in pairs:
        lp = float(logprob)
        if token in out:
            hi, lo = max(out[token], lp), min(out[token], lp)
            out[token] = hi + math.log1p(math.exp(lo - hi))
        else:
            out[token] = lp
    return out


def cut_tokens(tokens: list[Any] | None, start: int, end: int | None) -> list[Any] | None:
    """Keep the tokens (objects with ``.token``) that start inside ``[start, end)`` of their joint text."""
    if tokens is None:
        return None
    kept, pos = [], 0
    for tok in tokens:
        if pos >= start and (end is None or pos < end):
            kept.append(tok)
        pos += len(tok.token)
    return kept


def apply_stops(text: str, tokens: list[Any] | None, stops: Sequence[str]) -> tuple[str, list[Any] | None]:
    """Cut ``text`` at the first stop string (servers may send fewer stops than asked for)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return text, tokens
    cut = min(cuts)
    return text[:cut], cut_tokens(tokens, 0, cut)
