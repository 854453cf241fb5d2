"""What this thread's LLM calls spent while a block ran -- also when the block then fails.

A unit's usage normally travels on its records (``Explanation.usage``, ``Simulation.usage``); a unit
that fails mid-stage has no such record, yet its requests -- retries, the answers of its other
requests, calls refused after they were sent -- were paid for.  Every backend engine reports each
batch's spend here (:func:`record`), and the pipeline wraps each unit's stage in :func:`metering`, so
a failed unit carries what it spent and ``cost/<stage>/...`` counts it (issue 12 item 6).

Meters are per thread: the pipeline runs a unit's stage in one thread, and the engines report from
the caller's thread (not their event-loop thread), so parallel units never see each other's spend.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.records import Usage

_LOCAL = threading.local()


@dataclass
class Meter:
    """Usage recorded in this thread since the meter was opened."""

    total: Usage = field(default_factory=Usage)


def _stack() -> list[Meter]:
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    return stack


@contextlib.contextmanager
def metering() -> Iterator[Meter]:
    """Open a meter for this thread; nested meters all see the spend of inner blocks."""
    meter = Meter()
    stack = _stack()
    stack.append(meter)
    try:
        yield meter
    finally:
        stack.remove(meter)


def record(usage: Usage) -> None:
    """Add one batch's spend to every meter open in this thread (none open: nothing to do)."""
    for meter in _stack():
        meter.total = meter.total + usage
