"""Best-of-k reranking, judge noise, the scorer correlation matrix and per-score failure rates."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import pytest
from test_judge_scorers import context

from bench.aggregate import aggregate, correlation_matrix_csv, score_correlation_matrix, write_score_correlations
from bench.explainers.best_of_k import BestOfKExplainer, Rerank, explain_unit, simulation_reranker
from bench.explainers.llm_explainer import LLMExplainer
from bench.explainers.token_list import TokenListExplainer
from bench.llm.fake import FakeLLM
from bench.records import ActivationRecord, Score, SplitRecords, Splits, UnitId, UnitResult, Usage
from bench.scorers.judge_noise import JudgeNoiseScorer, resampler
from bench.simulators.all_at_once import AllAtOnceSimulator
from bench.simulators.proxy import LexicalProxySimulator

PROMPT = {
    "name": "t",
    "version": 1,
    "system": "Explain the neuron.",
    "lead_in": "the main thing this neuron does is find",
}
CANDIDATES = ("words about the weather", 'the word "cat"', "numbers", 'the word "cat"')


def explainer(k: int = 4) -> BestOfKExplainer:
    inner = LLMExplainer(llm=FakeLLM(responses=CANDIDATES), prompt=PROMPT)
    return BestOfKExplainer(explainer=inner, k=k)


RECORDS = [ActivationRecord([" a", " cat"], [0.0, 5.0])]


# --- best-of-k -------------------------------------------------------------------------------------
def test_best_of_k_picks_the_best_rerank_score_and_sums_costs() -> None:
    scores = {"words about the weather": 0.2, 'the word "cat"': 0.9, "numbers": math.nan}
    seen = []

    def rerank(text: str) -> Rerank:
        seen.append(text)
        value = scores[text]
        return Rerank(value, "constant" if math.isnan(value) else None, Usage(calls=2, input_tokens=10))

    bok = explainer()
    assert bok.explainer.samples == 4  # the wrapped explainer samples k
    [best] = bok.explain_reranked(UnitId(0, 1), RECORDS, rerank)
    assert best.text == 'the word "cat"' and best.explainer == "best_of_k"
    meta = best.meta["best_of_k"]
    assert meta["winner"] == 1 and meta["k"] == 4 and meta["rerank_split"] == "calibration"
    assert [c["text"] for c in meta["candidates"]] == list(CANDIDATES)
    assert [c["rerank_score"] for c in meta["candidates"]] == [0.2, 0.9, None, 0.9]
    assert meta["candidates"][2]["rerank_reason"] == "constant"
    assert sorted(seen) == sorted(set(CANDIDATES))  # a repeated text is simulated once
    generated = sum((Usage(**c["usage"]) for c in meta["candidates"]), Usage())
    assert generated.calls == 4
    assert best.usage == generated + Usage(calls=6, input_tokens=30)  # all k + 3 distinct reranks
    assert meta["usage"]["rerank"]["calls"] == 6


def test_best_of_k_without_any_defined_score_keeps_the_first_and_says_so() -> None:
    [best] = explainer().explain_reranked(UnitId(0, 1), RECORDS, lambda t: Rerank(math.nan, "constant", Usage()))
    assert best.text == CANDIDATES[0] and "no candidate" in best.meta["best_of_k"]["chosen_by"]


def test_best_of_k_needs_the_pipeline_reranker_and_an_inner_with_samples() -> None:
    with pytest.raises(RuntimeError, match="reranker"):
        explainer().explain(UnitId(0, 1), RECORDS)
    with pytest.raises(ValueError, match="samples"):
        BestOfKExplainer(explainer=TokenListExplainer(), k=2)
    with pytest.raises(ValueError, match="k:"):
        explainer(k=0)


def test_explain_unit_reranks_on_the_calibration_split_with_the_run_simulator() -> None:
    cat = [ActivationRecord([" the", " cat", " sat"], [0.0, 9.0, 1.0]), ActivationRecord([" a", " dog"], [0.0, 0.5])]
    other = [ActivationRecord([" x"], [1.0])]
    splits = Splits(
        train=SplitRecords(other, []), calibration=SplitRecords(cat[:1], cat[1:]),
        valid=SplitRecords(other, other), test=SplitRecords(other, other),
    )  # fmt: skip
    simulator = LexicalProxySimulator()
    [best] = explain_unit(explainer(), simulator, UnitId(0, 1), splits)
    assert best.text == 'the word "cat"'
    direct = simulation_reranker(simulator, cat)('the word "cat"')
    assert best.meta["best_of_k"]["candidates"][1]["rerank_score"] == pytest.approx(direct.score)
    # a plain explainer is called as before
    plain = explain_unit(LLMExplainer(llm=FakeLLM(responses=("x",)), prompt=PROMPT), simulator, UnitId(0, 1), splits)
    assert plain[0].text == "x"


# --- judge noise -----------------------------------------------------------------------------------
class NoisySimulator:
    """Simulates the true activations plus seeded noise per sample index."""

    name = "noisy"
    estimator = "test/sampled"

    def simulate(self, explanation, records, sample_index=0):
        from bench.records import SequenceSimulation, Simulation

        rng = np.random.default_rng(sample_index)
        seqs = [
            SequenceSimulation(
                r.tokens, list(np.asarray(r.activations) + rng.normal(0, 2, len(r.tokens))), r.activations
            )
            for r in records
        ]
        return Simulation(seqs, self.name, self.estimator, usage=Usage(calls=len(records)))


def test_judge_noise_of_a_sampled_simulator() -> None:
    ctx = context()
    s = JudgeNoiseScorer(repeats=3, simulator=NoisySimulator()).score(ctx)
    d = ctx.details["judge_noise"]
    assert d["resampled_by"] == "sample_index" and not d["identical_repeats"] and len(d["correlations"]) == 3
    assert s["judge_noise/std"].value == pytest.approx(np.std(d["correlations"], ddof=1))
    assert s["judge_noise/std"].value > 0 and s["judge_noise/range"].value > 0
    assert d["usage"]["calls"] == 3 * len(ctx.scoring_records)


@dataclass(frozen=True)
class SeededFakeLLM(FakeLLM):
    seed: int = 0  # like LocalChatModel's: only sampling would depend on it


def test_judge_noise_of_a_deterministic_simulator_is_zero_and_said() -> None:
    sim = AllAtOnceSimulator(llm=SeededFakeLLM())
    assert resampler(sim)[1] == "llm_seed"
    ctx = context()
    ctx = type(ctx)(**{**ctx.__dict__, "simulator": sim, "details": {}})
    s = JudgeNoiseScorer(repeats=2).score(ctx)
    assert ctx.details["judge_noise"]["identical_repeats"] is True
    assert s["judge_noise/std"].value == 0.0


def test_judge_noise_nan_reasons() -> None:
    s = JudgeNoiseScorer().score(context())
    assert all(math.isnan(v.value) and "no simulator" in v.reason for v in s.values())
    lexical = JudgeNoiseScorer(simulator=LexicalProxySimulator()).score(context())
    assert "cannot be re-sampled" in lexical["judge_noise/std"].reason
    with pytest.raises(ValueError, match="repeats"):
        JudgeNoiseScorer(repeats=1)


# --- statistics ------------------------------------------------------------------------------------
def unit(i: int, **scores: float) -> UnitResult:
    return UnitResult(UnitId(0, i), "ok", scores={k.replace("__", "/"): Score(k, v) for k, v in scores.items()})


def test_score_correlation_matrix_spearman_pairs_and_nans() -> None:
    results = [
        unit(0, a=1.0, b=10.0, c=5.0, d=1.0),
        unit(1, a=2.0, b=20.0, c=4.0, d=1.0),
        unit(2, a=3.0, b=25.0, c=3.0, d=1.0),
        unit(3, a=4.0, b=math.nan, c=1.0, d=1.0),
        UnitResult(UnitId(0, 9), "failed", error="boom", stage="simulate"),
    ]
    m = score_correlation_matrix(results)
    assert m["scores"] == ["a", "b", "c", "d"] and m["units"] == 4 and m["method"] == "spearman"
    rho = dict(zip(m["scores"], m["rho"], strict=True))
    assert rho["a"][0] == 1.0 and rho["a"][1] == 1.0 and rho["a"][2] == -1.0  # ranks, not values
    assert m["n"][0][1] == 3 and m["n"][0][2] == 4  # pairwise-complete units
    assert rho["d"][0] is None and rho["d"][3] is None  # constant: undefined, not 0
    assert m["rho"][1][2] == m["rho"][2][1]
    few = score_correlation_matrix(results[:2])
    assert few["rho"][0][1] is None  # fewer than min_pairs units
    rows = list(csv.reader(io.StringIO(correlation_matrix_csv(m))))
    assert rows[0] == ["score", "a", "b", "c", "d"] and rows[1][1] == "1.0" and rows[4][1] == ""


def test_write_score_correlations(tmp_path) -> None:
    paths = write_score_correlations([unit(i, a=float(i), b=float(-i)) for i in range(4)], tmp_path)
    data = json.loads(paths[0].read_text())
    assert data["rho"][0][1] == -1.0 and paths[1].read_text().startswith("score,a,b")


def test_per_score_failure_rate_and_scorer_costs() -> None:
    results = [
        unit(0, x=0.5),
        unit(1, x=math.nan),
        UnitResult(UnitId(0, 2), "failed", error="boom", stage="score"),
        UnitResult(
            UnitId(0, 3), "ok", scores={"x": Score("x", 0.7)},
            extras={"scorers": {"detection": {"usage": asdict(Usage(calls=8, input_tokens=100))}}},
        ),
    ]  # fmt: skip
    s = aggregate(results, resamples=200)
    assert s["score/x/failure_rate"] == pytest.approx(2 / 4)  # one failed unit + one NaN, of 4
    assert s["cost/scorer/detection/calls"] == 8 and s["cost/scorer/detection/input_tokens"] == 100
