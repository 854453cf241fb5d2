"""No file and no console line of a run holds a key (issue 12 item 2), checked with canary keys against
the loopback server: (a) a proxy whose 401 body echoes the key, held in a variable NOT named *API_KEY*;
(b) a key given as URL userinfo in ``base_url``.  Every byte under the test folder is searched: run
folder (JSONL, config.json, units.csv, summary), MLflow database and artifacts, Hydra's outputs
(``.hydra/*.yaml``, ``cli.log``), the LLM cache -- and stdout / stderr."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

CANARY = "nbcanary-7f3a9c1e5b2d"  # named neither *API_KEY* nor *TOKEN*: only the config says it is a key
USERINFO_CANARY = "nburlcanary-4e8d2a6c"
EVERY_SINK_OF_A_FAILURE = (
    "runs/*/results.jsonl",
    "runs/*/explanations.jsonl",
    "mlruns/artifacts/**/units.csv",
    "mlruns/artifacts/**/units/*.json",
    "mlruns/artifacts/**/results.jsonl",
)
EVERY_SINK_OF_THE_CONFIG = (
    "runs/*/config.json",
    "outputs/**/.hydra/overrides.yaml",
    "outputs/**/.hydra/config.yaml",
    "outputs/**/.hydra/hydra.yaml",
    "outputs/**/cli.log",
    "mlruns/artifacts/**/config.json",
    "mlruns/artifacts/**/config.yaml",
)
# MLflow params hold the reader's settings only (no base_url); a sweep's parent run keeps its overrides as a tag


def _run_args(url: str, subject: Path, corpus: Path, tmp_path: Path, store: dict[str, str]) -> list[str]:
    backend = [
        f"{role}.llm.{key}"
        for role in ("explainer", "simulator")
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
    return [
        "run",
        "--no-progress",
        "explainer=openai",
        "simulator=openai_all_at_once_logprobs",
        *backend,
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=12",
        "units.layers=[1]",
        "units.count=2",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "scorer=[correlation]",
        f"tracking.uri={store['uri']}",
        f"tracking.artifact_location={store['artifacts']}",
        f"output_dir={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def _files_with(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.parametrize("case", ["echoed-401", "url-userinfo", "url-userinfo-sweep"])
def test_no_canary_key_in_any_file_or_console_line(
    case, subject, corpus, tmp_path, mlflow_store, monkeypatch, capsys, caplog
) -> None:
    import mlflow

    from bench.cli import main

    monkeypatch.chdir(tmp_path)  # Hydra's outputs/ land here too
    monkeypatch.setenv("NB_PROXY_CRED", CANARY)
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer(api_key=None) as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        refusal = {"status": 401, "message": f"Incorrect API key provided: {CANARY}"}
        if case == "echoed-401":  # a proxy that quotes the key it refused
            url = server.base_url
            args = _run_args(url, subject, corpus, tmp_path, mlflow_store)
            # refusing everything: the start-up check (GET /v1/models) stops the run in one line, key masked
            server.fault_fn = lambda n, path, body: refusal
            assert main(args) == 2
            early = capsys.readouterr().err
            assert "Incorrect API key provided: ***" in early and CANARY not in early
            # listing its models but refusing completions: every unit fails with the (masked) message
            server.fault_fn = lambda n, path, body: None if path.endswith("/models") else refusal
        else:
            url = f"http://proxyuser:{USERINFO_CANARY}@127.0.0.1:{server.port}/v1"
            args = _run_args(url, subject, corpus, tmp_path, mlflow_store)
        if case.endswith("-sweep"):  # a one-job sweep: Hydra's multirun.yaml and sweep tags are sinks too
            args.insert(1, "-m")
        code = main(args)
        out, err = capsys.readouterr()
        assert code == (1 if case == "echoed-401" else 0), err  # all units failed: exit 1 (fail_on)
        assert server.log, "the run made no request"

    run_dir = next((tmp_path / "runs").iterdir())
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2
    if case == "echoed-401":  # the failure is kept, with the server's message -- minus the key
        assert all(r["status"] == "failed" and "Incorrect API key provided: ***" in r["error"] for r in results)
        assert "Incorrect API key provided: ***" in " ".join(out.split())  # rich wraps long lines
    else:
        assert (tmp_path / "outputs").is_dir() and any((tmp_path / "outputs").rglob("overrides.yaml"))
        assert "***@127.0.0.1" in (run_dir / "config.json").read_text()
    # every sink received the secret -- masked (so the search below is not vacuous)
    if case == "echoed-401":
        masked, sinks = "Incorrect API key provided: ***", EVERY_SINK_OF_A_FAILURE
    else:
        masked, sinks = "***@127.0.0.1", EVERY_SINK_OF_THE_CONFIG
        if case.endswith("-sweep"):
            sinks = (*sinks, "outputs/**/multirun.yaml", "mlruns/mlflow.db")
    for pattern in sinks:
        files = list(tmp_path.glob(pattern))
        assert files and all(masked.encode() in f.read_bytes() for f in files), pattern
    needles = [CANARY, USERINFO_CANARY, quote(USERINFO_CANARY)]
    assert _files_with(tmp_path, needles) == []
    assert not any(n in out or n in err for n in needles)
    assert not any(n in caplog.text for n in needles)

    mlflow.set_tracking_uri(mlflow_store["uri"])
    run = mlflow.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    logged = json.dumps([run.data.params, run.data.tags])
    assert not any(n in logged for n in needles)
    assert "units.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
