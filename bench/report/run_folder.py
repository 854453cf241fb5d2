"""A finished run folder (``runs/<name>-<hash>/``) read once into one typed object.

The leaderboard, the plots and the viewer all read the same files (config.json, summary.json,
results.jsonl, train_excerpts.jsonl), so they read them here and agree on what a run is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.records import UnitResult


@dataclass(frozen=True)
class RunFolder:
    path: Path
    config: dict[str, Any]
    summary: dict[str, float]
    results: list[UnitResult]
    train: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit key -> {"top": [...], "random": [...]}

    @property
    def name(self) -> str:
        return self.path.name

    def metric(self, key: str) -> float:
        value = self.summary.get(key)
        return math.nan if value is None else float(value)

    @property
    def provenance(self) -> dict[str, Any]:
        """What the units were recorded from (subject info, excerpt fingerprint), from the first unit."""
        for r in self.results:
            if r.extras.get("provenance"):
                return dict(r.extras["provenance"])
        return {}

    @property
    def unit_keys(self) -> list[str]:
        return [r.unit.key for r in self.results]


def run_folders(runs_dir: Path, selected: list[str] | None = None) -> list[Path]:
    """The run folders to read: those named, or every finished one (with summary.json) under ``runs_dir``."""
    if selected:
        return [Path(s) for s in selected]
    return sorted(p.parent for p in Path(runs_dir).glob("*/summary.json"))


def read_run(path: Path, command: str = "leaderboard") -> RunFolder:
    """Read one finished run folder; a folder that is not one, or a damaged one, is a one-line
    :class:`UserError` naming the file and what to do."""
    path = Path(path)
    for name in ("summary.json", "config.json", "results.jsonl"):
        if not (path / name).exists():
            raise UserError(
                f"{command}: {path} has no {name} (not a finished run folder; give runs/<name>-<hash> "
                "after `neuronbench run` finished)"
            )
    try:
        summary = {k: _number(k, v) for k, v in _json(path / "summary.json").items()}
        config = _json(path / "config.json")
        results = _results(path / "results.jsonl")
        train: dict[str, dict[str, Any]] = {}
        train_path = path / TRAIN_EXCERPTS
        if train_path.exists():
            for line in train_path.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    train[item["unit"]] = item
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"{command}: {path} is damaged ({type(err).__name__}: {err}); re-run that configuration to rewrite "
            "it (its finished units are kept)"
        ) from None
    return RunFolder(path=path, config=config, summary=summary, results=results, train=train)


def _number(key: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"summary.json: {key} is {value!r}, not a number")
    return float(value)


def _results(path: Path) -> list[UnitResult]:
    """Unit results by unit (the last line of a unit wins, as on resume), through the one results.jsonl
    reader: damage is a one-line :class:`~bench.state_files.DamagedFile` naming the file and line."""
    from bench.tracking.jsonl import read_results

    return list(read_results(path).values())


def _json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} holds {type(value).__name__}, not an object")
    return value


TRAIN_EXCERPTS = "train_excerpts.jsonl"


def write_train_excerpts(run_dir: Path, records: dict[str, Any], examples_per_split: int) -> Path:
    """The train split of every unit (the excerpts the explainer saw), once per run folder.

    Written by the pipeline so the viewer can show them without the record cache or the model;
    a resumed run keeps the file it has (the split is a pure function of the records).
    """
    from bench.splits import make_splits

    path = Path(run_dir) / TRAIN_EXCERPTS
    if path.exists():
        return path
    lines = []
    for key, record in records.items():
        train = make_splits(record, examples_per_split).train
        item = {
            "unit": key,
            **{
                part: [{"tokens": r.tokens, "activations": r.activations} for r in getattr(train, part)]
                for part in ("top", "random")
            },
        }
        lines.append(json.dumps(item) + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    return path
