"""Fuzzing score (EleutherAI delphi; method.md section 7): given the explanation, can a judge LLM tell
correctly marked tokens from randomly marked ones?

Each activating excerpt (the top half of the scoring split) is shown twice:

* **correct**: its truly activating tokens are marked ``<<token>>`` -- the tokens whose activation is
  at least ``mark_fraction`` of the maximum over these excerpts (method.md's normalisation scale),
  the ``max_marks`` strongest at most, and the excerpt's strongest token when none reaches it;
* **random**: the same excerpt with the same number of marks on tokens drawn at random (seeded per
  unit) among the tokens that are *not* correctly marked.

An excerpt with too few unmarked tokens for a random version is skipped (counted), so the set stays
balanced.  The judge says whether the marks fit the explanation; P(yes) against the truth gives
``fuzzing/accuracy`` (P >= 0.5 counts as yes), ``fuzzing/auc``, ``fuzzing/balanced_n`` and
``fuzzing/unparsed_rate``.  Answers and usage are kept in ``extras["scorers"]["fuzzing"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bench.protocols import ChatMessage, ScoringContext
from bench.records import ActivationRecord, Score
from bench.scorers.judge import (
    JUDGE_METHODS,
    ask_yes_no,
    binary_scores,
    excerpt_text,
    judge_details,
    nan_scores,
    unit_rng,
)

DEFAULT_SYSTEM = (
    "You check explanations of neurons in a language model. An explanation says what a neuron responds to. "
    "In the excerpt you are shown, some tokens are marked like <<this>>. You decide whether the marked "
    "tokens are the ones the neuron, as explained, responds to. Answer with one word: Yes or No."
)
DEFAULT_QUESTION = (
    'Explanation of the neuron: {explanation}\n\nExcerpt with marked tokens:\n"""{excerpt}"""\n\n'
    "Are the marked tokens what the neuron responds to? Answer Yes or No."
)


def activating_positions(record: ActivationRecord, scale_max: float, mark_fraction: float, max_marks: int) -> list[int]:
    """Positions of the truly activating tokens: ``activation >= mark_fraction * scale_max``, strongest
    ``max_marks`` at most, the strongest token when none qualifies (sorted by position)."""
    acts = np.asarray(record.activations, dtype=np.float64)
    if acts.size == 0:
        return []
    order = np.argsort(-acts, kind="stable")
    chosen = [int(i) for i in order if scale_max > 0 and acts[i] >= mark_fraction * scale_max][:max_marks]
    return sorted(chosen or [int(order[0])])


def fuzzed_pairs(
    records: Sequence[ActivationRecord], mark_fraction: float, max_marks: int, rng: np.random.Generator
) -> tuple[list[tuple[ActivationRecord, list[int], list[int]]], int]:
    """(record, correct marks, random marks) per usable excerpt, and how many were skipped."""
    scale_max = max((max(0.0, r.max_activation) for r in records if r.activations), default=0.0)
    pairs, skipped = [], 0
    for record in records:
        correct = activating_positions(record, scale_max, mark_fraction, max_marks)
        taken = set(correct)
        others = [i for i in range(len(record.tokens)) if i not in taken]
        if not correct or len(others) < len(correct):
            skipped += 1
            continue
        wrong = sorted(int(i) for i in rng.choice(others, size=len(correct), replace=False))
        pairs.append((record, correct, wrong))
    return pairs, skipped


@dataclass(frozen=True)
class FuzzingScorer:
    """A judge LLM tells correctly marked activating tokens from randomly marked ones."""

    llm: Any
    method: str = "auto"  # auto | prompt_logprobs | generated_logprobs | text (see bench.scorers.judge)
    mark_fraction: float = 0.5  # a token is activating at >= this fraction of the excerpts' maximum
    max_marks: int = 5  # marks per excerpt at most
    seed: int = 0
    system: str = DEFAULT_SYSTEM
    question: str = DEFAULT_QUESTION
    name: str = "fuzzing"
    version: int = 1
    needs_calibration: bool = False
    needs_subject: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.method not in JUDGE_METHODS:
            raise ValueError(f"method: must be one of {', '.join(JUDGE_METHODS)}, got {self.method!r}")
        if not 0 < self.mark_fraction <= 1:
            raise ValueError(f"mark_fraction: must be in (0, 1], got {self.mark_fraction}")
        if self.max_marks < 1:
            raise ValueError(f"max_marks: must be >= 1, got {self.max_marks}")
        for key in ("{explanation}", "{excerpt}"):
            if key not in self.question:
                raise ValueError(f"question: must contain {key}")

    def for_unit_kind(self, kind: str) -> FuzzingScorer:
        """This judge with its fixed prompt text calling units ``kind``'s noun (:mod:`bench.unit_nouns`)."""
        from dataclasses import replace

        from bench.unit_nouns import reword

        return replace(self, system=reword(self.system, kind), question=reword(self.question, kind))

    def conversation(self, explanation: str, tokens: list[str], marked: list[int]) -> tuple[ChatMessage, ...]:
        user = self.question.format(explanation=" ".join(explanation.split()), excerpt=excerpt_text(tokens, marked))
        return (ChatMessage("system", self.system), ChatMessage("user", user))

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        records = list(ctx.scoring_records[: len(ctx.scoring_top)])
        pairs, skipped = fuzzed_pairs(records, self.mark_fraction, self.max_marks, unit_rng(self.seed, ctx, salt=2))
        sets = {"excerpts": len(records), "skipped": skipped, "marks": [len(c) for _, c, _ in pairs]}
        if not pairs:
            reason = (
                "the scoring split has no activating (top) excerpts"
                if not records
                else f"no excerpt has enough unmarked tokens for a random marking ({skipped} skipped)"
            )
            ctx.details[self.name] = {"sets": sets}
            return {
                **nan_scores(self.name, ("accuracy", "auc", "unparsed_rate"), reason),
                f"{self.name}/balanced_n": Score(f"{self.name}/balanced_n", 0.0),
            }
        conversations, labels = [], []
        for record, correct, wrong in pairs:
            conversations.append(self.conversation(ctx.explanation.text, record.tokens, correct))
            labels.append(1)
            conversations.append(self.conversation(ctx.explanation.text, record.tokens, wrong))
            labels.append(0)
        answers = ask_yes_no(self.llm, self.method, conversations)
        sets["correct_marks"] = [c for _, c, _ in pairs]
        sets["random_marks"] = [w for _, _, w in pairs]
        ctx.details[self.name] = judge_details(answers, self.llm, labels, {"sets": sets})
        return binary_scores(self.name, labels, answers.p_yes)
