"""results.jsonl: the run's source of truth, one line per unit, appended and flushed as units finish.

Re-running the same configuration reads it back and skips finished units, so an interrupted run loses
nothing.  A torn last line (crash mid-write) is ignored and that unit is redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.records import UnitResult, unit_result_from_json
from bench.tracking.redact import redact


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(path)
        self._previous = self._read()

    def _read(self) -> dict[str, UnitResult]:
        out: dict[str, UnitResult] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                result = unit_result_from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn line from an interrupted write: redo that unit
            out[result.unit.key] = result
        return out

    def finished_units(self) -> set[str]:
        return set(self._previous)

    def previous_results(self) -> list[UnitResult]:
        return list(self._previous.values())

    def write(self, result: UnitResult) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(redact(result.to_json())) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def close(self, summary: dict[str, float], results: list[UnitResult] | None = None) -> None:
        summary_path = self.path.with_name("summary.json")
        summary_path.write_text(json.dumps({k: (None if v != v else v) for k, v in summary.items()}, indent=2))
