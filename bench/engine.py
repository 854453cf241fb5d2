"""The request engine: many units in flight, their LLM requests coalesced per backend.

A run drives ``units_in_flight`` units at once, each in its own worker thread running the ordinary
per-unit code (explain, simulate, score).  Whenever a worker asks a *coalescing* backend for answers
(a batch-mode HTTP backend, an in-process model) the request does not go out at once: it waits in
that backend's queue until **every live worker is waiting on the engine** -- then one flush sends each
backend's queue as ONE call (one provider batch job per stage, split only at the provider's limits;
one set of padded forward passes over many units' prompts, sharing the few-shot header's KV cache).
API backends without batch mode do not coalesce: their concurrency limit is filled by the many
workers' concurrent calls on one event loop.

Why a barrier instead of a timer: a flush then holds exactly the requests that the run's logic
produced up to that point, whatever the threads' timing, so what goes into one backend call (and so
an in-process model's padding, which moves results by float noise only) is the same in every run.
Requests of one flush are ordered by (unit key, call number within the unit), never by arrival.

Errors stay per request: a backend that answers per request (``Engine.run`` returns one ``Outcome``
per job) needs nothing more; when a coalesced call raises, every caller's share is retried alone so
that one unit's bad request cannot fail another unit (answered requests come from the response cache).
A :class:`~bench.errors.UserError` (a budget stop, a missing key) reaches every waiting caller.

Threads that are not workers of the active engine (the CLI's start-up checks, a notebook calling a
backend directly) bypass the queue: their call goes straight to the backend, as before.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bench.errors import UserError

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")
V = TypeVar("V")

log = logging.getLogger(__name__)

_ACTIVE: RequestEngine | None = None  # the engine of the run in progress (one per process at a time)
_LOCAL = threading.local()


class EngineStopped(Exception):
    """The run stopped (another unit raised a user error, or the run was interrupted) while this
    worker's request waited in the queue."""


@dataclass
class _Ticket(Generic[T, R]):
    """One caller's share of a coalesced call: its items, then its results or its error."""

    order: tuple[str, int]
    items: list[T]
    send: Callable[[list[T]], list[R]]
    results: list[R] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class EngineStats:
    """What the engine did in a run: flushes, coalesced backend calls and the requests they carried."""

    flushes: int = 0
    calls: int = 0
    requests: int = 0
    retried_alone: int = 0
    calls_by_group: dict[str, int] = field(default_factory=dict)


class RequestEngine:
    """Workers, a queue per backend, and the barrier flush (see the module docstring)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._live = 0  # registered workers not yet finished
        self._waiting = 0  # workers whose tickets are queued and not yet taken by a flush
        self._flushing = False
        self._stopped = False
        self._queues: dict[Hashable, list[_Ticket[Any, Any]]] = {}
        self.stats = EngineStats()

    @property
    def waiting(self) -> int:
        """Workers whose requests wait in a queue now."""
        with self._cv:
            return self._waiting

    # -- the backends' side ------------------------------------------------------------------------
    def gather(self, group: Hashable, items: Sequence[T], send: Callable[[list[T]], list[R]]) -> list[R]:
        """``send(items)``, coalesced with every other worker's requests to the same ``group``.

        ``send`` must answer a list with one result per item, in order; the queue for ``group`` is sent
        as one call to the ``send`` of its first ticket (all tickets of a group share one backend)."""
        worker = getattr(_LOCAL, "worker", None)
        if worker is not self or not items:
            return send(list(items))
        ticket: _Ticket[T, R] = _Ticket(order=_next_order(), items=list(items), send=send)
        with self._cv:
            if self._stopped:
                raise EngineStopped("the run stopped")
            self._queues.setdefault(group, []).append(ticket)
            self._waiting += 1
            self._maybe_flush_locked()
            while not ticket.done:
                if self._stopped:
                    raise EngineStopped("the run stopped")
                self._cv.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.results is not None
        return ticket.results

    # -- the pipeline's side -----------------------------------------------------------------------
    def run_units(self, fn: Callable[[K], V], keys: Sequence[K], workers: int) -> Iterator[tuple[K, V]]:
        """Yield ``(key, fn(key))`` as each unit finishes, ``workers`` units in flight.

        Results are consumed -- and written -- by the caller's thread, one at a time.  An exception
        raised by ``fn`` stops the other workers and is raised here."""
        if not keys:
            return
        workers = max(1, min(workers, len(keys)))
        todo = iter(enumerate(keys))
        take = threading.Lock()
        done: queue.SimpleQueue[tuple[int, K, V | None, BaseException | None]] = queue.SimpleQueue()
        finished = object()

        def work() -> None:
            _LOCAL.worker = self
            try:
                while not self._stopped:
                    with take:
                        nxt = next(todo, None)
                    if nxt is None:
                        break
                    n, key = nxt
                    _LOCAL.unit = (n, 0)
                    try:
                        value = fn(key)
                    except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises
                        done.put((n, key, None, err))
                        break
                    done.put((n, key, value, None))
            finally:
                _LOCAL.worker = None
                with self._cv:
                    self._live -= 1
                    self._maybe_flush_locked()
                done.put((-1, finished, None, None))  # type: ignore[arg-type]

        with self._cv:
            self._live += workers
        threads = [threading.Thread(target=work, name=f"unit-{i}", daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        remaining = workers
        try:
            while remaining:
                n, key, value, err = done.get()
                if key is finished:
                    remaining -= 1
                    continue
                if err is not None:
                    raise err
                yield key, value  # type: ignore[misc]
        finally:
            if remaining:
                self.stop()

    def stop(self) -> None:
        """Wake every waiting worker with :class:`EngineStopped` and let no new unit start."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    # -- the flush ---------------------------------------------------------------------------------
    def _maybe_flush_locked(self) -> None:
        """Flush when every live worker waits on the engine (called with the lock held)."""
        while not self._flushing and not self._stopped and self._waiting and self._waiting >= self._live:
            self._flushing = True
            queues, self._queues = self._queues, {}
            self._waiting = 0
            me = getattr(_LOCAL, "worker", None)
            _LOCAL.worker = None  # a backend called from inside the flush goes straight out (no self-wait)
            self._cv.release()
            try:
                self._flush(queues)
            finally:
                self._cv.acquire()
                _LOCAL.worker = me
                self._flushing = False
                self._cv.notify_all()

    def _flush(self, queues: dict[Hashable, list[_Ticket[Any, Any]]]) -> None:
        self.stats.flushes += 1
        stop: BaseException | None = None
        for group, tickets in queues.items():
            tickets.sort(key=lambda t: t.order)
            if stop is not None:
                for t in tickets:
                    t.error, t.done = stop, True
                continue
            items = [item for t in tickets for item in t.items]
            name = str(group[0] if isinstance(group, tuple) else group)
            self.stats.calls += 1
            self.stats.requests += len(items)
            self.stats.calls_by_group[name] = self.stats.calls_by_group.get(name, 0) + 1
            try:
                results = tickets[0].send(items)
                if len(results) != len(items):
                    raise RuntimeError(f"backend answered {len(results)} of {len(items)} requests")
            except UserError as err:  # a budget stop, a missing key: every caller stops the same way
                stop = err
                for t in tickets:
                    t.error, t.done = err, True
                continue
            except Exception:  # noqa: BLE001 - retried per caller below, so one bad request fails one unit
                log.debug("coalesced call to %s failed; retrying each caller alone", name, exc_info=True)
                for t in tickets:
                    self.stats.retried_alone += 1
                    try:
                        t.results = t.send(t.items)
                    except Exception as own:  # noqa: BLE001 - this caller's own failure
                        t.error = own
                    t.done = True
                continue
            start = 0
            for t in tickets:
                t.results, t.done = results[start : start + len(t.items)], True
                start += len(t.items)


def _next_order() -> tuple[str, int]:
    """(unit position, call number within the unit): the deterministic order of a flush's requests."""
    n, calls = getattr(_LOCAL, "unit", (0, 0))
    _LOCAL.unit = (n, calls + 1)
    return (f"{n:012d}", calls)


DEFAULT_UNITS_IN_FLIGHT = 64
BATCH_UNITS_IN_FLIGHT_CAP = 4096  # one worker thread per unit in flight


def units_in_flight(setting: int | None, llms: Sequence[Any], pending: int) -> int:
    """How many units to keep in flight: ``setting`` when given; else all ``pending`` units (at most
    :data:`BATCH_UNITS_IN_FLIGHT_CAP`) when a backend sends provider batch jobs -- each job holds the
    requests of the units in flight, so one job per stage needs every unit in flight -- else 64."""
    if setting is not None:
        return setting
    if any(getattr(llm, "batch", False) is True for llm in llms):  # HTTP backends' batch mode
        return max(1, min(pending, BATCH_UNITS_IN_FLIGHT_CAP))
    return DEFAULT_UNITS_IN_FLIGHT


def active() -> RequestEngine | None:
    """The engine of the run in progress in this process, if any."""
    return _ACTIVE


def gather(group: Hashable, items: Sequence[T], send: Callable[[list[T]], list[R]]) -> list[R]:
    """Coalesce through the active engine, or call ``send`` directly when no run is in progress."""
    engine = _ACTIVE
    if engine is None:
        return send(list(items))
    return engine.gather(group, items, send)


@contextlib.contextmanager
def running() -> Iterator[RequestEngine]:
    """Make a fresh engine the active one for the duration of a run."""
    global _ACTIVE
    previous, engine = _ACTIVE, RequestEngine()
    _ACTIVE = engine
    try:
        yield engine
    finally:
        engine.stop()
        _ACTIVE = previous
