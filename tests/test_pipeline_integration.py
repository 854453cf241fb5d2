"""The whole pipeline on tiny in-process GPT-2 and Llama subjects with a fake LLM, logging to MLflow.

Real code paths throughout (Hydra composition, validation, TransformersSubject from a local folder,
text-file corpus, streaming mining, all-at-once simulation, correlation + ablation scorers, JSONL and
MLflow sinks); only the LLM is a fake and the models are tiny.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject

from bench.cli import run_job
from bench.config import compose

FAKE_LLM = ["~simulator.llm", "+simulator.llm={_target_:bench.llm.fake.FakeLLM}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 6))
    return path


def overrides(tmp: Path, subject: Path, corpus: Path, store: dict[str, str], *extra: str) -> list[str]:
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=16",
        "units.layers=[1]",
        "units.count=3",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=token_list",
        "simulator=smollm2_all_at_once",
        *FAKE_LLM,
        "scorer=[correlation,ablation]",
        f"tracking.uri={store['uri']}",
        f"tracking.artifact_location={store['artifacts']}",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pipeline_end_to_end_on_tiny_subject(family, tmp_path, corpus, mlflow_store):
    import mlflow

    subject = save_tiny_subject(family, tmp_path / f"tiny-{family}")
    cfg = compose(overrides(tmp_path, subject, corpus, mlflow_store))
    outcome = run_job(cfg, progress=False)

    assert len(outcome.results) == 3
    ok = [r for r in outcome.results if r.status == "ok"]
    assert ok, [r.error for r in outcome.results]
    for r in ok:
        assert r.simulation.estimator == "all_at_once/prompt_logprobs_exact"
        record = r.extras["estimator"]  # estimator, k and unreadable rate: in every result
        assert record["estimator"] == r.simulation.estimator and record["top_k"] is None
        assert record["tokens"] > 0 and record["unparsed_rate"] == record["unparsed_tokens"] / record["tokens"]
        assert r.explanation.explainer == "token_list"
        assert {"correlation/top_and_random", "correlation/top_only", "correlation/random_only"} <= set(r.scores)
        assert "ablation" in r.scores and "control/correlation/top_and_random" in r.scores
        for score in r.scores.values():
            assert not math.isnan(score.value) or score.reason, score  # NaN always comes with a reason
        prov = r.extras["provenance"]["subject"]
        assert prov["family"] == family and prov["dtype"] == "float32" and prov["hook_site"]
    assert outcome.summary["units/total"] == 3

    run_dir = next((tmp_path / "runs").iterdir())
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3
    mlflow.set_tracking_uri(mlflow_store["uri"])
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    summary = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/summary.json")  # every aggregate
    assert summary["score/correlation/top_and_random/n"] + summary["score/correlation/top_and_random/n_nan"] == len(ok)
    assert "score/ablation/n" in summary and "cost/simulator/calls" in summary
    assert summary["units/total"] == 3 and run.data.metrics["units/failure_rate"] == summary["units/failure_rate"]
    assert run.data.params["units.count"] == "3"
    assert run.data.tags["git_commit"] and run.data.tags["version/torch"].startswith("2.13")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"results.jsonl", "summary.json", "units.csv", "config.json", "units"} <= artifacts


def test_interrupted_run_resumes_without_redoing_finished_units(tmp_path, corpus, mlflow_store):
    subject = save_tiny_subject("llama", tmp_path / "tiny")
    cfg = compose(overrides(tmp_path, subject, corpus, mlflow_store))
    first = run_job(cfg, progress=False)
    run_dir = next((tmp_path / "runs").iterdir())
    results = run_dir / "results.jsonl"
    lines = results.read_text().splitlines()
    explanations_before = (run_dir / "explanations.jsonl").read_text()
    # Simulate a crash: the last unit's line was torn mid-write.
    results.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    second = run_job(compose(overrides(tmp_path, subject, corpus, mlflow_store)), progress=False)
    after = results.read_text().splitlines()
    assert [json.loads(x)["unit"] for x in after[:2]] == [json.loads(x)["unit"] for x in lines[:2]]
    assert json.loads(after[-1])["unit"] == json.loads(lines[2])["unit"]  # only the torn unit was redone
    assert (run_dir / "explanations.jsonl").read_text() == explanations_before  # nothing re-explained
    assert len(second.results) == 3
    assert {r.unit.key for r in second.results} == {r.unit.key for r in first.results}
    run_ids = {json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]}
    assert len(run_ids) == 1


def test_failures_are_counted_and_kept(tmp_path, corpus, mlflow_store):
    """An explainer that fails on every unit: units are failed with stage and reason, not zeros."""
    subject = save_tiny_subject("gpt2", tmp_path / "tiny")
    extra = [
        "explainer=smollm2",
        "~explainer.llm",
        "+explainer.llm={_target_:bench.llm.fake.FakeLLM,responses:['']}",
    ]
    from bench.errors import RunFailed

    with pytest.raises(RunFailed, match="3 of 3 units failed") as info:  # exit code 1, not a silent 0
        run_job(compose(overrides(tmp_path, subject, corpus, mlflow_store, *extra)), progress=False)
    assert info.value.exit_code == 1
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())  # the results are kept all the same
    assert summary["units/failed"] == 3 and summary["units/failure_rate"] == 1.0
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 3 and all(r["stage"] == "explain" and r["error"] for r in results)
    assert not any(k.startswith("score/") for k in summary)


def test_a_failing_scorer_is_a_nan_with_reason_and_the_others_still_score(tmp_path, corpus, mlflow_store):
    """Ablation cannot run without token ids: its score is NaN with the reason, correlation still scores."""
    from bench.pipeline import run_scorer
    from bench.protocols import ScoringContext
    from bench.records import ActivationRecord, Explanation, UnitId, UnitRecord, UnitStats
    from bench.scorers.ablation import AblationScorer

    rec = ActivationRecord(["a", "b"], [1.0, 2.0])  # no token ids
    ctx = ScoringContext(
        unit=UnitRecord(UnitId(0, 0), [rec], [], UnitStats(1, 0.0, 1.0, 0.0, 0.0)),
        explanation=Explanation("x", "t"),
        scoring_top=[],
        scoring_random=[],
        scoring_records=[rec],
        calibrator=lambda x: x,
        subject=object(),
    )
    extras: dict = {}
    scores = run_scorer(AblationScorer(), ctx, extras)
    assert math.isnan(scores["ablation"].value) and scores["ablation"].reason.startswith("scorer failed")
    assert "ablation" in extras["scorer_errors"]


def test_units_in_flight_give_the_same_results_and_resume_the_same_run(tmp_path, corpus, mlflow_store):
    subject = save_tiny_subject("gpt2", tmp_path / "tiny")
    serial = run_job(
        compose(overrides(tmp_path / "a", subject, corpus, mlflow_store, "engine.units_in_flight=1")), progress=False
    )
    parallel = run_job(
        compose(overrides(tmp_path / "b", subject, corpus, mlflow_store, "engine.units_in_flight=3")), progress=False
    )
    assert [r.unit.key for r in serial.results] == [r.unit.key for r in parallel.results]
    for a, b in zip(serial.results, parallel.results, strict=True):
        assert a.explanation.text == b.explanation.text
        assert {k: v.value for k, v in a.scores.items()} == pytest.approx(
            {k: v.value for k, v in b.scores.items()}, nan_ok=True
        )
    assert serial.summary == pytest.approx(parallel.summary, nan_ok=True)
    # engine.units_in_flight does not change the run's identity: same folder name
    assert [p.name for p in (tmp_path / "a" / "runs").iterdir()] == [
        p.name for p in (tmp_path / "b" / "runs").iterdir()
    ]


def test_a_missing_layer_is_a_one_line_error_before_any_run_folder(tmp_path, corpus, mlflow_store):
    from bench.errors import UserError

    subject = save_tiny_subject("llama", tmp_path / "tiny")
    cfg = compose(overrides(tmp_path, subject, corpus, mlflow_store, "units.layers=[5]"))
    with pytest.raises(UserError, match=r"units.layers.*layer 5 out of range.*2 layers \(0\.\.1\)"):
        run_job(cfg, progress=False)
    assert not (tmp_path / "runs").exists()
