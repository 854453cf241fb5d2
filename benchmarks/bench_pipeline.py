"""Pipeline wall time over the ideal, against a loopback API with a fixed latency.

The whole pipeline (``bench.cli.run_job``: tiny in-process subject, text-file corpus, explain,
simulate the scoring and calibration splits, the shuffled control, correlation scorer) runs with
the OpenAI explainer and the OpenAI all-at-once generated-logprob simulator pointed at
``tests/fake_servers.py --simulate`` (its own process, answering every request after ``--latency``
seconds).  ``ideal = HTTP requests x latency / concurrency`` (the backend's concurrency limit);
``ratio = wall / ideal`` is measured side by side for ``engine.units_in_flight=1`` (units one after another:
a unit's few requests cannot fill the concurrency limit) and ``engine.units_in_flight=P``.  Mining and model
loading are excluded (records are mined once before timing).  A second identical run must make 0
requests (the response cache).

    python benchmarks/bench_pipeline.py [--latency 0.5] [--units 8] [--parallel 8 (engine.units_in_flight)] \\
        [--out results/benchmarks/pipeline.json]
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

from bench_strategies import KEY_ENV, Server  # noqa: E402
from conftest_models import _TRAINING_TEXT, save_tiny_subject  # noqa: E402

CONCURRENCY = 8


def overrides(tmp: Path, subject: Path, corpus: Path, url: str, units: int, parallel: int, tag: str) -> list[str]:
    backend = []
    for role in ("explainer", "simulator"):
        backend += [
            f"{role}.llm.base_url={url}",
            f"{role}.llm.api_key_env={KEY_ENV}",
            f"{role}.llm.cache_dir={tmp / ('llm-' + tag)}",
            f"{role}.llm.concurrency={CONCURRENCY}",
            f"{role}.llm.requests_per_minute=null",
            f"{role}.llm.tokens_per_minute=null",
        ]
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=80",
        "dataset.excerpt_len=16",
        "units.layers=[1]",
        f"units.count={units}",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=openai",
        "simulator=openai_all_at_once_logprobs",
        *backend,
        "scorer=[correlation]",
        "tracking=none",
        f"output_dir={tmp / ('runs-' + tag)}",
        f"cache_dir={tmp / 'cache'}",
        f"engine.units_in_flight={parallel}",
    ]


def timed_run(args: argparse.Namespace, tmp: Path, subject: Path, corpus: Path, server: Server, parallel: int) -> dict:
    from bench.cli import run_job
    from bench.config import compose

    tag = f"p{parallel}"
    before = server.requests()
    start = time.perf_counter()
    outcome = run_job(compose(overrides(tmp, subject, corpus, f"{server.root}/v1", args.units, parallel, tag)), False)
    wall = time.perf_counter() - start
    requests = server.requests() - before
    ideal = requests * args.latency / CONCURRENCY
    again_before = server.requests()
    for d in (tmp / f"runs-{tag}").iterdir():  # a re-run from scratch: same cache, fresh run folder
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    run_job(compose(overrides(tmp, subject, corpus, f"{server.root}/v1", args.units, parallel, tag)), False)
    return {
        "units_in_flight": parallel,
        "units_ok": int(outcome.summary["units/ok"]),
        "http_requests": requests,
        "wall_s": round(wall, 3),
        "ideal_s": round(ideal, 3),
        "ratio": round(wall / ideal, 3) if ideal else None,
        "rerun_http_requests": server.requests() - again_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "pipeline.json"))
    args = parser.parse_args(argv)
    os.environ[KEY_ENV] = "sk-bench-not-a-secret"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subject = save_tiny_subject("llama", tmp / "tiny")
        corpus = tmp / "text.txt"
        corpus.write_text("\n".join(_TRAINING_TEXT * 8))
        server = Server(args.latency)
        try:
            rows = [timed_run(args, tmp, subject, corpus, server, p) for p in (1, args.parallel)]
        finally:
            server.close()
    for r in rows:
        print(
            f"units_in_flight={r['units_in_flight']:>2}: {r['http_requests']} requests, wall {r['wall_s']:.2f} s, "
            f"ideal {r['ideal_s']:.2f} s, ratio {r['ratio']:.2f} (target <= 1.2); "
            f"re-run requests {r['rerun_http_requests']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "pipeline wall time over ideal (requests x latency / concurrency)",
                "latency_s": args.latency,
                "concurrency": CONCURRENCY,
                "units": args.units,
                "target_ratio": 1.2,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "runs": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
