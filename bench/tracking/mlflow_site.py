"""Log a folder (the viewer site) to the MLflow run of a run folder, when it has one.

A minimal helper kept apart from the MLflow sink: the site is written after the run finished, so
it goes to the finished run by the id the sink left in ``mlflow_run.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def log_site(run_dir: Path, site_dir: Path, artifact_path: str = "viewer") -> str | None:
    """Upload ``site_dir`` as artifacts of the run's MLflow run; return the run id, or None when the
    run folder has no MLflow run (tracking=none) or its store is gone (a warning, never a failure)."""
    id_file = Path(run_dir) / "mlflow_run.json"
    if not id_file.exists():
        return None
    info = json.loads(id_file.read_text())
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        client.get_run(info["run_id"])
        client.log_artifacts(info["run_id"], str(site_dir), artifact_path)
    except Exception as err:  # noqa: BLE001 - the site on disk is the result; MLflow is a mirror
        log.warning("viewer: not logged to MLflow (%s)", err)
        print(f"viewer: not logged to MLflow: {type(err).__name__}: {err}")
        return None
    return str(info["run_id"])
