"""``runner=ray`` scaling: 1 vs 2 vs 4 Ray workers on one machine against a fixed-latency loopback LLM.

One run of ``--units`` units (a tiny in-process subject, OpenAI explainer + all-at-once generated-logprob
simulator pointed at ``tests/fake_servers.py --simulate`` in its own process, answering every request
after ``--latency`` seconds) is timed side by side:

* ``local``: this process's request engine, ``engine.units_in_flight=C`` and LLM ``concurrency=C``;
* ``ray xN``: N worker actors on a local Ray cluster, each with the same per-worker settings -- so N
  workers may keep ``N x C`` requests in flight, and the ideal wall time is
  ``requests x latency / (N x C)``.

Reported: wall time, HTTP requests, the ratio to the ideal, the speed-up over one Ray worker, and the
overhead per unit of one Ray worker over the in-process engine (actor start-up, building the parts
and reading the records in the worker, serialisation).  Mining happens once before timing (record
cache).  Each timed run has its own response cache, so every run sends every request.

    python benchmarks/ray_scaling.py [--units 400] [--latency 0.2] [--concurrency 8] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

import conftest_models  # noqa: E402
from bench_strategies import KEY_ENV, Server  # noqa: E402

WIDTH = 256  # neurons per layer of the tiny subject (2 layers: up to 512 units)


def overrides(tmp: Path, subject: Path, corpus: Path, url: str, units: int, concurrency: int, tag: str) -> list[str]:
    backend = []
    for role in ("explainer", "simulator"):
        backend += [
            f"{role}.llm.base_url={url}",
            f"{role}.llm.api_key_env={KEY_ENV}",
            f"{role}.llm.cache_dir={tmp / ('llm-' + tag)}",
            f"{role}.llm.concurrency={concurrency}",
            f"{role}.llm.requests_per_minute=null",
            f"{role}.llm.tokens_per_minute=null",
        ]
    per_layer = max(1, units // 2)
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=80",
        "dataset.excerpt_len=16",
        "units.layers=[0,1]",
        f"units.count={per_layer}",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=openai",
        "simulator=openai_all_at_once_logprobs",
        *backend,
        "scorer=[correlation]",
        "scoring.bootstrap_resamples=200",
        "tracking=none",
        f"output_dir={tmp / ('runs-' + tag)}",
        f"cache_dir={tmp / 'cache'}",
        f"engine.units_in_flight={concurrency}",
    ]


def timed(tmp: Path, subject: Path, corpus: Path, server: Server, args: argparse.Namespace, workers: int) -> dict:
    from bench.cli import run_job
    from bench.config import compose

    tag = f"ray{workers}" if workers else "local"
    extra = []
    if workers:
        extra = [
            "runner.kind=ray",
            f"runner.workers={workers}",
            "runner.cpus_per_worker=0.25",
            "runner.units_per_task=8",
        ]
    cfg = compose([*overrides(tmp, subject, corpus, f"{server.root}/v1", args.units, args.concurrency, tag), *extra])
    before = server.requests()
    start = time.perf_counter()
    outcome = run_job(cfg, False)
    wall = time.perf_counter() - start
    requests = server.requests() - before
    ideal = requests * args.latency / (args.concurrency * max(workers, 1))
    ok = sum(r.status == "ok" for r in outcome.results)
    return {
        "runner": tag,
        "workers": workers,
        "units": len(outcome.results),
        "ok": ok,
        "http_requests": requests,
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio_to_ideal": round(wall / ideal, 3) if ideal else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "ray_scaling.json")
    args = parser.parse_args()
    import ray

    os.environ[KEY_ENV] = "sk-bench"
    conftest_models.WIDTH = WIDTH
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        subject = conftest_models.save_tiny_subject("llama", tmp / "subject")
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(conftest_models._TRAINING_TEXT * 10))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        server = Server(args.latency)
        try:
            warm = argparse.Namespace(**{**vars(args), "units": 2})
            timed(tmp, subject, corpus, server, warm, 0)  # mines both layers once (record cache), loads models
            rows = [timed(tmp, subject, corpus, server, args, 0)]
            rows += [timed(tmp, subject, corpus, server, args, w) for w in args.workers]
        finally:
            server.close()
            ray.shutdown()
    one = next((r for r in rows if r["workers"] == 1), None)
    local = rows[0]
    for r in rows:
        r["speedup_over_1_worker"] = round(one["wall_s"] / r["wall_s"], 2) if one and r["workers"] else None
    overhead_ms = (one["wall_s"] - local["wall_s"]) / local["units"] * 1000 if one else None
    result = {
        "benchmark": "ray_scaling",
        "units": args.units,
        "latency_s": args.latency,
        "concurrency_per_worker": args.concurrency,
        "rows": rows,
        "ray_1_worker_overhead_ms_per_unit_vs_in_process": round(overhead_ms, 1) if overhead_ms is not None else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
        "load_note": "2 CPU cores; ratios measured side by side in one run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| runner | units | requests | wall s | ideal s | wall/ideal | speed-up vs 1 worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runner']} | {r['units']} | {r['http_requests']} | {r['wall_s']} | {r['ideal_s']} | "
            f"{r['ratio_to_ideal']} | {r['speedup_over_1_worker'] or '-'} |"
        )
    lines.append("")
    lines.append(
        "One Ray worker over the in-process engine: "
        f"{result['ray_1_worker_overhead_ms_per_unit_vs_in_process']} ms per unit."
    )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
