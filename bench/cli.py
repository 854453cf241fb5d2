"""``neuronbench`` command line: it parses arguments and hands each command to its module.

``neuronbench run [-m] [overrides ...]`` goes to the Hydra app in :mod:`bench.launch` (a plain
``@hydra.main``): its callback (:mod:`bench.sweep`) validates every job of a sweep before any starts
(one-line errors, exit code 2), and Hydra's configured launcher runs the jobs (:mod:`bench.jobs`).
Imports stay light until a run really starts, so ``--help`` answers instantly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from pathlib import Path

from bench.errors import UserError
from bench.jobs import SWEEP_ENV, run_identity, run_job, swept_keys  # noqa: F401 - moved there; kept importable

HELP = """\
examples:
  neuronbench run                                   # offline default: SmolLM2 explains + simulates 5 neurons
  neuronbench run explainer=token_list units.count=3
  neuronbench run -m explainer=smollm2,token_list   # a sweep: one MLflow parent run, a child per combination
  neuronbench run -m explainer=smollm2,token_list hydra/launcher=joblib   # jobs in parallel (ray, submitit_slurm)
  neuronbench run --cfg job                         # print the composed config and exit
  neuronbench run --dry-run explainer=openai simulator=openai_all_at_once_logprobs   # calls, tokens, $ first
  neuronbench leaderboard --runs runs               # md/csv/html/tex + plots in a new outputs/leaderboards/<time>/
  neuronbench view runs/<name>-<hash>               # static HTML site of one run (RUN_DIR/viewer/index.html)
  neuronbench run shard=0/4 ...; ... shard=3/4      # one run in 4 processes; the last to finish merges
  neuronbench merge runs/<name>-<hash>              # ... or merge the finished shards by hand
  neuronbench card create my_bench units.count=20   # freeze a benchmark; then: neuronbench run card=my_bench
  neuronbench list [GROUP]                          # the options of each config group
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
    parser.add_argument("--version", action="version", version=f"neuronbench {_version()}")
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
        "--retry-failed",
        action="store_true",
        help="redo every failed unit of an earlier run (a plain re-run redoes only failures from outages: "
        "connection errors, timeouts, 429/5xx after retries, expired batches)",
    )
    run_p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the LLM calls, estimated tokens and dollars per stage, then exit (loads and calls nothing)",
    )
    run_p.add_argument(
        "--cfg",
        choices=("job", "hydra", "all"),
        help="print the composed config (job: neuronbench's, hydra: Hydra's, all: both) and exit",
    )
    run_p.add_argument("--resolve", action="store_true", help="with --cfg: resolve ${...} interpolations")
    run_p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    run_p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        help="log level of neuronbench and Hydra's job log (default INFO; -q means WARNING)",
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
    lb_p = sub.add_parser("leaderboard", help="write leaderboard.{md,csv,html,tex} and plots from run folders")
    lb_p.add_argument("run_dirs", nargs="*", help="run folders to include (default: every run under --runs)")
    lb_p.add_argument("--runs", default="runs", help="folder holding run folders (default: runs)")
    lb_p.add_argument(
        "--out", default=None, help="output folder (default: a new outputs/leaderboards/<UTC time>/ per call)"
    )
    lb_p.add_argument("--title", default="neuronbench leaderboard", help="heading of the markdown file")
    lb_p.add_argument("--score", default="correlation/top_and_random", help="score that ranks the runs")
    lb_p.add_argument("--no-pairing", action="store_true", help="skip paired differences (runs over other units)")
    lb_p.add_argument("--no-plots", action="store_true", help="write the tables only")
    lb_p.add_argument("--mlflow-uri", default=None, help="read the runs of an MLflow store/server instead of --runs")
    lb_p.add_argument("--experiment", default="neuronbench", help="MLflow experiment for --mlflow-uri")
    view_p = sub.add_parser("view", help="write a static HTML site of one run (units, excerpts, scores)")
    view_p.add_argument("run_dir", help="run folder (runs/<name>-<hash>)")
    view_p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/viewer)")
    merge_p = sub.add_parser("merge", help="join the shards of a sharded run (shard=i/n) into results.jsonl")
    merge_p.add_argument("run_dir", help="run folder (runs/<name>-<hash>) its shards wrote into")
    sync_p = sub.add_parser("sync", help="re-create or complete runs' MLflow mirror from their run folders")
    sync_p.add_argument("run_dirs", nargs="+", help="run folders (runs/<name>-<hash>); safe to repeat")
    sync_p.add_argument("--tracking-uri", default=None, help="MLflow store/server (default: the run's tracking.uri)")
    sync_p.add_argument("--experiment", default=None, help="MLflow experiment (default: the run's)")
    card_p = sub.add_parser("card", help="benchmark cards: freeze a benchmark definition (results/cards/)")
    card_sub = card_p.add_subparsers(dest="card_command", required=True)
    create_p = card_sub.add_parser("create", help="write results/cards/NAME.vN.yaml from conf/ + overrides")
    create_p.add_argument("name", help="card name (letters, digits, _ and -); run it with `neuronbench run card=NAME`")
    create_p.add_argument("overrides", nargs="*", help="overrides that define the benchmark, e.g. units.count=20")
    create_p.add_argument("--cards-dir", default="results/cards", help="folder of cards (default: results/cards)")
    create_p.add_argument(
        "--no-fingerprint", action="store_true", help="skip the excerpt fingerprint (it tokenizes the corpus)"
    )
    list_p = sub.add_parser("list", help="the options of each config group, with what each one is")
    list_p.add_argument("group", nargs="?", help="one group (subject, explainer, prompt, simulator ...)")
    args, extra = parser.parse_known_args(argv)
    from bench.tracking.redact import install_log_redaction, redacted_console

    install_log_redaction()  # every log record, console or Hydra's cli.log, is masked as it is made
    with redacted_console():  # ... and everything printed
        return _dispatch(args, extra)


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        if args.command == "run":
            hydra_flags = [*(["--cfg", args.cfg] if args.cfg else []), *(["--resolve"] if args.resolve else [])]
            return command_run(
                args.overrides + extra,
                multirun=args.multirun,
                progress=not (args.no_progress or args.quiet),
                dry_run=args.dry_run,
                hydra_flags=hydra_flags,
                log_level=args.log_level or ("WARNING" if args.quiet else None),
                retry_failed=args.retry_failed,
            )
        if args.command == "judge-check":
            return command_judge_check(args.overrides + extra, args.explainer, args.out, not args.no_progress)
        if extra:
            raise UserError(f"{args.command}: unexpected arguments {' '.join(extra)}")
        if args.command == "compare":
            return command_compare(args.run_a, args.run_b, args.score, args.json)
        if args.command == "list":
            from bench.options import format_options, options

            print(format_options(options(args.group)))
            return 0
        if args.command == "leaderboard":
            from bench.leaderboard import write_leaderboard

            out = Path(args.out) if args.out else None
            md = write_leaderboard(
                Path(args.runs),
                out,
                args.title,
                args.run_dirs,
                args.score,
                not args.no_pairing,
                not args.no_plots,
                (args.mlflow_uri, args.experiment) if args.mlflow_uri else None,
            )
            print(f"leaderboard: {md} (+ .csv .html .tex .json{'' if args.no_plots else ', plots/'})")
            return 0
        if args.command == "card":
            from bench.cards import create

            path = create(args.name, args.overrides, Path(args.cards_dir), fingerprint=not args.no_fingerprint)
            print(f"card: {path} (run it with: neuronbench run card={args.name})")
            return 0
        if args.command == "view":
            return command_view(args.run_dir, args.out)
        if args.command == "merge":
            return command_merge(args.run_dir)
        if args.command == "sync":
            from bench.tracking.sync import sync_run

            for run_dir in args.run_dirs:
                print(sync_run(Path(run_dir), args.tracking_uri, args.experiment).line())
            return 0
    except UserError as err:
        print(f"neuronbench: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("neuronbench: interrupted; finished units are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _version() -> str:
    """The installed distribution's version (pyproject.toml); a source checkout without install says so."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neuronbench")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def command_run(
    overrides: list[str],
    multirun: bool,
    progress: bool,
    dry_run: bool = False,
    hydra_flags: list[str] | None = None,
    log_level: str | None = None,
    retry_failed: bool = False,
) -> int:
    """``neuronbench run``: handed to the Hydra app (``bench.launch``), which validates and runs the jobs."""
    from bench.jobs import RunOptions
    from bench.launch import launch

    options = RunOptions(progress=progress, log_level=log_level, retry_failed=retry_failed)
    return launch(overrides, multirun, options, dry_run=dry_run, hydra_flags=hydra_flags)



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

    from bench.compare import check_comparable, compare, load_config, load_results, run_definition

    results_a, results_b = load_results(run_a), load_results(run_b)
    check_comparable(run_definition(results_a, load_config(run_a)), run_definition(results_b, load_config(run_b)))
    c = compare(results_a, results_b, score)
    if as_json:
        print(json.dumps(asdict(c)))
        return 0
    kind = "exact" if c.p_exact else "Monte Carlo"
    print(
        f"{score}: A - B = {c.mean_diff:+.4f} (95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], "
        f"paired permutation p = {c.p_value:.4g}, {kind}) over {c.n_pairs} paired units "
        f"(A mean {c.mean_a:.4f}, B mean {c.mean_b:.4f}; {c.n_unpaired} units unpaired: missing, failed or NaN)"
    )
    return 0


def command_merge(run_dir: str) -> int:
    """``neuronbench merge RUN_DIR``: join a sharded run's shard files (what its last shard does itself)."""
    from types import SimpleNamespace

    from bench.pipeline import RunOutcome, check_failure_rate
    from bench.run.folder import RunFolder
    from bench.run.shards import merge
    from bench.summary import print_summary

    merged = merge(Path(run_dir))
    outcome = RunOutcome(merged.results, merged.summary, merged.warnings, run_dir=merged.run_dir)
    print_summary(merged.run_dir.name, merged.run_dir, outcome)
    if merged.mlflow_url:
        note = " (already complete: nothing logged again)" if merged.mlflow_already_complete else ""
        print(f"MLflow run: {merged.mlflow_url}{note}")
    config = json.loads(RunFolder(merged.run_dir).config.read_text())
    fail_on = SimpleNamespace(failure_rate=float((config.get("fail_on") or {}).get("failure_rate", 1.0)))
    check_failure_rate(merged.summary, SimpleNamespace(fail_on=fail_on))  # type: ignore[arg-type]
    return 0


def command_view(run_dir: str, out: str | None) -> int:
    """Write the viewer site; mirror it to the run's MLflow run when it has one."""
    from bench.report.viewer import write_site
    from bench.tracking.mlflow_site import log_site

    index = write_site(Path(run_dir), Path(out) if out else None)
    print(f"viewer: {index.resolve().as_uri()}")
    logged = log_site(Path(run_dir), index.parent)
    if logged:
        print(f"viewer: logged to MLflow run {logged} as artifacts viewer/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
