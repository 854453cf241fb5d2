"""The whole pipeline with every scorer side by side and a best-of-k explainer (tiny subject, fake LLMs)."""

from __future__ import annotations

import json
import math

from conftest_models import save_tiny_subject
from test_pipeline_integration import corpus, overrides  # noqa: F401 - corpus is a fixture

from bench.cli import run_job
from bench.config import compose

FAKE = "{_target_:bench.llm.fake.FakeLLM}"
SCORERS = "scorer=[correlation,ablation,detection,fuzzing,embedding,output_centric,judge_noise]"


def test_all_scorers_side_by_side_with_best_of_k(tmp_path, corpus, mlflow_store):  # noqa: F811
    subject = save_tiny_subject("gpt2", tmp_path / "tiny")
    extra = [
        SCORERS,
        "~scorer.detection.llm", f"+scorer.detection.llm={FAKE}",
        "~scorer.fuzzing.llm", f"+scorer.fuzzing.llm={FAKE}",
        "scorer.detection.negatives=split_random",  # a random tiny model has no low-maximum excerpts
        "explainer=smollm2_best_of_k", "explainer.k=2",
        "~explainer.explainer.llm",
        "+explainer.explainer.llm={_target_:bench.llm.fake.FakeLLM,responses:['the letter e','words like the']}",
    ]  # fmt: skip
    outcome = run_job(compose(overrides(tmp_path, subject, corpus, mlflow_store, *extra)), progress=False)
    ok = [r for r in outcome.results if r.status == "ok"]
    assert ok, [r.error for r in outcome.results]
    for r in ok:
        for prefix in ("detection/auc", "fuzzing/auc", "embedding/auc", "output_centric/boost/lexical",
                       "judge_noise/std", "ablation", "correlation/top_and_random"):  # fmt: skip
            assert prefix in r.scores, prefix
        for score in r.scores.values():
            assert not math.isnan(score.value) or score.reason, score
        assert {"detection", "fuzzing", "embedding", "output_centric", "judge_noise"} <= set(r.extras["scorers"])
        meta = r.explanation.meta["best_of_k"]
        assert len(meta["candidates"]) == 2 and r.explanation.explainer == "smollm2_best_of_k"
    s = outcome.summary
    for name in (
        "detection/accuracy",
        "fuzzing/auc",
        "embedding/similarity_gap",
        "output_centric/projection/embedding",
    ):
        assert f"score/{name}/ci_low" in s and f"score/{name}/failure_rate" in s
    assert s["cost/scorer/detection/calls"] > 0 and s["cost/explainer/calls"] > 0
    run_dir = next((tmp_path / "runs").iterdir())
    matrix = json.loads((run_dir / "score_correlations.json").read_text())
    assert "detection/auc" in matrix["scores"] and len(matrix["rho"]) == len(matrix["scores"])
