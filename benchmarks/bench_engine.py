"""The request engine at scale (issue 8's benchmarks): orchestration, API stage, batch jobs.

    python benchmarks/bench_engine.py orchestration [--sizes 1000 10000 100000]
    python benchmarks/bench_engine.py api [--units 1000 --latency 0.5 --concurrency 64 --old-units 40]
    python benchmarks/bench_engine.py batch [--units 1000 --old-units 20]

``orchestration``: N units of a fake subject (records built on the fly, ``engine_fakes.LazyRecords``)
through ``bench.pipeline.run`` -- explain, simulate scoring + calibration split, the shuffled control,
correlation, results.jsonl -- with a zero-latency coalescing FakeLLM as explainer and simulator backend,
one fresh subprocess per size, after an untimed warm-up run of ``--in-flight`` units in the same process
(lazy imports, first calls).  Overhead per unit = (CPU time of the process during ``pipeline.run`` -
CPU inside the fake backend's calls - CPU inside scoring (``scorer.score``, the calibration fit, the
control's correlations) - CPU making the fake records) / N, each measured with ``time.thread_time`` in
the thread that did it: everything else (engine, threads, prompt building and parsing, splits, JSON lines,
explanations.jsonl, aggregation) is overhead.  CPU time, not wall: on a shared 2-core machine the wall
time mostly measures the other jobs (both are recorded; ``wall_ms_per_unit`` is the honest number on an
idle machine).  Memory: the RSS high-water mark (``VmHWM``, reset via ``/proc/self/clear_refs`` just
before ``pipeline.run``) and the bytes per unit of what the run keeps (``kept_results_bytes_per_unit``:
``RunOutcome.results``; the explanation store and dict).  Targets: <= 1 ms per unit at every size, peak
RSS within 20 % from the smallest to the largest size.

``api``: N units against the loopback OpenAI stand-in (``tests/fake_servers.py --simulate`` in its own
process, fixed latency), explainer + all-at-once generated-logprob simulator, backend concurrency C,
``engine.units_in_flight`` = 64 (default).  ``ideal = HTTP requests x latency / C``; the old ways
(``units_in_flight=1`` = one unit at a time, ``=8`` = the old ``parallel_units=8``) on a subset in the
same run.  Target: engine ratio <= 1.10.

``batch``: N units with ``batch=true`` against the loopback OpenAI Batch API and Anthropic Message
Batches: batch jobs per stage (target: 1 per stage), vs ``units_in_flight=1`` on a subset (one job per
unit and stage), extrapolated per unit.

Writes ``results/benchmarks/engine_<name>.{json,md}``; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
OUT = ROOT / "results" / "benchmarks"
FULL_MODEL_UNITS = 307_200  # GPT-2 XL's MLP neurons


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_1min_start": round(os.getloadavg()[0], 2),
    }


def write(name: str, data: dict[str, Any], table: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
    (OUT / f"engine_{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (OUT / f"engine_{name}.md").write_text(table)
    print(table)
    print(f"wrote {OUT / f'engine_{name}.json'} and .md")


def tiny_inputs(tmp: Path) -> tuple[Path, Path]:
    from conftest_models import _TRAINING_TEXT, save_tiny_subject

    subject = save_tiny_subject("llama", tmp / "tiny")
    corpus = tmp / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    return subject, corpus


def base_overrides(subject: Path, corpus: Path, tmp: Path, tag: str) -> list[str]:
    from conftest_models import tiny_run

    return [
        *tiny_run(subject, corpus),
        "tracking=none",
        f"output_dir={tmp / ('runs-' + tag)}",
        f"cache_dir={tmp / 'cache'}",
    ]


# ---------------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB there), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it references (each object once): dataclasses, dicts, lists."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(_deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dataclass_fields__"):
        size += sum(_deep_size(getattr(obj, f), seen) for f in obj.__dataclass_fields__)
    return size


def orchestration_child(args: argparse.Namespace) -> int:
    """One size in this (fresh) process; prints one JSON line."""
    import engine_fakes

    from bench.config import compose, validate
    from bench.pipeline import run
    from bench.run.folder import JsonlSink

    tmp = Path(args.tmp)
    fake = "{_target_:engine_fakes.TimedFakeLLM,coalesce:true}"
    cfg = compose(
        [
            *base_overrides(Path(args.subject), Path(args.corpus), tmp, f"o{args.child}"),
            "explainer=smollm2",
            "~explainer.llm",
            f"+explainer.llm={fake}",
            "simulator=smollm2_all_at_once",
            "~simulator.llm",
            f"+simulator.llm={fake}",
            "units.examples_per_split=1",
            "scoring.bootstrap_resamples=100",
            "scoring.calibration=none",  # a linear fit per unit is scoring CPU (not overhead): off, so 10^5 fits
            f"engine.units_in_flight={args.in_flight}",
        ]
    )
    settings, parts = validate(cfg)
    parts = replace(parts, scorers={k: engine_fakes.TimedScorer(v) for k, v in parts.scorers.items()})
    import bench.pipeline
    import bench.scorers.metrics

    # calibration fits and the control's correlations are scoring math, like scorer.score: timed the same way
    bench.pipeline.fit_calibration = engine_fakes.timed_scoring(bench.pipeline.fit_calibration)
    bench.scorers.metrics.correlation = engine_fakes.timed_scoring(bench.scorers.metrics.correlation)
    sink_wall = [0.0]

    class TimedSink(JsonlSink):
        def write(self, result: Any) -> None:
            start = time.perf_counter()
            super().write(result)
            sink_wall[0] += time.perf_counter() - start

    # warm-up: lazy imports (scipy, sklearn), first calls and thread start-up are paid here, untimed
    parts = replace(parts, dataset=engine_fakes.LazyRecordsDataset(n=args.in_flight))
    warm = tmp / f"warm-{args.child}"
    warm.mkdir(parents=True)
    run(settings, parts, JsonlSink(warm / "results.jsonl"), [], warm, progress=False)
    engine_fakes.reset()
    parts = replace(parts, dataset=engine_fakes.LazyRecordsDataset(n=args.child))
    run_dir = tmp / f"run-{args.child}"
    run_dir.mkdir(parents=True)
    gc.collect()
    rss_before_mb = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    cpu0, start = time.process_time(), time.perf_counter()
    outcome = run(settings, parts, TimedSink(run_dir / "results.jsonl"), [], run_dir, progress=False)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    peak_mb = _status_mb("VmHWM")
    kept = _deep_size(outcome.results)
    slim = _deep_size([replace(r, simulation=None) for r in outcome.results[:100]]) * args.child / min(args.child, 100)
    from bench.pipeline import ExplanationStore

    store = ExplanationStore(run_dir / "explanations.jsonl")  # as pipeline.run holds it (items) ...
    explanations = {k: store.get(k) for k in store.items}  # ... and its explanations dict
    t = engine_fakes.TIMERS
    n = args.child
    overhead = cpu - t["backend_cpu_s"] - t["scorer_cpu_s"] - t["records_cpu_s"]
    print(
        json.dumps(
            {
                "units": n,
                "units_ok": int(outcome.summary["units/ok"]),
                "wall_s": round(wall, 3),
                "process_cpu_s": round(cpu, 3),
                "backend_cpu_s": round(t["backend_cpu_s"], 3),
                "scorer_cpu_s": round(t["scorer_cpu_s"], 3),
                "records_cpu_s": round(t["records_cpu_s"], 3),
                "backend_calls": t["backend_calls"],
                "backend_requests": t["backend_requests"],
                "overhead_cpu_s": round(overhead, 3),
                "overhead_ms_per_unit": round(1000 * overhead / n, 4),
                "wall_ms_per_unit": round(1000 * wall / n, 4),
                "sink_write_wall_s": round(sink_wall[0], 3),
                "rss_before_run_mb": rss_before_mb,
                "peak_rss_mb": peak_mb,
                "run_growth_mb": round(peak_mb - rss_before_mb, 1),
                "kept_results_bytes_per_unit": round(kept / n),
                "kept_results_without_simulation_bytes_per_unit": round(slim / n),
                "explanation_store_bytes_per_unit": round(_deep_size(store.items) / n),
                "explanations_dict_bytes_per_unit": round(_deep_size(explanations) / n),
                "load_1min": round(os.getloadavg()[0], 2),
            }
        )
    )
    return 0


def orchestration(args: argparse.Namespace) -> int:
    rows = []
    info = machine()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subject, corpus = tiny_inputs(tmp)
        procs = []
        for n in args.sizes:  # all sizes at once, each in its own process: CPU time and VmHWM are per process
            cmd = [sys.executable, __file__, "orchestration", "--child", str(n), "--subject", str(subject)]
            cmd += ["--corpus", str(corpus), "--tmp", str(tmp), "--in-flight", str(args.in_flight)]
            env = {**os.environ, "TQDM_DISABLE": "1"}
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
            if not args.concurrent:
                procs[-1].wait()
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                print(err[-4000:], file=sys.stderr)
                return 1
            row = json.loads(out.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    small, large = rows[0], rows[-1]
    worst = max(r["overhead_ms_per_unit"] for r in rows)
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    per_unit_s = large["wall_s"] / large["units"]
    data = {
        "benchmark": "orchestration: N fake units through pipeline.run on the request engine, zero-latency backend",
        "overhead_definition": (
            "(process CPU during pipeline.run - thread CPU inside the fake backend's calls - thread CPU in scoring "
            "(scorer.score, calibration fit, control correlations) - thread CPU making the fake records) / units; "
            "engine, threads, prompt building/parsing, splits, results.jsonl, explanations.jsonl and aggregation "
            "all count as overhead; after an untimed warm-up run in the same process"
        ),
        "memory_definition": (
            "peak RSS (VmHWM reset just before pipeline.run) of a fresh process per size, model/imports included; "
            "run_growth_mb = peak - RSS before the run"
        ),
        "units_in_flight": args.in_flight,
        "targets": {"overhead_ms_per_unit": 1.0, "peak_rss_growth": 0.20},
        "rows": rows,
        "worst_overhead_ms_per_unit": worst,
        "peak_rss_growth": round(growth, 3),
        "extrapolated_307200_units": {
            "wall_s": round(per_unit_s * FULL_MODEL_UNITS, 1),
            "overhead_s": round(worst / 1000 * FULL_MODEL_UNITS, 1),
            "basis": f"per-unit wall and worst overhead of the {large['units']}-unit run, times 307,200",
        },
        "machine": info,
    }
    ok = worst <= 1.0 and growth <= 0.20
    data["ok"] = ok
    lines = [
        "| units | wall s | process CPU s | backend CPU s | scoring CPU s | overhead CPU ms/unit | wall ms/unit "
        "| peak RSS MB | growth in run MB | kept results B/unit |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['units']:,} | {r['wall_s']} | {r['process_cpu_s']} | {r['backend_cpu_s']} | {r['scorer_cpu_s']} "
            f"| {r['overhead_ms_per_unit']} | {r['wall_ms_per_unit']} | {r['peak_rss_mb']} | {r['run_growth_mb']} "
            f"| {r['kept_results_bytes_per_unit']:,} |"
            for r in rows
        ),
        "",
        f"Peak RSS {small['units']:,} -> {large['units']:,} units: {growth:+.1%} (target <= +20 %); worst overhead "
        f"{worst} ms/unit (target <= 1). 307,200 units: ~{data['extrapolated_307200_units']['wall_s']} s wall, "
        f"~{data['extrapolated_307200_units']['overhead_s']} s of it overhead CPU. Load (1 min) "
        f"{info['load_1min_start']} at start, {max(r['load_1min'] for r in rows)} at most at the end of a size.",
        "",
    ]
    write("orchestration", data, "\n".join(lines))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------
# API stage
# ---------------------------------------------------------------------------------------------------
def api_run(tmp: Path, subject: Path, corpus: Path, server: Any, units: int, in_flight: int, args: Any) -> dict:
    """One run of ``units`` units against the loopback server; wall of ``pipeline.run`` and its requests."""
    import engine_fakes
    from bench_strategies import KEY_ENV

    from bench.config import compose, validate
    from bench.pipeline import run
    from bench.run.folder import JsonlSink

    tag = f"api-{units}-{in_flight}"
    backend = []
    for role in ("explainer", "simulator"):
        backend += [
            f"{role}.llm.base_url={server.root}/v1",
            f"{role}.llm.api_key_env={KEY_ENV}",
            f"{role}.llm.cache_dir={tmp / ('llm-' + tag)}",
            f"{role}.llm.concurrency={args.concurrency}",
            f"{role}.llm.requests_per_minute=null",
            f"{role}.llm.tokens_per_minute=null",
        ]
    cfg = compose(
        [
            *base_overrides(subject, corpus, tmp, tag),
            "explainer=openai",
            "simulator=openai_all_at_once_logprobs",
            *backend,
            "units.examples_per_split=1",
            "scoring.bootstrap_resamples=100",
            f"engine.units_in_flight={in_flight}",
        ]
    )
    settings, parts = validate(cfg)
    parts = replace(parts, dataset=engine_fakes.LazyRecordsDataset(n=units, unique=True))
    run_dir = tmp / f"run-{tag}"
    run_dir.mkdir(parents=True)
    before = server.requests()
    cpu0, start = time.process_time(), time.perf_counter()
    outcome = run(settings, parts, JsonlSink(run_dir / "results.jsonl"), [], run_dir, progress=False)
    wall = time.perf_counter() - start
    requests = server.requests() - before
    ideal = requests * args.latency / args.concurrency
    return {
        "units": units,
        "units_in_flight": in_flight,
        "units_ok": int(outcome.summary["units/ok"]),
        "http_requests": requests,
        "wall_s": round(wall, 2),
        "client_cpu_s": round(time.process_time() - cpu0, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 3),
        "wall_s_per_unit": round(wall / units, 4),
        "client_cpu_ms_per_request": round(1000 * (time.process_time() - cpu0) / max(requests, 1), 2),
        # the client's CPU alone over the ideal: > 1 means no scheduling can reach the ideal on one core
        "cpu_floor_ratio": round((time.process_time() - cpu0) / ideal, 3),
    }


def api(args: argparse.Namespace) -> int:
    from bench_strategies import KEY_ENV, Server

    os.environ[KEY_ENV] = "sk-bench-not-a-secret"
    info = machine()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subject, corpus = tiny_inputs(tmp)
        server = Server(args.latency)
        try:
            rows = []
            for units, in_flight in ((args.units, 64), (args.old_units, 1), (args.old_units, 8)):
                rows.append(api_run(tmp, subject, corpus, server, units, in_flight, args))
                print(rows[-1], flush=True)
        finally:
            server.close()
    engine, *old = rows
    for r in old:  # the old ways on the full size, from their per-unit wall time (units go one after another)
        r["extrapolated_wall_s_for_full_size"] = round(r["wall_s_per_unit"] * args.units, 1)
        r["engine_speedup"] = round(r["extrapolated_wall_s_for_full_size"] / engine["wall_s"], 1)
    ok = engine["ratio"] <= 1.10
    data = {
        "benchmark": "API stage: units through pipeline.run against the loopback OpenAI stand-in",
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "ideal_definition": "HTTP requests the server saw x latency / concurrency",
        "target_ratio": 1.10,
        "rows": rows,
        "ok": ok,
        "machine": info,
    }
    lines = [
        f"API stage, latency {args.latency} s, backend concurrency {args.concurrency} (explainer and simulator each)",
        "",
        "| units | units_in_flight | HTTP requests | wall s | ideal s | wall / ideal | wall for "
        f"{args.units:,} units (extrapolated) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['units']:,} | {r['units_in_flight']} | {r['http_requests']:,} | {r['wall_s']} | {r['ideal_s']} "
            f"| {r['ratio']} | {r.get('extrapolated_wall_s_for_full_size', r['wall_s'])} |"
            for r in rows
        ),
        "",
        f"Engine: {engine['ratio']}x the ideal (target <= 1.10). Old ways on {args.old_units} units, "
        "extrapolated per unit: "
        + ", ".join(f"units_in_flight={r['units_in_flight']} {r['engine_speedup']}x slower" for r in old)
        + f". Load (1 min) {info['load_1min_start']} at start.",
        "",
        f"Client CPU: {engine['client_cpu_ms_per_request']} ms per request, {engine['cpu_floor_ratio']}x the ideal by "
        "itself (the process is one GIL: CPU per request above latency / concurrency makes the stage CPU-bound).",
        "",
    ]
    write("api", data, "\n".join(lines))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------
# batch jobs
# ---------------------------------------------------------------------------------------------------
BATCH_PRESETS = {
    "openai": ("openai", "openai_all_at_once_logprobs", "/v1"),
    "anthropic": ("anthropic", "anthropic_all_at_once_sampled", ""),
}


def batch_run(tmp: Path, subject: Path, corpus: Path, provider: str, units: int, in_flight: int) -> dict:
    """One batch-mode run on a fresh loopback server; the provider batch jobs it created."""
    import engine_fakes
    from fake_servers import FakeLLMServer, benchmark_responder

    from bench.config import compose, validate
    from bench.pipeline import run
    from bench.run.folder import JsonlSink

    explainer, simulator, path = BATCH_PRESETS[provider]
    tag = f"batch-{provider}-{units}-{in_flight}"
    with FakeLLMServer(api_key="sk-loopback-batch") as server:
        server.responder = benchmark_responder
        backend = [
            f"{role}.llm.{key}"
            for role in ("explainer", "simulator")
            for key in (
                f"base_url={server.root}{path}",
                "api_key_env=NB_BENCH_BATCH_KEY",
                "batch=true",
                "batch_poll_s=0.001",
                f"cache_dir={tmp / ('llm-' + tag)}",
            )
        ]
        cfg = compose(
            [
                *base_overrides(subject, corpus, tmp, tag),
                f"explainer={explainer}",
                f"simulator={simulator}",
                *backend,
                "units.examples_per_split=1",
                "scoring.bootstrap_resamples=100",
                f"engine.units_in_flight={in_flight}",
            ]
        )
        settings, parts = validate(cfg)
        parts = replace(parts, dataset=engine_fakes.LazyRecordsDataset(n=units, unique=True))
        run_dir = tmp / f"run-{tag}"
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        outcome = run(settings, parts, JsonlSink(run_dir / "results.jsonl"), [], run_dir, progress=False)
        wall = time.perf_counter() - start
        sizes = [len(b["requests"]) for b in server.batches.values()]
    return {
        "provider": provider,
        "units": units,
        "units_in_flight": in_flight,
        "units_ok": int(outcome.summary["units/ok"]),
        "batch_jobs": len(sizes),
        "requests_per_job": sizes,
        "requests": sum(sizes),
        "jobs_per_unit": round(len(sizes) / units, 3),
        "wall_s": round(wall, 2),
    }


def batch(args: argparse.Namespace) -> int:
    os.environ["NB_BENCH_BATCH_KEY"] = "sk-loopback-batch"
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subject, corpus = tiny_inputs(tmp)
        for provider in args.providers:
            for units, in_flight in ((args.units, args.units), (args.old_units, 1)):
                rows.append(batch_run(tmp, subject, corpus, provider, units, in_flight))
                print({k: v for k, v in rows[-1].items() if k != "requests_per_job"}, flush=True)
    stages = 3  # explain; simulate (scoring + calibration split in one simulate()); the shuffled control
    for r in rows:
        if r["units_in_flight"] == 1:
            r["extrapolated_jobs_for_full_size"] = round(r["jobs_per_unit"] * args.units)
    ok = all(r["batch_jobs"] <= stages for r in rows if r["units_in_flight"] > 1)
    data = {
        "benchmark": "batch mode: provider batch jobs per run against the loopback batch endpoints",
        "stages": "explain, simulate (scoring + calibration splits), control: 3 stages",
        "target": "<= 1 job per stage (per provider size limit: 50,000 requests OpenAI, 100,000 Anthropic)",
        "rows": rows,
        "ok": ok,
        "machine": info,
    }
    lines = [
        f"| provider | units | units_in_flight | batch jobs | requests per job | jobs for {args.units:,} units |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['provider']} | {r['units']:,} | {r['units_in_flight']} | {r['batch_jobs']} | "
            + (
                ", ".join(str(x) for x in r["requests_per_job"])
                if len(r["requests_per_job"]) <= 3
                else f"{min(r['requests_per_job'])}..{max(r['requests_per_job'])}"
            )
            + f" | {r.get('extrapolated_jobs_for_full_size', r['batch_jobs']):,} |"
            for r in rows
        ),
        "",
        f"Target: <= 1 job per stage (3 stages) with all units in flight. units_in_flight=1 measured on "
        f"{args.old_units} units and extrapolated per unit.",
        "",
    ]
    write("batch", data, "\n".join(lines))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("orchestration")
    o.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    o.add_argument("--in-flight", type=int, default=64)
    o.add_argument("--concurrent", action="store_true", help="run the sizes' processes at the same time")
    o.add_argument("--child", type=int, help=argparse.SUPPRESS)
    o.add_argument("--subject", help=argparse.SUPPRESS)
    o.add_argument("--corpus", help=argparse.SUPPRESS)
    o.add_argument("--tmp", help=argparse.SUPPRESS)
    a = sub.add_parser("api")
    a.add_argument("--units", type=int, default=1000)
    a.add_argument("--old-units", type=int, default=40)
    a.add_argument("--latency", type=float, default=0.5)
    a.add_argument("--concurrency", type=int, default=64)
    b = sub.add_parser("batch")
    b.add_argument("--units", type=int, default=1000)
    b.add_argument("--old-units", type=int, default=20)
    b.add_argument("--providers", nargs="+", default=["openai", "anthropic"])
    args = parser.parse_args(argv)
    if args.cmd == "batch":
        return batch(args)
    if args.cmd == "api":
        return api(args)
    if args.cmd == "orchestration":
        return orchestration_child(args) if args.child else orchestration(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
