"""An MLflow tracking *server* as the mirror of a run: checked before any work, given up mid-run
without losing anything.

``results.jsonl`` in the run folder is the source of truth; a tracking server shared by a team is a
mirror that may be down.  So:

* :func:`check_reachable` asks the server's ``/health`` once before any model loads or any run folder
  exists: a server that is down is one line naming ``tracking.uri`` (exit 2), not a traceback after
  mining.  It uses the standard library with one short timeout -- MLflow's own client would retry for
  minutes first.
* :func:`server_gone` tells a server that went away (connection refused, timeout, 5xx after MLflow's
  retries) from a real mistake, so the sink can warn once and stop mirroring instead of failing a run
  whose results are safe on disk; ``neuronbench sync RUN_DIR`` (:mod:`bench.tracking.sync`) completes
  the mirror later.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from bench.errors import ConfigError
from bench.tracking.redact import redact_text

PROBE_TIMEOUT_S = 5.0
SERVER_FIX = (
    "start it (e.g. mlflow server --backend-store-uri sqlite:///mlflow.db --serve-artifacts --port 5000), "
    "fix tracking.uri, or run with tracking=local or tracking=none"
)


def is_server(uri: str | None) -> bool:
    """A tracking URI that names a server (``http(s)://``), not a local store."""
    return bool(uri) and urllib.parse.urlparse(str(uri)).scheme in ("http", "https")


def _without_userinfo(uri: str) -> str:
    """``http://user:pw@host:5000`` -> ``http://host:5000`` (urllib cannot send userinfo; MLflow's
    client authenticates with ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` or the userinfo itself)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def check_reachable(uri: str | None, key: str = "tracking.uri", timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One line naming ``key`` when the tracking server at ``uri`` does not answer (local stores pass).

    Any HTTP answer below 500 counts as reachable (a proxy path, an auth wall: MLflow reports those
    itself); refused connections, timeouts and 5xx (a proxy in front of a dead server) do not."""
    if not is_server(uri):
        return
    url = _without_userinfo(str(uri)).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 - http(s) only (is_server)
            return
    except urllib.error.HTTPError as err:
        if err.code < 500:
            return
        problem = f"it answers HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        problem = f"no answer: {reason}"
    raise ConfigError(key, f"no MLflow tracking server at {redact_text(str(uri))} ({problem}); {SERVER_FIX}")


def server_gone(err: BaseException) -> bool:
    """True when ``err`` (or what it was raised from) means the tracking server is unreachable or failing:
    connection errors and timeouts (MLflow wraps ``requests``' in an ``MlflowException``, keeping it as
    the context) and HTTP 5xx.  A 4xx (a bad request, a missing run) is a real error and stays one."""
    from mlflow.exceptions import RestException
    from requests.exceptions import RequestException

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError | RequestException):
            return True
        if isinstance(current, RestException) and current.get_http_status_code() >= 500:  # the server's answer
            return True
        text = str(current)
        if "Max retries exceeded" in text or "failed with timeout exception" in text:
            return True
        cause = current.__cause__
        current = cause if cause is not None else (None if current.__suppress_context__ else current.__context__)
    return False
