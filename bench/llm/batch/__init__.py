"""Opt-in batch mode: provider batch jobs (about half price, results within 24 hours), resumable.

:mod:`bench.llm.batch.state` holds what every provider shares (persisted state, the submit / poll /
collect loop, job splitting at the provider's limits); each provider's adapter sits beside it
(:mod:`bench.llm.batch.openai`, :mod:`bench.llm.batch.anthropic`).  The names most callers need are
re-exported here.
"""

from __future__ import annotations

from bench.llm.batch.state import BatchMode, BatchPending, PendingStore, plan_jobs, run_batch

__all__ = ["BatchMode", "BatchPending", "PendingStore", "plan_jobs", "run_batch"]
