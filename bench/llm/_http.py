"""Compatibility names: the HTTP backend layer now lives in small modules, imported here for code that
still uses the old path (new code imports from the modules named below).

* :mod:`bench.llm.errors` -- ``BackendError``, ``ErrorInfo``, SDK error classification, API keys
* :mod:`bench.llm.types` -- ``Job``, ``Outcome``, ``Limits``, ``BackendStats``, ``CostEstimate``
* :mod:`bench.llm.loop` -- the process-wide event loop (``LOOP``)
* :mod:`bench.llm.client` -- ``Engine``: limits, retries, cache, counters, budget
* :mod:`bench.llm.http_backend` -- ``HTTPBackend`` and the config-field checks
* :mod:`bench.llm.text` -- ``merge_top``, ``cut_tokens``, ``apply_stops``
"""

from __future__ import annotations

from bench.llm.client import CLIENT_SLOTS, RETRY_AFTER_CAP_S, Engine
from bench.llm.errors import (
    BackendError,
    ErrorInfo,
    describe_sdk_error,
    missing_key_error,
    parse_retry_after,
    read_api_key,
)
from bench.llm.http_backend import HTTPBackend, check_batch_fields, check_common_fields, check_url_parts
from bench.llm.loop import LOOP
from bench.llm.text import apply_stops, cut_tokens, merge_top
from bench.llm.types import BackendStats, CostEstimate, Job, Limits, Outcome, call_dollars, estimate_tokens

__all__ = [
    "CLIENT_SLOTS",
    "LOOP",
    "RETRY_AFTER_CAP_S",
    "BackendError",
    "BackendStats",
    "CostEstimate",
    "Engine",
    "ErrorInfo",
    "HTTPBackend",
    "Job",
    "Limits",
    "Outcome",
    "apply_stops",
    "call_dollars",
    "check_batch_fields",
    "check_common_fields",
    "check_url_parts",
    "cut_tokens",
    "describe_sdk_error",
    "estimate_tokens",
    "merge_top",
    "missing_key_error",
    "parse_retry_after",
    "read_api_key",
]
