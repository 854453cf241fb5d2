"""Sweeps on Hydra's launcher plugins (issue 11 item 1): `neuronbench run -m ... hydra/launcher=X` runs
its jobs in other processes -- joblib workers, submitit's local executor (what SLURM runs, minus SLURM)
-- into one MLflow parent run, after the callback validated every job.  The Ray launcher has its own
module (tests/test_sweep_ray.py: one Ray start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_run

from bench.jobs import SWEEP_ENV
from bench.tracking.mlflow_sink import PARENT_TAG

ROOT = Path(__file__).resolve().parents[1]
# An LLM explainer whose LLM is the deterministic fake (no model, no network): prompt variants matter.
FAKE_EXPLAINER_LLM = ["~explainer.llm", "+explainer.llm={_target_:bench.llm.fake.FakeLLM}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 6))
    return path


@pytest.fixture
def mlflow_server(tmp_path: Path, _mlflow_template: Path):
    """A real ``mlflow server`` (sqlite backend, served artifacts) on 127.0.0.1: where a team's sweeps land."""
    import shutil

    from mlflow_servers import MlflowServer

    root = tmp_path / "mlflow-server"
    root.mkdir()
    shutil.copyfile(_mlflow_template, root / "mlflow.db")
    srv = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log").start()
    yield {"uri": srv.uri, "server": "true"}
    srv.stop()


def sweep_args(tmp: Path, subject: Path, corpus: Path, store: dict[str, str], *extra: str) -> list[str]:
    """`run -m` of 2 explainers x 2 prompt variants on a tiny subject with the fake LLM."""
    tracking = (
        ["tracking=server", f"tracking.uri={store['uri']}"]
        if store.get("server")
        else [f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}"]
    )
    return [
        "run",
        "-m",
        "--no-progress",
        "explainer=smollm2,openai_compatible",
        "prompt=v1,v1_no_examples",
        *FAKE_EXPLAINER_LLM,
        "simulator=proxy_lexical",
        *tiny_run(subject, corpus),
        "units.count=2",
        *tracking,
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        *extra,
    ]


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user runs it (launchers start their own workers from it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(SWEEP_ENV, None)
    with subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=cwd, env=env,
    ) as popen:  # fmt: skip
        out, err = popen.communicate(timeout=timeout)
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    proc.pid = popen.pid  # the launching process: jobs that ran elsewhere report other pids
    return proc


def sweep_runs(store: dict[str, str]) -> tuple[list, list]:
    """(parents, children) of the experiment in the store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    experiment = client.get_experiment_by_name("neuronbench")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if PARENT_TAG not in r.data.tags], [r for r in runs if PARENT_TAG in r.data.tags]


def assert_one_parent_with_children(store: dict[str, str], names: set[str]) -> None:
    parents, children = sweep_runs(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags[PARENT_TAG] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name for c in children} == names
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["units/failure_rate"] == 0.0  # (its scores are NaN: the fake says no token)
        run_dir = Path(child.data.tags["run_dir"])
        lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(r["status"] == "ok" for r in lines)
        assert {r["explanation"]["meta"]["prompt"] for r in lines} == {child.data.params["prompt"].split()[0]}


ALL_FOUR = {f"explainer={e},prompt={p}" for e in ("smollm2", "openai_compatible") for p in ("v1", "v1_no_examples")}


def test_joblib_launcher_runs_a_4_job_sweep_in_worker_processes_into_one_parent(tmp_path, corpus, mlflow_server):
    """2 explainers x 2 prompt variants in joblib's worker processes, into one parent on an MLflow server."""
    mlflow_store = mlflow_server
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    args = sweep_args(tmp_path, subject, corpus, mlflow_store, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran the jobs
    assert proc.stdout.count("MLflow sweep: ") == 1
    assert_one_parent_with_children(mlflow_store, ALL_FOUR)
    statuses = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep" / ".neuronbench/jobs").glob("*.json"))]
    assert [s["code"] for s in statuses] == [0, 0, 0, 0]
    assert proc.pid not in {s["pid"] for s in statuses}  # the jobs ran in joblib's worker processes
    assert len(list((tmp_path / "runs").glob("*/results.jsonl"))) == 4


def test_submitit_local_launcher_runs_a_2_job_sweep_into_one_parent(tmp_path, corpus, mlflow_store):
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    args = sweep_args(tmp_path, subject, corpus, mlflow_store, "hydra/launcher=submitit_local")
    args[args.index("explainer=smollm2,openai_compatible")] = "explainer=smollm2"
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_one_parent_with_children(mlflow_store, {"prompt=v1", "prompt=v1_no_examples"})
    # submitit pickled each job into its folder and ran it in a process of its own
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / ".neuronbench/jobs").glob("*.json")]
    assert sorted(s["code"] for s in statuses) == [0, 0] and proc.pid not in {s["pid"] for s in statuses}


def test_a_bad_value_in_one_job_stops_the_sweep_before_any_job_runs(tmp_path, corpus, mlflow_store):
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    bad = "scoring.calibration=linear,bogus"  # the second job's value is not a calibration
    args = sweep_args(tmp_path, subject, corpus, mlflow_store, "hydra/launcher=joblib", bad)
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neuronbench: ") and "scoring.calibration" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep").exists()  # no job started
    parents, children = sweep_runs(mlflow_store)
    assert parents == [] and children == []  # not even the sweep's parent run


def test_a_job_that_fails_at_run_time_does_not_stop_the_others_and_sets_the_exit_code(
    tmp_path, corpus, mlflow_store, capsys
):
    """Layer 9 of a 2-layer subject passes config validation but stops its job (one line, exit 2):
    the other job still runs, the sweep exits 2 naming the job, and the parent run is FAILED."""
    from bench.cli import main

    subject = save_tiny_subject("llama", tmp_path / "tiny")
    args = sweep_args(tmp_path, subject, corpus, mlflow_store, "units.layers=[1],[9]")
    args[args.index("explainer=smollm2,openai_compatible")] = "explainer=smollm2"
    args[args.index("prompt=v1,v1_no_examples")] = "prompt=v1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "neuronbench: 1 of 2 sweep jobs failed: job 1 (" in err and "units.layers=[9]" in err
    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert [c.info.run_name for c in children] == ["units.layers=[1]"] and children[0].info.status == "FINISHED"
    assert len(list((tmp_path / "runs").glob("*/results.jsonl"))) == 1


def test_the_run_command_is_a_plain_hydra_app_with_its_callback_and_any_launcher(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=10.0.0.1:6379"]
    args = [sys.executable, "-m", "bench.launch", "--cfg", "hydra", *launcher, "units.count=2"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "_target_: hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher" in proc.stdout
    # joining a running cluster: ray.init refuses the plugin's object_store_memory default there
    assert "address: 10.0.0.1:6379" in proc.stdout and "object_store_memory: null" in proc.stdout
    assert "_target_: bench.sweep.SweepCallback" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # printed, not run


def test_an_unknown_launcher_is_one_line_listing_the_installed_ones(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "-m", "explainer=token_list", "hydra/launcher=rayy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuronbench: hydra/launcher=rayy: no such launcher") and "\n" not in err
    assert all(name in err for name in ("basic", "joblib", "ray_cluster", "submitit_slurm"))
    assert not (tmp_path / "outputs").exists()


def test_the_parent_id_reaches_jobs_as_an_env_set_override_that_parses_back_whole():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from bench.sweep import hand_to_jobs

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra/launcher=joblib"], "task": []}}})
    OmegaConf.set_readonly(config, True)  # as Hydra hands it to callbacks
    value = json.dumps({"parent_run_id": "abc123", "swept": ["explainer", "it's", "a\\b", "${x}", "\\'", "\\${y}"]})
    hand_to_jobs(config, SWEEP_ENV, value)
    added = config.hydra.overrides.hydra[-1]
    parsed = OverridesParser.create().parse_overrides([added])[0]
    assert parsed.key_or_group == f"hydra.job.env_set.{SWEEP_ENV}" and parsed.value() == value
