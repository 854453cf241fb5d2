"""``runner=ray``: one run's units on a local Ray cluster (127.0.0.1) equal the same run in one process,
and a worker killed mid-unit loses nothing and duplicates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_models import tiny_run

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # a Ray cluster and worker processes: the slow tier (.ci/run runs it)

FAKE = ["~simulator.llm", "+simulator.llm={_target_:bench.llm.fake.FakeLLM,coalesce:true}"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="neuronbench-tests")
    yield
    ray.shutdown()


def _run(tmp: Path, subject: Path, corpus: Path, cache: Path, *extra: str) -> list[dict]:
    from bench.cli import main

    code = main(
        [
            "run",
            "--no-progress",
            *tiny_run(subject, corpus),
            "explainer=token_list",
            "simulator=smollm2_all_at_once",
            *FAKE,
            "scorer=[correlation,ablation]",
            "units.count=6",
            "tracking=none",
            f"output_dir={tmp / 'runs'}",
            f"cache_dir={cache}",
            *extra,
        ]
    )
    assert code == 0
    run_dir = next((tmp / "runs").iterdir())
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _by_unit(lines: list[dict]) -> dict[str, dict]:
    from bench.records import UnitId

    return {UnitId(**r["unit"]).key: r for r in lines}


def test_ray_workers_give_the_same_results_as_one_process_even_when_one_dies(
    cluster, subject, corpus, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"  # shared by both runs (the records are mined once, by the first driver)
    local = _by_unit(_run(tmp_path / "local", subject, corpus, cache))
    assert len(local) == 6 and all(r["status"] == "ok" for r in local.values())

    marker = tmp_path / "died"
    victim = sorted(local)[3]
    monkeypatch.setenv("NEURONBENCH_TEST_RAY_DIE_AT", f"{victim}={marker}")
    lines = _run(
        tmp_path / "ray", subject, corpus, cache,
        "runner.kind=ray", "runner.workers=2", "runner.cpus_per_worker=1", "runner.units_per_task=2",
    )  # fmt: skip
    assert marker.exists()  # a worker really died at that unit (and was replaced)
    remote = _by_unit(lines)
    assert len(lines) == len(remote) == len(local)  # one line per unit: nothing lost, nothing twice
    assert remote.keys() == local.keys()
    for key, r in remote.items():
        assert r["status"] == "ok" and r["explanation"]["text"] == local[key]["explanation"]["text"]
        got = {k: v["value"] for k, v in r["scores"].items()}
        want = {k: v["value"] for k, v in local[key]["scores"].items()}
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, nan_ok=True, abs=1e-6)


def _passes(cache: Path) -> list[int]:
    """``sources_in_pass`` of every record-cache file: how many layers the pass that mined it read."""
    import numpy as np

    out = []
    for path in sorted((cache / "records").glob("*.npz")):
        with np.load(path) as data:
            out.append(json.loads(bytes(data["meta"]).decode())["mined"]["sources_in_pass"])
    return out


def test_layers_mined_as_parallel_ray_tasks_equal_one_pass(cluster, subject, corpus, tmp_path) -> None:
    layers = ["units.layers=[0,1]", "units.count=2"]
    local = _by_unit(_run(tmp_path / "local", subject, corpus, tmp_path / "cache-a", *layers))
    lines = _run(
        tmp_path / "ray", subject, corpus, tmp_path / "cache-b", *layers,
        "runner.kind=ray", "runner.workers=2", "runner.parallel_mining=true",
    )  # fmt: skip
    assert _passes(tmp_path / "cache-a") == [2, 2]  # one process: both layers in one pass
    assert _passes(tmp_path / "cache-b") == [1, 1]  # one Ray task per layer, shared through the cache
    remote = _by_unit(lines)
    assert remote.keys() == local.keys() and len(remote) == 4
    for key, r in remote.items():
        got = {k: v["value"] for k, v in r["scores"].items()}
        assert got == pytest.approx({k: v["value"] for k, v in local[key]["scores"].items()}, nan_ok=True, abs=1e-6)


def test_a_sharded_run_on_the_ray_cluster_equals_the_unsharded_run(cluster, subject, corpus, tmp_path) -> None:
    """Two shards, each run on the Ray workers; the second to finish merges into the unsharded run's lines."""
    cache = tmp_path / "cache"
    local = _by_unit(_run(tmp_path / "local", subject, corpus, cache))
    ray_args = ["runner.kind=ray", "runner.workers=2", "runner.units_per_task=2"]
    first = _try_run(tmp_path / "sharded", subject, corpus, cache, *ray_args, "shard=0/2")
    assert first is None  # the other shard is still to run: nothing merged yet
    merged = _by_unit(_run(tmp_path / "sharded", subject, corpus, cache, *ray_args, "shard=1/2"))
    assert merged.keys() == local.keys()
    for key, r in merged.items():
        assert r["explanation"]["text"] == local[key]["explanation"]["text"]
        got = {k: v["value"] for k, v in r["scores"].items()}
        assert got == pytest.approx({k: v["value"] for k, v in local[key]["scores"].items()}, nan_ok=True, abs=1e-6)


def _try_run(tmp: Path, subject: Path, corpus: Path, cache: Path, *extra: str) -> list[dict] | None:
    """A shard's run: its results if it merged the run, else None."""
    from bench.cli import main

    args = [
        "run", "--no-progress", *tiny_run(subject, corpus), "explainer=token_list", "simulator=smollm2_all_at_once",
        *FAKE, "scorer=[correlation,ablation]", "units.count=6", "tracking=none", f"output_dir={tmp / 'runs'}",
        f"cache_dir={cache}", *extra,
    ]  # fmt: skip
    assert main(args) == 0
    run_dir = next((tmp / "runs").iterdir())
    results = run_dir / "results.jsonl"
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else None
