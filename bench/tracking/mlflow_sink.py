"""MLflow mirror of a run: params, tags, per-unit artifacts as units finish, aggregates at the end.

The run id is kept in the run folder, so a resumed run continues the same MLflow run instead of
starting a second one.  Everything logged passes through :func:`bench.tracking.redact.redact`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from bench.aggregate import SCORE_CORRELATIONS
from bench.config import TrackingConfig
from bench.errors import UserError
from bench.escape import csv_cell
from bench.records import UnitResult
from bench.state_files import DamagedFile, json_object, sqlite_damage, sqlite_problem
from bench.tracking.redact import redact, redact_text

MAX_PARAM_CHARS = 500
DB_FIX = (
    "move it away and re-run (this run folder's results are kept; MLflow starts a new store), or run with tracking=none"
)
RUN_ID_FIX = (
    "delete it and re-run: results.jsonl is kept, and a new MLflow run gets the summary and results.jsonl "
    "(per-unit artifacts only for units finished from then on)"
)


def check_tracking_db(path: Path) -> None:
    """A garbage or truncated ``mlflow.db`` is one line naming it, before MLflow opens it."""
    problem = sqlite_problem(path)
    if problem is not None:
        raise UserError(f"tracking database {path} is damaged ({problem}); {DB_FIX}")


def stored_run_id(id_file: Path) -> str:
    """The MLflow run id kept in ``mlflow_run.json`` (so a resumed run continues its MLflow run)."""
    run_id = json_object(id_file, RUN_ID_FIX).get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise DamagedFile(id_file, "no 'run_id' string", RUN_ID_FIX)
    return run_id


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = node
    return out


def _param_value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 20] + " ...(see config.json)"


class MlflowSink:
    def __init__(
        self,
        tracking: TrackingConfig,
        run_dir: Path,
        run_name: str,
        config: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        import mlflow

        self.mlflow = mlflow
        self.run_dir = run_dir
        if tracking.uri and tracking.uri.startswith("sqlite:///"):
            Path(tracking.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            check_tracking_db(Path(tracking.uri.removeprefix("sqlite:///")))
        mlflow.set_tracking_uri(tracking.uri)
        try:
            experiment = mlflow.get_experiment_by_name(tracking.experiment)
        except Exception as err:  # noqa: BLE001 - only a damaged database becomes a one-line error
            if sqlite_damage(err) is None:
                raise
            raise UserError(f"tracking database {tracking.uri} is damaged ({sqlite_damage(err)}); {DB_FIX}") from None
        if experiment is None:
            location = None
            if tracking.artifact_location:
                location = Path(tracking.artifact_location).resolve().as_uri()
            experiment_id = mlflow.create_experiment(tracking.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        id_file = run_dir / "mlflow_run.json"
        run_id = stored_run_id(id_file) if id_file.exists() else None
        if run_id is not None:
            try:
                mlflow.get_run(run_id)
            except Exception:  # noqa: BLE001 - the store was wiped: start afresh
                run_id = None
        self.run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name)
        id_file.write_text(json.dumps({"run_id": self.run.info.run_id, "tracking_uri": redact_text(tracking.uri)}))
        safe_config = redact(config)
        if run_id is None:
            params = {k: _param_value(v) for k, v in flatten(safe_config).items()}
            items = list(params.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
            mlflow.log_dict(safe_config, "config.json")
        mlflow.set_tags(redact(tags))

    def write(self, result: UnitResult) -> None:
        safe = redact(result.to_json())
        self.mlflow.log_dict(safe, f"units/{result.unit.key.replace('/', '_')}.json")

    def abort(self) -> None:
        """An interrupted or crashed run: mark it KILLED; re-running the command resumes it."""
        self.mlflow.end_run(status="KILLED")

    def close(self, summary: dict[str, float], results: list[UnitResult]) -> None:
        finite = {k: v for k, v in summary.items() if not math.isnan(v)}
        self.mlflow.log_metrics(finite)
        nan_keys = sorted(k for k, v in summary.items() if math.isnan(v))
        if nan_keys:
            self.mlflow.set_tag("metrics_nan", ", ".join(nan_keys)[:5000])
        self.mlflow.log_dict(summary | {}, "summary.json")
        for name in ("results.jsonl", "explanations.jsonl", *SCORE_CORRELATIONS):
            path = self.run_dir / name
            if path.exists():
                self.mlflow.log_artifact(str(path))
        self.mlflow.log_text(redact_text(units_table(results)), "units.csv")
        self.mlflow.end_run()


def units_table(results: list[UnitResult]) -> str:
    """One CSV row per unit: status, explanation, every score and its NaN reason."""
    names: dict[str, None] = {}
    for r in results:
        for k in r.scores:
            names.setdefault(k, None)
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["unit", "status", "stage", "error", "explanation", *names, *(f"{n}/reason" for n in names)]
    writer.writerow([csv_cell(h) for h in header])
    for r in results:
        scores = [r.scores[n].value if n in r.scores else "" for n in names]
        reasons = [(r.scores[n].reason or "") if n in r.scores else "" for n in names]
        row = [
            r.unit.key,
            r.status,
            r.stage or "",
            r.error or "",
            r.explanation.text if r.explanation else "",
            *scores,
            *reasons,
        ]
        writer.writerow([csv_cell(c) for c in row])  # an explanation "=HYPERLINK(...)" stays text
    return buf.getvalue()
