"""``shard=i/n`` (issue 11 item 2): a run split over processes and merged equals the unsharded run.

The slice is a stable hash of the unit key; all shards share one run folder (each its own results file
and lock, one explanations file); the last shard to finish -- or ``neuronbench merge`` -- writes
``results.jsonl``, ``summary.json`` and the MLflow run byte for byte (unit lines, aggregates) as the
unsharded run does, with the shuffled control borrowing the same explanations.  Tiny subject + the
loopback fake LLM (OpenAI API), in-process and as two concurrent processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_models import tiny_run
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

from bench.errors import ConfigError
from bench.records import Explanation
from bench.run.folder import ExplanationStore, RunFolder
from bench.run.shards import Shard, help_order, parse_shard, shard_of, shard_units

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---------------------------------------------------------------------------------------------------
# Pure parts: parsing, the slice, the shared explanations file
# ---------------------------------------------------------------------------------------------------
def test_shard_parses_i_of_n_and_refuses_anything_else_in_one_line() -> None:
    assert parse_shard(None) is None
    assert parse_shard("1/4") == Shard(1, 4) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert Shard(1, 4).tag == "shard-1-of-4" and str(Shard(1, 4)) == "1/4"
    for bad in ("4/4", "1/0", "-1/2", "a/b", "1", 3, "1/2/3"):
        with pytest.raises(ConfigError) as err:
            parse_shard(bad)
        assert "'shard'" in str(err.value) and "0 <= i < n" in str(err.value) and "\n" not in str(err.value)


def test_the_slice_is_sha256_of_the_unit_key_and_adding_units_moves_none() -> None:
    keys = [f"mlp_neuron/L{layer}/{i}" for layer in range(3) for i in range(40)]
    for key in keys[:10]:  # a stable hash, not Python's salted hash(): any process, any machine agrees
        assert shard_of(key, 4) == int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % 4
    slices = [shard_units(Shard(i, 4), keys) for i in range(4)]
    assert sorted(k for s in slices for k in s) == sorted(keys)  # a partition: every unit exactly once
    assert all(len(s) > 5 for s in slices)  # 120 keys over 4 shards: none nearly empty
    more = keys + [f"mlp_neuron/L9/{i}" for i in range(50)]
    for i in range(4):
        assert [k for k in shard_units(Shard(i, 4), more) if k in keys] == slices[i]
    # a helping shard takes the other shards' units, each slice from its end
    order = help_order(Shard(0, 2), keys)
    assert order == list(reversed(shard_units(Shard(1, 2), keys)))


def _explanation(text: str) -> Explanation:
    return Explanation(text=text, explainer="x")


def test_explanations_file_is_shared_first_line_wins_and_appends_of_others_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "explanations.jsonl"
    a, b = ExplanationStore(path), ExplanationStore(path)  # two shards' processes
    a.add("u/1", _explanation("from a"), None)
    b.add("u/1", _explanation("from b"), None)  # b explained it meanwhile: a's line is the run's
    b.add("u/2", None, "boom", transient=True)
    assert b.get("u/1") == (_explanation("from a"), None)
    assert a.get("u/2") is None  # a has not looked yet
    a.refresh()
    assert a.get("u/2") == (None, "boom")
    assert len(path.read_text().splitlines()) == 2
    a.forget({"u/2"})  # a rewrites the file (a retry): b reads it afresh
    b.add("u/3", _explanation("three"), None)
    assert set(b.items) == {"u/1", "u/3"} and set(ExplanationStore(path).items) == {"u/1", "u/3"}
    b.order(["u/3", "u/1"])
    assert [json.loads(line)["unit"] for line in path.read_text().splitlines()] == ["u/3", "u/1"]
    with path.open("a") as fh:
        fh.write('{"unit": "u/4", "expla')  # a shard killed mid-append
    a.add("u/5", _explanation("five"), None)  # another appends: the fragment is cut, not glued to
    assert set(ExplanationStore(path).items) == {"u/1", "u/3", "u/5"}


def _line(index: int, value: float | None, status: str = "ok") -> str:
    from bench.records import Score, UnitId, UnitResult

    scores = {"correlation/top_and_random": Score("correlation/top_and_random", value)} if value is not None else {}
    result = UnitResult(UnitId(1, index), status, scores=scores, error=None if value is not None else "boom")
    return json.dumps(result.to_json()) + "\n"


def test_merge_joins_shard_files_over_results_jsonl_in_unit_order_and_says_what_is_missing(tmp_path: Path) -> None:
    from bench.errors import UserError
    from bench.run.folder import JsonlSink
    from bench.run.shards import ShardDone, merge, write_done

    folder = RunFolder(tmp_path / "run").mkdir()
    keys = [f"mlp_neuron/L1/{i}" for i in range(6)]
    folder.write_units(keys)
    folder.write_config({"seed": 0, "scoring": {"bootstrap_resamples": 50, "confidence": 0.9}, "tracking": {}})
    lines = {k: _line(i, 0.1 * i if i != 4 else None, "ok" if i != 4 else "failed") for i, k in enumerate(keys)}
    folder.results.write_text(lines[keys[2]])  # a unit an unsharded run finished before the shards started
    for i in range(2):
        shard = Shard(i, 2)
        mine = [k for k in shard_units(shard, keys) if k != keys[2]]
        folder.results_of(shard).write_text("".join(lines[k] for k in reversed(mine)))  # finishing order
        assert keys[2] in JsonlSink(folder.results_of(shard), summary=False, base=folder.results).finished_units()
        with pytest.raises(UserError) as err:
            merge(folder.root, track=False)
        assert "shard=1/2" in str(err.value) and "\n" not in str(err.value)
        write_done(folder, shard, ShardDone(units=mine, metrics={"cost/backend/simulator/calls": 3.0}))
    merged = merge(folder.root, track=False)
    assert folder.results.read_text() == "".join(lines[k] for k in keys)  # verbatim, in the run's order
    assert [r.unit.key for r in merged.results] == keys
    summary = json.loads(folder.summary.read_text())
    assert summary["units/failed"] == 1 and summary["units/ok"] == 5  # a failure is carried, never dropped
    assert summary["cost/backend/simulator/calls"] == 6  # the shards' process counters, summed
    folder.results.write_text(lines[keys[0]])  # an unsharded run started in this folder adopts the shards' units
    assert folder.adopt_shard_results() == 4
    assert JsonlSink(folder.results).finished_units() == set(keys) - {keys[2]}
    assert folder.adopt_shard_results() == 0
    with pytest.raises(UserError, match="no shard results"):
        merge(tmp_path / "run" / "..", track=False)
    with pytest.raises(UserError, match="not a run folder"):
        merge(tmp_path / "nowhere", track=False)


# ---------------------------------------------------------------------------------------------------
# End to end: sharded + merged == unsharded
# ---------------------------------------------------------------------------------------------------
def _args(url: str, subject: Path, corpus: Path, where: Path, mlflow_store: dict[str, str]) -> list[str]:
    backend = [
        f"{role}.llm.{key}"
        for role in ("explainer", "simulator")
        for key in (f"base_url={url}", "api_key_env=NB_TEST_KEY", "requests_per_minute=null", "tokens_per_minute=null")
    ]
    # No response cache: a cache hit is recorded without usage, and which unit meets a request first (two
    # units with one explanation simulate the same excerpts in the control) depends on the order units run.
    backend += [f"{role}.llm.cache=false" for role in ("explainer", "simulator")]
    return [
        "run",
        "--no-progress",
        "explainer=openai",
        "simulator=openai_all_at_once_logprobs",
        *backend,
        *tiny_run(subject, corpus),
        "units.count=6",
        "scoring.bootstrap_resamples=200",
        f"tracking.uri={mlflow_store['uri']}",
        f"tracking.artifact_location={mlflow_store['artifacts']}",
        f"output_dir={where / 'runs'}",  # output_dir and cache_dir are not part of the run's hash
        f"cache_dir={where / 'cache'}",  # a fresh response cache: the same calls as the unsharded run
    ]


def _run_dir(where: Path) -> Path:
    (run_dir,) = (where / "runs").iterdir()
    return run_dir


def _mlflow_metrics(mlflow_store: dict[str, str], run_dir: Path) -> dict[str, float]:
    from mlflow import MlflowClient

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient(mlflow_store["uri"]).get_run(run_id)
    assert run.info.status == "FINISHED"
    return dict(run.data.metrics)


def _same_metrics(mlflow_store: dict[str, str], a: Path, b: Path) -> None:
    """The MLflow runs hold the same headline metrics (the backend counters: see :func:`_same_run`)."""
    metrics = [_mlflow_metrics(mlflow_store, run) for run in (a, b)]
    kept = [{k: v for k, v in m.items() if not k.startswith("cost/backend/")} for m in metrics]
    assert kept[0] == kept[1] and kept[0]


def _same_run(a: Path, b: Path, counters: bool = True) -> None:
    """Byte for byte: results.jsonl, explanations.jsonl, the score correlations; summary.json's aggregates
    exactly.  Its process counters (``cost/backend/...``: what the processes really sent) are summed over
    the shards: counts exactly, dollars to float noise (a sum of two partial sums); without ``counters``
    they are left out (two concurrent shards may both explain the unit they reach at once)."""
    assert a.name == b.name  # the shard is not part of the run's identity
    for name in ("results.jsonl", "explanations.jsonl", "score_correlations.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summaries = [json.loads((run / "summary.json").read_text()) for run in (a, b)]
    aggregates = [{k: v for k, v in s.items() if not k.startswith("cost/backend/")} for s in summaries]
    assert aggregates[0] == aggregates[1] and len(aggregates[0]) > 20
    if counters:
        backend_a, backend_b = ({k: v for k, v in s.items() if k.startswith("cost/backend/")} for s in summaries)
        assert set(backend_a) == set(backend_b) and backend_a
        for key, value in backend_a.items():
            assert backend_b[key] == (pytest.approx(value, rel=1e-9) if key.endswith("/dollars") else value), key
    units = [json.loads(line)["unit"] for line in (a / "results.jsonl").read_text().splitlines()]
    assert len(units) == 6 == len({json.dumps(u, sort_keys=True) for u in units})
    results = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    assert all(r["extras"].get("control", {}).get("explanations") for r in results if r["status"] == "ok")


def test_two_shards_one_after_another_merge_into_the_unsharded_run(
    subject, corpus, tmp_path, mlflow_store, monkeypatch, capsys
) -> None:
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    with FakeLLMServer() as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        whole = _args(server.base_url, subject, corpus, tmp_path / "whole", mlflow_store)
        assert main(whole) == 0
        sharded = _args(server.base_url, subject, corpus, tmp_path / "sharded", mlflow_store)
        assert main([*sharded, "shard=1/2"]) == 0
        out = capsys.readouterr().out
        assert "shard 1/2 finished" in out and "shard=0/2" in out  # one line: what is left, how to merge
        run_dir = _run_dir(tmp_path / "sharded")
        assert not (run_dir / "results.jsonl").exists() and not (run_dir / "summary.json").exists()
        assert not (run_dir / "mlflow_run.json").exists()  # the MLflow run is the merge's

        code = main(["merge", str(run_dir)])  # shard 0 has not run: one line, exit 2
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "shard=0/2" in err, err

        assert main([*sharded, "shard=0/2"]) == 0  # the last shard merges
        assert "merged 2 shards" in capsys.readouterr().out
    whole_dir = _run_dir(tmp_path / "whole")
    _same_run(whole_dir, run_dir)
    _same_metrics(mlflow_store, whole_dir, run_dir)

    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(["merge", str(run_dir)]) == 0  # idempotent: the same files, nothing logged twice
    assert "already complete" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_two_concurrent_shard_processes_merge_into_the_unsharded_run(
    subject, corpus, tmp_path, mlflow_store, monkeypatch
) -> None:
    """Two real processes in one run folder at once: per-shard locks, one shared explanations file."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NB_TEST_KEY", "sk-loopback")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    with FakeLLMServer() as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        assert main(_args(server.base_url, subject, corpus, tmp_path / "whole", mlflow_store)) == 0
        sharded = _args(server.base_url, subject, corpus, tmp_path / "sharded", mlflow_store)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.cli", *sharded, f"shard={i}/2"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert sum("merged 2 shards" in o for o in outputs) >= 1
    run_dir = _run_dir(tmp_path / "sharded")
    _same_run(_run_dir(tmp_path / "whole"), run_dir, counters=False)
    _same_metrics(mlflow_store, _run_dir(tmp_path / "whole"), run_dir)
    folder = RunFolder(run_dir)
    assert all(folder.done_of(Shard(i, 2)).exists() for i in range(2))


def test_a_shard_out_of_range_is_one_line_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run", "explainer=token_list", "tracking=none", f"output_dir={tmp_path}", "shard=2/2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'shard'" in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())


def test_each_shard_holds_its_own_lock_so_shards_share_a_folder_but_a_shard_runs_once(tmp_path) -> None:
    from bench.errors import UserError
    from bench.run_lock import lock_run_folder

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bench.run.shards import Shard\n"
        "from bench.run_lock import lock_run_folder\n"
        "lock = lock_run_folder(Path(sys.argv[1]), Shard(0, 2))\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = lock_run_folder(tmp_path, Shard(1, 2))  # another shard of the run: side by side
        assert other.is_locked
        with pytest.raises(UserError) as err:
            lock_run_folder(tmp_path, Shard(0, 2))  # the same shard twice: one line
        assert "shard 0/2" in str(err.value) and "in progress" in str(err.value) and "\n" not in str(err.value)
        other.release()
    finally:
        holder.communicate("", timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock.shard-0-of-2", ".lock.shard-1-of-2"]
