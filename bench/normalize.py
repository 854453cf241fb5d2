"""Normalisation of activations to the 0-10 scale shown in prompts (method.md section 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.records import ActivationRecord

MAX_NORMALIZED = 10


def max_activation(records: Sequence[ActivationRecord]) -> float:
    """max over the shown records and tokens of relu(a); 0.0 when there is nothing positive."""
    best = 0.0
    for record in records:
        for value in record.activations:
            if value > best:
                best = value
    return best


def normalize_activations(activations: Sequence[float], max_value: float) -> list[int]:
    """``min(10, floor(10 * relu(a) / max))`` in exactly that order; all zeros when ``max <= 0``."""
    if max_value <= 0 or math.isnan(max_value):
        return [0] * len(activations)
    out = []
    for a in activations:
        relu = a if a > 0 else 0.0
        out.append(min(MAX_NORMALIZED, math.floor(MAX_NORMALIZED * relu / max_value)))
    return out


def normalize_records(records: Sequence[ActivationRecord]) -> list[list[int]]:
    """Normalise every record against the max recomputed over exactly these records."""
    peak = max_activation(records)
    return [normalize_activations(r.activations, peak) for r in records]
