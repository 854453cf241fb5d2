"""End to end on the real SmolLM2-135M: an SAE the test writes in SAELens format on layer 15's residual
stream, and attention heads -- explained by the token-list baseline, simulated by the lexical proxy
(no LLM), scored by correlation and ablation, logged to MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from saes import write_sae

from bench.cli import run_job
from bench.config import compose

pytestmark = pytest.mark.e2e


def common(tmp_path: Path, store: dict[str, str]) -> list[str]:
    return [
        "units.count=2",
        "units.examples_per_split=2",
        "dataset.n_excerpts=96",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=token_list",
        "simulator=proxy_lexical",
        f"tracking.uri={store['uri']}",
        f"tracking.artifact_location={store['artifacts']}",
        f"output_dir={tmp_path / 'runs'}",
    ]  # cache_dir stays the shared asset cache (SmolLM2's dense copy, the corpus)


@pytest.mark.parametrize("kind", ["sae_latent", "attention_head"])
def test_smollm2_unit_kinds_end_to_end(kind: str, tmp_path: Path, mlflow_store: dict[str, str]) -> None:
    import mlflow

    extra = ["units=attention_head", "units.layers=[15]"]
    if kind == "sae_latent":
        folder = write_sae(tmp_path / "sae", 576, 16 * 576, "blocks.15.hook_resid_post")  # ReLU: random latents fire
        extra = ["units=sae_latent", f"units.sae.path={folder}", "scorer=[correlation,ablation,output_centric]",
                 "scorer.output_centric.similarity=lexical"]  # fmt: skip
    outcome = run_job(compose([*common(tmp_path, mlflow_store), *extra]), progress=False)
    ok = [r for r in outcome.results if r.status == "ok"]
    assert len(outcome.results) == 2 and ok, [r.error for r in outcome.results]
    for r in ok:
        assert r.unit.kind == kind and r.unit.layer == 15
        assert "correlation/top_and_random" in r.scores and "ablation" in r.scores
        for score in r.scores.values():
            assert not math.isnan(score.value) or score.reason
    mlflow.set_tracking_uri(mlflow_store["uri"])
    runs = mlflow.search_runs(experiment_names=["neuronbench"], output_format="list")
    assert runs and runs[0].data.params["units.kind"] == kind and "units/failure_rate" in runs[0].data.metrics
