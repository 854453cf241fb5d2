"""Everything under ``runs/<name>-<hash>/``: the layout, its writers and its typed readers.

A run folder is the run's source of truth (MLflow is a mirror).  Before this module it was read and
written from seven places that each spelled the file names; now the names are attributes of
:class:`RunFolder`, the writers (:class:`JsonlSink` for ``results.jsonl``, :class:`ExplanationStore`
for ``explanations.jsonl``, the small JSON files) and the readers (:func:`read_results`,
:func:`read_run` -> :class:`FinishedRun`, :func:`load_results`) live here, and the pipeline, ``compare``,
``leaderboard``, the viewer and :func:`bench.load_run` all go through them.

Files (``S`` = ``shard-<i>-of-<n>``, only in sharded runs, :mod:`bench.run.shards`)::

    config.json             the composed config (redacted)
    results.jsonl           one line per unit, appended as units finish (resume reads it back)
    results.S.jsonl         the same, for one shard's slice; ``neuronbench merge`` joins them
    explanations.jsonl      one line per explained unit; shared by all shards (appends under a lock)
    train_excerpts.jsonl    the excerpts each explainer saw (the viewer shows them)
    units.json              every unit key of the run, in order (sharded runs: what a merge must find)
    S.done.json             a shard finished: its units and its process counters
    summary.json            the aggregates; score_correlations.{json,csv}; mlflow_run.json
    .lock / .lock.S         held by the process running the folder (or that shard)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UserError
from bench.records import Explanation, UnitResult, Usage, unit_result_from_json
from bench.state_files import jsonl_objects_in, parse_lines, parse_objects
from bench.tracking.redact import redact

if TYPE_CHECKING:
    from bench.run.shards import Shard

FAILED_SPEND = "failed_spend"  # extras key: {cost stage: Usage dict} spent by failed attempts of this unit
TRAIN_EXCERPTS = "train_excerpts.jsonl"


@dataclass(frozen=True)
class RunFolder:
    """The layout of one run folder: every file's path, by name (no other module spells them)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def explanations(self) -> Path:
        return self.root / "explanations.jsonl"

    @property
    def train_excerpts(self) -> Path:
        return self.root / TRAIN_EXCERPTS

    @property
    def units(self) -> Path:
        return self.root / "units.json"

    @property
    def mlflow_run(self) -> Path:
        return self.root / "mlflow_run.json"

    @property
    def viewer(self) -> Path:
        return self.root / "viewer"

    def results_of(self, shard: Shard | None) -> Path:
        """The results file this process appends to: ``results.jsonl``, or its shard's own file."""
        return self.results if shard is None else self.root / f"results.{shard.tag}.jsonl"

    def lock_of(self, shard: Shard | None) -> Path:
        """The lock a run holds: one per folder, or one per shard (shards of a run run side by side)."""
        return self.root / (".lock" if shard is None else f".lock.{shard.tag}")

    def done_of(self, shard: Shard) -> Path:
        return self.root / f"{shard.tag}.done.json"

    def shard_results(self) -> list[Path]:
        """Every shard's results file in this folder (any n)."""
        return sorted(self.root.glob("results.shard-*-of-*.jsonl"))

    def adopt_shard_results(self) -> int:
        """Before an unsharded run: copy the units that shards finished (and results.jsonl lacks) into
        results.jsonl, so switching from shards to one process redoes nothing.  How many were copied."""
        shards = self.shard_results()
        if not shards:
            return 0
        have = read_result_lines(self.results) if self.results.exists() else {}
        found: dict[str, str] = {}
        for path in shards:
            found.update(read_result_lines(path))
        new = {k: line for k, line in found.items() if k not in have}
        if new:
            drop_torn_tail(self.results)
            rewrite_atomically(self.results, "".join([*have.values(), *new.values()]))
        return len(new)

    def mkdir(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        rewrite_atomically(self.config, json.dumps(redact(config), indent=2, default=str))

    def write_summary(self, summary: dict[str, float]) -> None:
        """summary.json: NaN as null (JSON has no NaN)."""
        self.summary.write_text(json.dumps({k: (None if v != v else v) for k, v in summary.items()}, indent=2))

    def write_units(self, keys: list[str]) -> None:
        """units.json: every unit of the run in order (identical whichever shard writes it)."""
        text = json.dumps(keys)
        if not self.units.exists() or self.units.read_text() != text:
            rewrite_atomically(self.units, text)


# ---------------------------------------------------------------------------------------------------
# Low-level file helpers
# ---------------------------------------------------------------------------------------------------
def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def rewrite_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content in one step (write a sibling, fsync, rename); the sibling's name holds
    the process id, so two processes (shards) writing one file never share a temporary file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# results.jsonl: writer and reader
# ---------------------------------------------------------------------------------------------------
RESULTS_FIX = (
    "delete that line (its unit is redone) or move the file away to start the run over; "
    "the other lines are finished units and are kept"
)


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


def read_result_lines(path: Path) -> dict[str, str]:
    """Unit key -> its last line in a results file, verbatim (a merge copies lines byte for byte);
    every line is checked as :func:`read_results` checks it."""
    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").split("\n")
    results = parse_objects(jsonl_objects_in(data, path, RESULTS_FIX), checked_result, path, RESULTS_FIX)
    texts = [line for line in lines if line.strip()]
    return {r.unit.key: text + "\n" for r, text in zip(results, texts, strict=True)}


# results.jsonl is flushed to the OS after every line (a killed process loses nothing) and fsynced at most
# once per interval (group commit): one fsync per unit cost ~7 ms of wall on a VM disk -- more than the
# whole pipeline's overhead per unit (benchmarks/bench_engine.py orchestration).  An OS crash or power
# loss can lose the units of the last interval; a re-run redoes them.
FSYNC_INTERVAL_S = 1.0


class JsonlSink:
    """A results file (``results.jsonl``, or a shard's): appended and fsynced as each unit finishes.

    Re-running the same configuration reads it back and skips finished units, so an interrupted run loses
    nothing.  A torn last line (crash mid-write) is ignored and that unit is redone.  ``summary``: whether
    :meth:`close` writes ``summary.json`` (a shard's slice is not the run's summary: the merge writes it).
    ``base``: a results file whose units count as finished too, under this file's lines (a shard reads
    the run's ``results.jsonl``: units an unsharded run or an earlier merge finished are not redone)."""

    def __init__(self, path: Path, summary: bool = True, base: Path | None = None) -> None:
        self.path = path
        self.base = base
        self.writes_summary = summary
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(path)
        self._previous = self._read()
        self._synced = -math.inf  # time.monotonic() of the last fsync

    def _read(self) -> dict[str, UnitResult]:
        found = read_results(self.base) if self.base is not None and self.base.exists() else {}
        return found | (read_results(self.path) if self.path.exists() else {})

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

    def abort(self) -> None:
        """Nothing to undo: every finished unit is already a whole line (the run resumes from them)."""

    def order(self, keys: list[str]) -> None:
        """Put the lines in unit order (units finish in any order when many are in flight), atomically:
        two runs of one configuration then write the same file byte for byte."""
        if not self.path.exists():
            return
        lines = read_result_lines(self.path)
        rank = {key: i for i, key in enumerate(keys)}
        ordered = sorted(lines, key=lambda k: (rank.get(k, len(rank)), k))
        text = "".join(lines[k] for k in ordered)
        if text.encode() != self.path.read_bytes():
            rewrite_atomically(self.path, text)

    def close(self, summary: dict[str, float], results: list[UnitResult] | None = None) -> None:
        if self.path.exists():
            with self.path.open("a") as fh:
                os.fsync(fh.fileno())
        if self.writes_summary:
            RunFolder(self.path.parent).write_summary(summary)


# ---------------------------------------------------------------------------------------------------
# explanations.jsonl: shared by every shard of a run
# ---------------------------------------------------------------------------------------------------
EXPLANATIONS_FIX = "delete that line (its unit is explained again) or the file (every unit is explained again)"


def _explanation_item(item: dict[str, Any]) -> dict[str, Any]:
    """An explanations.jsonl object, checked so that :meth:`ExplanationStore.get` cannot fail on it."""
    if not isinstance(item.get("unit"), str):
        raise ValueError("no 'unit' key naming the unit")
    e = item.get("explanation")
    if e is None:
        return item
    if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not isinstance(e.get("explainer"), str):
        raise ValueError("'explanation' must hold 'text' and 'explainer' strings")
    Usage(**(e.get("usage") or {}))  # TypeError for unknown usage fields
    return item


class ExplanationStore:
    """explanations.jsonl in the run folder: written as each unit is explained, read back on resume.

    Shards of one run share this file (the shuffled control borrows *every* unit's explanation, so all
    shards must score with the same ones): appends and rewrites happen under a lock file, each one first
    reads what other processes appended since (:meth:`refresh`), and the first line written for a unit
    wins -- a shard that explained a unit another shard explained meanwhile keeps the other's."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock

        self.path = path
        self.items: dict[str, dict[str, Any]] = {}
        self._lock = FileLock(str(path.with_name(f".{path.name}.lock")))
        self._seen: tuple[int, int, int] = (-1, 0, 1)  # (inode, bytes read, next line number)
        with self._lock:
            drop_torn_tail(path)  # under the lock nobody is mid-append: a torn tail is a crash's
            self.refresh()

    def refresh(self) -> None:
        """Read what was appended since the last read (everything again after a rewrite elsewhere)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.items, self._seen = {}, (-1, 0, 1)
            return
        inode, offset, line = self._seen
        if st.st_ino != inode or st.st_size < offset:
            self.items, offset, line = {}, 0, 1
        if st.st_size == offset:
            self._seen = (st.st_ino, offset, line)
            return
        with self.path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
        data = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        pairs = jsonl_objects_in(data, self.path, EXPLANATIONS_FIX, first_line=line)
        for item in parse_objects(pairs, _explanation_item, self.path, EXPLANATIONS_FIX):
            self.items.setdefault(item["unit"], item)  # the first line of a unit wins (see the class)
        self._seen = (st.st_ino, offset + len(data), line + data.count(b"\n"))

    def add(
        self,
        key: str,
        explanation: Explanation | None,
        error: str | None,
        transient: bool = False,
        failed_spend: Usage | None = None,
    ) -> None:
        """Record a unit's explanation or failure; ``failed_spend``: what failed attempts at explaining
        it spent (earlier runs' included), ``transient``: a re-run retries this failure."""
        item: dict[str, Any] = {
            "unit": key,
            "explanation": asdict(explanation) if explanation else None,
            "error": error,
        }
        if explanation is None:
            item["transient"] = transient
        if failed_spend is not None and failed_spend != Usage():
            item[FAILED_SPEND] = asdict(failed_spend)
        with self._lock:
            if _ends_torn(self.path):  # a process killed mid-append: cut its fragment, not glue to it
                drop_torn_tail(self.path)
            self.refresh()
            if key in self.items:  # another shard wrote this unit first: theirs is the run's
                return
            line = (json.dumps(redact(item)) + "\n").encode()
            with self.path.open("ab") as fh:
                fh.write(line)
            self.items[key] = item
            self._seen = (self.path.stat().st_ino, self._seen[1] + len(line), self._seen[2] + 1)

    def failed_spend(self, key: str) -> Usage:
        return Usage(**(self.items.get(key) or {}).get(FAILED_SPEND) or {})

    def forget(self, keys: set[str]) -> None:
        """Drop these units' lines (failures about to be retried): one line per unit, atomically."""
        if not keys:
            return
        with self._lock:
            self.refresh()
            for key in keys:
                self.items.pop(key, None)
            rewrite_atomically(self.path, "".join(json.dumps(redact(item)) + "\n" for item in self.items.values()))
            self._seen = (-1, 0, 1)
            self.refresh()

    def order(self, keys: list[str]) -> None:
        """Rewrite the file with its units in ``keys`` order (a merge: the order an unsharded run writes)."""
        with self._lock:
            self.refresh()
            rank = {k: i for i, k in enumerate(keys)}
            items = sorted(self.items.values(), key=lambda item: rank.get(item["unit"], len(rank)))
            text = "".join(json.dumps(redact(item)) + "\n" for item in items)
            if not self.path.exists() or self.path.read_text() != text:
                rewrite_atomically(self.path, text)
            self._seen = (-1, 0, 1)
            self.refresh()

    def get(self, key: str) -> tuple[Explanation | None, str | None] | None:
        item = self.items.get(key)
        if item is None:
            return None
        e = item["explanation"]
        if e is None:
            return None, item["error"]
        usage = Usage(**(e.get("usage") or {}))
        return Explanation(text=e["text"], explainer=e["explainer"], meta=e.get("meta") or {}, usage=usage), None


def _ends_torn(path: Path) -> bool:
    """Whether ``path`` ends in a line without its newline (one byte read, not the file)."""
    try:
        with path.open("rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------------
# train_excerpts.jsonl
# ---------------------------------------------------------------------------------------------------
def write_train_excerpts(run_dir: Path, records: dict[str, Any], examples_per_split: int) -> Path:
    """The train split of every unit (the excerpts the explainer saw), once per run folder.

    Written by the pipeline so the viewer can show them without the record cache or the model;
    a resumed run keeps the file it has (the split is a pure function of the records).
    """
    from bench.splits import make_splits

    path = RunFolder(Path(run_dir)).train_excerpts
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
    rewrite_atomically(path, "".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------
# Typed readers: a finished run, a run's results
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinishedRun:
    """A finished run folder read once: what the leaderboard, the plots and the viewer agree a run is."""

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


def read_run(path: Path, command: str = "leaderboard") -> FinishedRun:
    """Read one finished run folder; a folder that is not one, or a damaged one, is a one-line
    :class:`UserError` naming the file and what to do."""
    folder = RunFolder(Path(path))
    for file in (folder.summary, folder.config, folder.results):
        if not file.exists():
            raise UserError(
                f"{command}: {folder.root} has no {file.name} (not a finished run folder; give runs/<name>-<hash> "
                "after `neuronbench run` finished)"
            )
    try:
        summary = {k: _number(k, v) for k, v in _json(folder.summary).items()}
        config = _json(folder.config)
        results = list(read_results(folder.results).values())  # damage: one line naming file and line
        train: dict[str, dict[str, Any]] = {}
        if folder.train_excerpts.exists():
            for line in folder.train_excerpts.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    train[item["unit"]] = item
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"{command}: {folder.root} is damaged ({type(err).__name__}: {err}); re-run that configuration to "
            "rewrite it (its finished units are kept)"
        ) from None
    return FinishedRun(path=folder.root, config=config, summary=summary, results=results, train=train)


def load_results(run: str | Path, command: str = "compare") -> list[UnitResult]:
    """Results of a run, given its folder (``runs/<name>-<hash>``) or its results.jsonl."""
    path = Path(run)
    if path.is_dir():
        path = RunFolder(path).results
    if not path.exists():
        raise UserError(f"{command}: no results at {path}; give a run folder such as runs/<name>-<hash>")
    return list(read_results(path).values())  # a damaged line: one line naming it (bench/state_files.py)


def load_config(run: str | Path) -> dict[str, Any]:
    """A run folder's config.json (``{}`` when given a bare results.jsonl)."""
    path = Path(run)
    folder = RunFolder(path if path.is_dir() else path.parent)
    return json.loads(folder.config.read_text()) if folder.config.exists() else {}


def _number(key: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"summary.json: {key} is {value!r}, not a number")
    return float(value)


def _json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} holds {type(value).__name__}, not an object")
    return value
