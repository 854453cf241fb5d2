"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad config value, missing file, missing API key).
The CLI prints its message as one line and exits with code 2 -- never a traceback.  The message names
the config key and what is allowed.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``str(err)`` is the whole one-line message."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(UserError):
    """An invalid configuration value; raised before any model is loaded."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"config error at '{key}': {problem}")


class RunFailed(UserError):
    """A run that finished but must not pass for a result: every unit failed, or more than
    ``fail_on.failure_rate`` of them.  Its results are saved; the CLI exits with code 1."""

    exit_code = 1
