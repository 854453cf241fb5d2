"""Keep secrets out of every file and console line the project writes: the one redactor.

Configs name the *environment variable* holding a key (``api_key_env: OPENAI_API_KEY``), yet a key's
value can still reach text: a proxy's 401 body that echoes it, a key given as URL userinfo
(``https://user:KEY@host/v1``), an exception message quoting either.  So every writer routes its text
through this module instead of trusting its inputs:

* :func:`redact` / :func:`redact_text` replace, in any string, (1) the value of every key variable a
  config named (:func:`register_config`: every ``*_env`` field, whatever the variable is called),
  (2) the value of every environment variable whose name looks secret (``*API_KEY*``, ``*TOKEN*`` ...),
  (3) the userinfo of every URL (``scheme://user:pass@`` -> ``scheme://***@``) and the userinfo values
  registered from configs; and mask values under secret-looking keys (``api_key: ...``) wholesale.
* Sinks: JSONL and JSON files, ``units.csv`` and MLflow params/tags/artifacts call :func:`redact` on
  what they write; :func:`install_log_redaction` redacts every log record (console, Hydra's ``cli.log``);
  :class:`RedactingStream` wraps ``sys.stdout`` / ``sys.stderr`` during a run; :func:`scrub_file`
  rewrites files written by others (Hydra's ``.hydra/*.yaml``).

Values shorter than :data:`MIN_SECRET_CHARS` are not treated as secrets (masking ``"1"`` everywhere
would destroy results and protect nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

# a key whose value is itself a secret: api_key, hf_token, db_password -- not api_key_env (a variable's
# NAME), not token / tokens / max_tokens / token_ids (results data: a bare "token" is a vocabulary item)
SECRET_KEY = re.compile(
    r"^((.*[_-])?(api[_-]?key|secret([_-]?key)?|password|passwd|auth)|.+[_-]token)$", re.IGNORECASE
)
SECRET_ENV = re.compile(r"(API_KEY|SECRET|TOKEN|PASSWORD)", re.IGNORECASE)
# scheme://userinfo@ -- userinfo stops at the first '/', whitespace, quote or '@' (RFC 3986 authority)
URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
MASK = "***"
MIN_SECRET_CHARS = 8

_LOCK = threading.Lock()
_REGISTERED: set[str] = set()  # values learnt from configs: key variables' values, URL userinfo parts


_ENV_SEEN: tuple[frozenset[Any], frozenset[str]] | None = None  # (environment, its secret values)


def _env_secrets() -> frozenset[str]:
    """Values of secret-looking environment variables, recomputed only when the environment changed:
    scanning it on every redact() (every results line) was a tenth of the pipeline's CPU per unit."""
    global _ENV_SEEN
    data = getattr(os.environ, "_data", None)  # CPython's raw mapping behind os.environ
    snapshot = frozenset(data.items()) if isinstance(data, dict) else None
    seen = _ENV_SEEN
    if snapshot is not None and seen is not None and seen[0] == snapshot:
        return seen[1]
    found = frozenset(v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= MIN_SECRET_CHARS)
    if snapshot is not None:
        _ENV_SEEN = (snapshot, found)
    return found


def secret_values() -> set[str]:
    """Every value that must never be written: registered ones plus secret-looking environment variables."""
    with _LOCK:
        registered = set(_REGISTERED)
    return registered | _env_secrets()


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


def register_config(config: Any) -> None:
    """Learn the secrets a config points to: the values of the variables named by its ``*_env`` fields
    (``api_key_env: MY_PROXY_CRED`` -> the value of ``$MY_PROXY_CRED``) and the userinfo of its URLs.

    Accepts plain containers or an OmegaConf node; values are read now, so call it after the
    environment is set (the CLI does, before anything runs)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(config, DictConfig | ListConfig):
            config = OmegaConf.to_container(config, resolve=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    found: set[str] = set()
    for key, value in _walk(config):
        if not isinstance(value, str):
            continue
        if key.endswith("_env") and value:
            secret = os.environ.get(value, "")
            if len(secret.strip()) >= MIN_SECRET_CHARS:
                found.update({secret, secret.strip()})
        found.update(_userinfo_parts(value))
    with _LOCK:
        _REGISTERED.update(found)


def register_secret(value: str) -> None:
    """Learn one secret value (e.g. read from a file rather than the environment)."""
    if len(value) >= MIN_SECRET_CHARS:
        with _LOCK:
            _REGISTERED.add(value)


def _userinfo_parts(text: str) -> set[str]:
    """``user:pass`` of every URL in ``text``, and its password alone: both are masked everywhere."""
    from urllib.parse import unquote

    parts: set[str] = set()
    for match in URL_USERINFO.finditer(text):
        info = match.group("userinfo")
        for candidate in (info, *info.split(":", 1)[1:]):
            for form in (candidate, unquote(candidate)):
                if len(form) >= MIN_SECRET_CHARS:
                    parts.add(form)
    return parts


def redact_text(text: str, _secrets: set[str] | None = None) -> str:
    """``text`` with every secret value and every URL userinfo replaced by ``***``."""
    secrets = secret_values() if _secrets is None else _secrets
    if "@" in text:
        text = URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: "user:KEY" before "KEY"
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(value: Any, key: str = "", _secrets: set[str] | None = None) -> Any:
    """A copy of ``value`` (dicts, lists, strings, anything else as is) safe to write anywhere."""
    secrets = secret_values() if _secrets is None else _secrets
    if isinstance(value, dict):
        return {k: redact(v, str(k), secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key, secrets) for v in value]
    if isinstance(value, str):
        if key and SECRET_KEY.search(key.split(".")[-1]) and value:
            return MASK
        return redact_text(value, secrets)
    return value


def scrub_file(path: Path) -> None:
    """Rewrite a text file written by someone else (Hydra's ``.hydra/*.yaml``) with secrets masked."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    clean = redact_text(text)
    if clean != text:
        path.write_text(clean)


# ---------------------------------------------------------------------------------------------------
# Console and logging
# ---------------------------------------------------------------------------------------------------
class RedactingStream:
    """A text stream that masks secrets in everything written through it (wraps stdout / stderr)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding ... of the real stream
        return getattr(self._inner, name)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """Within the block, everything printed to stdout / stderr is redacted."""
    import sys

    saved = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(saved[0])
    sys.stderr = RedactingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


_FACTORY_INSTALLED = False


def install_log_redaction() -> None:
    """Redact every log record as it is made, whichever handler (console, Hydra's ``cli.log``) writes
    it: the message and the formatted traceback are masked once, here.  Idempotent."""
    global _FACTORY_INSTALLED
    with _LOCK:
        if _FACTORY_INSTALLED:
            return
        _FACTORY_INSTALLED = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg = redact_text(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = redact_text(record.stack_info)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is left to logging's own handling
            pass
        return record

    logging.setLogRecordFactory(factory)
