"""Throughput of the HTTP LLM backends against a loopback server with a fixed latency.

For each backend and concurrency C: N = 10·C requests to a server (``tests/fake_servers.py``, run in
its own process) that answers every request after L seconds.  The ideal wall time is ceil(N/C)·L;
``ratio`` = measured / ideal should stay <= 1.2.  The same batch is then sent again: it must come
from the on-disk cache with 0 HTTP calls (counted by the server).  For reference, the bare SDK
(``asyncio.gather`` under a semaphore, no cache/limits/retries) runs the same batch first: the
difference is the cost of neuronbench's layers; the remainder is the SDK's own per-request CPU
(reported as ``client_cpu_ms_per_request``), which caps throughput at about 1000/that requests per
second per process -- with L = 0.1 s and C = 64 a 2-core machine is CPU-bound, not latency-bound.

    python benchmarks/bench_backends.py [--latency 0.25] [--concurrency 4 16 64] \\
        [--out results/benchmarks/backends.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2
KEY_ENV = "BENCH_FAKE_API_KEY"


class Server:
    """``tests/fake_servers.py`` in a subprocess (so its threads do not share our GIL)."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_servers.py"), "--latency", str(latency)],
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


def build(provider: str, server: Server, concurrency: int, cache_dir: Path) -> Any:
    common = {"model": "bench-model", "concurrency": concurrency, "cache_dir": str(cache_dir),
              "prices": {"input": 0.0, "output": 0.0}, "api_key_env": KEY_ENV}  # fmt: skip
    if provider == "openai":
        from bench.llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(base_url=f"{server.root}/v1", **common)
    from bench.llm.anthropic_backend import AnthropicModel

    return AnthropicModel(base_url=server.root, **common)


async def bare_sdk(provider: str, server: Server, concurrency: int, n: int) -> float:
    """The same batch through the SDK alone; returns the wall time."""
    if provider == "openai":
        import openai

        client: Any = openai.AsyncOpenAI(api_key="x", base_url=f"{server.root}/v1", max_retries=0)

        def call(i: int) -> Any:
            return client.chat.completions.create(
                model="bench-model", messages=[{"role": "user", "content": f"REPLY: bare {i}"}], max_tokens=16
            )
    else:
        import anthropic

        client = anthropic.AsyncAnthropic(api_key="x", base_url=server.root, max_retries=0)

        def call(i: int) -> Any:
            return client.messages.create(
                model="bench-model", messages=[{"role": "user", "content": f"REPLY: bare {i}"}], max_tokens=16
            )

    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            return await call(i)

    await one(-1)  # warm-up: connection, imports
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    return wall


def run_case(provider: str, concurrency: int, latency: float, cache_root: Path) -> dict[str, Any]:
    from bench.protocols import ChatMessage, GenerationRequest

    n = 10 * concurrency
    ideal = math.ceil(n / concurrency) * latency
    server = Server(latency)
    try:
        bare = asyncio.run(bare_sdk(provider, server, concurrency, n))
        client = build(provider, server, concurrency, cache_root / f"{provider}-{concurrency}")
        requests = [
            GenerationRequest(messages=(ChatMessage("user", f"REPLY: answer {i}"),), max_tokens=16) for i in range(n)
        ]
        client.generate([GenerationRequest(messages=(ChatMessage("user", "REPLY: warm"),))])  # client + pool
        before = server.requests()
        start, cpu = time.perf_counter(), time.process_time()
        out = client.generate(requests)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        after_first = server.requests()
        assert len(out) == n and all(g.text == f"answer {i}" for i, g in enumerate(out))
        start = time.perf_counter()
        again = client.generate(requests)
        rerun_wall = time.perf_counter() - start
        rerun_calls = server.requests() - after_first
        assert [g.text for g in again] == [g.text for g in out]
        stats = client.stats
        client.close()
    finally:
        server.close()
    return {
        "provider": provider,
        "concurrency": concurrency,
        "requests": n,
        "latency_s": latency,
        "ideal_s": round(ideal, 4),
        "wall_s": round(wall, 4),
        "ratio": round(wall / ideal, 4),
        "bare_sdk_wall_s": round(bare, 4),
        "bare_sdk_ratio": round(bare / ideal, 4),
        "client_cpu_ms_per_request": round(1000 * cpu / n, 3),
        "http_calls": after_first - before,
        "retries": stats.retries,
        "rerun_http_calls": rerun_calls,
        "rerun_wall_s": round(rerun_wall, 4),
        "ok": wall / ideal <= TARGET_RATIO and rerun_calls == 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.25, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--providers", nargs="+", default=["openai", "anthropic"], choices=["openai", "anthropic"])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "backends.json")
    args = parser.parse_args(argv)
    os.environ.setdefault(KEY_ENV, "sk-bench-not-a-secret")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for provider in args.providers:
            for c in args.concurrency:
                row = run_case(provider, c, args.latency, Path(tmp))
                rows.append(row)
                print(
                    f"{provider:9s} C={c:<3d} N={row['requests']:<4d} wall {row['wall_s']:.3f}s / ideal "
                    f"{row['ideal_s']:.3f}s = {row['ratio']:.3f}x (bare SDK {row['bare_sdk_ratio']:.3f}x; target "
                    f"<= {TARGET_RATIO}) | {row['client_cpu_ms_per_request']:.2f} ms CPU/request | rerun: "
                    f"{row['rerun_http_calls']} HTTP calls in {row['rerun_wall_s']:.3f}s  "
                    f"{'ok' if row['ok'] else 'MISSED'}",
                    flush=True,
                )
    report = {
        "benchmark": "bench_backends",
        "target_ratio": TARGET_RATIO,
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
