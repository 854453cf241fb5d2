"""The tapered top-k cut (issue 13): continuous where the reference's hard cut is a step.

Two engines whose logprobs differ by float noise (vLLM vs in-process: ~1e-4) disagree on a value token
that sits at rank k under the hard cut; the taper bounds that disagreement by ``2ε/τ`` of the token's
share and leaves every token more than ``τ`` above the (k+1)-th exactly as the reference reads it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.llm.fake import FakeLLM
from bench.records import ActivationRecord
from bench.simulators.all_at_once import AllAtOnceSimulator
from bench.simulators.expected_value import expected_value_from_probabilities
from bench.simulators.one_at_a_time import OneAtATimeSimulator
from bench.simulators.topk_values import check_taper, merge_top, read_k, value_probabilities, visible_top

VALUES = tuple(str(v) for v in range(11))


def _ev(ranked: list[tuple[str, float]], k: int, taper: float) -> float:
    dist = visible_top(ranked, k, taper)
    return expected_value_from_probabilities(value_probabilities(VALUES, dist, {})).value


def _slot(value_lp: float) -> list[tuple[str, float]]:
    """A slot whose k = 4 visible tokens are two words, "0" and -- at the cut -- "9"; the (k+1)-th is a word."""
    ranked = [("unknown", math.log(0.6)), ("none", math.log(0.2)), ("0", math.log(0.05)), ("9", value_lp)]
    ranked.append(("the", math.log(0.01)))
    return sorted(ranked, key=lambda kv: -kv[1])


def test_without_a_taper_the_cut_is_the_reference_hard_cut() -> None:
    ranked = [("a", -0.1), ("5", -1.0), ("b", -2.0), ("7", -3.0), ("c", -4.0)]
    assert visible_top(ranked, 3, 0.0) == merge_top(ranked[:3])
    assert visible_top(ranked, None, 0.0) == merge_top(ranked)
    assert read_k(3, 0.0) == 3 and read_k(3, 0.1) == 4


def test_a_near_tie_at_rank_k_jumps_under_the_hard_cut_and_not_under_the_taper() -> None:
    """Move "9" from just above the (k+1)-th token to just below it, by 2e-4 nats (two engines' noise)."""
    floor, eps, taper = math.log(0.01), 1e-4, 0.1
    above, below = _slot(floor + eps), _slot(floor - eps)
    hard_jump = abs(_ev(above, 4, 0.0) - _ev(below, 4, 0.0))
    tapered_jump = abs(_ev(above, 4, taper) - _ev(below, 4, taper))
    assert hard_jump > 1.0  # "9" is visible or not: EV 1.5 or 0 (the parity check met a 0.087 step at k = 100)
    # weight of "9" moves by at most 2ε/τ, so its share (and the EV) by at most that fraction of the full jump
    assert tapered_jump <= 2 * eps / taper * hard_jump + 1e-12
    assert tapered_jump < hard_jump / 100


def test_tokens_well_above_the_cut_read_exactly_as_the_reference() -> None:
    ranked = [("a", -0.1), ("5", -1.0), ("b", -2.0), ("7", -3.0), ("c", -3.05), ("d", -4.0)]
    dist = visible_top(ranked, 5, 1.5)  # floor -4.0: tokens above -2.5 keep their whole probability
    assert dist["a"] == -0.1 and dist["5"] == -1.0 and dist["b"] == -2.0
    assert dist["7"] == pytest.approx(-3.0 + math.log(1.0 / 1.5))  # on the ramp: weight (ℓ - floor) / τ
    assert dist["c"] == pytest.approx(-3.05 + math.log(0.95 / 1.5))
    assert "d" not in dist  # the (k+1)-th only sets the floor


def test_a_token_tied_with_the_floor_drops_out_and_fewer_than_k_plus_one_cuts_nothing() -> None:
    tied = [("a", -0.1), ("5", -2.0), ("b", -2.0)]
    assert visible_top(tied, 2, 0.1) == {"a": -0.1}
    short = [("a", -0.1), ("5", -2.0)]  # the backend showed its whole distribution
    assert visible_top(short, 2, 0.1) == merge_top(short)


def test_equal_texts_are_merged_after_weighting() -> None:
    ranked = [(" 5", -0.5), ("5", -1.0), ("x", -1.2), ("y", -3.0)]
    dist = visible_top(ranked, 3, 1.0)
    w = min(1.0, (-1.2 + 3.0) / 1.0)
    assert dist["5"] == -1.0 and dist[" 5"] == -0.5 and dist["x"] == pytest.approx(-1.2 + math.log(w))


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "0.1", True])
def test_a_bad_taper_is_a_one_line_error_naming_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^top_k_taper: must be a number >= 0") as err:
        check_taper(bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------
# Simulators: ask for k + 1, read the ramped top k, record the taper
# ---------------------------------------------------------------------------------------------------
EXCERPTS = [
    ActivationRecord(tokens=["the", " cat", " sat", " down"], activations=[0.0, 9.0, 1.0, 0.0]),
    ActivationRecord(tokens=["a", " dog"], activations=[0.0, 3.0]),
]


@pytest.mark.parametrize(
    "make",
    [
        lambda llm, **kw: OneAtATimeSimulator(llm=llm, **kw),
        lambda llm, **kw: AllAtOnceSimulator(llm=llm, estimator="generated_logprobs", **kw),
    ],
)
def test_generation_estimators_ask_for_k_plus_one_and_read_the_ramped_top_k(make) -> None:
    """The fake returns all 11 values at every answer; a 3-wide reading with a taper keeps at most 3 of them
    (the 4th sets the floor) and records k and the taper with the simulation."""
    llm = FakeLLM()
    out = make(llm, top_logprobs=3, top_k_taper=0.5).simulate("the cat", EXCERPTS)
    assert {r.top_logprobs for r in llm.calls} == {4}
    assert (out.top_k, out.top_k_taper) == (3, 0.5)
    shown = [sum(1 for p in d if p > 0) for s in out.sequences for d in s.distributions]
    assert max(shown) <= 3 and max(shown) > 1
    hard = make(FakeLLM(), top_logprobs=3).simulate("the cat", EXCERPTS)
    assert (hard.top_k, hard.top_k_taper) == (3, 0.0)
    assert max(sum(1 for p in d if p > 0) for s in hard.sequences for d in s.distributions) > 3  # backend's k


def test_estimators_without_a_top_k_record_no_taper() -> None:
    for sim in (
        AllAtOnceSimulator(llm=FakeLLM(), estimator="sampled", top_k_taper=0.5),
        OneAtATimeSimulator(llm=FakeLLM(), estimator="sampled"),
    ):
        assert sim.recorded_taper is None and sim.simulate("the cat", EXCERPTS).top_k_taper is None


def test_openai_generated_logprobs_leave_room_for_the_k_plus_one_th() -> None:
    with pytest.raises(ValueError, match=r"^top_k_taper: a taper reads the \(k\+1\)-th token too, so top_logprobs"):
        OneAtATimeSimulator(llm=FakeLLM(), top_logprobs=20, top_k_taper=0.1)
    assert OneAtATimeSimulator(llm=FakeLLM(), top_logprobs=19, top_k_taper=0.1).asked_top_logprobs == 20


def test_the_taper_is_a_config_key_recorded_per_result_and_in_the_leaderboard_label() -> None:
    from types import SimpleNamespace

    from bench.config import compose, validate
    from bench.errors import UserError
    from bench.leaderboard import _simulator
    from bench.records import Simulation

    _, parts = validate(compose(["simulator.estimator=prompt_logprobs", "simulator.top_k_taper=0.1"]))
    assert (parts.simulator.top_k, parts.simulator.recorded_taper) == (20, 0.1)
    with pytest.raises(UserError, match=r"^config error at 'simulator.top_k_taper': must be a number >= 0"):
        validate(compose(["simulator.top_k_taper=-1"]))
    sim = Simulation(sequences=[], simulator="s", estimator="all_at_once/prompt_logprobs", top_k=20, top_k_taper=0.1)
    run = SimpleNamespace(results=[SimpleNamespace(simulation=sim)])
    assert _simulator({"name": "s"}, run).endswith("all_at_once/prompt_logprobs k=20 taper=0.1")
    hard = SimpleNamespace(results=[SimpleNamespace(simulation=replace(sim, top_k_taper=0.0))])
    assert _simulator({"name": "s"}, hard).endswith("all_at_once/prompt_logprobs k=20")
