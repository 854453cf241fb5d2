"""Two runs of one configuration at once never duplicate a unit (issue 12 item 7): with two real
processes, the second stops in one line (exit 2) while the first is in progress, and the first then
finishes with each unit exactly once in ``results.jsonl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_run
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

ROOT = Path(__file__).resolve().parents[1]


def _args(url: str, subject: Path, corpus: Path, tmp_path: Path) -> list[str]:
    backend = [
        f"{role}.llm.{key}"
        for role in ("explainer", "simulator")
        for key in (f"base_url={url}", "api_key_env=NB_TEST_KEY", "requests_per_minute=null", "tokens_per_minute=null")
    ]
    return [
        "run",
        "--no-progress",
        "explainer=openai",
        "simulator=openai_all_at_once_logprobs",
        *backend,
        *tiny_run(subject, corpus),
        f"tracking.uri=sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}",  # a fresh store: nobody migrated it yet
        f"tracking.artifact_location={tmp_path / 'fresh' / 'artifacts'}",
        f"output_dir={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def test_second_concurrent_run_of_a_configuration_stops_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from bench.cli import main

    subject = save_tiny_subject("llama", tmp_path / "tiny")
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    go = threading.Event()
    with FakeLLMServer() as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        # The first run's requests wait until the second run has given up: it is surely in progress.
        # (The start-up checks -- model list, tokenizer -- answer at once: the second run passes them too.)
        server.fault_fn = lambda n, path, body: (
            None if path.endswith(("/models", "/tokenize")) else (go.wait(300), None)[1]
        )
        args = _args(server.base_url, subject, corpus, tmp_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        first = subprocess.Popen(
            [sys.executable, "-m", "bench.cli", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            def working() -> bool:
                return any(e["path"].endswith("/completions") for e in list(server.log))

            while not working() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for the first run to reach the server, not measuring anything
            assert working(), f"the first run never called the server: {first.communicate()[0].decode()[-3000:]}"

            capsys.readouterr()
            code = main(args)  # the second run, while the first is blocked mid-run
            err = capsys.readouterr().err.strip()
            assert code == 2
            assert len(err.splitlines()) == 1 and "in progress" in err and "Traceback" not in err, err
        finally:
            go.set()
            output = first.communicate(timeout=600)[0].decode()
    assert first.returncode == 0, output[-3000:]

    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1
    lines = (run_dirs[0] / "results.jsonl").read_text().splitlines()
    keys = [json.loads(line)["unit"] for line in lines]
    assert len(keys) == 3 and len({json.dumps(k, sort_keys=True) for k in keys}) == 3
    explained = [json.loads(line)["unit"] for line in (run_dirs[0] / "explanations.jsonl").read_text().splitlines()]
    assert len(explained) == 3 == len(set(explained))


def test_fresh_mlflow_store_is_set_up_by_one_process_at_a_time(tmp_path) -> None:
    """Two processes open one fresh sqlite store at once (a sweep's parallel jobs): both succeed."""
    db = tmp_path / "store" / "mlflow.db"
    code = (
        "import sys, mlflow\n"
        "from bench.run_lock import store_setup_lock\n"
        "uri = sys.argv[1]\n"
        "with store_setup_lock(uri):\n"
        "    mlflow.set_tracking_uri(uri)\n"
        "    e = mlflow.get_experiment_by_name('x') or mlflow.create_experiment('x')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"sqlite:///{db}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_job_that_stopped_without_releasing_does_not_block_the_next_job_of_its_process(tmp_path) -> None:
    from bench.run_lock import lock_run_folder

    first = lock_run_folder(tmp_path)  # e.g. a job whose MLflow setup raised: never released
    second = lock_run_folder(tmp_path)
    assert second.is_locked and not first.is_locked
    second.release()
