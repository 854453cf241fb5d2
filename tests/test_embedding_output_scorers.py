"""The embedding scorer (offline MiniLM) and the output-centric scorer (tiny in-process GPT-2, Llama and
GPT-NeoX whose unit is wired to promote one known token)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest_models import tiny_model, tiny_tokenizer
from test_judge_scorers import context

from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Explanation, UnitId, UnitRecord, UnitStats
from bench.scorers.embedding import EmbeddingScorer, focus_text
from bench.scorers.output_centric import (
    OutputCentricScorer,
    down_projection,
    named_fraction,
    output_direction,
    projection_logits,
)

SITES = {
    "gpt2": "transformer.h.{layer}.mlp.act:output",
    "llama": "model.layers.{layer}.mlp.down_proj:input",
    "gpt_neox": "gpt_neox.layers.{layer}.mlp.act:output",
}


# --- embedding -------------------------------------------------------------------------------------
def test_focus_text_centres_on_the_strongest_token() -> None:
    r = ActivationRecord([" a", " b", " c", " d", " e"], [0, 0, 0, 5, 0])
    assert focus_text(r, 1) == "c d e"
    assert focus_text(r, None) == "a b c d e"


def test_embedding_scorer_prefers_the_right_explanation() -> None:
    right = context(text="cats, kittens and other felines")
    s = EmbeddingScorer().score(right)
    assert s["embedding/balanced_n"].value == 8
    assert s["embedding/auc"].value >= 0.9 and s["embedding/similarity_gap"].value > 0
    wrong = context(text="numbers, dates and years")
    w = EmbeddingScorer().score(wrong)
    assert w["embedding/similarity_gap"].value < s["embedding/similarity_gap"].value
    d = right.details["embedding"]
    assert d["labels"] == [1] * 4 + [0] * 4 and len(d["cosine"]) == 8 and "cat" in d["texts"][0]
    assert EmbeddingScorer().score(context(text="cats, kittens and other felines")) == s  # deterministic


def test_embedding_scorer_nan_reasons() -> None:
    ctx = context()
    ctx.unit.random[:] = []
    s = EmbeddingScorer().score(ctx)
    assert math.isnan(s["embedding/auc"].value) and "non-activating" in s["embedding/auc"].reason
    assert s["embedding/balanced_n"].value == 0
    with pytest.raises(ValueError, match="window"):
        EmbeddingScorer(window=-1)


# --- output-centric --------------------------------------------------------------------------------
TARGET = " was"  # one token of the tiny tokenizer
LAYER, UNIT = 1, 5


def wired_model(family: str):
    """A tiny model whose unit (LAYER, UNIT) writes exactly the unembedding row of TARGET."""
    model = tiny_model(family)
    target = tiny_tokenizer().encode(TARGET)
    assert len(target) == 1
    row = model.get_output_embeddings().weight[target[0]].detach()
    proj = down_projection(model, SITES[family], LAYER)
    with torch.no_grad():
        if isinstance(proj, torch.nn.Linear):
            proj.weight[:, UNIT] = row / row.norm()
        else:
            proj.weight[UNIT, :] = row / row.norm()
    return model, target[0]


def output_context(family: str, model, explanation: str, top_max: float = 50.0) -> ScoringContext:
    rng = np.random.default_rng(0)
    records = [
        ActivationRecord([f"t{i}" for i in ids], [0.0] * len(ids), ids.tolist())
        for ids in rng.integers(1, 299, size=(3, 12))
    ]
    top = [ActivationRecord(["x"], [top_max], [1])]
    unit = UnitRecord(UnitId(LAYER, UNIT), top, [], UnitStats(10, 0.0, 1.0, 0.0, 0.0))
    subject = SimpleNamespace(model=model, tokenizer=tiny_tokenizer(), info=SimpleNamespace(hook_site=SITES[family]))
    return ScoringContext(
        unit=unit, explanation=Explanation(explanation, "t"), scoring_top=[], scoring_random=[],
        scoring_records=records, subject=subject,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_projection_finds_the_wired_token(family: str) -> None:
    model, target = wired_model(family)
    proj = down_projection(model, SITES[family], LAYER)
    assert output_direction(proj, UNIT).shape == (32,)
    logits = projection_logits(model, SITES[family], LAYER, UNIT)
    assert int(torch.argmax(logits)) == target


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_output_centric_scorer_on_a_wired_unit(family: str) -> None:
    model, _ = wired_model(family)
    ctx = output_context(family, model, f'the word "{TARGET.strip()}"')
    s = OutputCentricScorer(top_k=1).score(ctx)
    d = ctx.details["output_centric"]
    assert d["projection"][0][0] == TARGET and d["boost"][0][0] == TARGET
    assert d["boost_delta"] == 50.0 and d["boost_excerpts"] == 3
    assert s["output_centric/projection/lexical"].value == 1.0
    assert s["output_centric/boost/lexical"].value == 1.0
    other = output_context(family, model, "rain and wet weather")
    o = OutputCentricScorer(top_k=1).score(other)
    assert o["output_centric/boost/lexical"].value == 0.0
    assert o["output_centric/projection/embedding"].value < s["output_centric/projection/embedding"].value


def test_output_centric_nan_reasons_and_lexical_only() -> None:
    model, _ = wired_model("llama")
    ctx = output_context("llama", model, "anything", top_max=-1.0)
    s = OutputCentricScorer(similarity="lexical").score(ctx)
    assert set(s) == {"output_centric/projection/lexical", "output_centric/boost/lexical"}
    assert not math.isnan(s["output_centric/projection/lexical"].value)
    assert (
        math.isnan(s["output_centric/boost/lexical"].value)
        and "nothing to boost" in s["output_centric/boost/lexical"].reason
    )
    none = OutputCentricScorer(similarity="lexical").score(
        ScoringContext(unit=ctx.unit, explanation=ctx.explanation, scoring_top=[], scoring_random=[])
    )
    assert all(math.isnan(v.value) and "no subject" in v.reason for v in none.values())
    with pytest.raises(ValueError, match="similarity"):
        OutputCentricScorer(similarity="vibes")


def test_named_fraction() -> None:
    assert named_fraction('cats and "dog"', [" cat", " Dog", " tree", ","]) == 0.5
