"""MLflow built for comparison: few readable params and metrics, a parent run per sweep with children
named by their swept choices, a description with the warnings, an experiment that opens on its runs,
artifact locations that move with the store, and re-runs that log nothing twice."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_run

from bench.config import TrackingConfig
from bench.errors import ConfigError
from bench.records import Explanation, Score, UnitId, UnitResult
from bench.tracking.mlflow_sink import (
    MAX_METRICS,
    MAX_PARAMS,
    NOTE_TAG,
    PARENT_TAG,
    MlflowSink,
    child_name,
    ensure_experiment,
    headline_metrics,
    log_artifacts_to_run,
    reader_params,
)

CONFIG = {
    "subject": {"_target_": "x.Subject", "version": 1, "model_id": "smollm2-135m-instruct"},
    "dataset": {"_target_": "x.Data", "version": 2},
    "units": {"version": 1, "layers": [15], "count": 5, "indices": None, "examples_per_split": 5},
    "explainer": {"_target_": "x.E", "name": "smollm2", "version": 1, "llm": {"version": 3, "model": "gpt-4o-mini"}},
    "prompt": {"name": "v1_no_examples", "version": 2, "system": "long text " * 100},
    "simulator": {"_target_": "x.S", "version": 1, "estimator": "prompt_logprobs", "llm": {"model": "m", "version": 1}},
    "scorer": {"correlation": {"version": 1}, "ablation": {"version": 4}},
    "tracking": {"uri": "sqlite:///x.db"},
    "scoring": {"split": "valid", "calibration": "linear"},
    "control": {"enabled": True, "repeats": 1},
    "seed": 0,
    "cache_dir": "/somewhere/private",
}
CHOICES = {
    "subject": "smollm2_135m",
    "dataset": "offline_default",
    "units": "default",
    "explainer": "openai",
    "prompt": "v1_no_examples",
    "simulator": "smollm2_all_at_once",
    "llm@explainer.llm": "openai_gpt4o_mini",
    "llm@simulator.llm": "smollm2",
    "tracking": "local",
}


def test_reader_params_name_every_group_choice_with_its_version_and_stay_few():
    params = reader_params(CONFIG, CHOICES)
    assert len(params) <= MAX_PARAMS
    assert params["prompt"] == "v1_no_examples (v2)"  # the variant's full name, never cut to "v1"
    assert params["explainer"] == "openai (v1)" and params["explainer.llm"] == "gpt-4o-mini (openai_gpt4o_mini v3)"
    assert params["scorer"] == "correlation (v1), ablation (v4)"
    assert params["simulator.llm"] == "m (smollm2 v1)" and params["simulator.estimator"] == "prompt_logprobs"
    # a sweep over explainer x prompt: its two groups are among the first three differing params (sorted)
    assert sorted(params).index("prompt") - sorted(params).index("explainer") == 2
    assert params["units.count"] == "5" and params["units.layers"] == "[15]"
    assert not any("cache" in k or "tracking" in k or "system" in k for k in params)  # no internals
    assert "long text" not in json.dumps(params)


def test_headline_metrics_are_at_most_15_and_lead_with_the_main_score():
    summary = {f"score/s{i}/{f}": 0.1 for i in range(30) for f in ("mean", "ci_low", "ci_high", "n")}
    summary |= {
        "score/correlation/top_and_random/mean": 0.4,
        "score/correlation/top_and_random/ci_low": 0.2,
        "score/correlation/top_and_random/ci_high": 0.6,
        "score/specificity/correlation/top_and_random/mean": 0.3,
        "score/control/correlation/top_and_random/mean": 0.1,
        "score/ablation/simulated/mean": 5.0,
        "score/ablation/mean": math.nan,  # a NaN is never logged as a number
        "units/total": 4.0,
        "units/failure_rate": 0.25,
        "cost/total/dollars": 2.0,
        "cost/backend/simulator/retries": 7.0,
    }
    metrics = headline_metrics(summary)
    assert len(metrics) == MAX_METRICS
    assert list(metrics)[:6] == [
        "score/correlation/top_and_random/mean",
        "score/correlation/top_and_random/ci_low",
        "score/correlation/top_and_random/ci_high",
        "score/specificity/correlation/top_and_random/mean",
        "units/failure_rate",
        "cost/total/dollars_per_unit",
    ]
    assert metrics["cost/total/dollars_per_unit"] == pytest.approx(0.5)
    assert not any(k.endswith(("/n", "/simulated/mean")) or "control" in k or "backend" in k for k in metrics)
    assert "score/ablation/mean" not in metrics


def test_child_names_come_from_the_swept_choices_in_sweep_order():
    task = ["units.count=3", "prompt=v1_no_examples", "explainer=openai"]
    assert child_name(task, ["explainer", "prompt"]) == "explainer=openai,prompt=v1_no_examples"
    assert child_name(task, []) is None


def _tracking(store: dict[str, str], **kw: str) -> TrackingConfig:
    return TrackingConfig(uri=store["uri"], artifact_location=kw.get("artifacts", store["artifacts"]))


def _result(i: int, value: float) -> UnitResult:
    return UnitResult(
        UnitId(15, i),
        "ok",
        explanation=Explanation(text=f"<script>x{i}</script>", explainer="t"),
        scores={"correlation/top_and_random": Score("correlation/top_and_random", value)},
    )


def test_sink_logs_description_with_warnings_units_csv_and_nothing_twice(tmp_path, mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("NB_TEST_API_KEY", "sk-very-secret-value")
    tracking = _tracking(mlflow_store)
    summary = {"units/total": 2.0, "units/ok": 2.0, "units/failed": 0.0, "units/failure_rate": 0.0}
    summary["score/correlation/top_and_random/mean"] = 0.5
    config = CONFIG | {"note": "key sk-very-secret-value"}
    sink = MlflowSink(tracking, tmp_path, "my-run", config, {"git_commit": "abc"}, CHOICES)
    results = [_result(0, 0.25), _result(1, 0.75)]
    for r in results:
        sink.write(r)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>sk-very-secret-value</p>")
    sink.log_artifacts(site, "viewer")  # the hook the viewer uses
    sink.describe(["the simulator does not respond to explanations"])
    sink.close(summary, results)

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "my-run"
    assert "the simulator does not respond to explanations" in run.data.tags[NOTE_TAG]
    assert run.data.metrics == {"score/correlation/top_and_random/mean": 0.5, "units/failure_rate": 0.0}
    artifacts = {a.path for a in client.list_artifacts(sink.run_id)}
    assert {"units.csv", "summary.json", "config.json", "config.yaml", "units", "viewer"} <= artifacts
    table = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/units.csv").splitlines()
    assert table[0].startswith("unit,layer,index") and "correlation/top_and_random" in table[0]
    assert len(table) == 3 and ",0.25," in table[1]
    for path in ("config.yaml", "config.json", "viewer/index.html"):
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{path}")
        assert "sk-very-secret-value" not in text, path

    # The same run folder again (a finished config re-run): nothing is logged a second time.
    again = MlflowSink(tracking, tmp_path, "my-run", config, {"git_commit": "abc"}, CHOICES)
    assert again.finished and again.run_id == sink.run_id
    again.write(results[0])
    again.close(summary, results)
    history = client.get_metric_history(sink.run_id, "score/correlation/top_and_random/mean")
    assert len(history) == 1
    # a command working on the finished run folder later (the viewer) can still add a site to its run
    (site / "page.html").write_text("<p>later sk-very-secret-value</p>")
    assert log_artifacts_to_run(tmp_path, site, "viewer") == sink.run_id
    later = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/viewer/page.html")
    assert later.startswith("<p>later") and "sk-very-secret-value" not in later
    assert "experiments/" in again.url and sink.run_id in again.url


def test_experiment_opens_on_runs_and_a_moved_store_is_refused_not_written_into(tmp_path, mlflow_store):
    import mlflow

    tracking = _tracking(mlflow_store)
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    experiment_id = ensure_experiment(client, tracking)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    elsewhere = _tracking(mlflow_store, artifacts=str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="tracking.artifact_location.*copied or moved store"):
        ensure_experiment(client, elsewhere)


def test_relative_artifact_location_moves_with_a_copied_store(tmp_path, _mlflow_template, monkeypatch):
    import mlflow

    original = tmp_path / "original"
    (original / "mlruns").mkdir(parents=True)
    shutil.copyfile(_mlflow_template, original / "mlruns" / "mlflow.db")
    tracking = TrackingConfig(uri="sqlite:///mlruns/mlflow.db", artifact_location="mlruns/artifacts")
    monkeypatch.chdir(original)
    for run in ("run1", "run2"):
        (original / run).mkdir()
        (tmp_path / "copy" / run).mkdir(parents=True)
    first = MlflowSink(tracking, original / "run1", "one", CONFIG, {}, CHOICES)
    first.close({"units/total": 0.0}, [])
    experiment = mlflow.MlflowClient(tracking_uri=tracking.uri).get_experiment(first.experiment_id)
    assert experiment.artifact_location == "mlruns/artifacts"  # stored relative, not absolute

    copy = tmp_path / "copy"
    shutil.copytree(original / "mlruns", copy / "mlruns")
    before = sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*"))
    monkeypatch.chdir(copy)
    second = MlflowSink(tracking, copy / "run2", "two", CONFIG, {}, CHOICES)
    second.close({"units/total": 0.0}, [])
    assert sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*")) == before
    assert (copy / "mlruns" / "artifacts" / second.run_id / "artifacts" / "units.csv").exists()


# ---------------------------------------------------------------------------------------------------
# A 2x2 sweep through the CLI: one parent, four readable children; re-running it adds nothing
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 6))
    return path


def test_a_2x2_sweep_is_one_parent_with_four_named_children(tmp_path, corpus, mlflow_store, capsys):
    import mlflow

    from bench.cli import main

    subject = save_tiny_subject("llama", tmp_path / "tiny")
    argv = [
        "run",
        "-m",
        "--no-progress",
        "explainer=token_list",
        "explainer.top_n=2,4",
        "prompt=v1,v1_no_examples",
        "simulator=proxy_lexical",
        *tiny_run(subject, corpus),
        f"tracking.uri={mlflow_store['uri']}",
        f"tracking.artifact_location={mlflow_store['artifacts']}",
        f"output_dir={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "MLflow sweep: http://127.0.0.1:5000/#/experiments/" in out and out.count("MLflow run: ") == 4

    client = mlflow.MlflowClient(tracking_uri=mlflow_store["uri"])
    runs = client.search_runs([client.get_experiment_by_name("neuronbench").experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"
    table = mlflow.artifacts.load_text(f"{parents[0].info.artifact_uri}/children.csv").splitlines()
    assert len(table) == 5 and "score/correlation/top_and_random/mean" in table[0]  # the sweep at a glance
    assert {c.data.tags[PARENT_TAG] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_name for c in children} == {
        f"explainer.top_n={n},prompt={p}" for n in (2, 4) for p in ("v1", "v1_no_examples")
    }
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0 < len(child.data.metrics) <= MAX_METRICS and len(child.data.params) <= MAX_PARAMS
        assert "score/correlation/top_and_random/mean" in child.data.metrics
        assert child.data.params["prompt"] in ("v1 (v1)", "v1_no_examples (v1)")
        assert child.data.params["explainer"] == "token_list (v1)"

    # The same sweep again: the same parent, no new runs, no metric logged twice.
    assert main(argv) == 0
    runs_again = client.search_runs([parents[0].info.experiment_id])
    assert {r.info.run_id for r in runs_again} == {r.info.run_id for r in runs}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "units/failure_rate")) == 1


def test_ui_addresses_open_the_model_training_view_and_sweeps_know_their_swept_keys():
    from bench.cli import swept_keys
    from bench.tracking.mlflow_sink import ui_url

    assert ui_url("http://mlflow.lab:5000/", "3", "abc") == (
        "http://mlflow.lab:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    local = ui_url("sqlite:///mlruns/mlflow.db", "1")
    assert local.startswith("http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in local
    assert swept_keys(["explainer=a,b", "units.count=3", "prompt=v1,v1_no_examples", "seed=range(0,2)"]) == [
        "explainer",
        "prompt",
        "seed",
    ]
