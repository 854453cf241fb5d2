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
import os
import re
import sys
from pathlib import Path
from typing import Any

from bench.errors import UserError

HELP = """\
examples:
  neuronbench run                                   # offline default: SmolLM2 explains + simulates 5 neurons
  neuronbench run explainer=token_list units.count=3
  neuronbench run -m explainer=smollm2,token_list   # a sweep: one MLflow parent run, a child per combination
  neuronbench run --cfg job                         # print the composed config and exit
  neuronbench run --dry-run explainer=openai simulator=openai_all_at_once_logprobs   # calls, tokens, $ first
  neuronbench leaderboard --runs runs               # md/csv/html/tex + plots in a new outputs/leaderboards/<time>/
  neuronbench view runs/<name>-<hash>               # static HTML site of one run (RUN_DIR/viewer/index.html)
  neuronbench sync runs/*                           # complete the MLflow mirror (e.g. after a server outage)
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
    """Validate every combination, then run them through Hydra.

    ``hydra_flags`` are Hydra's own options (``--cfg job``, ``--resolve``); with ``--cfg`` Hydra prints the
    config and runs nothing, so API keys and caches are not checked.
    """
    from bench.config import check_ready, compose, expand_sweep, validate

    passthrough = [o for o in overrides if o.startswith("--")]
    plain = [o for o in overrides if not o.startswith("--")]
    if any(o.startswith("card=") for o in plain):
        from bench.cards import apply

        plain = apply(plain)  # the card's overrides + the user's, refused if they change its definition
    combos = expand_sweep(plain)
    if not multirun and len(combos) > 1:
        raise UserError("the overrides contain a sweep (a,b or range(...)); add -m to run a sweep")
    from bench.tracking.redact import register_config

    composed = [(combo, compose(combo)) for combo in combos]
    for _combo, cfg in composed:
        register_config(cfg)  # the values of its key variables and URL userinfo are masked everywhere
    validated = [(combo, validate(cfg)) for combo, cfg in composed]
    if dry_run:
        from bench.dryrun import format_estimate

        for combo, (settings, parts) in validated:
            print(format_estimate(settings, parts, " ".join(combo)))
        return 0
    hydra_flags = list(hydra_flags or [])
    if "--cfg" in hydra_flags:  # Hydra prints the config and runs nothing: no keys to check, no MLflow parent
        return _launch_hydra(plain, [*hydra_flags, *passthrough], multirun, progress, log_level=log_level)
    for _combo, (_settings, parts) in validated:
        check_ready(parts)  # API keys set, caches writable: one line before any job starts
    from bench.tracking.server import check_reachable

    for uri in dict.fromkeys(s.tracking.uri for _combo, (s, _parts) in validated if s.tracking.enabled):
        check_reachable(uri)  # a tracking server that is down: one line naming tracking.uri, before any job
    launch = dict(log_level=log_level, retry_failed=retry_failed)
    if not multirun:
        return _launch_hydra(plain, passthrough, multirun, progress, **launch)
    return _launch_sweep(plain, passthrough, progress, [settings for _combo, (settings, _parts) in validated], launch)


def _launch_sweep(
    plain: list[str], passthrough: list[str], progress: bool, settings: list[Any], launch: dict[str, Any]
) -> int:
    """A ``-m`` sweep: one MLflow parent run (when every job tracks to the same experiment), whose id and
    swept keys reach the jobs through the environment (so launchers in other processes see them too)."""
    from bench.run_lock import store_setup_lock
    from bench.tracking.mlflow_sink import close_sweep_parent, open_sweep_parent

    trackings = {(s.tracking.uri, s.tracking.experiment, s.tracking.artifact_location) for s in settings}
    tracking = settings[0].tracking
    if not tracking.enabled or len(trackings) != 1:
        return _launch_hydra(plain, passthrough, True, progress, **launch)
    swept = swept_keys(plain)
    with store_setup_lock(tracking.uri):  # a fresh sqlite store: one process migrates it
        parent = open_sweep_parent(tracking, plain, swept)
    saved = os.environ.get(SWEEP_ENV)
    os.environ[SWEEP_ENV] = json.dumps({"parent_run_id": parent, "swept": swept})
    status = "KILLED"  # interrupted or crashed: re-running the same sweep resumes this parent
    try:
        code = _launch_hydra(plain, passthrough, True, progress, **launch)
        status = "FINISHED" if code == 0 else "FAILED"
    finally:
        if saved is None:
            os.environ.pop(SWEEP_ENV, None)
        else:
            os.environ[SWEEP_ENV] = saved
        print(f"MLflow sweep: {close_sweep_parent(tracking, parent, status)}")
    return code


SWEEP_ENV = "NEURONBENCH_MLFLOW_SWEEP"


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys an override list sweeps (``explainer=a,b`` or ``range(...)``), in command-line order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


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


def _launch_hydra(
    overrides: list[str],
    passthrough: list[str],
    multirun: bool,
    progress: bool,
    log_level: str | None = None,
    retry_failed: bool = False,
) -> int:
    import hydra

    from bench.config import conf_dir

    status: dict[str, int] = {"code": 0}

    def task(cfg: Any) -> None:
        if log_level:  # after Hydra set up its job logging (console + <job dir>/cli.log)
            logging.getLogger().setLevel(log_level)
        _scrub_hydra_outputs()
        try:
            run_job(cfg, progress=progress, retry_failed=retry_failed)
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
NOT_DETERMINING = (
    "hydra",
    "tracking",
    "output_dir",
    "run_name",
    "cache_dir",
    "engine",
    "runner",
    "fail_on",
    "warn_on",
)


# ... and component fields that never change results, wherever they sit (e.g. subject.cache_dir).
# batch_tokens / prefix_reuse (local LLMs) only regroup forward passes: equal results to float noise.
NOT_DETERMINING_ANYWHERE = ("cache_dir", "progress", "batch_tokens", "prefix_reuse", "coalesce")


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


def run_job(
    cfg: Any, progress: bool = True, retry_failed: bool = False, choices: dict[str, str] | None = None
) -> Any:
    """One job: validate, build parts, run the pipeline with its sinks, print the summary.

    ``choices`` are the config group choices when no Hydra job is running (the Python API)."""
    from omegaconf import OmegaConf

    from bench import pipeline
    from bench.config import check_ready, validate
    from bench.provenance import git_commit, package_versions
    from bench.run_lock import lock_run_folder, store_setup_lock
    from bench.summary import print_summary
    from bench.tracking.jsonl import JsonlSink
    from bench.tracking.redact import install_log_redaction, register_config

    for noisy in ("transformers", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    register_config(cfg)  # also in a launcher's worker process, which never ran main()
    install_log_redaction()
    settings, parts = validate(cfg)
    check_ready(parts)  # a missing API key stops here, before mining
    # before any run folder or MLflow run exists
    pipeline.check_layers(settings, parts["subject"].info, parts["dataset"])
    if settings.tracking.enabled:  # also in a launcher's worker process and the Python API
        from bench.tracking.server import check_reachable

        check_reachable(settings.tracking.uri)
    check_writable_dirs(settings)
    choices = _hydra_choices() or dict(choices or {})
    name, digest = run_identity(cfg, choices)
    run_dir = Path(settings.output_dir) / f"{name}-{digest}"
    run_dir.mkdir(parents=True, exist_ok=True)
    folder_lock = lock_run_folder(run_dir)  # a second run of this configuration stops here, in one line
    store = JsonlSink(run_dir / "results.jsonl")
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    (run_dir / "config.json").write_text(json.dumps(_redacted(config), indent=2, default=str))
    mirrors = []
    tracked = None
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
        sweep = json.loads(os.environ.get(SWEEP_ENV) or "{}")
        label = _child_name(sweep.get("swept", [])) or name
        with store_setup_lock(settings.tracking.uri):  # a fresh sqlite store: one process migrates it
            tracked = MlflowSink(settings.tracking, run_dir, label, config, tags, choices, sweep.get("parent_run_id"))
        mirrors.append(tracked)
    try:
        outcome = pipeline.run(settings, parts, store, mirrors, run_dir, progress=progress, retry_failed=retry_failed)
    except BaseException:
        for mirror in mirrors:
            getattr(mirror, "abort", lambda: None)()
        folder_lock.release()
        raise
    if tracked is not None:
        tracked.describe(outcome.warnings)
    for sink in (store, *mirrors):
        sink.close(outcome.summary, outcome.results)
    folder_lock.release()
    print_summary(name, run_dir, outcome)
    if tracked is not None:
        print(f"MLflow run: {tracked.url}" + (" (already complete: nothing logged again)" if tracked.finished else ""))
        if tracked.lost:
            print(f"MLflow mirror incomplete (the server went away): neuronbench sync {run_dir}")
    outcome.run_dir = run_dir
    pipeline.check_failure_rate(outcome.summary, settings)  # all units failed: exit 1, results kept
    return outcome


def check_writable_dirs(settings: Any) -> None:
    """An unwritable output_dir or cache is one line before any work (not a PermissionError later)."""
    from bench.state_files import check_writable_dir

    check_writable_dir(settings.output_dir, "output_dir", "set output_dir=<a writable folder>")
    check_writable_dir(settings.cache_dir, "cache_dir", "set NEURONBENCH_CACHE or cache_dir=<a writable folder>")


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    from bench.tracking.redact import redact

    return redact(config)


def _scrub_hydra_outputs() -> None:
    """Hydra saved the overrides and the composed config (``.hydra/*.yaml``, ``multirun.yaml``) before
    the job starts: mask any key in them (e.g. a ``base_url`` with userinfo)."""
    from bench.tracking.redact import scrub_file

    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return
    if hc.output_subdir:
        for path in (Path(hc.runtime.output_dir) / str(hc.output_subdir)).glob("*.yaml"):
            scrub_file(path)
    if str(hc.mode) == "RunMode.MULTIRUN":
        scrub_file(Path(hc.sweep.dir) / "multirun.yaml")


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


def _child_name(swept: list[str]) -> str | None:
    """A sweep job's MLflow name from its swept choices (``explainer=openai,prompt=v1_no_examples``)."""
    if not swept:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except ValueError:
        return None
    from bench.tracking.mlflow_sink import child_name

    return child_name(task, swept)


def _hydra_choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
    except ValueError:  # not inside a Hydra job (tests call run_job directly)
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
