"""Calls, tokens and time per scored unit for every simulator strategy x estimator.

Each simulator preset (``conf/simulator/*.yaml``, composed through Hydra exactly as ``neuronbench run``
does) is pointed at a loopback server (``tests/fake_servers.py --simulate``, in its own process) that
answers every request after ``--latency`` seconds and plays the simulator: all-at-once write-backs
and one-at-a-time answers follow the explanation's words, and the vLLM completions endpoint returns
prompt logprobs.  Rate limits are switched off (``requests_per_minute``/``tokens_per_minute: null``);
the presets' own ``concurrency`` and ``samples`` are kept.

A *unit* is one ``simulate()`` of a unit's scoring split, as the pipeline does it: ``2 * n``
excerpts (``--examples-per-split`` n = 5 top + 5 random by default) of ``--excerpt-len`` tokens (64,
like the offline dataset), with that unit's explanation.  Per unit the benchmark reports the
LLM calls (``Usage.calls``, retries included), the HTTP requests the server saw, input and output
tokens (as counted by the fake server's toy tokenizer: words, single digits, punctuation -- close to,
not equal to, a real tokenizer), dollars at the preset's prices (the same toy token counts), and
wall time (on a small machine it includes the fake server's CPU: JSON with 20 top logprobs per
token is not free; ``client_cpu_s_per_unit`` is this process's share).  ``run_calls_per_unit``
multiplies by the simulate() passes a default run makes per unit: scoring split + calibration
split (``scoring.calibration: linear``) + one shuffled-explanation control.
Then the same units are simulated again by a fresh backend on the same cache folder (as a re-run
would be): ``rerun_http_requests`` must be 0.

    python benchmarks/bench_strategies.py [--latency 0.05] [--units 3] [--examples-per-split 5] \\
        [--excerpt-len 64] [--out results/benchmarks/strategies.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "BENCH_FAKE_API_KEY"
RUN_PASSES = 3  # simulate() passes per unit in a default run: scoring + calibration + 1 control

# (preset, extra overrides, provider); the estimator comes from the preset (or its override)
CASES: list[tuple[str, list[str], str]] = [
    ("vllm_all_at_once_prompt_logprobs", [], "openai"),
    ("openai_all_at_once_logprobs", [], "openai"),
    ("openai_all_at_once_sampled", [], "openai"),
    ("openai_one_at_a_time", [], "openai"),
    ("openai_one_at_a_time", ["simulator.estimator=sampled"], "openai"),
    ("anthropic_all_at_once_sampled", [], "anthropic"),
    ("anthropic_one_at_a_time_sampled", [], "anthropic"),
]

WORDS = (
    " the a of and to in rain storm wet cloud thunder sun dry city river road house window door garden "
    "tree bird dog cat music song night morning paper letter money market ship sea island"
).split(" ")


class Server:
    """``tests/fake_servers.py --simulate`` in a subprocess (so its threads do not share our GIL)."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_servers.py"), "--latency", str(latency), "--simulate"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.root = f"http://127.0.0.1:{self.port}"

    def requests(self) -> int:
        with urllib.request.urlopen(f"{self.root}/_stats", timeout=10) as response:
            return int(json.load(response)["requests"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def synthetic_units(count: int, excerpts: int, length: int, seed: int = 0) -> list[tuple[str, list[Any]]]:
    """``count`` units: an explanation naming two words, and ``excerpts`` records of ``length`` tokens."""
    from bench.records import ActivationRecord

    rng = random.Random(seed)
    out = []
    for u in range(count):
        named = rng.sample(WORDS[6:], 2)
        records = []
        for _ in range(excerpts):
            tokens = [rng.choice(WORDS[:6] + named if rng.random() < 0.7 else WORDS) for _ in range(length)]
            tokens = [t if i == 0 else " " + t for i, t in enumerate(tokens)]
            acts = [10.0 if t.strip() in named else 0.0 for t in tokens]
            records.append(ActivationRecord(tokens, acts))
        out.append((f"the words {named[0]} and {named[1]} (unit {u})", records))
    return out


def build_simulator(preset: str, extra: list[str], provider: str, server: Server, cache: Path) -> Any:
    from bench.config import build_component, compose

    url = server.root if provider == "anthropic" else f"{server.root}/v1"
    cfg = compose(
        [
            f"simulator={preset}",
            *extra,
            f"simulator.llm.base_url={url}",
            f"simulator.llm.api_key_env={KEY_ENV}",
            f"simulator.llm.cache_dir={cache}",
            "simulator.llm.requests_per_minute=null",
            "simulator.llm.tokens_per_minute=null",
        ]
    )
    return build_component("simulator", cfg.simulator)


def run_case(
    preset: str, extra: list[str], provider: str, latency: float, units: list[tuple[str, list[Any]]], tmp: Path
) -> dict[str, Any]:
    from bench.records import Usage

    cache = tmp / f"{preset}-{'-'.join(extra) or 'default'}".replace("=", "_")
    server = Server(latency)
    try:
        simulator = build_simulator(preset, extra, provider, server, cache)
        llm = simulator.llm
        before = server.requests()
        usage, walls, unparsed = Usage(), [], 0
        cpu = time.process_time()
        for explanation, records in units:
            start = time.perf_counter()
            sim = simulator.simulate(explanation, records)
            walls.append(time.perf_counter() - start)
            usage = usage + sim.usage
            unparsed += sum(s.unparsed for s in sim.sequences)
        cpu = time.process_time() - cpu
        http = server.requests() - before
        stats = llm.stats
        llm.close()
        # a re-run: a fresh backend (as in a new process) on the same cache folder
        again = build_simulator(preset, extra, provider, server, cache)
        before_rerun = server.requests()
        start = time.perf_counter()
        for explanation, records in units:
            again.simulate(explanation, records)
        rerun_wall = time.perf_counter() - start
        rerun_http = server.requests() - before_rerun
        again.llm.close()
    finally:
        server.close()
    n = len(units)
    excerpts = len(units[0][1])
    tokens = len(units[0][1][0].tokens)
    return {
        "preset": preset,
        "overrides": extra,
        "estimator": simulator.recorded_estimator,
        "backend": llm.name,
        "concurrency": llm.concurrency,
        "samples": getattr(simulator, "samples", 1),
        "units": n,
        "excerpts_per_unit": excerpts,
        "tokens_per_excerpt": tokens,
        "latency_s": latency,
        "calls_per_unit": round(usage.calls / n, 2),
        "http_requests_per_unit": round(http / n, 2),
        "input_tokens_per_unit": round(usage.input_tokens / n, 1),
        "cached_input_tokens_per_unit": round(usage.cached_input_tokens / n, 1),
        "output_tokens_per_unit": round(usage.output_tokens / n, 1),
        "dollars_per_unit": round(usage.dollars / n, 6),
        "wall_s_per_unit": round(sum(walls) / n, 3),
        "client_cpu_s_per_unit": round(cpu / n, 3),
        "run_calls_per_unit": round(RUN_PASSES * usage.calls / n, 1),
        "retries": stats.retries,
        "unparsed_tokens": unparsed,
        "rerun_http_requests": rerun_http,
        "rerun_wall_s": round(rerun_wall, 3),
        "ok": rerun_http == 0 and usage.calls > 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    parser.add_argument("--units", type=int, default=3)
    parser.add_argument("--examples-per-split", type=int, default=5, help="n: the scoring split has 2n excerpts")
    parser.add_argument("--excerpt-len", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="run only these presets")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "strategies.json")
    args = parser.parse_args(argv)
    os.environ.setdefault(KEY_ENV, "sk-bench-not-a-secret")

    units = synthetic_units(args.units, 2 * args.examples_per_split, args.excerpt_len)
    import anthropic  # noqa: F401 - import the SDKs before timing: a one-off cost per process, not per unit
    import openai  # noqa: F401

    rows = []
    print(
        f"{'estimator':<31} {'preset':<34} {'calls':>7} {'http':>7} {'in tok':>9} {'out tok':>8} "
        f"{'$':>9} {'s':>7} {'run calls':>9} {'rerun':>5}   (per unit)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset, extra, provider in CASES:
            if args.only and preset not in args.only:
                continue
            row = run_case(preset, extra, provider, args.latency, units, Path(tmp))
            rows.append(row)
            label = preset + (f" ({' '.join(extra)})" if extra else "")
            print(
                f"{row['estimator']:<31} {label[:34]:<34} {row['calls_per_unit']:>7g} "
                f"{row['http_requests_per_unit']:>7g} {row['input_tokens_per_unit']:>9g} "
                f"{row['output_tokens_per_unit']:>8g} {row['dollars_per_unit']:>9.5f} {row['wall_s_per_unit']:>7.3f} "
                f"{row['run_calls_per_unit']:>9g} {row['rerun_http_requests']:>5d}  {'ok' if row['ok'] else 'MISSED'}",
                flush=True,
            )
    report = {
        "benchmark": "bench_strategies",
        "unit": (
            f"one simulate() of a scoring split: {2 * args.examples_per_split} excerpts x {args.excerpt_len} tokens; "
            f"run_calls_per_unit = {RUN_PASSES} passes (scoring + calibration + 1 control)"
        ),
        "token_counts": "the fake server's toy tokenizer (words, single digits, punctuation), not the real model's",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cases": rows,
        "all_ok": all(r["ok"] for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
