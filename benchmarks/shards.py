"""Shards: one run as n = 1, 2, 4 concurrent ``shard=i/n`` processes (+ the merge) vs the unsharded run.

Every variant is ``python -m bench.cli run ...`` in its own process(es) -- the tiny in-process subject, a
text-file corpus, the OpenAI explainer and all-at-once simulator pointed at ``tests/fake_servers.py
--simulate`` (its own process, every request answered after ``--latency`` seconds), the shuffled control
on, the response cache off (a cache hit records no usage, so with it on a unit's usage would depend on
which unit met a request first).  The records are mined once before timing (shared record cache).
Wall time of a sharded variant: from starting its n processes until the last one exits (it merges).

Asserted: ``results.jsonl``, ``explanations.jsonl`` and ``score_correlations.json`` byte-identical to the
unsharded run's, ``summary.json`` identical except the process counters ``cost/backend/...``.  Reported:
``speedup = unsharded wall / sharded wall``, side by side in one run.

    python benchmarks/shards.py [--latency 1.0] [--units 16] [--out results/benchmarks/shards.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_strategies import KEY_ENV, Server  # noqa: E402
from conftest_models import _TRAINING_TEXT, save_tiny_subject  # noqa: E402

SAME_BYTES = ("results.jsonl", "explanations.jsonl", "score_correlations.json")


def overrides(tmp: Path, subject: Path, corpus: Path, url: str, units: int, tag: str) -> list[str]:
    backend = []
    for role in ("explainer", "simulator"):
        backend += [
            f"{role}.llm.base_url={url}",
            f"{role}.llm.api_key_env={KEY_ENV}",
            f"{role}.llm.cache=false",
            f"{role}.llm.requests_per_minute=null",
            f"{role}.llm.tokens_per_minute=null",
        ]
    return [
        "run",
        "--no-progress",
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
        "scoring.bootstrap_resamples=200",
        "tracking=none",
        f"output_dir={tmp / ('runs-' + tag)}",
        f"cache_dir={tmp / 'cache'}",  # the record cache: mined once, before timing
    ]


def launch(args: list[str], tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def timed(tmp: Path, base: list[str], shards: int | None) -> float:
    """Wall seconds of the unsharded run (``shards=None``) or of n concurrent shard processes (+ the merge)."""
    procs_args = [base] if shards is None else [[*base, f"shard={i}/{shards}"] for i in range(shards)]
    start = time.perf_counter()
    procs = [launch(a, tmp) for a in procs_args]
    outputs = [p.communicate(timeout=3600)[0].decode() for p in procs]
    wall = time.perf_counter() - start
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a run failed (exit {p.returncode}):\n{out[-3000:]}")
    return wall


def run_dir(tmp: Path, tag: str) -> Path:
    (found,) = (tmp / f"runs-{tag}").iterdir()
    return found


def check_same(whole: Path, sharded: Path) -> None:
    for name in SAME_BYTES:
        if (whole / name).read_bytes() != (sharded / name).read_bytes():
            raise SystemExit(f"{name} differs between {whole} and {sharded}")
    a, b = (
        {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if not k.startswith("cost/backend/")}
        for d in (whole, sharded)
    )
    if a != b:
        raise SystemExit(f"summary.json aggregates differ: {sorted(k for k in a if a[k] != b.get(k))[:5]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "shards.json"))
    args = parser.parse_args(argv)
    os.environ[KEY_ENV] = "sk-bench-not-a-secret"
    counts = [int(n) for n in args.shards.split(",")]
    rows = []
    load_before = os.getloadavg()[0]  # other jobs on the machine take CPU from every process: say how many
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subject = save_tiny_subject("llama", tmp / "tiny")
        corpus = tmp / "text.txt"
        corpus.write_text("\n".join(_TRAINING_TEXT * 8))
        server = Server(args.latency)
        try:
            url = f"{server.root}/v1"
            timed(tmp, overrides(tmp, subject, corpus, url, args.units, "warmup"), None)  # mines the records
            before = server.requests()
            wall = timed(tmp, overrides(tmp, subject, corpus, url, args.units, "whole"), None)
            whole = {"shards": None, "wall_s": round(wall, 3), "http_requests": server.requests() - before}
            for n in counts:
                before = server.requests()
                wall = timed(tmp, overrides(tmp, subject, corpus, url, args.units, f"n{n}"), n)
                check_same(run_dir(tmp, "whole"), run_dir(tmp, f"n{n}"))
                rows.append(
                    {
                        "shards": n,
                        "wall_s": round(wall, 3),
                        "http_requests": server.requests() - before,
                        "speedup_vs_unsharded": round(whole["wall_s"] / wall, 3),
                        "identical_outputs": True,
                    }
                )
        finally:
            server.close()
    print(f"unsharded: wall {whole['wall_s']:.2f} s, {whole['http_requests']} requests")
    for r in rows:
        print(
            f"{r['shards']} shard(s) + merge: wall {r['wall_s']:.2f} s, {r['http_requests']} requests, "
            f"speed-up {r['speedup_vs_unsharded']:.2f}x, outputs identical"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "n concurrent shard processes + merge vs one unsharded process (same config)",
                "latency_s": args.latency,
                "units": args.units,
                "identical": list(SAME_BYTES) + ["summary.json (all but cost/backend/* process counters)"],
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1min": {"start": round(load_before, 1), "end": round(os.getloadavg()[0], 1)},
                },
                "unsharded": whole,
                "sharded": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
