"""A no-LLM baseline explainer: the tokens that most often carry the top activations.

Activations are normalised to 0-10 over the train records (bench/normalize.py); every token whose
value is at least ``min_normalized`` counts once per occurrence.  The ``top_n`` most frequent token
strings (ties: larger summed activation, then the string) become
``tokens such as " the", "of", "and"`` -- each token JSON-quoted so spaces and escapes stay visible.
Deterministic; no model call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from bench.normalize import normalize_records
from bench.protocols import Capability
from bench.records import ActivationRecord, Explanation, UnitId


@dataclass(frozen=True)
class TokenListExplainer:
    top_n: int = 5
    min_normalized: int = 5
    name: str = "token_list"
    llm: ClassVar[None] = None  # writes without an LLM
    required_capabilities: ClassVar[frozenset[Capability]] = frozenset()
    version: int = 1

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError("top_n: must be >= 1")
        if not 1 <= self.min_normalized <= 10:
            raise ValueError("min_normalized: must be in 1..10")

    def top_tokens(self, records: Sequence[ActivationRecord]) -> list[tuple[str, int, float]]:
        """(token, count, summed raw activation) of the qualifying tokens, best first."""
        counts: dict[str, int] = {}
        sums: dict[str, float] = {}
        for record, values in zip(records, normalize_records(records), strict=True):
            for token, value, raw in zip(record.tokens, values, record.activations, strict=True):
                if value >= self.min_normalized:
                    counts[token] = counts.get(token, 0) + 1
                    sums[token] = sums.get(token, 0.0) + raw
        ranked = sorted(counts, key=lambda t: (-counts[t], -sums[t], t))
        return [(t, counts[t], sums[t]) for t in ranked[: self.top_n]]

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]:
        top = self.top_tokens(records)
        if not top:
            raise ValueError(f"{self.name}: no positive activations in the train records of {unit.key}")
        quoted = ", ".join(json.dumps(t, ensure_ascii=False) for t, _, _ in top)
        meta = {
            "explainer_version": self.version,
            "top_n": self.top_n,
            "min_normalized": self.min_normalized,
            "tokens": [{"token": t, "count": c, "activation_sum": s} for t, c, s in top],
        }
        return [Explanation(text=f"tokens such as {quoted}", explainer=self.name, meta=meta)]
