"""One run across processes: ``shard=i/n`` runs a fixed slice of the run's units; a merge joins them.

**Which units.**  Unit ``k`` belongs to shard ``sha256(k) mod n``: a pure function of the unit's key, so
every process agrees without talking, and adding units to a run never moves a unit to another shard.

**One folder.**  The shard is not part of the run's identity (``bench.cli.NOT_DETERMINING``): all shards
of a configuration share ``runs/<name>-<hash>/``, each appending its own ``results.shard-i-of-n.jsonl``
under its own lock, so they run side by side (and each resumes on its own).

**Controls need every unit's explanation.**  The shuffled control of a unit borrows other units'
explanations (a seeded derangement over *all* explained units), so a shard cannot score until the whole
run is explained, and the results must equal an unsharded run's.  The design: ``explanations.jsonl`` is
shared by the shards (appends under a lock; the first line written for a unit wins), and a shard first
explains its own units, then every unit that no shard has explained yet -- the other shards' units,
taken from the end of each slice while their owners work from the start, so concurrent shards rarely
explain one unit twice (and when they do, the response cache's per-key claim makes the second wait for
the first's answer instead of paying again, and the first line wins, so all shards score with the same
explanation).  No shard ever waits for another: shards run one after another on one machine just as
well as side by side on several.  With ``control.enabled=false`` a shard explains only its own units.
Like an unsharded re-run, a shard that retries a unit's transient explaining failure gives the units it
scores afterwards one more donor than units scored before the retry had.

**Merge.**  When every shard has written its ``shard-i-of-n.done.json`` marker, :func:`merge` (run by the
last shard to finish, or ``neuronbench merge RUN_DIR``) copies every unit's line verbatim into
``results.jsonl`` in the run's unit order (over the lines it already holds: a shard counts units in
``results.jsonl`` as finished), puts ``explanations.jsonl`` in that order, aggregates
``summary.json`` exactly as an unsharded run does (the bootstrap sees the units in the same order) plus
the shards' summed backend counters, and mirrors the run to MLflow through the ordinary sink.  The merge
is idempotent: running it twice writes the same files and logs nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, UserError
from bench.records import Explanation, UnitRecord, UnitResult
from bench.run.folder import ExplanationStore, RunFolder, checked_result, read_result_lines, rewrite_atomically

SHARD_FIX = "use shard=i/n with 0 <= i < n (e.g. shard=0/4 ... shard=3/4), or shard=null for the whole run"
MERGE_LOCK_TIMEOUT_S = 600.0  # a merge takes seconds; this only bounds a wait on a hung process


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (written ``index/count``)."""

    index: int
    count: int

    @property
    def tag(self) -> str:
        """The shard's part of file names: ``shard-1-of-4``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard a unit key belongs to: a stable hash (sha256, not Python's salted ``hash``) mod ``count``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(value: Any) -> Shard | None:
    """``shard`` from the config: ``null`` (the whole run) or ``"i/n"``; anything else is one line."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value)) if isinstance(value, str) else None
    if match is None:
        raise ConfigError("shard", f"{value!r} is not i/n; {SHARD_FIX}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError("shard", f"{value!r} needs 0 <= i < n; {SHARD_FIX}")
    return Shard(index, count)


def shard_units(shard: Shard | None, keys: Sequence[str]) -> list[str]:
    """The keys this process runs, in run order: all of them, or the shard's slice."""
    return list(keys) if shard is None else [k for k in keys if shard.owns(k)]


def help_order(shard: Shard, keys: Sequence[str]) -> list[str]:
    """The other shards' units in the order this shard explains the ones still missing: the next shard's
    slice first, each slice from its end (its owner explains from the start), and each of a slice's
    n - 1 helpers starting at its own point of it (so concurrent helpers rarely meet at one unit)."""
    order: list[str] = []
    for step in range(1, shard.count):
        other = (shard.index + step) % shard.count
        tail = list(reversed([k for k in keys if shard_of(k, shard.count) == other]))
        offset = (step - 1) * len(tail) // (shard.count - 1)  # helpers of `other` have distinct steps
        order.extend(tail[offset:] + tail[:offset])
    return order


Explained = dict[str, tuple[Explanation | None, str | None]]


def explain_shard(
    shard: Shard,
    control: bool,
    folder: RunFolder,
    records: Mapping[str, UnitRecord],
    store: ExplanationStore,
    explain: Callable[[list[str], bool], Any],
    retry_failed: bool = False,
    chunk: int = 1,
) -> Explained:
    """A shard's explaining: write the run's unit list (what a merge must find); explain its own units,
    then -- when the control needs every unit's explanation -- the units no shard has explained yet,
    ``chunk`` at a time (``explain(keys, retry_failed)``), looking at the shared file before each chunk so
    that a unit another shard explained meanwhile is not explained again; return every explanation as
    the shared file holds it (the first line of a unit wins)."""
    keys = list(records)
    folder.write_units(keys)
    size = max(chunk, 1)

    def missing(key: str, retry: bool) -> bool:
        item = store.items.get(key)
        if item is None:
            return True
        failed = item.get("explanation") is None
        return retry and failed and (retry_failed or bool(item.get("transient")))

    for order, retry in ((shard_units(shard, keys), True), (help_order(shard, keys) if control else [], False)):
        for start in range(0, len(order), size):
            store.refresh()
            todo = [k for k in order[start : start + size] if missing(k, retry)]
            if todo:
                explain(todo, retry and retry_failed)
    store.refresh()
    return {k: store.get(k) or (None, f"not explained: shard {shard} only needs its own units") for k in keys}


# ---------------------------------------------------------------------------------------------------
# Done markers and the merge
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardDone:
    """What a finished shard leaves for the merge: its units, its process's backend counters (summed
    into summary.json as an unsharded run's one process counts them), and how to name its MLflow run."""

    units: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow: dict[str, Any] = field(default_factory=dict)  # label, tags, choices, parent_run_id
    simulator: dict[str, Any] = field(default_factory=dict)  # estimator, top_k (the unparsed-rate warning)


def write_done(folder: RunFolder, shard: Shard, done: ShardDone) -> None:
    """The marker, redacted like every file of the run folder (its MLflow tags hold the overrides)."""
    from dataclasses import asdict

    from bench.tracking.redact import redact

    rewrite_atomically(folder.done_of(shard), json.dumps(redact(asdict(done)), default=str))


def read_done(folder: RunFolder, shard: Shard) -> ShardDone | None:
    path = folder.done_of(shard)
    if not path.exists():
        return None
    try:
        return ShardDone(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}); delete it and re-run that shard") from None


def shard_counts(folder: RunFolder) -> list[int]:
    """The shard counts ``n`` that shards of this folder ran with (normally one)."""
    found = {int(m.group(1)) for p in folder.root.glob("results.shard-*-of-*.jsonl") if (m := _COUNT.search(p.name))}
    return sorted(found)


_COUNT = re.compile(r"-of-(\d+)\.jsonl$")


def missing_shards(folder: RunFolder, count: int) -> list[Shard]:
    return [Shard(i, count) for i in range(count) if not folder.done_of(Shard(i, count)).exists()]


@dataclass
class Merged:
    results: list[UnitResult]
    summary: dict[str, float]
    warnings: list[str]
    run_dir: Path
    mlflow_url: str | None = None
    mlflow_already_complete: bool = False


def merge(
    run_dir: Path,
    count: int | None = None,
    tracking: Any = None,
    track: bool = True,
) -> Merged:
    """Join the shards of a finished sharded run into ``results.jsonl``, ``explanations.jsonl`` (in unit
    order), ``summary.json``, ``score_correlations.*`` and its MLflow run.  ``tracking``: the live
    :class:`~bench.config.TrackingConfig` (default: read from config.json); one line when shards are
    missing or the folder is not a sharded run."""
    from filelock import FileLock

    from bench.aggregate import aggregate, write_score_correlations

    folder = RunFolder(Path(run_dir))
    if not folder.root.is_dir():
        raise UserError(f"merge: {folder.root} is not a run folder; give runs/<name>-<hash>")
    if count is None:
        counts = shard_counts(folder)
        if not counts:
            raise UserError(
                f"merge: {folder.root} holds no shard results (results.shard-i-of-n.jsonl); nothing to merge"
            )
        if len(counts) > 1:
            raise UserError(
                f"merge: {folder.root} holds shards of {', '.join(f'n={c}' for c in counts)}; keep the files of one "
                "n (move the others' results.shard-*-of-N.jsonl and shard-*-of-N.done.json away) and merge again"
            )
        count = counts[0]
    missing = missing_shards(folder, count)
    if missing:
        names = ", ".join(f"shard={s}" for s in missing)
        raise UserError(
            f"merge: {folder.root}: {len(missing)} of {count} shards not finished ({names}); run them with the same "
            "overrides (the last one to finish merges), or merge again when they are done"
        )
    if not folder.units.exists() or not folder.config.exists():
        raise UserError(f"merge: {folder.root} has no units.json or config.json; re-run one shard to rewrite them")
    units: list[str] = json.loads(folder.units.read_text())
    config: dict[str, Any] = json.loads(folder.config.read_text())
    dones = [read_done(folder, Shard(i, count)) for i in range(count)]
    # results.jsonl first (units an unsharded run or an earlier merge finished: a shard does not redo them),
    # then every shard's lines over it
    lines: dict[str, str] = read_result_lines(folder.results) if folder.results.exists() else {}
    for i in range(count):
        path = folder.results_of(Shard(i, count))
        if path.exists():
            lines.update(read_result_lines(path))
    lacking = [k for k in units if k not in lines]
    if lacking:
        raise UserError(
            f"merge: {folder.root}: {len(lacking)} units have no result in any shard file (e.g. {lacking[0]}); "
            f"re-run shard={Shard(shard_of(lacking[0], count), count)} with the same overrides, then merge"
        )
    with FileLock(str(folder.lock_of(None)), timeout=MERGE_LOCK_TIMEOUT_S):  # two last shards: one at a time
        rewrite_atomically(folder.results, "".join(lines[k] for k in units))
        ExplanationStore(folder.explanations).order(units)
        results = [checked_result(json.loads(lines[k])) for k in units]
        scoring = config.get("scoring") or {}
        summary = aggregate(results, scoring["bootstrap_resamples"], scoring["confidence"], config["seed"])
        for done in dones:
            for key, value in (done.metrics if done else {}).items():
                summary[key] = summary.get(key, 0.0) + float(value)
        write_score_correlations(results, folder.root)
        folder.write_summary(summary)
        warnings = merged_warnings(summary, config, dones[0].simulator if dones[0] else {}, results)
        merged = Merged(results=results, summary=summary, warnings=warnings, run_dir=folder.root)
        if track:
            _mirror(folder, config, dones[0], tracking, merged)
    return merged


def merged_warnings(
    summary: dict[str, float], config: dict[str, Any], simulator: dict[str, Any], results: list[UnitResult]
) -> list[str]:
    """The warnings an unsharded run of this config ends with, from the merged summary."""
    from types import SimpleNamespace

    from bench.pipeline import outage_warnings, specificity_warnings, unparsed_warnings

    warn_on = SimpleNamespace(unparsed_rate=float((config.get("warn_on") or {}).get("unparsed_rate", 0.05)))
    settings: Any = SimpleNamespace(warn_on=warn_on)
    sim = SimpleNamespace(estimator=str(simulator.get("estimator", "?")), top_k=simulator.get("top_k"))
    warnings = specificity_warnings(summary, settings) + unparsed_warnings(summary, settings, sim)
    return warnings + outage_warnings(results, "re-run the shards' commands to retry them, then merge")


def _mirror(folder: RunFolder, config: dict[str, Any], done: ShardDone | None, tracking: Any, merged: Merged) -> None:
    """The MLflow run an unsharded run would have made, through the ordinary sink."""
    from bench.config import TrackingConfig, _structured
    from bench.run_lock import store_setup_lock
    from bench.tracking.mlflow_sink import MlflowSink

    if tracking is None:
        from omegaconf import OmegaConf

        tracking = _structured("tracking", TrackingConfig, OmegaConf.create(config.get("tracking") or {}))
    if not tracking.enabled:
        return
    setup = (done.mlflow if done else {}) or {}
    with store_setup_lock(tracking.uri):
        sink = MlflowSink(
            tracking,
            folder.root,
            setup.get("label") or folder.name,
            config,
            dict(setup.get("tags") or {}),
            dict(setup.get("choices") or {}),
            setup.get("parent_run_id"),
        )
    for result in merged.results:
        sink.write(result)
    sink.describe(merged.warnings)
    sink.close(merged.summary, merged.results)
    merged.mlflow_url, merged.mlflow_already_complete = sink.url, sink.finished
