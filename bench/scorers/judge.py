"""What the detection, fuzzing and embedding scorers share: balanced excerpt sets, a yes/no judge, and
accuracy / AUC with NaN reasons.

**Balanced sets** (:func:`detection_sets`): the *activating* excerpts are the top half of the scoring
split (the excerpts the run scores); the *non-activating* ones are either

* ``low_max`` (default): excerpts of the unit's random sample whose maximum activation is below
  ``low_max_fraction`` times the unit's strongest activation (its first top record), excluding any
  excerpt that is also an activating one, drawn without replacement with a seed per unit; or
* ``split_random``: the scoring split's random half as it is (random text: some of it may activate).

When there are fewer non-activating candidates than activating excerpts, the activating ones are
subsampled (seeded) to the same number, so the set is always balanced; the shortfall is recorded.

**The judge** (:func:`ask_yes_no`) answers each prompt with P(yes).  The way it is read depends on what
the backend offers, best first (``method="auto"``): ``prompt_logprobs`` -- the exact distribution over
the answers " Yes"/" yes"/" No"/" no" right after an ``Answer:`` prefill (a slot request);
``generated_logprobs`` -- the top logprobs of the first generated token, tokens that read yes / no;
``text`` -- the first word of a greedy answer (P is then 1 or 0).  P(yes) is renormalised over the
yes and no answers; a prompt where the judge puts no mass on either is *unparsed*: counted, left out of
accuracy and AUC, never guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.errors import UserError
from bench.protocols import Capability, ChatMessage, GenerationRequest, ScoringContext, SlotRequest
from bench.records import ActivationRecord, Score, Usage

NEGATIVES = ("low_max", "split_random")
JUDGE_METHODS = ("auto", "prompt_logprobs", "generated_logprobs", "text")
ANSWER_PREFILL = "Answer:"
YES_VALUES = (" Yes", " yes")
NO_VALUES = (" No", " no")
_FIRST_WORD = re.compile(r"[A-Za-z]+")


# ---------------------------------------------------------------------------------------------------
# Balanced excerpt sets
# ---------------------------------------------------------------------------------------------------
def _key(record: ActivationRecord) -> tuple[Any, ...]:
    return tuple(record.token_ids) if record.token_ids is not None else tuple(record.tokens)


def unit_rng(seed: int, ctx: ScoringContext, salt: int) -> np.random.Generator:
    """A generator seeded by the run seed, the unit and the scorer (``salt``): reproducible per unit."""
    unit = ctx.unit.unit
    return np.random.default_rng([seed, unit.layer, unit.index, salt])


def detection_sets(
    ctx: ScoringContext, negatives: str, low_max_fraction: float, seed: int, salt: int
) -> tuple[list[ActivationRecord], list[ActivationRecord], dict[str, Any]]:
    """(activating, non-activating, how they were chosen): equally many of each (see the module text)."""
    positives = list(ctx.scoring_records[: len(ctx.scoring_top)])
    rng = unit_rng(seed, ctx, salt)
    info: dict[str, Any] = {"negatives": negatives, "activating_available": len(positives)}
    if negatives == "split_random":
        candidates = list(ctx.scoring_records[len(ctx.scoring_top) :])
    elif negatives == "low_max":
        unit_max = ctx.unit.top[0].max_activation if ctx.unit.top else math.nan
        threshold = low_max_fraction * unit_max
        taken = {_key(r) for r in positives}
        candidates = [r for r in ctx.unit.random if r.max_activation < threshold and _key(r) not in taken]
        info.update(threshold=threshold, unit_max=unit_max)
    else:
        raise ValueError(f"negatives: must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    info["non_activating_available"] = len(candidates)
    n = min(len(positives), len(candidates))
    if len(positives) > n:
        keep = sorted(rng.choice(len(positives), size=n, replace=False).tolist())
        positives = [positives[i] for i in keep]
    if len(candidates) > n:
        keep = sorted(rng.choice(len(candidates), size=n, replace=False).tolist())
        candidates = [candidates[i] for i in keep]
    info["per_class"] = n
    return positives, candidates, info


def no_set_reason(info: dict[str, Any]) -> str:
    if info["activating_available"] == 0:
        return "the scoring split has no activating (top) excerpts"
    if info["negatives"] == "low_max":
        return (
            f"no non-activating excerpts: none of the unit's random excerpts stays below "
            f"{info['threshold']:.4g} (a fraction of its maximum {info['unit_max']:.4g})"
        )
    return "the scoring split has no random excerpts"


def excerpt_text(tokens: Sequence[str], marked: Sequence[int] = ()) -> str:
    """The excerpt as text; tokens at ``marked`` positions are wrapped as ``<<token>>`` (leading
    whitespace kept outside the marks)."""
    marks = set(marked)
    parts = []
    for i, token in enumerate(tokens):
        if i in marks:
            core = token.lstrip()
            lead = token[: len(token) - len(core)]
            parts.append(f"{lead}<<{core}>>" if core else f"<<{token}>>")
        else:
            parts.append(token)
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# The yes/no judge
# ---------------------------------------------------------------------------------------------------
@dataclass
class JudgeAnswers:
    p_yes: list[float | None]  # None: unparsed
    method: str
    usage: Usage = field(default_factory=Usage)
    answer_mass: list[float] = field(default_factory=list)  # probability put on yes + no answers
    raw: list[str] = field(default_factory=list)  # generated text (text / generated_logprobs)


# The judge reads its yes/no distribution from the top-k tokens of the answer position -- the same k on
# every backend (in-process, vLLM, chat APIs' top_logprobs), as the simulator's prompt_logprobs does
# (method.md section 5): one definition, one number whatever serves the model.
JUDGE_TOP_K = 20


def resolve_method(method: str, llm: Any) -> str:
    """The judge method to use with this backend; a method it cannot serve is refused before any call."""
    offered = frozenset(llm.capabilities)
    needs = {
        "prompt_logprobs": {Capability.PROMPT_LOGPROBS},
        "generated_logprobs": {Capability.GENERATE, Capability.GENERATED_LOGPROBS},
        "text": {Capability.GENERATE},
    }
    if method == "auto":
        for name in ("prompt_logprobs", "generated_logprobs", "text"):
            if needs[name] <= offered:
                return name
        method = "text"
    missing = needs[method] - offered
    if missing:
        raise UserError(
            f"judge method {method!r} needs {', '.join(sorted(missing))}, which backend "
            f"{llm.name!r} does not offer"
        )
    return method


def _yes_no(yes: float, no: float) -> tuple[float | None, float]:
    total = yes + no
    return (yes / total if total > 0 else None), total


def ask_yes_no(llm: Any, method: str, conversations: Sequence[Sequence[ChatMessage]]) -> JudgeAnswers:
    """P(yes) for each conversation (system + user messages; the answer follows an ``Answer:`` prefill)."""
    method = resolve_method(method, llm)
    out = JudgeAnswers(p_yes=[], method=method)
    if not conversations:
        return out
    if method == "prompt_logprobs":
        values = (*YES_VALUES, *NO_VALUES)
        requests = [
            SlotRequest(
                messages=(*conv, ChatMessage("assistant", ANSWER_PREFILL)),
                slots=(len(ANSWER_PREFILL),),
                values=values,
                top_k=JUDGE_TOP_K,  # read as an API returns it, so every backend gives the same number
            )
            for conv in conversations
        ]
        for result in llm.slot_distributions(requests):
            out.usage = out.usage + result.usage
            probs = result.probabilities[0]
            p, mass = _yes_no(
                sum(max(0.0, float(probs.get(v, 0.0))) for v in YES_VALUES),
                sum(max(0.0, float(probs.get(v, 0.0))) for v in NO_VALUES),
            )
            out.p_yes.append(p)
            out.answer_mass.append(mass)
        return out
    logprobs = method == "generated_logprobs"
    generation_requests = [
        GenerationRequest(
            messages=tuple(conv),
            max_tokens=1 if logprobs else 4,
            temperature=0.0,
            top_logprobs=JUDGE_TOP_K if logprobs else 0,
            assistant_prefix=ANSWER_PREFILL,
            stop=("\n",),
        )
        for conv in conversations
    ]
    for gen in llm.generate(generation_requests):
        out.usage = out.usage + gen.usage
        out.raw.append(gen.text)
        if logprobs:
            yes = no = 0.0
            if gen.logprobs:
                for token, lp in gen.logprobs[0].top.items():
                    word = token.strip().lower()
                    if word == "yes":
                        yes += math.exp(lp)
                    elif word == "no":
                        no += math.exp(lp)
            p, mass = _yes_no(yes, no)
        else:
            match = _FIRST_WORD.search(gen.text)
            word = match.group(0).lower() if match else ""
            p, mass = {"yes": (1.0, 1.0), "no": (0.0, 1.0)}.get(word, (None, 0.0))
        out.p_yes.append(p)
        out.answer_mass.append(mass)
    return out


def judge_details(answers: JudgeAnswers, llm: Any, labels: Sequence[int], extra: dict[str, Any]) -> dict[str, Any]:
    """What a judge scorer keeps per unit (``ScoringContext.details``)."""
    return {
        "judge": llm.name,
        "method": answers.method,
        "labels": list(labels),
        "p_yes": answers.p_yes,
        "answer_mass": answers.answer_mass,
        **({"raw": answers.raw} if answers.raw else {}),
        "usage": asdict(answers.usage),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------
# Accuracy and AUC
# ---------------------------------------------------------------------------------------------------
def binary_scores(
    prefix: str, labels: Sequence[int], scores: Sequence[float | None], threshold: float = 0.5
) -> dict[str, Score]:
    """``<prefix>/accuracy`` (score >= threshold predicts the positive class), ``<prefix>/auc`` (scikit-learn
    ``roc_auc_score``), ``<prefix>/balanced_n`` (excerpts in the set) and ``<prefix>/unparsed_rate``.
    ``None`` scores (unparsed answers) are left out of accuracy and AUC and counted."""
    n = len(labels)
    keep = [(int(lab), float(s)) for lab, s in zip(labels, scores, strict=True) if s is not None and not math.isnan(s)]
    unparsed = n - len(keep)
    out = {
        f"{prefix}/balanced_n": Score(f"{prefix}/balanced_n", float(n)),
        f"{prefix}/unparsed_rate": (
            Score(f"{prefix}/unparsed_rate", unparsed / n)
            if n
            else Score(f"{prefix}/unparsed_rate", math.nan, "empty set")
        ),
    }
    acc, auc = f"{prefix}/accuracy", f"{prefix}/auc"
    if not keep:
        why = "empty balanced set" if n == 0 else f"no parsable judge answer ({unparsed} of {n} unparsed)"
        out[acc] = Score(acc, math.nan, why)
        out[auc] = Score(auc, math.nan, why)
        return out
    y = np.array([lab for lab, _ in keep])
    s = np.array([v for _, v in keep])
    out[acc] = Score(acc, float(((s >= threshold).astype(int) == y).mean()))
    if len(set(y.tolist())) < 2:
        out[auc] = Score(auc, math.nan, f"only one class left after {unparsed} unparsed answers")
    else:
        from sklearn.metrics import roc_auc_score

        from bench.scorers.sklearn_once import warm

        warm()
        out[auc] = Score(auc, float(roc_auc_score(y, s)))
    return out


def nan_scores(prefix: str, names: Sequence[str], reason: str) -> dict[str, Score]:
    return {f"{prefix}/{n}": Score(f"{prefix}/{n}", math.nan, reason) for n in names}
