"""``neuronbench run explainer=<api> simulator=<api preset>`` end to end through the CLI, against a
loopback server that fails a third of its calls transiently: every unit is scored, none is lost,
and MLflow holds the tokens and dollars spent.  OpenAI, Anthropic and an OpenAI-compatible (vLLM)
server, each with one of its estimators; a tiny in-process subject and a text-file corpus."""

from __future__ import annotations

import json

import pytest
from conftest_models import tiny_run
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

FAULTS = ({"status": 500}, {"status": 429, "retry_after": "0"}, {"disconnect": True})
BATCH = [f"{role}.llm.{key}" for role in ("explainer", "simulator") for key in ("batch=true", "batch_poll_s=0.001")]


def _backend(role: str, url: str) -> list[str]:
    """Point a role's backend at the loopback server, with fast retries and no rate limits."""
    return [
        f"{role}.llm.base_url={url}",
        f"{role}.llm.api_key_env=NB_TEST_KEY",
        f"{role}.llm.max_retries=12",
        f"{role}.llm.backoff_initial_s=0.001",
        f"{role}.llm.backoff_max_s=0.005",
        f"{role}.llm.requests_per_minute=null",
        f"{role}.llm.tokens_per_minute=null",
    ]


@pytest.mark.parametrize(
    "explainer,simulator,estimator,extra",
    [
        ("openai", "openai_all_at_once_logprobs", "all_at_once/generated_logprobs", []),
        ("anthropic", "anthropic_all_at_once_sampled", "all_at_once/sampled", ["simulator.samples=2"]),
        ("openai_compatible", "vllm_all_at_once_prompt_logprobs", "all_at_once/prompt_logprobs", []),
        ("anthropic", "anthropic_all_at_once_sampled", "all_at_once/sampled", [*BATCH, "simulator.samples=2"]),
    ],
    ids=["openai", "anthropic", "vllm", "anthropic-batch"],
)
def test_cli_scores_every_unit_through_faults_and_logs_costs(
    explainer, simulator, estimator, extra, subject, corpus, tmp_path, mlflow_store, monkeypatch, capsys
) -> None:
    import mlflow

    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    with FakeLLMServer(api_key="sk-loopback") as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        server.fault_fn = lambda n, path, body: FAULTS[(n // 3) % 3] if n % 3 == 1 else None  # a third fail
        url = server.root if explainer == "anthropic" else server.base_url
        code = main(
            [
                "run",
                "--no-progress",
                f"explainer={explainer}",
                f"simulator={simulator}",
                *_backend("explainer", url),
                *_backend("simulator", url),
                *tiny_run(subject, corpus),
                f"tracking.uri={mlflow_store['uri']}",
                f"tracking.artifact_location={mlflow_store['artifacts']}",
                f"output_dir={tmp_path / 'runs'}",
                f"cache_dir={tmp_path / 'cache'}",
                *extra,
            ]
        )
        assert code == 0, capsys.readouterr().err
        failed_calls = sum(1 for entry in server.log if entry["n"] % 3 == 1)
    assert failed_calls > 5

    run_dir = next((tmp_path / "runs").iterdir())
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 3
    assert all(r["status"] == "ok" for r in results), [(r["stage"], r["error"]) for r in results]
    for r in results:
        assert r["simulation"]["estimator"] == estimator
        assert r["simulation"]["usage"]["calls"] > 0
        assert "correlation/top_and_random" in r["scores"]
    # the explanations name the top tokens and the simulated values follow them: real, finite scores
    assert any(r["scores"]["correlation/top_and_random"]["value"] is not None for r in results), results[0]["scores"]

    mlflow.set_tracking_uri(mlflow_store["uri"])
    run = mlflow.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    m = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/summary.json")  # every aggregate; metrics: headline
    assert m["cost/total/dollars"] / 3 == pytest.approx(run.data.metrics.get("cost/total/dollars_per_unit", 0.0))
    assert m["units/total"] == 3 and m["units/failed"] == 0
    assert m["cost/explainer/calls"] >= 3 and m["cost/simulator/input_tokens"] > 0
    assert m["cost/backend/simulator/retries"] > 0 and m["cost/backend/simulator/calls"] > m["cost/simulator/calls"] / 2
    if "simulator.llm.batch=true" in extra:  # every call went through Message Batches, at half price
        # the request engine coalesces the units in flight: a stage's requests share batch jobs (not one per unit)
        assert m["cost/backend/simulator/batches"] >= 1 and m["cost/backend/explainer/batches"] >= 1
        assert m["cost/backend/explainer/batches"] < 3 * (1 + m["cost/backend/explainer/retries"])
        assert not any(e["path"] == "/v1/messages" for e in server.log)
    if explainer == "openai_compatible":  # a self-hosted server: its preset prices tokens at 0
        assert m["cost/total/dollars"] == 0 and m["cost/total/input_tokens"] > 0
    else:
        assert m["cost/simulator/dollars"] > 0 and m["cost/explainer/dollars"] > 0
        assert m["cost/total/dollars"] == pytest.approx(
            m["cost/explainer/dollars"] + m["cost/simulator/dollars"] + m["cost/control/dollars"]
        )
