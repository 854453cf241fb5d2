"""Text post-processing shared by the providers: merge equal token texts, cut tokens at stop strings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def merge_top(pairs: Sequence[Sequence[Any]]) -> dict[str, float]:
    """``[[token, logprob], ...]`` -> ``{token: logprob}``, summing the probability of equal token texts."""
    out: dict[str, float] = {}
    for token, logprob in pairs:
        lp = float(logprob)
        if token in out:
            hi, lo = max(out[token], lp), min(out[token], lp)
            out[token] = hi + math.log1p(math.exp(lo - hi))
        else:
            out[token] = lp
    return out


def cut_tokens(tokens: list[Any] | None, start: int, end: int | None) -> list[Any] | None:
    """Keep the tokens (objects with ``.token``) that start inside ``[start, end)`` of their joint text."""
    if tokens is None:
        return None
    kept, pos = [], 0
    for tok in tokens:
        if pos >= start and (end is None or pos < end):
            kept.append(tok)
        pos += len(tok.token)
    return kept


def apply_stops(text: str, tokens: list[Any] | None, stops: Sequence[str]) -> tuple[str, list[Any] | None]:
    """Cut ``text`` at the first stop string (servers may send fewer stops than asked for)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return text, tokens
    cut = min(cuts)
    return text[:cut], cut_tokens(tokens, 0, cut)
