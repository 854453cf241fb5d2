"""MLflow mirror of a run, built for comparing runs at a glance.

What a reader sees in the UI is chosen, not dumped:

* **params** (<= 25): the choice of every config group with its version (``prompt = v1_no_examples (v1)``)
  and the few settings a reader needs (models, estimator, layers, unit count, split ...); the full
  resolved config is the ``config.yaml`` / ``config.json`` artifact.
* **metrics** (<= 15): the headline scores' means and CI bounds, specificity, failure rate and $ per
  unit; every aggregate is in the ``summary.json`` artifact and the per-unit table in ``units.csv``.
* the run **description** carries the run's warnings (e.g. a simulator that ignores explanations).
* a sweep is one **parent** run with one **child** per job, named by its swept choices
  (``explainer=openai,prompt=v1_no_examples``); see :func:`open_sweep_parent`.

The run id is kept in the run folder, so a resumed run continues the same MLflow run; a run that
already FINISHED is left alone, so re-running a finished config logs nothing twice.  Everything
logged passes through :func:`bench.tracking.redact.redact` at this boundary.

On a tracking *server* the mirror may go away mid-run: the sink warns once and stops mirroring
(``results.jsonl`` keeps everything); ``neuronbench sync RUN_DIR`` (:mod:`bench.tracking.sync`) completes
it from what ``mlflow_run.json`` records (run id, name, parent, choices, tags, warnings).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.aggregate import SCORE_CORRELATIONS
from bench.config import TrackingConfig
from bench.errors import ConfigError, UserError
from bench.records import UnitResult
from bench.state_files import DamagedFile, json_object, sqlite_damage, sqlite_problem
from bench.tracking.redact import redact, redact_text
from bench.tracking.server import is_server, server_gone
from bench.unit_table import units_csv

log = logging.getLogger(__name__)

MAX_PARAMS = 25
MAX_METRICS = 15
MAX_PARAM_CHARS = 500
DB_FIX = (
    "move it away and re-run (this run folder's results are kept; MLflow starts a new store), or run with tracking=none"
)
RUN_ID_FIX = (
    "delete it and re-run: results.jsonl is kept, and a new MLflow run gets the summary and results.jsonl "
    "(per-unit artifacts only for units finished from then on)"
)
# The UI opens an experiment on its runs (not the GenAI traces page) when it is tagged as model development
# (MLflow 3.17's UI also has a GenAI / model-training switch: the printed addresses set it, see UI_VIEW).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
SWEEP_KEY_TAG = "neuronbench.sweep_key"
PARENT_KEEP_TAGS = (SWEEP_KEY_TAG, NOTE_TAG, "neuronbench.sweep_overrides")  # what sync re-creates a parent with
PARENT_TAG = "mlflow.parentRunId"
UI_PORT = 5000
UI_VIEW = "?workflowType=machine_learning"

# Headline metrics in priority order; the first MAX_METRICS present are logged.  Names are the
# summary's own keys, so the leaderboard and the UI agree.
_MAIN = "score/correlation/top_and_random"
_SPEC = "score/specificity/correlation/top_and_random"
HEADLINE_FIRST = (
    f"{_MAIN}/mean",
    f"{_MAIN}/ci_low",
    f"{_MAIN}/ci_high",
    f"{_SPEC}/mean",
    "units/failure_rate",
    "cost/total/dollars_per_unit",
    "score/ablation/mean",
    "score/ablation/ci_low",
    "score/ablation/ci_high",
    f"{_SPEC}/ci_low",
    f"{_SPEC}/ci_high",
)
# ... then other scores' means in this order, then any remaining score mean alphabetically.
HEADLINE_MEANS = (
    "detection",
    "fuzzing",
    "embedding",
    "output_centric",
    "explained_variance",
    "rsquared",
    "correlation/top_only",
    "correlation/random_only",
)
_DETAIL_SUFFIXES = ("/simulated", "/mean_ablated")


def headline_metrics(summary: Mapping[str, float]) -> dict[str, float]:
    """At most :data:`MAX_METRICS` finite metrics a reader compares runs by (see :data:`HEADLINE_FIRST`)."""
    values = dict(summary)
    total = values.get("units/total", 0.0)
    if "cost/total/dollars" in values and total:
        values["cost/total/dollars_per_unit"] = values["cost/total/dollars"] / total
    means = [f"score/{n}/mean" for n in HEADLINE_MEANS]
    rest = sorted(
        k
        for k in values
        if k.startswith("score/")
        and k.endswith("/mean")
        and not k.startswith("score/control/")
        and not k.removesuffix("/mean").endswith(_DETAIL_SUFFIXES)
    )
    out: dict[str, float] = {}
    for key in dict.fromkeys([*HEADLINE_FIRST, *means, *rest]):
        value = values.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = float(value)
        if len(out) == MAX_METRICS:
            break
    return out


# ---------------------------------------------------------------------------------------------------
# Params: group choices with versions + the settings a reader needs
# ---------------------------------------------------------------------------------------------------
GROUPS = ("subject", "dataset", "units", "explainer", "prompt", "simulator", "scorer")


def _versioned(choice: str, node: Any) -> str:
    version = node.get("version") if isinstance(node, dict) else None
    return f"{choice} (v{version})" if version is not None else choice


def _llm_node(node: Any) -> dict[str, Any] | None:
    """The LLM backend of a component, or of the component it wraps (best-of-k)."""
    if not isinstance(node, dict):
        return None
    llm = node.get("llm")
    if isinstance(llm, dict):
        return llm
    return _llm_node(node.get("explainer"))


def reader_params(config: Mapping[str, Any], choices: Mapping[str, str]) -> dict[str, str]:
    """The params a reader compares runs by (<= :data:`MAX_PARAMS`), from the resolved config.

    ``choices`` are Hydra's group choices (``{"explainer": "openai", "llm@simulator.llm": ...}``);
    without them (a config built by hand) a component's ``name`` stands in for its choice.
    """
    params: dict[str, Any] = {}
    for group in GROUPS:
        node = config.get(group)
        if group == "scorer":
            if isinstance(node, dict) and node:
                params["scorer"] = ", ".join(_versioned(name, sub) for name, sub in node.items())
            continue
        if node is None:
            continue
        choice = choices.get(group) or (node.get("name") if isinstance(node, dict) else None) or "?"
        params[group] = _versioned(str(choice), node)
    # One param per role's LLM, model and preset together ("gpt-4o-mini (openai_gpt4o_mini v1)"): named so it
    # sorts right after its role, and a sweep's group params stay among the first the compare view plots.
    for role in ("explainer", "simulator"):
        llm = _llm_node(config.get(role))
        if llm is not None:
            model = llm.get("model") or llm.get("model_id") or "?"
            choice = choices.get(f"llm@{role}.llm")
            version = f" v{llm['version']}" if llm.get("version") is not None else ""
            params[f"{role}.llm"] = f"{model} ({choice}{version})" if choice else str(model)
    for key, choice in choices.items():  # other presets pulled into a package (a judge's llm ...)
        package = key.split("@", 1)[1] if "@" in key else None
        if package and package not in params and not key.startswith("hydra/"):
            head, _, tail = package.partition(".")
            node = config.get(head, {}).get(tail) if isinstance(config.get(head), dict) else None
            params[package] = _versioned(str(choice), node)
    subject = config.get("subject") or {}
    params["subject.model"] = subject.get("model_id") or subject.get("model")
    simulator = config.get("simulator") or {}
    params["simulator.estimator"] = simulator.get("estimator")
    units = config.get("units") or {}
    params["units.kind"] = units.get("kind")  # neurons, SAE latents, heads, synthetic: never compared blindly
    params["units.layers"] = units.get("layers")
    if units.get("indices") is not None:
        params["units.indices"] = units.get("indices")
    else:
        params["units.count"] = units.get("count")
    params["units.examples_per_split"] = units.get("examples_per_split")
    scoring = config.get("scoring") or {}
    params["scoring.split"] = scoring.get("split")
    params["scoring.calibration"] = scoring.get("calibration")
    control = config.get("control") or {}
    params["control"] = f"x{control.get('repeats', 1)}" if control.get("enabled", True) else "off"
    params["seed"] = config.get("seed")
    out = {k: _param_value(v) for k, v in params.items() if v is not None}
    return dict(list(out.items())[:MAX_PARAMS])


def _param_value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 20] + " ...(see config.yaml)"


# ---------------------------------------------------------------------------------------------------
# Store, experiment and UI address
# ---------------------------------------------------------------------------------------------------
def client_for(tracking: TrackingConfig) -> Any:
    from mlflow import MlflowClient

    if tracking.uri and tracking.uri.startswith("sqlite:///"):
        path = Path(tracking.uri.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_tracking_db(path)  # a garbage or truncated store: one line naming it, before MLflow opens it
    return MlflowClient(tracking_uri=tracking.uri)


def _as_path(location: str) -> Path:
    """A local artifact location (relative path, absolute path or file:// URI) as an absolute path."""
    parsed = urllib.parse.urlparse(location)
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else location
    return Path(path).resolve()


def check_tracking_db(path: Path) -> None:
    """A garbage or truncated ``mlflow.db`` is one line naming it, before MLflow opens it."""
    problem = sqlite_problem(path)
    if problem is not None:
        raise UserError(f"tracking database {path} is damaged ({problem}); {DB_FIX}")


def stored_run_id(id_file: Path) -> str:
    """The MLflow run id kept in ``mlflow_run.json`` (so a resumed run continues its MLflow run)."""
    run_id = json_object(id_file, RUN_ID_FIX).get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise DamagedFile(id_file, "no 'run_id' string", RUN_ID_FIX)
    return run_id


def checked_experiment(client: Any, tracking: TrackingConfig) -> str:
    """:func:`ensure_experiment`, with a store that turns out damaged at first use as one line naming it."""
    try:
        return ensure_experiment(client, tracking)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - only a damaged database becomes a one-line error
        if sqlite_damage(err) is None:
            raise
        raise UserError(f"tracking database {tracking.uri} is damaged ({sqlite_damage(err)}); {DB_FIX}") from None


def _is_local(location: str) -> bool:
    scheme = urllib.parse.urlparse(location).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "" / file:// / a Windows drive letter


def ensure_experiment(client: Any, tracking: TrackingConfig) -> str:
    """The experiment's id, created if needed: set up to open on its runs, with its artifact location
    stored *as configured* -- a relative ``tracking.artifact_location`` stays relative (to the working
    directory, like the default ``sqlite:///mlruns/mlflow.db``), so a moved or copied ``mlruns/`` writes
    into itself, never into the original.  An existing experiment whose artifacts live elsewhere than
    configured (a store copied with absolute paths) is refused with one line."""
    experiment = client.get_experiment_by_name(tracking.experiment)
    configured = tracking.artifact_location
    if experiment is None:
        location = Path(configured).resolve().as_uri() if configured else None
        experiment_id = client.create_experiment(tracking.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
        if configured and not Path(configured).is_absolute():
            _store_relative_location(tracking, experiment_id, Path(configured).as_posix())
        return experiment_id
    if configured and _is_local(experiment.artifact_location) and _is_local(configured):
        if _as_path(experiment.artifact_location) != _as_path(configured):
            raise ConfigError(
                "tracking.artifact_location",
                f"experiment {tracking.experiment!r} in {tracking.uri} keeps its artifacts in "
                f"{experiment.artifact_location}, not {configured} (a copied or moved store?); set "
                f"tracking.artifact_location to that folder or pick a new tracking.experiment",
            )
    if experiment.tags.get("mlflow.experimentKind") is None:
        client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return experiment.experiment_id


def _store_relative_location(tracking: TrackingConfig, experiment_id: str, location: str) -> None:
    """MLflow resolves every local artifact location to an absolute path on creation; a SQL store is
    given back the relative form, from which MLflow derives each run's (then relative) artifact URI."""
    if tracking.uri is None or not tracking.uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(tracking.uri)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE experiments SET artifact_location = :loc WHERE experiment_id = :id"),
                {"loc": location, "id": int(experiment_id)},
            )
    finally:
        engine.dispose()


def ui_url(tracking_uri: str | None, experiment_id: str, run_id: str | None = None) -> str:
    """Where the MLflow UI shows an experiment (or one run): the server itself, or a local ``mlflow ui``."""
    base = tracking_uri.rstrip("/") if tracking_uri and tracking_uri.startswith("http") else None
    address = base or f"http://127.0.0.1:{UI_PORT}"
    # MLflow 3's UI picks GenAI (traces) or model-training pages from this switch, not the experiment tag
    url = f"{address}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + UI_VIEW
    if base:
        return url
    return f"{url}  (start the UI first: mlflow ui --backend-store-uri {tracking_uri} --port {UI_PORT})"


# ---------------------------------------------------------------------------------------------------
# Sweeps: one parent run, one child per job
# ---------------------------------------------------------------------------------------------------
def child_name(job_overrides: Sequence[str], swept: Sequence[str]) -> str | None:
    """``explainer=openai,prompt=v1_no_examples``: this job's values of the swept keys, in sweep order."""
    values = {}
    for override in job_overrides:
        key, sep, value = override.partition("=")
        if sep:
            values[key.lstrip("+~")] = value
    parts = [f"{key}={values[key]}" for key in swept if key in values]
    return ",".join(parts) or None


def open_sweep_parent(tracking: TrackingConfig, overrides: Sequence[str], swept: Sequence[str]) -> str:
    """The parent run of a sweep (created, or found again when the same sweep is re-run): its id.

    A sweep is identified by its experiment and overrides, so re-running the same ``-m`` command
    groups the resumed children under the same parent."""
    import hashlib

    client = client_for(tracking)
    experiment_id = checked_experiment(client, tracking)
    key = hashlib.sha256(json.dumps([tracking.experiment, sorted(overrides)]).encode()).hexdigest()[:16]
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    fixed = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in swept]
    name = "sweep " + " x ".join(swept)
    note = "Sweep over " + ", ".join(f"`{o}`" for o in overrides if o not in fixed)
    if fixed:
        note += "; fixed: " + ", ".join(f"`{o}`" for o in fixed)
    tags = {SWEEP_KEY_TAG: key, NOTE_TAG: note, "neuronbench.sweep_overrides": " ".join(overrides)}
    run = client.create_run(experiment_id, run_name=name, tags=redact(tags))
    return run.info.run_id


def close_sweep_parent(tracking: TrackingConfig, run_id: str, status: str = "FINISHED") -> str:
    """End the parent run (FINISHED, FAILED or KILLED); return its UI address (with a note instead when
    the tracking server went away: the jobs' results are in their run folders either way)."""
    try:
        return _close_sweep_parent(tracking, run_id, status)
    except Exception as err:
        if not (is_server(tracking.uri) and server_gone(err)):
            raise
        return (
            f"parent run {run_id} not closed: the tracking server at {redact_text(tracking.uri or '')} is "
            "unreachable; results are in the run folders (neuronbench sync RUN_DIR ... mirrors them)"
        )


def _close_sweep_parent(tracking: TrackingConfig, run_id: str, status: str) -> str:
    client = client_for(tracking)
    experiment_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'", max_results=1000)
    if children:
        client.log_text(run_id, children_csv(children), "children.csv")
    client.set_terminated(run_id, status=status)
    return ui_url(tracking.uri, experiment_id, run_id)


def children_csv(children: Sequence[Any]) -> str:
    """The sweep at a glance: one row per child run (name, status, its headline metrics)."""
    import csv
    import io

    metrics = sorted({k for c in children for k in c.data.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "status", "run_id", *metrics])
    for c in sorted(children, key=lambda c: c.info.run_name or ""):
        values = [c.data.metrics.get(k, "") for k in metrics]
        writer.writerow([c.info.run_name, c.info.status, c.info.run_id, *values])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# The sink
# ---------------------------------------------------------------------------------------------------
ID_FILE = "mlflow_run.json"


class MlflowSink:
    def __init__(
        self,
        tracking: TrackingConfig,
        run_dir: Path,
        run_name: str,
        config: dict[str, Any],
        tags: dict[str, str],
        choices: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.tracking = tracking
        self.run_dir = run_dir
        self.warnings: list[str] = []
        self.lost: str | None = None  # why mirroring stopped (the tracking server went away), or None
        try:
            self._open(run_name, config, tags, choices, parent_run_id)
        except Exception as err:
            if not (is_server(tracking.uri) and server_gone(err)):
                raise
            raise ConfigError(  # before any work: the same one line as a server down at start
                "tracking.uri",
                f"the MLflow tracking server at {redact_text(tracking.uri or '')} failed ({type(err).__name__}); "
                "check the server and re-run, or run with tracking=none",
            ) from None

    def _open(
        self,
        run_name: str,
        config: dict[str, Any],
        tags: dict[str, str],
        choices: Mapping[str, str] | None,
        parent_run_id: str | None,
    ) -> None:
        tracking, run_dir = self.tracking, self.run_dir
        self.client = client_for(tracking)
        self.experiment_id = checked_experiment(self.client, tracking)
        id_file = run_dir / ID_FILE
        run_id = stored_run_id(id_file) if id_file.exists() else None
        previous = None
        if run_id is not None:
            try:
                previous = self.client.get_run(run_id)
            except Exception as err:  # noqa: BLE001 - the store was wiped or is another one: start afresh
                if is_server(tracking.uri) and server_gone(err):
                    raise
                previous = None
        # A FINISHED run already holds everything: re-running its config logs nothing twice.
        self.finished = previous is not None and previous.info.status == "FINISHED"
        if previous is not None:
            self.run_id = previous.info.run_id
            if not self.finished:
                self.client.update_run(self.run_id, status="RUNNING")
            return
        safe_config = redact(config)
        run_tags = dict(redact(tags))
        if parent_run_id:
            run_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        self.run_id = run.info.run_id
        # What `neuronbench sync` needs to re-create this run elsewhere, identically (all redacted).
        record = {
            "run_id": self.run_id,
            "tracking_uri": redact_text(tracking.uri or ""),
            "experiment": tracking.experiment,
            "run_name": redact_text(run_name),
            "parent_run_id": parent_run_id,
            "choices": dict(redact(dict(choices or {}))),
            "tags": dict(redact(tags)),
        }
        if parent_run_id:  # enough to find or re-create the sweep's parent on a store that lost it (sync)
            parent = self.client.get_run(parent_run_id)
            kept = {k: v for k, v in parent.data.tags.items() if k in PARENT_KEEP_TAGS}
            record["parent"] = {"run_name": parent.info.run_name, "tags": redact(kept)}
        id_file.write_text(json.dumps(record))
        self._log_params(redact(reader_params(safe_config, choices or {})))
        self.client.log_dict(self.run_id, safe_config, "config.json")
        self.client.log_text(self.run_id, _yaml(safe_config), "config.yaml")

    @property
    def url(self) -> str:
        return ui_url(self.tracking.uri, self.experiment_id, self.run_id)

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def _mirror(self, action: Callable[[], None]) -> None:
        """Run one logging action; a tracking server that went away stops the mirror with one warning
        (the run goes on: results.jsonl holds everything, ``neuronbench sync`` completes the mirror)."""
        if self.lost is not None:
            return
        try:
            action()
        except Exception as err:
            if not (is_server(self.tracking.uri) and server_gone(err)):
                raise
            self.lost = redact_text(f"{type(err).__name__}: {err}")[:300]
            log.warning(
                "MLflow server at %s went away (%s); mirroring stops for this run, results.jsonl keeps every "
                "result. When the server is back: neuronbench sync %s",
                redact_text(self.tracking.uri or ""),
                self.lost,
                self.run_dir,
            )

    def write(self, result: UnitResult) -> None:
        if self.finished:
            return
        safe = redact(result.to_json())
        self._mirror(lambda: self.client.log_dict(self.run_id, safe, unit_artifact(result.unit.key)))

    def describe(self, warnings: Sequence[str]) -> None:
        """Warnings to show in the run's description (set when the run closes; kept in the run folder
        too, so ``neuronbench sync`` writes the same description)."""
        self.warnings = list(warnings)
        remember_warnings(self.run_dir, self.warnings)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Log a folder (e.g. a viewer site) under the run, every text file redacted on the way.  Also on a
        finished run: an artifact written again replaces the old copy, nothing accumulates."""
        self._mirror(lambda: _log_redacted_dir(self.client, self.run_id, Path(local_dir), artifact_path))

    def abort(self) -> None:
        """An interrupted or crashed run: mark it KILLED; re-running the command resumes it."""
        if not self.finished:
            self._mirror(lambda: self.client.set_terminated(self.run_id, status="KILLED"))

    def close(self, summary: dict[str, float], results: list[UnitResult]) -> None:
        if self.finished:
            return
        self._mirror(lambda: complete_run(self.client, self.run_id, self.run_dir, summary, results, self.warnings))


def unit_artifact(key: str) -> str:
    """Where a unit's result lives in its MLflow run."""
    return f"units/{key.replace('/', '_')}.json"


def remember_warnings(run_dir: Path, warnings: Sequence[str]) -> None:
    """Keep the run's warnings in ``mlflow_run.json`` (for the description ``neuronbench sync`` writes)."""
    id_file = Path(run_dir) / ID_FILE
    if not id_file.exists():
        return
    try:
        record = json.loads(id_file.read_text())
    except ValueError:
        return  # a damaged file is reported where it is read (stored_run_id), not here
    if isinstance(record, dict):
        record["warnings"] = [redact_text(w) for w in warnings]
        id_file.write_text(json.dumps(record))


def complete_run(
    client: Any,
    run_id: str,
    run_dir: Path,
    summary: Mapping[str, float],
    results: Sequence[UnitResult],
    warnings: Sequence[str],
) -> None:
    """Log a finished run's headline metrics, description and files, then mark it FINISHED.  Safe to
    repeat (the sink's close, then ``neuronbench sync``): a metric already logged with this value is not
    logged again, and artifacts written again replace their old copies."""
    from mlflow.entities import Metric, RunTag

    logged = client.get_run(run_id).data.metrics
    headline = headline_metrics(summary)
    fresh = {k: v for k, v in headline.items() if logged.get(k) != v}  # a crash inside close: no repeats
    now = _now_ms()
    tags = [RunTag(NOTE_TAG, redact(description(summary, warnings, run_dir)))]
    nan_keys = sorted(k for k, v in summary.items() if isinstance(v, float) and math.isnan(v))
    if nan_keys:
        tags.append(RunTag("metrics_nan", ", ".join(nan_keys)[:5000]))
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in fresh.items()], tags=tags)
    client.log_dict(run_id, {k: (None if v != v else v) for k, v in summary.items()}, "summary.json")
    for name in ("results.jsonl", "explanations.jsonl", *SCORE_CORRELATIONS):
        path = run_dir / name
        if path.exists():
            client.log_text(run_id, redact(path.read_text()), name)
    client.log_text(run_id, redact(units_csv(list(results))), "units.csv")
    client.set_terminated(run_id, status="FINISHED")


def log_artifacts_to_run(run_dir: Path, local_dir: Path, artifact_path: str | None = None) -> str | None:
    """Log a folder into the MLflow run of a finished run folder (its ``mlflow_run.json``), redacted; for
    commands that work on a run after it ended (a viewer site ...).  The run's id, or None when the run
    folder was not tracked."""
    from mlflow import MlflowClient

    id_file = Path(run_dir) / "mlflow_run.json"
    if not id_file.exists():
        return None
    ids = json.loads(id_file.read_text())
    client = MlflowClient(tracking_uri=ids.get("tracking_uri"))
    _log_redacted_dir(client, ids["run_id"], Path(local_dir), artifact_path)
    return ids["run_id"]


def _log_redacted_dir(client: Any, run_id: str, local_dir: Path, artifact_path: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for src in local_dir.rglob("*"):
            if not src.is_file():
                continue
            dst = Path(tmp) / src.relative_to(local_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                dst.write_text(redact(src.read_text()))
            except UnicodeDecodeError:
                dst.write_bytes(src.read_bytes())
        client.log_artifacts(run_id, tmp, artifact_path)


def description(summary: Mapping[str, float], warnings: Sequence[str], run_dir: Path) -> str:
    """The run's description (markdown): warnings first, then units and where the results live."""
    lines = [f"**Warning:** {w}" for w in warnings]
    ok, failed = int(summary.get("units/ok", 0)), int(summary.get("units/failed", 0))
    lines.append(f"{ok} units scored, {failed} failed. Results folder: `{run_dir}`.")
    lines.append("All aggregates: `summary.json`; every unit and score: `units.csv`; full config: `config.yaml`.")
    return "\n\n".join(lines)


def units_table(results: list[UnitResult]) -> str:
    """Kept for callers of the old name: the per-unit CSV (:func:`bench.unit_table.units_csv`)."""
    return units_csv(results)


def _yaml(config: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config))


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
