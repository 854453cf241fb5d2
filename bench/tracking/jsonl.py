"""results.jsonl: the run's source of truth, one line per unit, appended and flushed as units finish.

Re-running the same configuration reads it back and skips finished units, so an interrupted run loses
nothing.  A torn last line (crash mid-write) is ignored and that unit is redone.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from bench.records import UnitResult, unit_result_from_json
from bench.state_files import parse_lines
from bench.tracking.redact import redact

RESULTS_FIX = (
    "delete that line (its unit is redone) or move the file away to start the run over; "
    "the other lines are finished units and are kept"
)
# results.jsonl is flushed to the OS after every line (a killed process loses nothing) and fsynced at most
# once per interval (group commit): one fsync per unit cost ~7 ms of wall on a VM disk -- more than the
# whole pipeline's overhead per unit (benchmarks/bench_engine.py orchestration).  An OS crash or power
# loss can lose the units of the last interval; a re-run redoes them.
FSYNC_INTERVAL_S = 1.0


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def checked_result(item: dict) -> UnitResult:
    """A results.jsonl object as a :class:`UnitResult`; ``ValueError`` for a shape the run cannot use."""
    result = unit_result_from_json(item)
    if not (isinstance(result.unit.layer, int) and isinstance(result.unit.index, int)):
        raise ValueError(f"unit must hold integer layer and index, got {item.get('unit')!r}")
    if result.status not in ("ok", "failed"):
        raise ValueError(f"status must be 'ok' or 'failed', got {result.status!r}")
    for name, score in result.scores.items():
        if isinstance(score.value, bool) or not isinstance(score.value, int | float):
            raise ValueError(f"score {name!r} must be a number or null, got {score.value!r}")
    return result


def read_results(path: Path) -> dict[str, UnitResult]:
    """Every unit's result in a results.jsonl (the last line wins); damage is :class:`DamagedFile`."""
    # a torn last line is left out (the sink also cuts it); any other bad line is damage
    return {r.unit.key: r for r in parse_lines(path, checked_result, RESULTS_FIX)}


def rewrite_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content in one step (write a sibling, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(path)
        self._previous = self._read()
        self._synced = -math.inf  # time.monotonic() of the last fsync

    def _read(self) -> dict[str, UnitResult]:
        return read_results(self.path) if self.path.exists() else {}

    def finished_units(self) -> set[str]:
        return set(self._previous)

    def previous_results(self) -> list[UnitResult]:
        return list(self._previous.values())

    def forget(self, keys: set[str]) -> None:
        """Drop these units' lines (failed units about to be redone), so the file keeps one line per
        unit.  Atomic: a crash leaves either the old file or the new one, and a dropped unit is redone."""
        if not keys or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                key = unit_result_from_json(json.loads(line)).unit.key
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                key = None
            if key not in keys:
                kept.append(line)
        rewrite_atomically(self.path, "".join(kept))
        for key in keys:
            self._previous.pop(key, None)

    def write(self, result: UnitResult) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(redact(result.to_json())) + "\n")
            fh.flush()
            if time.monotonic() - self._synced >= FSYNC_INTERVAL_S:
                os.fsync(fh.fileno())
                self._synced = time.monotonic()

    def close(self, summary: dict[str, float], results: list[UnitResult] | None = None) -> None:
        if self.path.exists():
            with self.path.open("a") as fh:
                os.fsync(fh.fileno())
        summary_path = self.path.with_name("summary.json")
        summary_path.write_text(json.dumps({k: (None if v != v else v) for k, v in summary.items()}, indent=2))
