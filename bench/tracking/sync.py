"""``neuronbench sync RUN_DIR ...``: re-create or complete a run's MLflow mirror from its run folder.

The run folder is the source of truth (``results.jsonl``, ``summary.json``, ``config.json``); MLflow
mirrors it.  When the tracking server went away mid-run (the sink warned and stopped mirroring), was
wiped, or the run had ``tracking=none``, sync makes the mirror whole again:

* the run recorded in ``mlflow_run.json`` is completed if the server has it; otherwise a run is created
  with the recorded name, tags, params and sweep parent (the recorded one, or one found or re-created by
  its sweep key -- so a sweep's children synced into a fresh store share one parent again), and its id is
  recorded -- so a second sync finds it: running sync twice creates nothing twice;
* every unit of ``results.jsonl`` missing under ``units/`` is logged; a finished run folder (its
  ``summary.json`` covers every result) gets the same headline metrics, description and files the sink
  logs at the end, and the run is marked FINISHED.  Metrics already logged with the same value are not
  logged again; files written again replace their old copies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import TrackingConfig
from bench.errors import UserError
from bench.records import UnitResult
from bench.state_files import json_object
from bench.tracking.mlflow_sink import (
    ID_FILE,
    PARENT_TAG,
    RUN_ID_FIX,
    SWEEP_KEY_TAG,
    _close_sweep_parent,
    _yaml,
    checked_experiment,
    client_for,
    complete_run,
    headline_metrics,
    reader_params,
    ui_url,
    unit_artifact,
)
from bench.tracking.redact import MASK, redact
from bench.tracking.server import check_reachable

CONFIG_FIX = "it is written when a run starts; point sync at a run folder (runs/<name>-<hash>)"


@dataclass(frozen=True)
class SyncReport:
    """What one sync did to one run folder's MLflow run."""

    run_dir: Path
    run_id: str
    created: bool  # a new MLflow run (the recorded one is not on this server, or none was recorded)
    units_logged: int  # per-unit results logged now (they were missing)
    finished: bool  # the run folder holds a finished run: metrics and files logged, run FINISHED
    url: str

    def line(self) -> str:
        what = "created" if self.created else "completed"
        state = "finished" if self.finished else "unfinished in the run folder (re-run it, then sync again)"
        return f"sync {self.run_dir}: MLflow run {what}, {self.units_logged} unit(s) logged, {state}: {self.url}"


def sync_run(run_dir: Path, tracking_uri: str | None = None, experiment: str | None = None) -> SyncReport:
    """Mirror ``run_dir`` to its tracking store (or ``tracking_uri``); see the module docstring."""
    from bench.run_lock import lock_run_folder, store_setup_lock

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{run_dir} is not a run folder: no config.json ({CONFIG_FIX})")
    config = json_object(config_path, CONFIG_FIX)
    tracking = _tracking(config, run_dir, tracking_uri, experiment)
    check_reachable(tracking.uri, "--tracking-uri" if tracking_uri else "tracking.uri")
    lock = lock_run_folder(run_dir)  # not while a run writes this folder; two syncs take turns
    try:
        with store_setup_lock(tracking.uri):  # a fresh sqlite store: one process migrates it
            client = client_for(tracking)
            experiment_id = checked_experiment(client, tracking)
        return _sync(client, experiment_id, tracking, run_dir, config)
    finally:
        lock.release()


def _tracking(config: dict[str, Any], run_dir: Path, uri: str | None, experiment: str | None) -> TrackingConfig:
    found = config.get("tracking")
    node: dict[str, Any] = found if isinstance(found, dict) else {}
    configured = node.get("uri") if node.get("enabled", True) else None
    if uri is None:
        if not configured:
            raise UserError(f"{run_dir} ran with tracking=none; name a store: neuronbench sync --tracking-uri URI")
        if MASK in str(configured):
            raise UserError(
                f"the tracking.uri of {run_dir} holds credentials (masked in config.json); "
                "give it again: neuronbench sync --tracking-uri URI"
            )
    same_store = uri is None or uri == configured
    return TrackingConfig(
        uri=uri or configured,
        artifact_location=node.get("artifact_location") if same_store else None,
        experiment=experiment or node.get("experiment") or "neuronbench",
    )


def _record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ID_FILE
    return json_object(path, RUN_ID_FIX) if path.exists() else {}


def _results(run_dir: Path) -> list[UnitResult]:
    from bench.run.folder import read_results

    path = run_dir / "results.jsonl"
    return list(read_results(path).values()) if path.exists() else []


def _summary(run_dir: Path, results: list[UnitResult]) -> dict[str, float] | None:
    """The run's summary when the run folder holds a finished run (a summary covering every result)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = {k: math.nan if v is None else v for k, v in json_object(path, CONFIG_FIX).items()}
    return summary if summary.get("units/total") == float(len(results)) else None


def _exists(client: Any, run_id: str | None) -> Any:
    """The run with this id on this store, or None (never recorded, or not on this store)."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.get_http_status_code() == 404 or "not found" in str(err).lower():
            return None
        raise


def _sync(
    client: Any, experiment_id: str, tracking: TrackingConfig, run_dir: Path, config: dict[str, Any]
) -> SyncReport:
    record = _record(run_dir)
    results = _results(run_dir)
    run = _exists(client, record.get("run_id"))
    created = run is None
    parent = None
    if created:
        tags = {k: str(v) for k, v in (record.get("tags") or {"run_dir": str(run_dir)}).items()}
        parent = _parent(client, experiment_id, record)
        if parent:
            tags[PARENT_TAG] = parent
        name = record.get("run_name") or run_dir.name
        run = client.create_run(experiment_id, run_name=name, tags=redact(tags))
        record = {**record, "run_id": run.info.run_id, "tracking_uri": redact(tracking.uri or ""), "run_name": name}
        record["parent_run_id"] = parent
        (run_dir / ID_FILE).write_text(json.dumps(record))
    run_id = run.info.run_id
    _log_missing_params(client, run, reader_params(config, record.get("choices") or {}))
    if created:
        client.log_dict(run_id, config, "config.json")  # config.json in the run folder is already redacted
        client.log_text(run_id, _yaml(config), "config.yaml")

    logged_units = {a.path for a in client.list_artifacts(run_id, "units")}
    missing = [r for r in results if unit_artifact(r.unit.key) not in logged_units]
    for result in missing:
        client.log_dict(run_id, redact(result.to_json()), unit_artifact(result.unit.key))

    summary = _summary(run_dir, results)
    if summary is not None:
        metrics = client.get_run(run_id).data.metrics
        stale = any(metrics.get(k) != v for k, v in headline_metrics(summary).items())
        if created or missing or stale or run.info.status != "FINISHED":
            complete_run(client, run_id, run_dir, summary, results, record.get("warnings") or [])
    if parent:  # a sweep's parent found or re-created here: its children table shows this child too
        _close_sweep_parent(tracking, parent, "FINISHED")
    return SyncReport(
        run_dir=run_dir,
        run_id=run_id,
        created=created,
        units_logged=len(missing),
        finished=summary is not None,
        url=ui_url(tracking.uri, experiment_id, run_id),
    )


def _parent(client: Any, experiment_id: str, record: dict[str, Any]) -> str | None:
    """The sweep parent a re-created child belongs under: the recorded one when this store has it, else
    the one with the recorded sweep key (another child's sync re-created it), else a new one with the
    recorded name and tags.  None for a run outside a sweep."""
    recorded = record.get("parent_run_id")
    if not recorded:
        return None
    if _exists(client, recorded) is not None:
        return str(recorded)
    info = record.get("parent") or {}
    tags = {k: str(v) for k, v in (info.get("tags") or {}).items()}
    key = tags.get(SWEEP_KEY_TAG)
    if not key:
        return None
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    return str(client.create_run(experiment_id, run_name=info.get("run_name"), tags=tags).info.run_id)


def _log_missing_params(client: Any, run: Any, params: dict[str, str]) -> None:
    """Params the run lacks (MLflow params are write-once: one already logged is never sent again)."""
    from mlflow.entities import Param

    have = run.data.params
    fresh = [Param(k, v) for k, v in redact(params).items() if k not in have]
    if fresh:
        client.log_batch(run.info.run_id, params=fresh)
