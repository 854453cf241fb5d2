"""A 4-job sweep on Hydra's Ray launcher against an existing Ray cluster on 127.0.0.1 (issue 11 item 1).

The cluster is started here (`ray start --head --block`, stopped by its process group): its workers
do not share the launching shell's environment, so the sweep's MLflow parent id reaches them only
through the jobs' config (``hydra.job.env_set``, set by the sweep callback).  One Ray start per module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_models import save_tiny_subject
from test_sweep_launchers import ALL_FOUR, assert_one_parent_with_children, corpus, run_cli, sweep_args  # noqa: F401

pytestmark = pytest.mark.e2e  # a Ray cluster start: the slow tier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """`ray start --head` on 127.0.0.1 with 2 CPUs; its address."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "the ray CLI is part of the test extra (pip install -e '.[test]')"
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    temp = tmp_path_factory.mktemp("ray")
    log = (temp / "ray_start.log").open("w")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert head.poll() is None, (temp / "ray_start.log").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("ray start --head did not listen within 180 s")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the cluster it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def test_ray_launcher_runs_a_4_job_sweep_on_an_existing_cluster_into_one_parent(
    tmp_path, corpus, mlflow_store, ray_cluster  # noqa: F811
):
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    launcher = ["hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_cluster}"]
    proc = run_cli(sweep_args(tmp_path, subject, corpus, mlflow_store, *launcher), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in proc.stdout + proc.stderr
    assert proc.stdout.count("MLflow sweep: ") == 1
    assert_one_parent_with_children(mlflow_store, ALL_FOUR)
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / ".neuronbench/jobs").glob("*.json")]
    assert sorted(s["code"] for s in statuses) == [0, 0, 0, 0]
    assert proc.pid not in {s["pid"] for s in statuses}  # the jobs ran in Ray's worker processes
