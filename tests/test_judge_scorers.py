"""Detection and fuzzing scorers on a scripted fake judge: balanced sets, P(yes) from every backend
capability, accuracy / AUC checked by hand, NaN reasons."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from bench.errors import UserError
from bench.llm.fake import FakeLLM
from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Explanation, SequenceSimulation, UnitId, UnitRecord, UnitStats
from bench.scorers.detection import DetectionScorer
from bench.scorers.fuzzing import FuzzingScorer, activating_positions, fuzzed_pairs
from bench.scorers.judge import binary_scores, detection_sets, excerpt_text

WORDS = [" the", " a", " dog", " ran", " in", " park", " sun", " was", " warm", " and", " it", " rained"]


def record(tokens: list[str], acts: list[float], ids: list[int] | None = None) -> ActivationRecord:
    return ActivationRecord(tokens=tokens, activations=acts, token_ids=ids)


def cat_record(seed: int, peak: float = 10.0) -> ActivationRecord:
    """An excerpt with " cat" at one place; the unit fires there."""
    rng = np.random.default_rng(seed)
    tokens = [WORDS[i] for i in rng.integers(0, len(WORDS), 12)]
    at = int(rng.integers(1, 11))
    tokens[at] = " cat"
    acts = [0.1 * float(rng.random()) for _ in tokens]
    acts[at] = peak
    return record(tokens, acts, [100 + seed, *range(11)])


def plain_record(seed: int, high: float = 0.5) -> ActivationRecord:
    rng = np.random.default_rng(1000 + seed)
    tokens = [WORDS[i] for i in rng.integers(0, len(WORDS), 12)]
    acts = [high * float(rng.random()) for _ in tokens]
    return record(tokens, acts, [200 + seed, *range(11)])


def context(
    n_top: int = 4, n_random: int = 4, random_high: float = 0.5, text: str = 'the word "cat"'
) -> ScoringContext:
    top = [cat_record(i, peak=10.0 - 0.1 * i) for i in range(4 * n_top)]
    rand = [plain_record(i, random_high) for i in range(3 * max(n_random, 1))]
    unit = UnitRecord(UnitId(3, 7), top, rand, UnitStats(100, 0.1, 1.0, 0.0, 0.0))
    scoring_top, scoring_random = top[2::4][:n_top], rand[1::3][:n_random]
    sims = [SequenceSimulation(r.tokens, [0.0] * len(r.tokens), r.activations) for r in scoring_top]
    rsims = [SequenceSimulation(r.tokens, [0.0] * len(r.tokens), r.activations) for r in scoring_random]
    return ScoringContext(
        unit=unit,
        explanation=Explanation(text, "test"),
        scoring_top=sims,
        scoring_random=rsims,
        scoring_records=[*scoring_top, *scoring_random],
    )


def excerpt_of(messages) -> str:
    user = [m.content for m in messages if m.role == "user"][-1]
    return re.search(r'"""(.*)"""', user, re.S).group(1)


def cat_judge(**kw) -> FakeLLM:
    """Says yes (0.9) when the excerpt contains 'cat', else no (0.2)."""

    def slot(req, k):
        p = 0.9 if "cat" in excerpt_of(req.messages) else 0.2
        return {" Yes": p * 0.7, " yes": p * 0.3, " No": (1 - p) * 0.9, " no": (1 - p) * 0.1}

    return FakeLLM(slot_fn=slot, **kw)


# --- shared pieces ---------------------------------------------------------------------------------
def test_binary_scores_hand_checked() -> None:
    s = binary_scores("x", [1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    # pairs (pos, neg): (.9,.6) (.9,.1) (.4,.1) ordered right, (.4,.6) wrong -> AUC 3/4
    assert s["x/auc"].value == pytest.approx(0.75)
    assert s["x/accuracy"].value == pytest.approx(0.5)  # predictions 1,0,1,0
    assert s["x/balanced_n"].value == 4 and s["x/unparsed_rate"].value == 0
    unparsed = binary_scores("x", [1, 1, 0, 0], [0.9, None, None, 0.1])
    assert unparsed["x/auc"].value == 1.0 and unparsed["x/accuracy"].value == 1.0
    assert unparsed["x/unparsed_rate"].value == 0.5
    one_class = binary_scores("x", [1, 0], [0.9, None])
    assert math.isnan(one_class["x/auc"].value) and "one class" in one_class["x/auc"].reason
    none = binary_scores("x", [1, 0], [None, None])
    assert math.isnan(none["x/accuracy"].value) and "no parsable" in none["x/accuracy"].reason


def test_excerpt_marks_keep_leading_space_outside() -> None:
    assert excerpt_text([" the", " cat", "\n", "s"], [1, 2]) == " the <<cat>><<\n>>s"


def test_detection_sets_are_balanced_seeded_and_low() -> None:
    ctx = context()
    pos, neg, info = detection_sets(ctx, "low_max", 0.25, seed=0, salt=1)
    assert len(pos) == len(neg) == 4 and info["per_class"] == 4
    assert pos == ctx.scoring_records[:4]
    assert all(r.max_activation < 0.25 * 10.0 for r in neg)
    assert (pos, neg) == detection_sets(ctx, "low_max", 0.25, seed=0, salt=1)[:2]  # seeded
    assert neg != detection_sets(ctx, "low_max", 0.25, seed=5, salt=1)[1]
    # fewer low excerpts than activating ones: activating ones are subsampled to stay balanced
    few = context(random_high=0.5)
    few.unit.random[:] = few.unit.random[:2]
    pos2, neg2, info2 = detection_sets(few, "low_max", 0.25, seed=0, salt=1)
    assert len(pos2) == len(neg2) == 2 and info2["activating_available"] == 4
    split_pos, split_neg, _ = detection_sets(ctx, "split_random", 0.25, seed=0, salt=1)
    assert split_neg == ctx.scoring_records[4:]


# --- detection -------------------------------------------------------------------------------------
def test_detection_with_prompt_logprobs_separates_cat_excerpts() -> None:
    llm = cat_judge()
    ctx = context()
    scores = DetectionScorer(llm=llm).score(ctx)
    assert scores["detection/accuracy"].value == 1.0 and scores["detection/auc"].value == 1.0
    assert scores["detection/balanced_n"].value == 8 and scores["detection/unparsed_rate"].value == 0
    details = ctx.details["detection"]
    assert details["method"] == "prompt_logprobs" and details["labels"] == [1] * 4 + [0] * 4
    assert details["p_yes"][0] == pytest.approx(0.9) and details["usage"]["calls"] == 8
    req = llm.calls[0]
    assert req.values == (" Yes", " yes", " No", " no") and req.messages[-1].content == "Answer:"
    assert 'the word "cat"' in req.messages[1].content


def test_detection_generated_logprobs_and_text_paths() -> None:
    def says(req):
        return " Yes" if "cat" in excerpt_of(req.messages) else " No"

    gen = FakeLLM(generate_fn=says, supports=("generate", "generated_logprobs"))
    s = DetectionScorer(llm=gen).score(ctx := context())
    assert ctx.details["detection"]["method"] == "generated_logprobs" and s["detection/auc"].value == 1.0
    assert gen.calls[0].top_logprobs > 0 and gen.calls[0].assistant_prefix == "Answer:"

    def unsure(req):
        return " Maybe" if "cat" in excerpt_of(req.messages) else " no."

    text = FakeLLM(generate_fn=unsure, supports=("generate",))
    s = DetectionScorer(llm=text).score(ctx := context())
    assert ctx.details["detection"]["method"] == "text"
    assert s["detection/unparsed_rate"].value == 0.5  # "Maybe" is not an answer: counted, not guessed
    assert s["detection/accuracy"].value == 1.0  # the 4 parsed "no"s are right
    assert math.isnan(s["detection/auc"].value) and "one class" in s["detection/auc"].reason


def test_detection_refuses_a_method_the_backend_cannot_serve() -> None:
    with pytest.raises(UserError, match="prompt_logprobs"):
        DetectionScorer(llm=FakeLLM(supports=("generate",)), method="prompt_logprobs").score(context())


def test_detection_without_non_activating_excerpts_is_nan_with_reason() -> None:
    ctx = context(random_high=50.0)  # every random excerpt reaches the unit's maximum
    ctx.unit.random[:] = [r for r in ctx.unit.random if r.max_activation >= 2.5]
    llm = cat_judge()
    s = DetectionScorer(llm=llm).score(ctx)
    assert math.isnan(s["detection/auc"].value) and "non-activating" in s["detection/auc"].reason
    assert s["detection/balanced_n"].value == 0 and not llm.calls


def test_detection_config_errors() -> None:
    with pytest.raises(ValueError, match="negatives"):
        DetectionScorer(llm=FakeLLM(), negatives="nope")
    with pytest.raises(ValueError, match="low_max_fraction"):
        DetectionScorer(llm=FakeLLM(), low_max_fraction=0)
    with pytest.raises(ValueError, match="method"):
        DetectionScorer(llm=FakeLLM(), method="vibes")


# --- fuzzing ---------------------------------------------------------------------------------------
def test_activating_positions_threshold_cap_and_fallback() -> None:
    r = record(list("abcdef"), [0.0, 9.0, 5.0, 4.9, 10.0, 1.0])
    assert activating_positions(r, 10.0, 0.5, 5) == [1, 2, 4]
    assert activating_positions(r, 10.0, 0.5, 2) == [1, 4]  # the two strongest
    assert activating_positions(r, 100.0, 0.5, 5) == [4]  # none reaches: the strongest token


def test_fuzzed_pairs_mark_as_many_random_tokens_elsewhere() -> None:
    recs = [cat_record(i) for i in range(3)]
    pairs, skipped = fuzzed_pairs(recs, 0.5, 5, np.random.default_rng(0))
    assert skipped == 0 and len(pairs) == 3
    for rec, correct, wrong in pairs:
        assert [rec.tokens[i] for i in correct] == [" cat"]
        assert len(wrong) == len(correct) and not set(wrong) & set(correct)
    dense = [record([" a", " b"], [5.0, 5.0])]  # every token activating: no room for a random marking
    assert fuzzed_pairs(dense, 0.5, 5, np.random.default_rng(0)) == ([], 1)


def test_fuzzing_judge_that_reads_the_marks() -> None:
    def slot(req, k):
        p = 0.95 if "<<cat>>" in excerpt_of(req.messages) else 0.05
        return {" Yes": p, " No": 1 - p}

    llm = FakeLLM(slot_fn=slot)
    ctx = context()
    s = FuzzingScorer(llm=llm).score(ctx)
    assert s["fuzzing/accuracy"].value == 1.0 and s["fuzzing/auc"].value == 1.0
    assert s["fuzzing/balanced_n"].value == 8  # 4 excerpts, each correct + random
    d = ctx.details["fuzzing"]
    assert d["labels"] == [1, 0] * 4 and len(d["sets"]["correct_marks"]) == 4
    assert "<<cat>>" in excerpt_of(llm.calls[0].messages) and "<<cat>>" not in excerpt_of(llm.calls[1].messages)
    # deterministic: the same seed marks the same random tokens
    again = context()
    FuzzingScorer(llm=FakeLLM(slot_fn=slot)).score(again)
    assert again.details["fuzzing"]["sets"] == d["sets"]


def test_fuzzing_judge_that_ignores_marks_is_at_chance() -> None:
    llm = FakeLLM(slot_fn=lambda req, k: {" Yes": 0.7, " No": 0.3})
    s = FuzzingScorer(llm=llm).score(context())
    assert s["fuzzing/auc"].value == 0.5 and s["fuzzing/accuracy"].value == 0.5


def test_fuzzing_without_top_excerpts_is_nan_with_reason() -> None:
    ctx = context()
    ctx = ScoringContext(unit=ctx.unit, explanation=ctx.explanation, scoring_top=[], scoring_random=ctx.scoring_random,
                         scoring_records=ctx.scoring_records[4:])  # fmt: skip
    s = FuzzingScorer(llm=FakeLLM()).score(ctx)
    assert math.isnan(s["fuzzing/auc"].value) and "no activating" in s["fuzzing/auc"].reason
