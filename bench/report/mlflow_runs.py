"""Run folders from an MLflow experiment (local store or server), for ``leaderboard --mlflow-uri``.

Every finished run mirrors its run folder's files (config.json, summary.json, results.jsonl) as
artifacts, so the leaderboard downloads those three per run and reads them like any run folder:
one reader, whichever the source.  Runs without them (sweep parents, unfinished runs) are skipped
and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import UserError

FILES = ("config.json", "summary.json", "results.jsonl")


def download_runs(uri: str, experiment: str, into: Path) -> tuple[list[Path], int]:
    """(run folders written under ``into``, runs skipped for lack of the files)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as err:  # noqa: BLE001 - an unreachable server or a bad URI is a user's fix
        raise UserError(
            f"leaderboard: cannot read MLflow at {uri} ({type(err).__name__}); check --mlflow-uri"
        ) from None
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(
            f"leaderboard: no MLflow experiment {experiment!r} at {uri} (--experiment); have: {', '.join(names)}"
        )
    folders, skipped = [], 0
    for run in client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'"):
        have = {a.path for a in client.list_artifacts(run.info.run_id)}
        if not set(FILES) <= have:
            skipped += 1
            continue
        name = re.sub(r"[^A-Za-z0-9_.=,-]+", "-", run.info.run_name or run.info.run_id)
        folder = into / f"{name}-{run.info.run_id[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        for file in FILES:
            client.download_artifacts(run.info.run_id, file, str(folder))
        folders.append(folder)
    return sorted(folders), skipped
