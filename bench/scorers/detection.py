"""Detection score (EleutherAI delphi; method.md section 7): given only the explanation, can a judge
LLM tell the unit's activating excerpts from non-activating ones?

A balanced set is built per unit (:func:`bench.scorers.judge.detection_sets`: the scoring split's top
excerpts against low-maximum excerpts of the unit's random sample, seeded), each excerpt is shown to
the judge with the explanation, and the judge's P(yes) is compared with the truth:
``detection/accuracy`` (P >= 0.5 counts as yes), ``detection/auc`` (ROC AUC of P), and
``detection/balanced_n`` / ``detection/unparsed_rate`` beside them.  Undefined values are NaN with
their reason.  The judge's answers and usage are kept in the unit's ``extras["scorers"]["detection"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bench.protocols import ChatMessage, ScoringContext
from bench.records import Score
from bench.scorers.judge import (
    JUDGE_METHODS,
    NEGATIVES,
    ask_yes_no,
    binary_scores,
    detection_sets,
    excerpt_text,
    judge_details,
    nan_scores,
    no_set_reason,
)

DEFAULT_SYSTEM = (
    "You check explanations of neurons in a language model. An explanation says what a neuron responds to. "
    "You are shown the explanation and one text excerpt, and you decide whether the neuron, as explained, "
    "would respond strongly to something in the excerpt. Answer with one word: Yes or No."
)
DEFAULT_QUESTION = (
    'Explanation of the neuron: {explanation}\n\nExcerpt:\n"""{excerpt}"""\n\n'
    "Does the excerpt contain what the neuron responds to? Answer Yes or No."
)


@dataclass(frozen=True)
class DetectionScorer:
    """A judge LLM tells activating from non-activating excerpts given the explanation."""

    llm: Any
    method: str = "auto"  # auto | prompt_logprobs | generated_logprobs | text (see bench.scorers.judge)
    negatives: str = "low_max"  # low_max | split_random
    low_max_fraction: float = 0.25  # non-activating: excerpt maximum below this fraction of the unit's maximum
    seed: int = 0
    system: str = DEFAULT_SYSTEM
    question: str = DEFAULT_QUESTION
    name: str = "detection"
    version: int = 1
    needs_calibration: bool = False
    needs_subject: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.method not in JUDGE_METHODS:
            raise ValueError(f"method: must be one of {', '.join(JUDGE_METHODS)}, got {self.method!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives: must be one of {', '.join(NEGATIVES)}, got {self.negatives!r}")
        if not 0 < self.low_max_fraction <= 1:
            raise ValueError(f"low_max_fraction: must be in (0, 1], got {self.low_max_fraction}")
        for key in ("{explanation}", "{excerpt}"):
            if key not in self.question:
                raise ValueError(f"question: must contain {key}")

    def for_unit_kind(self, kind: str) -> DetectionScorer:
        """This judge with its fixed prompt text calling units ``kind``'s noun (:mod:`bench.unit_nouns`)."""
        from dataclasses import replace

        from bench.unit_nouns import reword

        return replace(self, system=reword(self.system, kind), question=reword(self.question, kind))

    def conversation(self, explanation: str, tokens: list[str]) -> tuple[ChatMessage, ...]:
        user = self.question.format(explanation=" ".join(explanation.split()), excerpt=excerpt_text(tokens))
        return (ChatMessage("system", self.system), ChatMessage("user", user))

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        positives, negatives, info = detection_sets(ctx, self.negatives, self.low_max_fraction, self.seed, salt=1)
        if not positives:
            reason = no_set_reason(info)
            ctx.details[self.name] = {"sets": info}
            return {
                **nan_scores(self.name, ("accuracy", "auc", "unparsed_rate"), reason),
                f"{self.name}/balanced_n": Score(f"{self.name}/balanced_n", 0.0),
            }
        records = [*positives, *negatives]
        labels = [1] * len(positives) + [0] * len(negatives)
        conversations = [self.conversation(ctx.explanation.text, r.tokens) for r in records]
        answers = ask_yes_no(self.llm, self.method, conversations)
        ctx.details[self.name] = judge_details(answers, self.llm, labels, {"sets": info})
        return binary_scores(self.name, labels, answers.p_yes)
