"""Errors shared by every LLM backend: a request that failed for good, and how SDK exceptions are classified.

No other ``bench.llm`` module is imported here: the engine, the providers and the batch support all
depend on this module, never the other way round.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from typing import Any, NamedTuple

from bench.errors import UserError


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
