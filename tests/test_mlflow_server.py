"""A shared MLflow tracking server (``tracking=server``): a real ``mlflow server`` on 127.0.0.1 with served
artifacts, on sqlite (one per module) and on PostgreSQL (a throwaway cluster).

* a 2x2 sweep (2 explainer models on the fake LLM x 2 prompt variants) lands as one parent with four children;
* four worker processes logging one sweep at once into a PostgreSQL-backed server;
* a server that is down at start is one line (exit 2) before any work;
* a server killed mid-run loses nothing: the run finishes, ``neuronbench sync`` completes the mirror
  after a restart -- with the metrics of an uninterrupted run -- and a second sync adds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest_models import tiny_run
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token
from mlflow_servers import MlflowServer, PostgresCluster, free_port, postgres_bin

from bench.cli import SWEEP_ENV, main
from bench.config import TrackingConfig
from bench.tracking.mlflow_sink import MAX_METRICS, PARENT_TAG, MlflowSink, close_sweep_parent, open_sweep_parent

MAIN = "score/correlation/top_and_random/mean"
MODELS = ("gpt-4o-mini", "gpt-4.1-mini")  # two explainer models, both answered by the fake LLM
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, _mlflow_template: Path):
    """One ``mlflow server`` on a sqlite store (migrated once per session, then copied) for the module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(_mlflow_template, root / "mlflow.db")
    srv = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fake_llm():
    with FakeLLMServer(api_key=None) as llm:
        llm.responder = benchmark_responder
        llm.next_token = simulating_next_token
        yield llm


@pytest.fixture
def fast_client(monkeypatch):
    """MLflow's client retries a dead server for minutes by default; tests give up at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _llm_overrides(url: str) -> list[str]:
    return [
        f"explainer.llm.{key}"
        for key in (
            f"base_url={url}",
            "api_key_env=NB_PROXY_CRED",
            "max_retries=1",
            "backoff_initial_s=0.001",
            "backoff_max_s=0.002",
            "requests_per_minute=null",
            "tokens_per_minute=null",
        )
    ]


def _common(subject: Path, corpus: Path, tmp_path: Path, uri: str) -> list[str]:
    return [
        *tiny_run(subject, corpus),
        "tracking=server",
        f"tracking.uri={uri}",
        f"output_dir={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def _experiment_runs(uri: str, experiment: str = "neuronbench") -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def _check_sweep(uri: str, artifacts: Path) -> None:
    """One FINISHED parent with four FINISHED children named by their swept choices, each with its
    metrics, params and artifacts -- stored by the server in its artifact root."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = _experiment_runs(uri)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 4, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}
    assert {c.info.run_name for c in children} == {
        f"explainer.llm.model={m},prompt={p}" for m in MODELS for p in ("v1", "v1_no_examples")
    }
    with tempfile.TemporaryDirectory() as tmp:  # through the server (mlflow-artifacts:/ URIs)
        table = Path(client.download_artifacts(parent.info.run_id, "children.csv", tmp)).read_text().splitlines()
    assert len(table) == 5 and MAIN in table[0]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a local path
        assert MAIN in child.data.metrics and len(child.data.metrics) <= MAX_METRICS
        assert child.data.params["prompt"] in ("v1 (v1)", "v1_no_examples (v1)")
        assert len(client.list_artifacts(child.info.run_id, "units")) == 3
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"summary.json", "units.csv", "results.jsonl", "config.yaml"} <= files
        stored = artifacts / child.info.experiment_id / child.info.run_id / "artifacts" / "units.csv"
        assert stored.exists()  # in the server's --artifacts-destination


# ---------------------------------------------------------------------------------------------------
# Down at start: one line naming tracking.uri, before any work
# ---------------------------------------------------------------------------------------------------
def test_a_server_that_is_down_at_start_is_one_line_before_any_work(subject, corpus, tmp_path, capsys):
    down = f"http://127.0.0.1:{free_port()}"
    args = ["explainer=token_list", "simulator=proxy_lexical", *_common(subject, corpus, tmp_path, down)]
    for argv in (["run", "--no-progress", *args], ["run", "-m", "--no-progress", "prompt=v1,v1_no_examples", *args]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "'tracking.uri'" in err and down in err and "mlflow server" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing mined, no run folder

    # the Python API / a launcher's worker process checks too (run_job), before the run folder exists
    from bench.api import evaluate
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="tracking.uri"):
        evaluate(args)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------
# A 2x2 sweep into one parent run on the server (sqlite backend)
# ---------------------------------------------------------------------------------------------------
def test_a_2x2_sweep_of_explainer_models_on_the_fake_llm_lands_in_one_parent_on_the_server(
    subject, corpus, tmp_path, server, fake_llm, monkeypatch, capsys
):
    monkeypatch.setenv("NB_PROXY_CRED", "sk-test-proxy-credential")
    argv = [
        "run",
        "-m",
        "--no-progress",
        "explainer=openai",  # Hydra applies explainer.llm.* before a swept explainer group: sweep its model
        f"explainer.llm.model={','.join(MODELS)}",
        "prompt=v1,v1_no_examples",
        "simulator=proxy_lexical",
        *_llm_overrides(fake_llm.base_url),
        *_common(subject, corpus, tmp_path, server.uri),
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"MLflow sweep: {server.uri}/#/experiments/" in out and out.count("MLflow run: ") == 4
    _check_sweep(server.uri, server.artifacts)
    assert fake_llm.count("/v1/chat/completions") >= 12  # 4 jobs x 3 units explained by the fake LLM


# ---------------------------------------------------------------------------------------------------
# The server goes away mid-run: nothing lost; sync completes the mirror, twice adds nothing
# ---------------------------------------------------------------------------------------------------
def _metrics(uri: str, run_id: str) -> dict[str, float]:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_nothing_and_sync_completes_the_mirror(
    subject, corpus, tmp_path, server, fast_client, monkeypatch, capsys
):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    base = ["run", "--no-progress", "explainer=token_list", "simulator=proxy_lexical", "run_name=outage"]
    # An uninterrupted run of the same configuration (its own folder and cache): the reference.
    reference = tmp_path / "reference"
    assert main([*base, *_common(subject, corpus, reference, server.uri)]) == 0
    ref_dir = next((reference / "runs").iterdir())
    ref_id = json.loads((ref_dir / "mlflow_run.json").read_text())["run_id"]
    expected = _metrics(server.uri, ref_id)
    assert MAIN in expected
    capsys.readouterr()

    # The same run again in a fresh folder; the server dies (SIGKILL) just before the 2nd unit is mirrored.
    mirrored: list[str] = []
    original = MlflowSink.write

    def write_then_crash(sink: MlflowSink, result) -> None:
        mirrored.append(result.unit.key)
        if len(mirrored) == 2:
            server.kill()
        original(sink, result)

    monkeypatch.setattr(MlflowSink, "write", write_then_crash)
    hit = tmp_path / "hit"
    try:
        assert main([*base, *_common(subject, corpus, hit, server.uri)]) == 0
    finally:
        monkeypatch.setattr(MlflowSink, "write", original)
        server.start()  # the same store and artifact root, as an operator would restart it
    out, err = capsys.readouterr()
    console = out + err
    assert console.count("mirroring stops for this run") == 1, console  # warned once, then silent
    run_dir = next((hit / "runs").iterdir())
    assert f"neuronbench sync {run_dir}" in console
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len(mirrored) == 3  # every unit ran and was written: nothing lost

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    before = client.get_run(run_id)
    assert before.info.status == "RUNNING" and before.data.metrics == {}  # the mirror stopped mid-run
    assert len(client.list_artifacts(run_id, "units")) == 1  # the unit mirrored before the crash

    assert main(["sync", str(run_dir)]) == 0
    assert "completed, 2 unit(s) logged, finished" in capsys.readouterr().out
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert after.data.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert after.data.metrics[key] == pytest.approx(value, abs=1e-9), key
    assert len(client.list_artifacts(run_id, "units")) == 3
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "units.csv", "results.jsonl", "config.json"} <= files

    # Twice: nothing new -- same run, no metric logged again, no new run.
    runs_before = {r.info.run_id for r in _experiment_runs(server.uri)}
    assert main(["sync", str(run_dir)]) == 0
    assert "0 unit(s) logged" in capsys.readouterr().out
    assert {r.info.run_id for r in _experiment_runs(server.uri)} == runs_before
    for key in expected:
        assert len(client.get_metric_history(run_id, key)) == 1, key

    # A store that never saw the recorded run (a wiped server, another store): sync creates the run with
    # the recorded name, params and metrics, records its id -- and a second sync finds it.
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    (run_dir / "mlflow_run.json").write_text(json.dumps({**record, "run_id": "0" * 32}))
    for _ in range(2):
        assert main(["sync", str(run_dir), "--experiment", "replica"]) == 0
    replica = _experiment_runs(server.uri, "replica")
    assert len(replica) == 1 and replica[0].info.run_name == "outage" and replica[0].info.status == "FINISHED"
    assert replica[0].data.metrics == pytest.approx(expected, abs=1e-9)
    assert replica[0].data.params == after.data.params
    assert len(client.list_artifacts(replica[0].info.run_id, "units")) == 3
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == replica[0].info.run_id


def test_sync_refuses_a_folder_that_is_not_a_run_and_a_run_without_a_store(tmp_path, capsys):
    assert main(["sync", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"tracking": {"enabled": False, "uri": None}}))
    assert main(["sync", str(tmp_path)]) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    down = f"http://127.0.0.1:{free_port()}"
    assert main(["sync", str(tmp_path), "--tracking-uri", down]) == 2
    err = capsys.readouterr().err
    assert "'--tracking-uri'" in err and down in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# PostgreSQL: four worker processes log one sweep at once
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "!!! PostgreSQL's initdb is MISSING: the mlflow-server-on-PostgreSQL test did NOT run !!! "
            "(apt-get install -y postgresql; .ci/run installs it)"
        )
    cluster = PostgresCluster(bin_dir).start()
    root = tmp_path_factory.mktemp("mlflow-pg")
    try:
        srv = MlflowServer(cluster.uri, root / "artifacts", root / "server.log").start()
        yield srv
        srv.stop()
    finally:
        cluster.stop()


@pytest.mark.slow
def test_four_concurrent_workers_log_one_sweep_to_a_postgresql_server(
    subject, corpus, tmp_path, postgres_server, fake_llm
):
    """The jobs of a sweep on a launcher run in other processes; they find the parent run through the
    environment (as ``neuronbench run -m`` passes it) and log to the server at the same time."""
    uri = postgres_server.uri
    grid = [("explainer.llm.model", MODELS), ("prompt", ("v1", "v1_no_examples"))]
    swept = [key for key, _ in grid]
    overrides = [f"{key}={','.join(values)}" for key, values in grid]
    parent = open_sweep_parent(TrackingConfig(uri=uri), overrides, swept)
    env = {
        **os.environ,
        SWEEP_ENV: json.dumps({"parent_run_id": parent, "swept": swept}),
        "NB_PROXY_CRED": "sk-test-proxy-credential",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    common = [
        "simulator=proxy_lexical",
        *_llm_overrides(fake_llm.base_url),
        *_common(subject, corpus, tmp_path, uri),
    ]
    workers = []
    for model in MODELS:
        for prompt in grid[1][1]:
            job = f"{model}-{prompt}"
            argv = ["run", "--no-progress", "explainer=openai", f"explainer.llm.model={model}", f"prompt={prompt}"]
            argv += [*common, f"hydra.run.dir={tmp_path / job}"]
            log = (tmp_path / f"{job}.log").open("w")
            command = [sys.executable, "-m", "bench.cli", *argv]
            workers.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in workers:
        codes.append(proc.wait(timeout=600))
        log.close()
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    assert codes == [0, 0, 0, 0], logs
    close_sweep_parent(TrackingConfig(uri=uri), parent)
    _check_sweep(uri, postgres_server.artifacts)


# ---------------------------------------------------------------------------------------------------
# Without a server: what counts as an outage, the start-up probe, sync into another store
# ---------------------------------------------------------------------------------------------------
def test_server_gone_tells_an_outage_from_a_mistake():
    import requests
    from mlflow.exceptions import MlflowException, RestException

    from bench.tracking.server import server_gone

    def wrapped(inner: BaseException) -> MlflowException:  # how MLflow's REST client raises
        try:
            try:
                raise inner
            except Exception as e:
                raise MlflowException(f"API request to http://x/api failed with exception {e}") from None
        except MlflowException as outer:
            outer.__suppress_context__ = False
            return outer

    assert server_gone(wrapped(requests.exceptions.ConnectionError("Connection refused")))
    assert server_gone(MlflowException("API request to http://x failed with exception Max retries exceeded"))
    assert server_gone(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "db down"}))
    assert server_gone(ConnectionRefusedError())
    assert not server_gone(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad param"}))
    assert not server_gone(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert not server_gone(ValueError("a bug"))


def test_the_start_up_probe_passes_local_stores_and_any_answer_below_500():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from bench.errors import ConfigError
    from bench.tracking.server import check_reachable

    status = {"code": 404}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://user:pw-secret-123@127.0.0.1:{httpd.server_address[1]}"
        check_reachable("sqlite:///nowhere/mlflow.db")  # a local store: nothing to ask
        check_reachable(None)
        check_reachable(url)  # 404 at /health: something answers (a proxy path, an auth wall)
        status["code"] = 502  # a proxy in front of a dead server
        with pytest.raises(ConfigError, match="HTTP 502") as err:
            check_reachable(url)
        assert "pw-secret-123" not in str(err.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_sync_mirrors_a_run_without_tracking_into_a_store_once(subject, corpus, tmp_path, mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a store named on the command line
    argv = ["run", "--no-progress", "explainer=token_list", "simulator=proxy_lexical", *tiny_run(subject, corpus)]
    argv += ["tracking=none", f"output_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    assert not (run_dir / "mlflow_run.json").exists()
    for _ in range(2):
        assert main(["sync", str(run_dir), "--tracking-uri", mlflow_store["uri"]]) == 0
    runs = _experiment_runs(mlflow_store["uri"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert runs[0].data.metrics[MAIN] == pytest.approx(summary[MAIN], abs=1e-9)
    assert runs[0].data.params["explainer"] == "token_list (v1)"
    client = mlflow.MlflowClient(tracking_uri=mlflow_store["uri"])
    assert len(client.list_artifacts(runs[0].info.run_id, "units")) == 3
    assert len(client.get_metric_history(runs[0].info.run_id, MAIN)) == 1


def test_sync_of_a_sweeps_run_folders_into_an_empty_store_rebuilds_one_parent(
    subject, corpus, tmp_path, mlflow_store, _mlflow_template, monkeypatch
):
    """A wiped or new server: syncing every run folder of a sweep groups the children under one parent again
    (found by its sweep key after the first child re-created it), twice without duplicates."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "-m", "--no-progress", "explainer=token_list", "simulator=proxy_lexical", "prompt=v1,v1_no_examples"]
    argv += [*tiny_run(subject, corpus), f"tracking.uri={mlflow_store['uri']}"]
    argv += [f"tracking.artifact_location={mlflow_store['artifacts']}", f"output_dir={tmp_path / 'runs'}"]
    argv += [f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert main(argv) == 0
    run_dirs = sorted(str(p) for p in (tmp_path / "runs").iterdir())
    assert len(run_dirs) == 2
    fresh = tmp_path / "fresh" / "mlflow.db"
    fresh.parent.mkdir()
    shutil.copyfile(_mlflow_template, fresh)
    uri = f"sqlite:///{fresh}"
    for _ in range(2):
        assert main(["sync", *run_dirs, "--tracking-uri", uri]) == 0
    runs = _experiment_runs(uri)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [r.info.run_name for r in runs]
    assert parents[0].info.run_name == "sweep prompt" and parents[0].info.status == "FINISHED"
    assert {c.data.tags[PARENT_TAG] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name for c in children} == {"prompt=v1", "prompt=v1_no_examples"}
    assert all(c.info.status == "FINISHED" and MAIN in c.data.metrics for c in children)
