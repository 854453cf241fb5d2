"""``neuronbench`` command line.

``neuronbench run [-m] [overrides ...]`` composes ``conf/`` with Hydra, validates every combination
(one-line errors, exit code 2, before any model loads), then hands over to Hydra, which runs the job
or the sweep.  Imports stay light until a run really starts, so ``--help`` answers instantly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from bench.errors import UserError

HELP = """\
examples:
  neuronbench run                                   # offline default: SmolLM2 explains + simulates 5 neurons
  neuronbench run explainer=token_list units.count=3
  neuronbench run -m explainer=smollm2,token_list   # a sweep: one MLflow run per combination
  neuronbench run --cfg job                         # print the composed config and exit
  neuronbench run --dry-run explainer=openai simulator=openai_all_at_once_logprobs   # calls, tokens, $ first
  neuronbench judge-check simulator=proxy_lexical   # does the simulator separate true/shuffled/empty explanations?

Config groups live in conf/ (subject, dataset, units, explainer, prompt, simulator, scorer, tracking).
Results: runs/<name>-<hash>/results.jsonl (resumable) and MLflow
(mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db).
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="neuronbench",
        description="Benchmark natural-language explanations of language-model units.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser(
        "run",
        help="run one configuration, or a sweep with -m",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_p.add_argument("-m", "--multirun", action="store_true", help="run a sweep (comma-separated values)")
    run_p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run_p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the LLM calls, estimated tokens and dollars per stage, then exit (loads and calls nothing)",
    )
    run_p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. explainer=token_list units.count=3")
    jc_p = sub.add_parser(
        "judge-check",
        help="score a simulator on synthetic units with true, shuffled and empty explanations (does it separate them?)",
    )
    jc_p.add_argument("--explainer", action="store_true", help="also score the configured explainer's explanations")
    jc_p.add_argument("--out", default=None, help="JSON report path (default: <output_dir>/judge_check/<name>.json)")
    jc_p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    jc_p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. simulator=proxy_lexical units.count=6")
    cmp_p = sub.add_parser("compare", help="paired comparison of two runs on the same units")
    cmp_p.add_argument("run_a", help="run folder (runs/<name>-<hash>) of run A")
    cmp_p.add_argument("run_b", help="run folder of run B")
    cmp_p.add_argument("--score", default="correlation/top_and_random", help="score to compare")
    cmp_p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    lb_p = sub.add_parser("leaderboard", help="write results/<name>/leaderboard.md from run folders")
    lb_p.add_argument("run_dirs", nargs="*", help="run folders to include (default: every run under --runs)")
    lb_p.add_argument("--runs", default="runs", help="folder holding run folders (default: runs)")
    lb_p.add_argument("--out", default="results/offline_default", help="output folder")
    lb_p.add_argument("--title", default="neuronbench leaderboard", help="heading of the markdown file")
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "run":
            return command_run(
                args.overrides + extra, multirun=args.multirun, progress=not args.no_progress, dry_run=args.dry_run
            )
        if args.command == "judge-check":
            return command_judge_check(args.overrides + extra, args.explainer, args.out, not args.no_progress)
        if extra:
            raise UserError(f"{args.command}: unexpected arguments {' '.join(extra)}")
        if args.command == "compare":
            return command_compare(args.run_a, args.run_b, args.score, args.json)
        if args.command == "leaderboard":
            from bench.leaderboard import write_leaderboard

            print(write_leaderboard(Path(args.runs), Path(args.out), args.title, args.run_dirs))
            return 0
    except UserError as err:
        print(f"neuronbench: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("neuronbench: interrupted; finished units are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def command_run(overrides: list[str], multirun: bool, progress: bool, dry_run: bool = False) -> int:
    from bench.config import check_ready, compose, expand_sweep, validate

    passthrough = [o for o in overrides if o.startswith("--")]
    plain = [o for o in overrides if not o.startswith("--")]
    combos = expand_sweep(plain)
    if not multirun and len(combos) > 1:
        raise UserError("the overrides contain a sweep (a,b or range(...)); add -m to run a sweep")
    validated = [(combo, validate(compose(combo))) for combo in combos]
    if dry_run:
        from bench.dryrun import format_estimate

        for combo, (settings, parts) in validated:
            print(format_estimate(settings, parts, " ".join(combo)))
        return 0
    for _combo, (_settings, parts) in validated:
        check_ready(parts)  # API keys set, caches writable: one line before any job starts
    return _launch_hydra(plain, passthrough, multirun, progress)


# judge-check's defaults; an override of the same key replaces them.
JUDGE_CHECK_DEFAULTS = ("units=synthetic", "scorer=[correlation]", "tracking=none")


def command_judge_check(overrides: list[str], explain: bool, out: str | None, progress: bool) -> int:
    from bench.config import check_ready, compose, expand_sweep, validate
    from bench.judge_check import format_report, judge_check, write_json

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    combo = [d for d in JUDGE_CHECK_DEFAULTS if d.split("=", 1)[0] not in given] + overrides
    if len(expand_sweep(combo)) > 1:
        raise UserError("judge-check runs one configuration; drop the sweep (a,b) from the overrides")
    cfg = compose(combo)
    settings, parts = validate(cfg)
    check_ready(parts)
    for noisy in ("transformers", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    check = judge_check(settings, parts, explain=explain, progress=progress)
    print(format_report(check))
    if out is None:
        digest = hashlib.sha256(json.dumps(combo).encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", check.simulator)
        out = str(Path(settings.output_dir) / "judge_check" / f"{name}-{digest}.json")
    print(f"report: {write_json(check, Path(out), combo)}")
    return 0


def command_compare(run_a: str, run_b: str, score: str, as_json: bool) -> int:
    from dataclasses import asdict

    from bench.compare import compare, load_results

    c = compare(load_results(run_a), load_results(run_b), score)
    if as_json:
        print(json.dumps(asdict(c)))
        return 0
    print(
        f"{score}: A - B = {c.mean_diff:+.4f} (95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], "
        f"paired permutation p = {c.p_value:.4g}) over {c.n_pairs} paired units "
        f"(A mean {c.mean_a:.4f}, B mean {c.mean_b:.4f}; {c.n_unpaired} units unpaired: missing, failed or NaN)"
    )
    return 0


def _launch_hydra(overrides: list[str], passthrough: list[str], multirun: bool, progress: bool) -> int:
    import hydra

    from bench.config import conf_dir

    status: dict[str, int] = {"code": 0}

    def task(cfg: Any) -> None:
        try:
            run_job(cfg, progress=progress)
        except UserError as err:
            print(f"neuronbench: {err}", file=sys.stderr)
            status["code"] = err.exit_code

    main_fn = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)
    saved = sys.argv
    sys.argv = ["neuronbench", *(["-m"] if multirun else []), *passthrough, *overrides]
    try:
        main_fn()
    finally:
        sys.argv = saved
    return status["code"]


# ---------------------------------------------------------------------------------------------------
# Config keys that do not change results: a run resumes across changes of these.
NOT_DETERMINING = ("hydra", "tracking", "output_dir", "run_name", "cache_dir", "parallel_units")


# ... and component fields that never change results, wherever they sit (e.g. subject.cache_dir).
NOT_DETERMINING_ANYWHERE = ("cache_dir", "progress")


def _without_keys(node: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _without_keys(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [_without_keys(v, keys) for v in node]
    return node


def run_identity(cfg: Any, choices: dict[str, str]) -> tuple[str, str]:
    """(run name, config hash).  The hash covers everything that determines results, so re-running
    the same configuration resumes the same run folder."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    top = {k: v for k, v in resolved.items() if k not in NOT_DETERMINING}
    determining = _without_keys(top, NOT_DETERMINING_ANYWHERE)
    digest = hashlib.sha256(json.dumps(determining, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = cfg.get("run_name") or "__".join(choices.get(group, "?") for group in ("explainer", "simulator", "subject"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name), digest


def run_job(cfg: Any, progress: bool = True) -> Any:
    """One job: validate, build parts, run the pipeline with its sinks, print the summary."""
    from omegaconf import OmegaConf

    from bench import pipeline
    from bench.config import check_ready, validate
    from bench.provenance import git_commit, package_versions
    from bench.summary import print_summary
    from bench.tracking.jsonl import JsonlSink

    for noisy in ("transformers", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings, parts = validate(cfg)
    check_ready(parts)  # a missing API key stops here, before mining
    # before any run folder or MLflow run exists
    pipeline.check_layers(settings, parts["subject"].info, parts["dataset"])
    choices = _hydra_choices()
    name, digest = run_identity(cfg, choices)
    run_dir = Path(settings.output_dir) / f"{name}-{digest}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store = JsonlSink(run_dir / "results.jsonl")
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    (run_dir / "config.json").write_text(json.dumps(_redacted(config), indent=2, default=str))
    mirrors = []
    if settings.tracking.enabled:
        from bench.tracking.mlflow_sink import MlflowSink

        tags = {
            "git_commit": git_commit(),
            "config_hash": digest,
            "run_dir": str(run_dir),
            # "llm@simulator.llm" (a preset pulled into a package) is tagged by its package: choice/simulator.llm
            **{f"choice/{k.split('@', 1)[-1]}": str(v) for k, v in choices.items()},
            **_sweep_tags(),
            **{f"version/{k}": v for k, v in package_versions().items()},
        }
        mirrors.append(MlflowSink(settings.tracking, run_dir, name, config, tags))
    try:
        outcome = pipeline.run(settings, parts, store, mirrors, run_dir, progress=progress)
    except BaseException:
        for mirror in mirrors:
            getattr(mirror, "abort", lambda: None)()
        raise
    for sink in (store, *mirrors):
        sink.close(outcome.summary, outcome.results)
    print_summary(name, run_dir, outcome)
    return outcome


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    from bench.tracking.redact import redact

    return redact(config)


def _sweep_tags() -> dict[str, str]:
    """Jobs of one ``-m`` sweep share a ``sweep`` tag, so MLflow can group and compare them."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return {}
    if str(hc.mode) != "RunMode.MULTIRUN":
        return {}
    return {"sweep": str(hc.sweep.dir), "sweep_job": str(hc.job.num), "sweep_overrides": " ".join(hc.overrides.task)}


def _hydra_choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
    except ValueError:  # not inside a Hydra job (tests call run_job directly)
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
