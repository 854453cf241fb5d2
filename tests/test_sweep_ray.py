"""A 4-job sweep on Hydra's Ray launcher (issue 11 item 1): `hydra/launcher=ray` starts a local Ray
cluster for the sweep and runs each job in a Ray worker process.  Nothing in the environment carries
the sweep's MLflow parent id: it reaches the workers only through the jobs' config
(``hydra.job.env_set``, set by the sweep callback) -- the path it takes to a remote cluster's workers
too.  One Ray start per module (the slow tier)."""

from __future__ import annotations

import json

import pytest
from conftest_models import save_tiny_subject
from test_sweep_launchers import (  # noqa: F401
    ALL_FOUR,
    assert_one_parent_with_children,
    corpus,
    mlflow_server,
    run_cli,
    sweep_args,
)

pytestmark = pytest.mark.slow  # a Ray cluster start: the slow tier (.ci/run runs it)

LOCAL_RAY = [
    "hydra/launcher=ray",
    "++hydra.launcher.ray.init.num_cpus=2",
    "++hydra.launcher.ray.init.include_dashboard=false",
]


def test_ray_launcher_runs_a_4_job_sweep_in_ray_workers_into_one_parent(tmp_path, corpus, mlflow_server):  # noqa: F811
    """2 explainers x 2 prompt variants in Ray workers, into one parent on an MLflow server."""
    mlflow_store = mlflow_server
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    proc = run_cli(sweep_args(tmp_path, subject, corpus, mlflow_store, *LOCAL_RAY), tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in proc.stdout + proc.stderr
    assert proc.stdout.count("MLflow sweep: ") == 1
    assert_one_parent_with_children(mlflow_store, ALL_FOUR)
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / ".neuronbench/jobs").glob("*.json")]
    assert sorted(s["code"] for s in statuses) == [0, 0, 0, 0]
    assert proc.pid not in {s["pid"] for s in statuses}  # the jobs ran in Ray's worker processes
