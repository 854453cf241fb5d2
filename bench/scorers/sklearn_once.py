"""scikit-learn's first use, once per process, under a lock.

Why: scikit-learn's input validation asks narwhals whether an array is a dataframe, and narwhals finds
its plugins by reading every installed distribution's entry points on first use -- cached, but without
a lock.  The engine's worker threads (64 units in flight) reach their first calibration fit together,
and each of them did that discovery: 31 % of the client's CPU in a 200-unit API run (py-spy).  Warming
up once under a lock makes the other threads wait for one discovery instead of repeating it.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_ready = False


def warm() -> None:
    """Run one tiny fit (imports, validation, plugin discovery) the first time; later calls return at once."""
    global _ready
    if _ready:
        return
    with _LOCK:
        if _ready:
            return
        import numpy as np
        from sklearn.linear_model import LinearRegression

        LinearRegression().fit(np.zeros((2, 1)), np.zeros(2))
        _ready = True
