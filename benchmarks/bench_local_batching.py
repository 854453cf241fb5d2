"""In-process simulation of many units: padded cross-unit batches + shared-prefix KV reuse vs one request at a time.

``--units`` synthetic units (each: a topic word, the explanation "the word <topic>", ``--excerpts``
excerpts of ``--excerpt-len`` tokens where the topic word has activation 10 and every other token 0)
are simulated with SmolLM2 (the offline asset) and the all-at-once simulator's prompt-logprob
estimator, in two modes measured side by side in one process, on one loaded model:

* ``one_at_a_time``: ``LocalChatModel(batch_size=1, prefix_reuse=False)``: every request is its own
  forward pass over its whole prompt (few-shot header included);
* ``batched``: the requests of *all* units in one ``slot_distributions`` call with
  ``batch_size=--batch-size`` and prefix reuse: the few-shot header (the token prefix every request
  shares, up to the explanation) runs once, the rest in sorted, right-padded batches;
* ``engine``: what a run does -- every unit is a worker of the request engine (``bench.engine``,
  ``engine.units_in_flight`` = ``--units``) calling ``AllAtOnceSimulator.simulate`` on its own
  excerpts; the engine coalesces the units' requests into one ``slot_distributions`` call on a fresh
  ``LocalChatModel(batch_size=--batch-size, prefix_reuse=True)`` (its own prefix cache, so nothing of
  ``batched`` is reused).  ``engine_speedup`` = one_at_a_time / engine, and its scores and expected
  values must equal one_at_a_time's (``engine_max_score_diff``, ``engine_max_expected_value_diff``).

Per unit the score is the correlation of the simulated expected values with the true activations
(pooled over its excerpts); the two modes must give the same scores (``max_score_diff`` <= 1e-5) and
the same probabilities (``max_probability_diff``).  The target is ``speedup`` >= 3 on 2 CPU cores.
The modes alternate ``--repeats`` times (the fastest of each counts), so a busy machine slows both.

    python benchmarks/bench_local_batching.py [--units 20] [--excerpts 1] [--excerpt-len 16] \\
        [--batch-size 16] [--repeats 1] [--estimator prompt_logprobs] \\
        [--out results/benchmarks/local_batching.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = "rain storm river garden music market ship island window letter bird night morning paper city".split()
FILLER = " the a of and to in was it on for with as his her they at by from".split(" ")[1:]


def _units(n: int, excerpts: int, length: int, seed: int = 0) -> list[tuple[str, list[tuple[list[str], list[float]]]]]:
    rng = random.Random(seed)
    out = []
    for u in range(n):
        topic = TOPICS[u % len(TOPICS)]
        records = []
        for _ in range(excerpts):
            tokens = [" " + (topic if rng.random() < 0.25 else rng.choice(FILLER)) for _ in range(length)]
            records.append((tokens, [10.0 if t.strip() == topic else 0.0 for t in tokens]))
        out.append((f"the word {topic}", records))
    return out


def _score(expected: list[float], true: list[float]) -> float | None:
    import numpy as np

    e, t = np.asarray(expected, dtype=float), np.asarray(true, dtype=float)
    if e.std() == 0 or t.std() == 0:
        return None
    return float(np.corrcoef(e, t)[0, 1])


def _run(llm: Any, sim: Any, units: list[Any], per_request: bool) -> tuple[float, list[Any]]:
    requests = [sim.build_request(explanation, tokens) for explanation, records in units for tokens, _ in records]
    start = time.perf_counter()
    if per_request:
        results = [llm.slot_distributions([r])[0] for r in requests]
    else:
        results = llm.slot_distributions(requests)
    return time.perf_counter() - start, results


def _engine_run(sim: Any, units: list[Any]) -> tuple[float, list[Any]]:
    """Every unit a worker of the request engine; the simulations in unit order."""
    from bench.engine import running
    from bench.records import ActivationRecord

    def one(u: int) -> Any:
        explanation, records = units[u]
        return sim.simulate(explanation, [ActivationRecord(tokens, acts) for tokens, acts in records])

    start = time.perf_counter()
    with running() as engine:
        done = dict(engine.run_units(one, list(range(len(units))), workers=len(units)))
        stats = engine.stats
    wall = time.perf_counter() - start
    print(f"engine: {stats.flushes} flush(es), {stats.calls} backend call(s), {stats.requests} requests", flush=True)
    return wall, [done[u] for u in range(len(units))]


def _expected(units: list[Any], results: list[Any]) -> list[list[float]]:
    """Per unit: the expected values of all its tokens (from slot results' probabilities)."""
    from bench.simulators.expected_value import expected_value_from_probabilities

    out, k = [], 0
    for _explanation, records in units:
        values: list[float] = []
        for _ in records:
            values.extend(expected_value_from_probabilities(p).value for p in results[k].probabilities)
            k += 1
        out.append(values)
    return out


def _scores(units: list[Any], results: list[Any]) -> list[float | None]:
    from bench.simulators.expected_value import expected_value_from_probabilities

    scores, k = [], 0
    for _explanation, records in units:
        expected: list[float] = []
        true: list[float] = []
        for _tokens, acts in records:
            expected.extend(expected_value_from_probabilities(p).value for p in results[k].probabilities)
            true.extend(acts)
            k += 1
        scores.append(_score(expected, true))
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--excerpts", type=int, default=1, help="excerpts per unit")
    ap.add_argument("--excerpt-len", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--estimator", default="prompt_logprobs", choices=["prompt_logprobs", "prompt_logprobs_exact"])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "local_batching.json"))
    args = ap.parse_args(argv)

    import torch

    from bench.llm.local_transformers import LocalChatModel
    from bench.simulators.all_at_once import AllAtOnceSimulator

    units = _units(args.units, args.excerpts, args.excerpt_len)
    alone = LocalChatModel(device="cpu", batch_size=1, prefix_reuse=False)
    batched = LocalChatModel(device="cpu", batch_size=args.batch_size, prefix_reuse=True)
    sim = AllAtOnceSimulator(llm=batched, estimator=args.estimator)
    alone.torch_model  # noqa: B018  (load once, outside the timings; both share the process's copy)
    _run(batched, sim, units[:1], per_request=False)  # warm-up: token texts, kernels

    engined = LocalChatModel(device="cpu", batch_size=args.batch_size, prefix_reuse=True)
    engine_sim = AllAtOnceSimulator(llm=engined, estimator=args.estimator)
    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": [], "engine": []}
    results: dict[str, list[Any]] = {}
    for _ in range(args.repeats):
        for mode, llm, per_request in (("one_at_a_time", alone, True), ("batched", batched, False)):
            wall, res = _run(llm, sim, units, per_request)
            times[mode].append(wall)
            results[mode] = res
            print(f"{mode}: {wall:.1f} s", flush=True)
        wall, simulations = _engine_run(engine_sim, units)
        times["engine"].append(wall)
        print(f"engine: {wall:.1f} s", flush=True)

    prob_diff = max(
        abs(pa[v] - pb[v])
        for ra, rb in zip(results["one_at_a_time"], results["batched"], strict=True)
        for pa, pb in zip(ra.probabilities, rb.probabilities, strict=True)
        for v in pa
    )
    scores_a, scores_b = _scores(units, results["one_at_a_time"]), _scores(units, results["batched"])
    score_diff = max(
        (abs(a - b) for a, b in zip(scores_a, scores_b, strict=True) if a is not None and b is not None), default=0.0
    )
    same_missing = [a is None for a in scores_a] == [b is None for b in scores_b]
    engine_scores = [
        _score([v for q in sim_.sequences for v in q.expected], [a for _t, acts in records for a in acts])
        for sim_, (_e, records) in zip(simulations, units, strict=True)
    ]
    engine_score_diff = max(
        (abs(a - b) for a, b in zip(scores_a, engine_scores, strict=True) if a is not None and b is not None),
        default=0.0,
    )
    engine_ev_diff = max(
        abs(a - b)
        for ev_a, sim_ in zip(_expected(units, results["one_at_a_time"]), simulations, strict=True)
        for a, b in zip(ev_a, [v for q in sim_.sequences for v in q.expected], strict=True)
    )
    same_missing = same_missing and [a is None for a in scores_a] == [b is None for b in engine_scores]
    best = {mode: min(ts) for mode, ts in times.items()}
    speedup = best["one_at_a_time"] / best["batched"]
    shared = results["batched"][0].meta["shared_prefix_tokens"]
    prompt_tokens = sum(r.meta["prompt_tokens"] for r in results["batched"])
    report = {
        "benchmark": "local_batching",
        "model": "smollm2-135m-instruct (float32, cpu)",
        "estimator": f"all_at_once/{args.estimator}",
        "units": args.units,
        "requests": len(results["batched"]),
        "excerpts_per_unit": args.excerpts,
        "excerpt_len": args.excerpt_len,
        "batch_size": args.batch_size,
        "prompt_tokens_total": prompt_tokens,
        "shared_prefix_tokens": shared,
        "one_at_a_time_s": round(best["one_at_a_time"], 2),
        "batched_s": round(best["batched"], 2),
        "all_times_s": {m: [round(t, 2) for t in ts] for m, ts in times.items()},
        "speedup": round(speedup, 2),
        "engine_s": round(best["engine"], 2),
        "engine_speedup": round(best["one_at_a_time"] / best["engine"], 2),
        "engine_max_score_diff": engine_score_diff,
        "engine_max_expected_value_diff": engine_ev_diff,
        "target_speedup": 3.0,
        "max_probability_diff": prob_diff,
        "max_score_diff": score_diff,
        "scores": [None if s is None else round(s, 6) for s in scores_b],
        "ok": speedup >= 3.0
        and prob_diff <= 1e-5
        and score_diff <= 1e-5
        and same_missing
        and best["one_at_a_time"] / best["engine"] >= 3.0
        and engine_score_diff <= 1e-5,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
