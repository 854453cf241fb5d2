"""Keep secrets out of logs, MLflow and artifacts.

Configs name the *environment variable* holding a key (``api_key_env: OPENAI_API_KEY``); values of
keys that look like secrets are replaced wholesale, and any string equal to a secret-looking
environment variable's value is masked, whatever key it sits under.
"""

from __future__ import annotations

import os
import re
from typing import Any

SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token)(?!s?_env$)(?!_?count)", re.IGNORECASE)
SECRET_ENV = re.compile(r"(API_KEY|SECRET|TOKEN|PASSWORD)", re.IGNORECASE)
MASK = "***"


def _secret_values() -> set[str]:
    return {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}


def redact(value: Any, key: str = "", _secrets: set[str] | None = None) -> Any:
    secrets = _secret_values() if _secrets is None else _secrets
    if isinstance(value, dict):
        return {k: redact(v, str(k), secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key, secrets) for v in value]
    if isinstance(value, str):
        if key and SECRET_KEY.search(key.split(".")[-1]) and value:
            return MASK
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
    return value
