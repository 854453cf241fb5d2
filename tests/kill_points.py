"""A test-only stop point inside the scoring stage, for the kill -9 resume tests (tests/test_resume_kill9.py).

The LLM stages are stopped from outside: the loopback server holds a request and the test kills the
process while it waits.  Ablation makes no request -- it runs the subject in-process -- so the stop point
sits in the scorer: ``scorer.ablation._target_=kill_points.KillableAblation`` is the real
:class:`~bench.scorers.ablation.AblationScorer`, except that when ``$NB_KILL_MARKER`` names a file, its
first ``score()`` writes that file (the unit's key) and then waits forever: the test sees the file and
sends SIGKILL.  Without the variable it scores exactly as the real scorer (same name, same numbers).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scorers.ablation import AblationScorer

MARKER_ENV = "NB_KILL_MARKER"


@dataclass(frozen=True)
class KillableAblation(AblationScorer):
    def score(self, ctx: Any) -> Any:
        marker = os.environ.get(MARKER_ENV)
        if marker:
            Path(marker).write_text(ctx.unit.unit.key)
            threading.Event().wait()  # held here, mid-scoring, until the test kills this process
        return super().score(ctx)
