"""P(value) at a prompt slot from *top-k* distributions: the one definition every backend uses.

Why a module of its own: ``all_at_once/prompt_logprobs`` must mean the same thing in-process and over
HTTP (issue 13).  An API such as vLLM returns only the ``k`` most likely tokens at each position, so the
reference estimator (method.md section 5) reads the value distribution from those: values outside
the top ``k`` count as 0 and the rest is renormalised by the EV rule.  The in-process backend computes
the full distribution and then cuts it to the same top ``k`` before calling :func:`value_probabilities`,
so both backends feed identical inputs into identical arithmetic.

**The cut at rank k is a step**: a value token whose logprob sits within the engines' float noise
(~1e-4) of the k-th token's is kept by one engine and dropped by the other, and that token's EV can
jump by 0.1 (measured: 1 token of 1,920 at k = 100 against vLLM).  ``top_k_taper = τ > 0`` replaces
the step by a ramp that needs one more alternative: with ``ℓ₍ₖ₊₁₎`` the (k+1)-th logprob, each of the
top ``k`` tokens keeps the weight ``min(1, (ℓ − ℓ₍ₖ₊₁₎) / τ)`` of its probability (:func:`visible_top`).
The weight is continuous in every logprob (a token leaving the top k has weight 0 as it leaves), so
engines that differ by ``ε`` in logprobs differ by at most ``2ε/τ`` of one token's share, and tokens
more than ``τ`` above the (k+1)-th -- nearly all the mass -- read exactly as the reference reads them.
``τ = 0`` is the reference's hard cut.

Values the tokenizer splits (SmolLM2 writes "10" as "1","0") need one more step: after each visible
*piece* (a proper prefix of a value, e.g. "1") the next-token distribution -- again only its top ``k``
-- tells ``P("10") = P("1")·P("0" | …"1")`` and ``P("1") = P("1")·(1 − P(a letter or digit follows))``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bench.llm.text import merge_top

__all__ = [
    "chain_pieces",
    "check_taper",
    "continues",
    "merge_top",
    "read_k",
    "value_probabilities",
    "visible_top",
    "wanted_pieces",
]

_CONTINUES = re.compile(r"^[^\W_]", re.UNICODE)  # a letter or digit: the token would continue a value


def read_k(k: int, taper: float) -> int:
    """How many alternatives per position to ask a backend for: ``k``, plus the (k+1)-th with a taper."""
    return k + 1 if taper > 0 else k


def check_taper(taper: object) -> float:
    """``top_k_taper`` as a float, or ``ValueError`` "top_k_taper: ..." (the field and the fix)."""
    if isinstance(taper, bool) or not isinstance(taper, int | float) or not 0.0 <= float(taper) < math.inf:
        raise ValueError(
            f"top_k_taper: must be a number >= 0 (nats; 0 = the reference's hard cut at rank k), got {taper!r}"
        )
    return float(taper)


def visible_top(ranked: Sequence[Sequence[Any]], k: int | None, taper: float = 0.0) -> dict[str, float]:
    """One position's alternatives as a top-``k`` reading sees them: ``{text: logprob}``, equal texts merged.

    ``ranked``: ``(text, logprob)`` pairs, most likely first -- at least ``k + 1`` of them with a taper
    (:func:`read_k`); fewer means the backend showed its whole distribution, and nothing is cut.
    ``k`` None: everything given is visible.  With ``taper`` τ > 0 each of the top ``k`` keeps the
    weight ``min(1, (ℓ − ℓ₍ₖ₊₁₎) / τ)`` (a token at or below the (k+1)-th's logprob drops out).
    """
    if k is None:
        return merge_top(ranked)
    if taper <= 0 or len(ranked) <= k:
        return merge_top(ranked[:k])
    floor = float(ranked[k][1])
    kept = []
    for text, logprob in ranked[:k]:
        weight = (float(logprob) - floor) / taper
        if weight > 0:
            kept.append((text, float(logprob) + math.log(min(1.0, weight))))
    return merge_top(kept)


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
