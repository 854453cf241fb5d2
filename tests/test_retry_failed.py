"""After an outage the same command finishes the failed units (issue 12 item 6).

Through the CLI against the loopback server: a run while the server answers 503 fails every unit
(transient) and still counts every HTTP call it made in ``cost/explainer/calls``; the same command
once the server is back retries them.  A failure that is the request's own (HTTP 400) is kept by a
plain re-run (0 requests) and redone by ``--retry-failed``.  Each results file keeps one line per unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

from bench.errors import UserError
from bench.failures import is_transient
from bench.llm.errors import BackendError

UNITS = 3


def _args(url: str, subject: Path, corpus: Path, tmp_path: Path) -> list[str]:
    backend = [
        f"{role}.llm.{key}"
        for role in ("explainer", "simulator")
        for key in (
            f"base_url={url}",
            "api_key_env=NB_TEST_KEY",
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
        f"units.count={UNITS}",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "scorer=[correlation]",
        "tracking=none",
        f"output_dir={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def _state(tmp_path: Path) -> tuple[list[dict], list[dict], dict]:
    run_dir = next((tmp_path / "runs").iterdir())
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    explained = [json.loads(line) for line in (run_dir / "explanations.jsonl").read_text().splitlines()]
    return results, explained, json.loads((run_dir / "summary.json").read_text())


def test_rerun_retries_outage_failures_keeps_unit_failures_and_counts_their_spend(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    subject = save_tiny_subject("llama", tmp_path / "tiny")
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    with FakeLLMServer() as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        args = _args(server.base_url, subject, corpus, tmp_path)

        # 1. the server is overloaded (it lists its models, so the start-up check passes, but answers every
        # completion with 503): every unit fails at explain, transiently; the calls it made are counted.
        # (A server that is down altogether stops the run before any work: tests/test_llm_server_checks.py.)
        server.fault_fn = lambda n, path, body: None if path.endswith("/models") else {"status": 503}
        assert main(args) == 1, capsys.readouterr().err  # every unit failed: non-zero (fail_on.failure_rate)
        assert "re-run the same command to retry them" in " ".join(capsys.readouterr().out.split())
        results, explained, summary = _state(tmp_path)
        assert [r["status"] for r in results] == ["failed"] * UNITS
        assert all(r["transient"] and r["stage"] == "explain" and "HTTP 503" in r["error"] for r in results)
        outage_calls = len(_paid(server.log))
        assert outage_calls == 2 * UNITS  # one try and one retry per unit
        assert summary["cost/explainer/calls"] == outage_calls and summary["cost/total/calls"] == outage_calls

        # 2. back, but refusing the simulator's requests (HTTP 400: the request's own fault, permanent)
        server.fault_fn = lambda n, path, body: (
            {"status": 400, "message": "bad logprobs"} if body.get("logprobs") else None
        )
        before = len(server.log)
        assert main(args) == 1, capsys.readouterr().err  # every unit failed: non-zero (fail_on.failure_rate)
        results, explained, summary = _state(tmp_path)
        assert len(_paid(server.log[before:])) > 0  # the outage's failures were retried
        assert len(results) == UNITS and len(explained) == UNITS  # one line per unit, still
        assert all(e["explanation"] is not None for e in explained)
        assert all(r["status"] == "failed" and r["stage"] == "simulate" and not r["transient"] for r in results)
        simulator_calls = sum(1 for e in server.log[before:] if e["body"].get("logprobs"))
        assert simulator_calls >= UNITS
        assert summary["cost/simulator/calls"] == simulator_calls  # refused requests were sent: counted
        assert summary["cost/explainer/calls"] == outage_calls + UNITS  # earlier failed attempts still count

        # 3. the same command again: permanent failures are kept, nothing is sent
        server.fault_fn = None
        before = len(server.log)
        assert main(args) == 1, capsys.readouterr().err  # every unit failed: non-zero (fail_on.failure_rate)
        assert _paid(server.log[before:]) == []
        assert [r["status"] for r in _state(tmp_path)[0]] == ["failed"] * UNITS

        # 4. --retry-failed redoes them
        assert main([args[0], "--retry-failed", *args[1:]]) == 0, capsys.readouterr().err
        assert len(_paid(server.log[before:])) > 0
    results, explained, summary = _state(tmp_path)
    assert len(results) == UNITS and len(explained) == UNITS
    assert all(r["status"] == "ok" for r in results), [r["error"] for r in results]
    assert summary["units/failed"] == 0


def _paid(log: list[dict]) -> list[dict]:
    """The requests that cost: completions -- not the start-up checks (GET /v1/models, POST /tokenize)."""
    return [e for e in log if e["method"] == "POST" and e["path"].endswith(("/completions", "/messages"))]


@pytest.mark.parametrize(
    "err,transient",
    [
        (BackendError("x: HTTP 503 (gave up after 7 attempts)", status=503, retryable=True), True),
        (BackendError("x: HTTP 401: bad key", status=401), False),
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("slow"), True),
        (ValueError("could not parse the simulator's answer"), False),
        (UserError("not a unit failure"), False),
    ],
)
def test_transient_failures_are_outages_only(err, transient):
    assert is_transient(err) is transient


def test_a_transient_cause_makes_a_wrapping_error_transient():
    try:
        try:
            raise BackendError("x: request timed out", retryable=True)
        except BackendError as inner:
            raise RuntimeError("simulation failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
