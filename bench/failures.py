"""Which unit failures a re-run retries.

A failure from an outage -- the server down, a request timed out, 429 / 5xx after every retry, a
batch that expired -- says nothing about the unit: re-running the same command must try it again.
A failure that is a property of the unit (an answer that does not parse, a scorer's NaN with its
reason, a refused request such as 400 / 401) is kept; ``neuronbench run --retry-failed`` redoes those
too.  Classification walks the exception's chain, so a transient backend error wrapped by a
simulator's own exception still counts as transient.
"""

from __future__ import annotations


def is_transient(err: BaseException | None) -> bool:
    """True when ``err`` (or an exception it was raised from) is an outage rather than the unit's fault."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "retryable", False) is True:  # BackendError: 429/5xx/timeout/connection, batch expiry
            return True
        if isinstance(err, ConnectionError | TimeoutError):
            return True
        err = err.__cause__ if err.__cause__ is not None else (None if err.__suppress_context__ else err.__context__)
    return False
