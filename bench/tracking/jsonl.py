"""results.jsonl's sink and reader moved to :mod:`bench.run.folder` (the one module that owns the run
folder); these names stay importable from here for plugins and tests written against the old path."""

from __future__ import annotations

from bench.run.folder import (
    FSYNC_INTERVAL_S,
    RESULTS_FIX,
    JsonlSink,
    checked_result,
    drop_torn_tail,
    read_results,
    rewrite_atomically,
)

__all__ = [
    "FSYNC_INTERVAL_S",
    "RESULTS_FIX",
    "JsonlSink",
    "checked_result",
    "drop_torn_tail",
    "read_results",
    "rewrite_atomically",
]
