"""Cheap stand-ins for ``bench_engine.py orchestration``: records made on the fly, a timed fake backend.

The orchestration benchmark measures what the pipeline and the request engine cost per unit, so
everything else is made as cheap as possible -- and the time that remains inside the fake backend and
the scorers is measured (``TIMERS``) so that it can be subtracted, not guessed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.llm.fake import FakeLLM
from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats

# CPU seconds of the calling thread (``time.thread_time``): with many worker threads a wall-clock interval
# would include the time other threads held the GIL, and overlapping intervals would be counted twice.
TIMERS: dict[str, float] = {
    "backend_cpu_s": 0.0,
    "scorer_cpu_s": 0.0,
    "records_cpu_s": 0.0,
    "backend_calls": 0,
    "backend_requests": 0,
}
_LOCK = threading.Lock()
_DEPTH = threading.local()  # nested timed calls (a scorer calling metrics.correlation) count once
WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far")


def reset() -> None:
    with _LOCK:
        for key in TIMERS:
            TIMERS[key] = 0


def _add(key: str, seconds: float, calls: int = 0, requests: int = 0) -> None:
    with _LOCK:
        TIMERS[key] += seconds
        TIMERS["backend_calls"] += calls
        TIMERS["backend_requests"] += requests


class LazyRecords(Mapping[str, UnitRecord]):
    """``n`` unit records built when asked for (a pure function of the unit index): none is stored.

    Unit ``i`` fires on the word ``WORDS[i % 10]``; ``top`` excerpts contain it, ``random`` ones may."""

    def __init__(self, n: int, excerpt_len: int, top: int, random: int, unique: bool = False) -> None:
        self.n, self.excerpt_len, self.n_top, self.n_random = n, excerpt_len, top, random
        self.unique = unique

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        return (f"mlp_neuron/L0/{i}" for i in range(self.n))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.startswith("mlp_neuron/L0/") and 0 <= int(key.rsplit("/", 1)[1]) < self.n

    def __getitem__(self, key: str) -> UnitRecord:
        start = time.thread_time()  # making a record stands in for mining: the fake subject's time, not overhead
        try:
            return self._make(key)
        finally:
            _add("records_cpu_s", time.thread_time() - start)

    def _make(self, key: str) -> UnitRecord:
        if key not in self:
            raise KeyError(key)
        i = int(key.rsplit("/", 1)[1])
        word = WORDS[i % len(WORDS)]

        def excerpt(j: int, fire: bool) -> ActivationRecord:
            tokens = [WORDS[(i + j + t) % len(WORDS)] for t in range(self.excerpt_len)]
            if self.unique:  # the unit's number in every excerpt: no two units send the same request
                tokens[-1] = str(i)
            if fire:
                tokens[j % self.excerpt_len] = word
            acts = [float(10 - j) if t == word else 0.0 for t in tokens]
            return ActivationRecord(tokens=tokens, activations=acts)

        return UnitRecord(
            unit=UnitId(layer=0, index=i),
            top=[excerpt(j, True) for j in range(self.n_top)],
            random=[excerpt(j + 7, False) for j in range(self.n_random)],
            stats=UnitStats(count=100, mean=0.1, variance=1.0, skewness=0.0, kurtosis=0.0),
        )


@dataclass(frozen=True)
class LazyRecordsDataset:
    """A record source like ``dataset=reference_records`` (``provides_records``), with lazy records."""

    n: int
    excerpt_len: int = 4
    top: int = 4
    random: int = 3
    unique: bool = False  # every unit's excerpts differ (else units i and i+10 repeat: the response cache serves them)
    name: str = "lazy_records"
    version: int = 1
    n_excerpts: int = 0
    provides_records: ClassVar[bool] = True

    def check_units(self, units: Any) -> None:
        return None

    def unit_records(self, units: Any) -> tuple[Mapping[str, UnitRecord], dict[str, Any]]:
        records = LazyRecords(self.n, self.excerpt_len, self.top, self.random, self.unique)
        return records, {"records": {"source": self.name}}


@dataclass(frozen=True)
class TimedFakeLLM(FakeLLM):
    """FakeLLM whose backend calls are timed into ``TIMERS`` and whose request log is not kept (the
    test fake appends every request to ``calls``: at 10^5 units that alone grows memory by gigabytes)."""

    def _generate_now(self, requests: Any) -> Any:
        start = time.thread_time()
        try:
            return super()._generate_now(requests)
        finally:
            self.calls.clear()
            _add("backend_cpu_s", time.thread_time() - start, 1, len(requests))

    def _slots_now(self, requests: Any) -> Any:
        start = time.thread_time()
        try:
            return super()._slots_now(requests)
        finally:
            self.calls.clear()
            _add("backend_cpu_s", time.thread_time() - start, 1, len(requests))


def timed_scoring(fn: Any) -> Any:
    """``fn`` with its thread CPU time added to ``TIMERS["scorer_cpu_s"]`` (outermost call only)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_DEPTH, "n", 0)
        _DEPTH.n = depth + 1
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH.n = depth
            if depth == 0:
                _add("scorer_cpu_s", time.thread_time() - start)

    return wrapper


class TimedScorer:
    """A scorer whose ``score`` is timed into ``TIMERS``; every other attribute is the scorer's."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer
        self.score = timed_scoring(scorer.score)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)
