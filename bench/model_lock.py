"""One lock per in-process torch model.

With ``engine.units_in_flight > 1`` several units run in threads.  Scorers that hook a module of the subject
(ablation, output-centric boosting) would otherwise see each other's hooks -- a hook registered by
one thread changes every other thread's forward pass -- so every pass that may run while a hook is
registered takes the model's lock.  Local LLM calls take their model's lock too (they gain nothing
from threads: one forward pass already uses every core).
"""

from __future__ import annotations

import threading
from typing import Any

_GUARD = threading.Lock()
_LOCKS: dict[int, threading.RLock] = {}


def model_lock(model: Any) -> threading.RLock:
    with _GUARD:
        return _LOCKS.setdefault(id(model), threading.RLock())
