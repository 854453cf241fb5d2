"""Oracle check: units built by construction to fire on known words, through the real pipeline.

A tiny Llama gets two hand-wired MLP neurons in layer 0: unit 3 fires exactly on " the", unit 7 on
" was" and " it".  The run mines them, explains them with the token-list baseline and scores them
with the lexical proxy simulator.  Each unit's true explanation must beat the shuffled-explanation
control by a wide margin: if the control gap disappears, the benchmark could not tell a right
explanation from a wrong one, and this test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest_models import _TRAINING_TEXT, tiny_model, tiny_tokenizer

from bench.cli import run_job
from bench.config import compose

WIRED = {3: [" the"], 7: [" was", " it"]}


def wired_subject(path: Path) -> Path:
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=0)
    layer = model.model.layers[0]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, :2] = 0.0  # dims 0 and 1 carry the word identity, nothing else
        layer.self_attn.o_proj.weight.zero_()  # attention adds nothing: the MLP sees the embedding
        for dim, (unit, words) in enumerate(WIRED.items()):
            for word in words:
                (token_id,) = tok.encode(word)
                emb[token_id, dim] = 3.0
            layer.mlp.gate_proj.weight[unit].zero_()
            layer.mlp.up_proj.weight[unit].zero_()
            layer.mlp.gate_proj.weight[unit, dim] = 4.0
            layer.mlp.up_proj.weight[unit, dim] = 4.0
    path.mkdir(parents=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 8))
    return path


def test_true_explanations_beat_shuffled_ones(tmp_path, corpus):
    subject = wired_subject(tmp_path / "wired")
    cfg = compose(
        [
            f"subject.model_id={subject}",
            "subject.progress=false",
            "dataset=text_files",
            f"dataset.paths=[{corpus}]",
            "dataset.n_excerpts=60",
            "dataset.excerpt_len=16",
            "units.layers=[0]",
            f"units.indices={list(WIRED)}",
            "units.examples_per_split=3",
            "mining.top_k=12",
            "mining.random_k=9",
            "explainer=token_list",
            "simulator=proxy_lexical",
            "scorer=[correlation]",
            "tracking=none",
            f"output_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    outcome = run_job(cfg, progress=False)
    by_unit = {r.unit.index: r for r in outcome.results}
    assert set(by_unit) == set(WIRED)
    for unit, words in WIRED.items():
        r = by_unit[unit]
        assert r.status == "ok", r.error
        assert any(f'"{w}"' in r.explanation.text for w in words), r.explanation.text
        real = r.scores["correlation/top_and_random"].value
        control = r.scores["control/correlation/top_and_random"].value
        assert real > 0.7, (unit, real)
        assert real - control > 0.5, (unit, real, control)
        assert r.scores["specificity/correlation/top_and_random"].value == pytest.approx(real - control)
    assert outcome.summary["score/specificity/correlation/top_and_random/mean"] > 0.5
    assert not outcome.warnings
