"""One neuronbench job: validate, build parts, run the pipeline with its sinks, print the summary.

This is the body Hydra runs for ``neuronbench run`` -- once, or once per job of a ``-m`` sweep, in this
process or in a launcher's worker (joblib, Ray, submitit/SLURM).  :func:`task` is the Hydra task
function (``bench.launch.main`` wraps it in ``@hydra.main``); it stays a plain module-level function so
that every launcher can pickle it by reference.  What the command line asks for beyond the config
(progress bars, log level, ``--retry-failed``) reaches the job through ``hydra.job.env_set``, which
travels with each job's config to whichever process or machine runs it.

Imports stay light: ``bench.cli`` re-exports :func:`run_job` for the Python API and tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

log = logging.getLogger(__name__)

SWEEP_ENV = "NEURONBENCH_MLFLOW_SWEEP"


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys an override list sweeps (``explainer=a,b`` or ``range(...)``), in command-line order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


# ---------------------------------------------------------------------------------------------------
# Config keys that do not change results: a run resumes across changes of these.
NOT_DETERMINING = (
    "hydra",
    "tracking",
    "output_dir",
    "run_name",
    "cache_dir",
    "shard",  # all shards of a run share its folder (bench/run/shards.py)
    "engine",
    "runner",
    "fail_on",
    "warn_on",
    "budget",
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
    from bench.config import plain_dict

    resolved = plain_dict(cfg)
    top = {k: v for k, v in resolved.items() if k not in NOT_DETERMINING}
    determining = _without_keys(top, NOT_DETERMINING_ANYWHERE)
    digest = hashlib.sha256(json.dumps(determining, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = cfg.get("run_name") or "__".join(choices.get(group, "?") for group in ("explainer", "simulator", "subject"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name), digest


def run_job(cfg: Any, progress: bool = True, retry_failed: bool = False, choices: dict[str, str] | None = None) -> Any:
    """One job: validate, build parts, run the pipeline with its sinks, print the summary.

    ``choices`` are the config group choices when no Hydra job is running (the Python API)."""
    from bench import pipeline
    from bench.config import check_ready, plain_dict, validate
    from bench.llm.budget import install as install_budget
    from bench.protocols import Sink
    from bench.provenance import git_commit, package_versions
    from bench.run.folder import JsonlSink, RunFolder
    from bench.run_lock import lock_run_folder, store_setup_lock
    from bench.summary import print_summary
    from bench.tracking.redact import install_log_redaction, register_config

    for noisy in ("transformers", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    register_config(cfg)  # also in a launcher's worker process, which never ran main()
    install_log_redaction()
    settings, parts = validate(cfg)
    check_ready(parts)  # a missing API key stops here, before mining
    install_budget(settings.budget.max_usd)  # this job's dollar cap, nothing spent yet
    # before any run folder or MLflow run exists
    pipeline.check_layers(settings, parts.subject.info, parts.dataset)
    if settings.tracking.enabled:  # also in a launcher's worker process and the Python API
        from bench.tracking.server import check_reachable

        check_reachable(settings.tracking.uri)
    check_writable_dirs(settings)
    choices = _hydra_choices() or dict(choices or {})
    name, digest = run_identity(cfg, choices)
    folder = RunFolder(Path(settings.output_dir) / f"{name}-{digest}").mkdir()
    run_dir, shard = folder.root, settings.shard
    folder_lock = lock_run_folder(run_dir, shard)  # a second run of this configuration stops here, in one line
    if shard is None:
        folder.adopt_shard_results()  # units that shards of this run finished are not redone
    # a shard: its own file (units already in results.jsonl count as finished); the merge sums up
    store = JsonlSink(folder.results_of(shard), summary=shard is None, base=None if shard is None else folder.results)
    config = {k: v for k, v in plain_dict(cfg).items() if k != "hydra"}
    folder.write_config(config)
    mirrors: list[Sink] = []
    tracked = None
    mlflow_setup: dict[str, Any] = {}  # a shard leaves the MLflow run to the merge
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
        parent = sweep.get("parent_run_id")
        mlflow_setup = {"label": label, "tags": tags, "choices": choices, "parent_run_id": parent}
        if shard is None:
            with store_setup_lock(settings.tracking.uri):  # a fresh sqlite store: one process migrates it
                tracked = MlflowSink(settings.tracking, run_dir, label, config, tags, choices, parent)
            mirrors.append(tracked)
    try:
        outcome = pipeline.run(settings, parts, store, mirrors, run_dir, progress=progress, retry_failed=retry_failed)
    except BaseException:
        for mirror in mirrors:
            mirror.abort()
        folder_lock.release()
        raise
    if tracked is not None:
        tracked.describe(outcome.warnings)
    sinks: list[Sink] = [store, *mirrors]
    for sink in sinks:
        sink.close(outcome.summary, outcome.results)
    if shard is not None:
        outcome = _finish_shard(settings, parts, folder, outcome, mlflow_setup)
        if outcome is None:  # other shards still to finish: their last one merges
            folder_lock.release()
            return None
    folder_lock.release()
    print_summary(name, run_dir, outcome)
    if tracked is not None:
        print(f"MLflow run: {tracked.url}" + (" (already complete: nothing logged again)" if tracked.finished else ""))
        if tracked.lost:
            print(f"MLflow mirror incomplete (the server went away): neuronbench sync {run_dir}")
    outcome.run_dir = run_dir
    pipeline.check_failure_rate(outcome.summary, settings)  # all units failed: exit 1, results kept
    return outcome


def _finish_shard(settings: Any, parts: Any, folder: Any, outcome: Any, mlflow_setup: dict[str, Any]) -> Any:
    """Leave this shard's done marker; the last shard to finish merges the run (bench/run/shards.py).
    The run's outcome when merged, else None (after one line saying what is left)."""
    from bench.pipeline import RunOutcome
    from bench.run.shards import ShardDone, merge, missing_shards, write_done

    shard = settings.shard
    simulator = parts.simulator
    write_done(
        folder,
        shard,
        ShardDone(
            units=[r.unit.key for r in outcome.results],
            metrics={k: v for k, v in outcome.summary.items() if k.startswith("cost/backend/")},
            mlflow=mlflow_setup,
            simulator={
                "estimator": simulator.recorded_estimator,
                "top_k": simulator.top_k,
                "top_k_taper": simulator.recorded_taper,
            },
        ),
    )
    missing = missing_shards(folder, shard.count)
    if missing:
        print(
            f"shard {shard} finished ({len(outcome.results)} units in {folder.results_of(shard)}); "
            f"{len(missing)} of {shard.count} shards to go ({', '.join(f'shard={s}' for s in missing)}): "
            f"the last one merges, or run `neuronbench merge {folder.root}`"
        )
        return None
    merged = merge(folder.root, shard.count, tracking=settings.tracking)
    print(f"shard {shard} finished last: merged {shard.count} shards into {folder.results}")
    if merged.mlflow_url:
        print(f"MLflow run: {merged.mlflow_url}")
    return RunOutcome(results=merged.results, summary=merged.summary, warnings=merged.warnings, run_dir=folder.root)


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


# ---------------------------------------------------------------------------------------------------
# The Hydra task: what every job of ``neuronbench run`` executes, wherever a launcher runs it
# ---------------------------------------------------------------------------------------------------
# Command-line options that are not config: set by ``bench.launch`` as ``hydra.job.env_set.<NAME>=...``,
# so a job in another process or on another machine sees them (os.environ of the launching shell
# does not reach a Ray cluster's workers).
PROGRESS_ENV = "NEURONBENCH_PROGRESS"
LOG_LEVEL_ENV = "NEURONBENCH_LOG_LEVEL"
RETRY_FAILED_ENV = "NEURONBENCH_RETRY_FAILED"
# Where the jobs of a sweep leave their exit code (under hydra.sweep.dir) for the sweep's end.
STATUS_DIR = ".neuronbench/jobs"


@dataclass(frozen=True)
class RunOptions:
    """The command line's run options, as one job reads them from its environment."""

    progress: bool = True
    log_level: str | None = None
    retry_failed: bool = False

    def env_set(self) -> list[str]:
        """Hydra overrides that hand these options to every job (``hydra.job.env_set``)."""
        env = {PROGRESS_ENV: "1" if self.progress else "0", RETRY_FAILED_ENV: "1" if self.retry_failed else "0"}
        if self.log_level:
            env[LOG_LEVEL_ENV] = self.log_level
        return [f"++hydra.job.env_set.{name}={value}" for name, value in env.items()]

    @classmethod
    def from_env(cls) -> RunOptions:
        return cls(
            progress=os.environ.get(PROGRESS_ENV, "1") != "0",
            log_level=os.environ.get(LOG_LEVEL_ENV) or None,
            retry_failed=os.environ.get(RETRY_FAILED_ENV, "0") == "1",
        )


def task(cfg: Any) -> int:
    """The Hydra task function of ``neuronbench run``: one job, its exit code returned.

    A single run stops the process with that code (one line for a user mistake, never a traceback).
    A sweep job never raises: its mistake or crash is printed / logged, its code written under
    ``hydra.sweep.dir`` for the sweep's end to report (see ``bench.sweep``), and the other jobs go on.
    """
    options = RunOptions.from_env()
    if options.log_level:  # after Hydra set up its job logging (console + <job dir>/cli.log)
        logging.getLogger().setLevel(options.log_level)
    _scrub_hydra_outputs()
    multirun = _in_multirun()
    try:
        run_job(cfg, progress=options.progress, retry_failed=options.retry_failed)
        code = 0
    except UserError as err:
        from bench.tracking.redact import redact_text

        # a worker's stdout/stderr are not the CLI's redacted console: mask what a server may have echoed
        print(f"neuronbench: {redact_text(str(err))}", file=sys.stderr)
        code = err.exit_code
    except Exception:
        if not multirun:
            raise
        log.exception("neuronbench: this sweep job crashed; the other jobs go on")
        code = 1
    if multirun:
        _write_job_status(code)
    elif code:
        raise SystemExit(code)  # not an Exception: passes Hydra's error report, reaches the CLI's exit code
    return code


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    except ValueError:
        return False


def _write_job_status(code: int) -> None:
    """``<sweep dir>/.neuronbench/jobs/<num>.json``: this job's exit code, read back by the sweep's end."""
    from hydra.core.hydra_config import HydraConfig

    from bench.tracking.redact import redact

    hc = HydraConfig.get()
    folder = Path(hc.sweep.dir) / STATUS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    status = {"num": int(hc.job.num), "code": code, "overrides": redact(list(hc.overrides.task)), "pid": os.getpid()}
    tmp = folder / f".{hc.job.num}.json.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(folder / f"{hc.job.num}.json")


def read_job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """The exit codes the jobs of a sweep left (jobs on machines without this folder leave none here)."""
    folder = Path(sweep_dir) / STATUS_DIR
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda s: s["num"])


def clear_job_statuses(sweep_dir: Path) -> None:
    """A re-run of a sweep into the same folder starts with no statuses from the last one."""
    for path in (Path(sweep_dir) / STATUS_DIR).glob("*.json"):
        path.unlink(missing_ok=True)
