"""The Hydra callback of ``neuronbench run``: checks before any job, one MLflow parent per sweep, and
the sweep's exit code -- whichever launcher runs the jobs.

Registered in ``conf/config.yaml`` (``hydra.callbacks.neuronbench``), so it acts on the CLI and on the
plain Hydra app (``python -m bench.launch``) alike.  Hydra calls it in the launching process:

* ``on_run_start`` / ``on_multirun_start``: compose and validate **every** job of the sweep (Hydra's
  own override parser and sweeper rules, ``bench.config.expand_sweep``), then check API keys, caches
  and servers -- a mistake in any job is one line and exit code 2 before any job starts or any output
  folder exists.
* ``on_multirun_start`` then opens the sweep's MLflow parent run (when every job tracks to one
  experiment) and hands its id to the jobs as ``hydra.job.env_set.NEURONBENCH_MLFLOW_SWEEP``: launchers
  compose each job's config from ``hydra.overrides.hydra`` plus the job's overrides, so the id travels
  with the config to joblib workers, Ray workers on other machines and SLURM jobs (the environment of
  this shell does not).
* ``on_multirun_end``: the jobs' exit codes (left under ``hydra.sweep.dir`` by ``bench.jobs.task``)
  close the parent as FINISHED or FAILED and become the sweep's exit code.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bench.errors import UserError
from bench.jobs import SWEEP_ENV, clear_job_statuses, read_job_statuses, swept_keys

# Parents opened in this process and not closed yet: ``bench.launch`` closes them as KILLED when a sweep
# stops before its end (Ctrl-C, a launcher error); re-running the same sweep resumes the same parent.
OPEN_PARENTS: dict[str, Any] = {}


class SweepCallback(Callback):
    """See the module docstring.  Picklable (launchers ship it to their workers with Hydra's context)."""

    def __init__(self) -> None:
        self.parent: tuple[Any, str] | None = None  # (TrackingConfig, run id)
        self.jobs = 0

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        with _stop_on_user_error():
            validate_jobs([list(config.hydra.overrides.task)])

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from bench.config import expand_sweep

        overrides = list(config.hydra.overrides.task)
        with _stop_on_user_error():
            combos = expand_sweep(overrides)
            settings = validate_jobs(combos)
        self.jobs = len(combos)
        clear_job_statuses(Path(config.hydra.sweep.dir))
        self.parent = open_parent(settings, overrides)
        if self.parent is not None:
            sweep = {"parent_run_id": self.parent[1], "swept": swept_keys(overrides)}
            hand_to_jobs(config, SWEEP_ENV, json.dumps(sweep))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        statuses = read_job_statuses(Path(config.hydra.sweep.dir))
        failed = [s for s in statuses if s["code"]]
        if self.parent is not None:
            tracking, run_id = self.parent
            print(f"MLflow sweep: {close_parent(tracking, run_id, 'FAILED' if failed else 'FINISHED')}")
            self.parent = None
        missing = self.jobs - len(statuses)
        if missing > 0:
            print(
                f"neuronbench: {missing} of {self.jobs} sweep jobs left no exit code under {config.hydra.sweep.dir} "
                "(run on machines that do not share this folder?): see their logs or MLflow runs",
                file=sys.stderr,
            )
        if failed:
            jobs = "; ".join(f"job {s['num']} ({' '.join(s['overrides'])}): exit {s['code']}" for s in failed)
            print(f"neuronbench: {len(failed)} of {self.jobs} sweep jobs failed: {jobs}", file=sys.stderr)
            raise SystemExit(max(s["code"] for s in failed))  # not an Exception: Hydra lets it through


def validate_jobs(combos: list[list[str]]) -> list[Any]:
    """Compose, validate and check every job's config; their run settings.  Raises :class:`UserError`."""
    from bench.config import check_ready, validate
    from bench.tracking.redact import register_config

    composed = [_compose(combo) for combo in combos]
    for cfg in composed:
        register_config(cfg)  # the values of its key variables and URL userinfo are masked everywhere
    validated = [validate(cfg) for cfg in composed]
    for _settings, parts in validated:
        check_ready(parts)  # API keys set, caches writable, servers up: one line before any job starts
    from bench.tracking.server import check_reachable

    for uri in dict.fromkeys(s.tracking.uri for s, _parts in validated if s.tracking.enabled):
        check_reachable(uri)  # a tracking server that is down: one line naming tracking.uri, before any job
    return [settings for settings, _parts in validated]


def _compose(overrides: list[str]) -> Any:
    """``bench.config.compose`` inside a running Hydra app: it resets Hydra's global state, which the
    running app still needs afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    from bench.config import compose

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    try:
        return compose(overrides)
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def open_parent(settings: list[Any], overrides: list[str]) -> tuple[Any, str] | None:
    """The sweep's MLflow parent (created or found again), or None when jobs track to several stores or
    none: each job is then a run of its own."""
    from bench.run_lock import store_setup_lock
    from bench.tracking.mlflow_sink import open_sweep_parent

    stores = {(s.tracking.uri, s.tracking.experiment, s.tracking.artifact_location) for s in settings}
    tracking = settings[0].tracking
    if not tracking.enabled or len(stores) != 1:
        return None
    with store_setup_lock(tracking.uri):  # a fresh sqlite store: one process migrates it
        run_id = open_sweep_parent(tracking, overrides, swept_keys(overrides))
    OPEN_PARENTS[run_id] = tracking
    return tracking, run_id


def close_parent(tracking: Any, run_id: str, status: str) -> str:
    from bench.tracking.mlflow_sink import close_sweep_parent

    OPEN_PARENTS.pop(run_id, None)
    return close_sweep_parent(tracking, run_id, status)


def close_abandoned_parents() -> None:
    """Parents of sweeps that stopped before their end: KILLED (a re-run of the sweep resumes them)."""
    for run_id, tracking in list(OPEN_PARENTS.items()):
        print(f"MLflow sweep: {close_parent(tracking, run_id, 'KILLED')}")


def hand_to_jobs(config: Any, name: str, value: str) -> None:
    """Set environment variable ``name`` in every job of this sweep, wherever it runs: an override of
    ``hydra.job.env_set`` that launchers apply when they compose each job's config."""
    from omegaconf import read_write

    # Hydra's quoted-string rules: a backslash is literal unless it precedes a quote, "${" or the end.
    escaped = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, value)
    quoted = "'" + escaped.replace("'", "\\'").replace("${", "\\${") + "'"
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{name}={quoted}")


@contextmanager
def _stop_on_user_error() -> Iterator[None]:
    """A user mistake: one line and its exit code (SystemExit passes Hydra's traceback report)."""
    try:
        yield
    except UserError as err:
        from bench.tracking.redact import redact_text

        print(f"neuronbench: {redact_text(str(err))}", file=sys.stderr)  # also outside the CLI's console
        raise SystemExit(err.exit_code) from None
