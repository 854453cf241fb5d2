"""Ablation score on tiny in-process GPT-2 and Llama models: exact simulation -> 1, mean -> 0."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest_models import tiny_config
from conftest_models import tiny_model as conftest_tiny_model

from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Explanation, SequenceSimulation, UnitId, UnitRecord, UnitStats
from bench.scorers.ablation import NO_EFFECT, AblationScorer, ablation_scores, divergences, parse_hook_site
from bench.subject.hook_sites import hook_site_for

FAMILIES = ("gpt2", "gpt_neox", "llama")


def site(family: str) -> str:
    """The hook site string exactly as a subject records it (bench/subject/hook_sites.py)."""
    return hook_site_for(tiny_config(family)).describe


# The unit's down-projection weights are scaled by this factor so that mean-ablating it moves the output
# far above float32 rounding (a random tiny model's unit barely matters: KL ~ 1e-8 or exactly 0, by CPU).
AMPLIFY = 200.0
DOWN_PROJ = {"gpt2": "transformer.h.{layer}.mlp.c_proj", "gpt_neox": "gpt_neox.layers.{layer}.mlp.dense_4h_to_h"}


def tiny_model(family: str, amplify: tuple[int, int] | None = None):
    """The tiny model; ``amplify=(layer, index)`` scales that unit's weights into the output by AMPLIFY."""
    model = conftest_tiny_model(family, vocab_size=97)
    if amplify is not None:
        layer, index = amplify
        proj = model.get_submodule(DOWN_PROJ.get(family, "model.layers.{layer}.mlp.down_proj").format(layer=layer))
        with torch.no_grad():
            if family == "gpt2":  # Conv1D: weight is (in, out)
                proj.weight[index, :] *= AMPLIFY
            else:
                proj.weight[:, index] *= AMPLIFY
    return model


def real_activations(model, site: str, layer: int, index: int, ids: torch.Tensor) -> np.ndarray:
    path, where = parse_hook_site(site, layer)
    seen = {}
    module = model.get_submodule(path)

    def keep(tensor: torch.Tensor) -> None:  # returns None: observe without replacing
        seen["x"] = tensor[..., index].clone()

    if where == "input":
        h = module.register_forward_pre_hook(lambda m, a: keep(a[0]))
    else:
        h = module.register_forward_hook(lambda m, a, o: keep(o))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return seen["x"].numpy()


def make_records(ids: torch.Tensor, acts: np.ndarray) -> list[ActivationRecord]:
    return [
        ActivationRecord(tokens=[str(t) for t in row.tolist()], activations=a.tolist(), token_ids=row.tolist())
        for row, a in zip(ids, acts, strict=True)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_simulation_scores_one_and_mean_scores_zero(family: str) -> None:
    model = tiny_model(family, amplify=(1, 5))
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    acts = real_activations(model, site(family), 1, 5, ids)
    records = make_records(ids, acts)
    exact = ablation_scores(model, site(family), 1, 5, records, acts, float(acts.mean()))
    for d in ("kl", "js"):
        assert exact[d] == pytest.approx(1.0, abs=1e-4), d
    # the loss variant is defined only when mean-ablation raises the loss (a random model may not)
    if exact["loss/mean_ablated"] > NO_EFFECT["loss"]:
        assert exact["loss"] == pytest.approx(1.0, abs=1e-3)
    else:
        assert math.isnan(exact["loss"])
    assert exact["kl/simulated"] == pytest.approx(0.0, abs=1e-6)
    mean = float(acts.mean())
    const = ablation_scores(model, site(family), 1, 5, records, np.full_like(acts, mean), mean)
    assert const["kl"] == pytest.approx(0.0, abs=1e-6) and const["js"] == pytest.approx(0.0, abs=1e-6)
    assert const["kl/mean_ablated"] > 1e-3  # far above rounding: the unit was amplified


def test_divergences_hand_checked() -> None:
    # One sequence of two positions over a 2-token vocabulary.
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    q = torch.tensor([[[0.25, 0.75], [0.9, 0.1]]])
    ids = torch.tensor([[0, 1]])
    d = divergences(p.log(), q.log(), ids)
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert d["kl"] == pytest.approx(kl0 / 2)
    m = [0.375, 0.625]
    js0 = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    )
    assert d["js"] == pytest.approx(js0 / 2)
    # loss of next token 1 at position 0: -log 0.5 unchanged vs -log 0.75 ablated
    assert d["loss"] == pytest.approx(-math.log(0.75) + math.log(0.5))


def test_scorer_uses_calibrated_simulation_and_reports_all_divergences() -> None:
    model = tiny_model("llama", amplify=(0, 3))
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    acts = real_activations(model, site("llama"), 0, 3, ids)
    records = make_records(ids, acts)
    # The simulator predicted 2*real+1 on its own scale; calibration maps it back exactly.
    sims = [
        SequenceSimulation(
            tokens=r.tokens, expected=list(2 * np.array(r.activations) + 1), true_activations=r.activations
        )
        for r in records
    ]
    unit = UnitRecord(UnitId(0, 3), records, [], UnitStats(20, float(acts.mean()), 1.0, 0.0, 0.0))
    subject = SimpleNamespace(model=model, info=SimpleNamespace(hook_site=site("llama")))
    ctx = ScoringContext(
        unit=unit,
        explanation=Explanation("x", "test"),
        scoring_top=sims,
        scoring_random=[],
        scoring_records=records,
        calibrator=lambda x: (np.asarray(x) - 1) / 2,
        subject=subject,
    )
    scores = AblationScorer().score(ctx)
    assert scores["ablation"].value == pytest.approx(1.0, abs=1e-4)
    assert {"ablation/kl", "ablation/js", "ablation/loss", "ablation/kl/mean_ablated"} <= set(scores)
    assert scores["ablation/kl/mean_ablated"].value > 1e-3
    no_cal = AblationScorer().score(
        ScoringContext(
            unit=unit,
            explanation=Explanation("x", "t"),
            scoring_top=sims,
            scoring_random=[],
            scoring_records=records,
            calibration_problem="simulation is constant",
        )
    )
    assert math.isnan(no_cal["ablation"].value) and "constant" in no_cal["ablation"].reason


def test_bad_divergence_refused() -> None:
    with pytest.raises(ValueError, match="divergence"):
        AblationScorer(divergence="l2")


def test_divergences_are_float64_and_rounding_level_effects_count_as_no_effect() -> None:
    # Two float32 distributions that differ by one float32 ulp per logit: in float32 the KL is lost in
    # rounding (0 on some CPUs, slightly above on others); in float64 it is tiny but below the tolerance.
    logits = torch.randn(1, 4, 97, generator=torch.Generator().manual_seed(3))
    bumped = torch.nextafter(logits, torch.full_like(logits, 1e9))
    base, other = torch.log_softmax(logits, -1), torch.log_softmax(bumped, -1)
    ids = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(4))
    d = divergences(base, other, ids)
    assert 0 <= d["kl"] < NO_EFFECT["kl"] / 100 and 0 <= d["js"] < NO_EFFECT["js"] / 100
    assert abs(d["loss"]) < NO_EFFECT["loss"] / 10


def test_unit_without_effect_scores_nan_with_no_effect_reason() -> None:
    # Zero the unit's weights into the output: mean-ablation cannot change anything, on any CPU.
    model = tiny_model("llama")
    with torch.no_grad():
        model.get_submodule("model.layers.0.mlp.down_proj").weight[:, 3] = 0
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    acts = real_activations(model, site("llama"), 0, 3, ids)
    records = make_records(ids, acts)
    raw = ablation_scores(model, site("llama"), 0, 3, records, acts * 0.5, float(acts.mean()))
    assert math.isnan(raw["kl"]) and math.isnan(raw["js"]) and math.isnan(raw["loss"])
    sims = [
        SequenceSimulation(tokens=r.tokens, expected=r.activations, true_activations=r.activations) for r in records
    ]
    unit = UnitRecord(UnitId(0, 3), records, [], UnitStats(20, float(acts.mean()), 1.0, 0.0, 0.0))
    ctx = ScoringContext(
        unit=unit,
        explanation=Explanation("x", "test"),
        scoring_top=sims,
        scoring_random=[],
        scoring_records=records,
        calibrator=lambda x: np.asarray(x),
        subject=SimpleNamespace(model=model, info=SimpleNamespace(hook_site=site("llama"))),
    )
    scores = AblationScorer().score(ctx)
    assert math.isnan(scores["ablation"].value)
    assert "no effect" in scores["ablation"].reason and "tolerance" in scores["ablation"].reason
