"""P(value) at a prompt slot from *top-k* distributions: the one definition every backend uses.

Why a module of its own: ``all_at_once/prompt_logprobs`` must mean the same thing in-process and over
HTTP (issue 13).  An API such as vLLM returns only the ``k`` most likely tokens at each position, so the
reference estimator (method.md section 5) reads the value distribution from those: values outside
the top ``k`` count as 0 and the rest is renormalised by the EV rule.  The in-process backend computes
the full distribution and then cuts it to the same top ``k`` before calling :func:`value_probabilities`,
so both backends feed identical inputs into identical arithmetic.

Values the tokenizer splits (SmolLM2 writes "10" as "1","0") need one more step: after each visible
*piece* (a proper prefix of a value, e.g. "1") the next-token distribution -- again only its top ``k``
-- tells ``P("10") = P("1")·P("0" | …"1")`` and ``P("1") = P("1")·(1 − P(a letter or digit follows))``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from bench.llm.text import merge_top

__all__ = ["chain_pieces", "continues", "merge_top", "value_probabilities", "wanted_pieces"]

_CONTINUES = re.compile(r"^[^\W_]", re.UNICODE)  # a letter or digit: the token would continue a value


def chain_pieces(values: Sequence[str]) -> list[str]:
    """Proper prefixes of values that matter: a value that prefixes another, or a piece of a value."""
    return sorted({v[:n] for v in values for n in range(1, len(v))})


def continues(token: str) -> bool:
    """Whether ``token`` would continue a value written before it (starts with a letter or digit)."""
    return bool(_CONTINUES.match(token))


def wanted_pieces(values: Sequence[str], dist: Mapping[str, float], chain_min_prob: float) -> list[str]:
    """The pieces whose next-token distribution is needed at one slot: visible, with enough mass."""
    return [p for p in chain_pieces(values) if p in dist and math.exp(dist[p]) > chain_min_prob]


def value_probabilities(
    values: Sequence[str], dist: Mapping[str, float], after: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """P(value) at a slot from the visible distribution ``dist`` (token text -> logprob) and the visible
    next-token distributions ``after[piece]`` after each chained piece."""
    probs: dict[str, float] = {}
    for v in values:
        p = math.exp(dist[v]) if v in dist else 0.0
        if v in after:  # v prefixes another value: complete only if nothing alphanumeric follows
            follow = sum(math.exp(lp) for tok, lp in after[v].items() if continues(tok))
            p *= max(0.0, 1.0 - follow)
        for n in range(1, len(v)):  # v written as piece + rest (one more token)
            piece, rest = v[:n], v[n:]
            if piece in after and piece in dist and rest in after[piece]:
                p += math.exp(dist[piece]) * math.exp(after[piece][rest])
        probs[v] = p
    return probs
