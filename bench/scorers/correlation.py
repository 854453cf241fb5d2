"""Correlation-family scores (method.md section 6), pooled over all excerpts of the scoring split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bench.protocols import ScoringContext
from bench.records import Score, SequenceSimulation
from bench.scorers import metrics


def pooled(sequences: list[SequenceSimulation]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate real and simulated activations of all excerpts (pool, then score)."""
    real = [a for s in sequences for a in s.true_activations]
    sim = [e for s in sequences for e in s.expected]
    return np.asarray(real, dtype=np.float64), np.asarray(sim, dtype=np.float64)


@dataclass(frozen=True)
class CorrelationScorer:
    """Pearson r on top-and-random, top-only and random-only; reference rsquared and absolute deviation
    explained, and variance-normalised explained variance, on the calibrated top-and-random set."""

    name: str = "correlation"
    version: int = 1
    needs_calibration: bool = True
    needs_subject: ClassVar[bool] = False
    llm: ClassVar[None] = None  # asks no LLM judge

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        both = [*ctx.scoring_top, *ctx.scoring_random]
        out: dict[str, Score] = {}
        for subset, seqs in (
            ("top_and_random", both),
            ("top_only", ctx.scoring_top),
            ("random_only", ctx.scoring_random),
        ):
            real, sim = pooled(seqs)
            key = f"correlation/{subset}"
            out[key] = metrics.correlation(key, real, sim)
        real, sim = pooled(both)
        calibrated_metrics = (
            ("rsquared", metrics.rsquared),
            ("absolute_dev_explained", metrics.absolute_dev_explained),
            ("explained_variance", metrics.explained_variance),
        )
        if ctx.calibrator is None:
            reason = f"no calibration: {ctx.calibration_problem or 'calibration split not simulated'}"
            for key, _ in calibrated_metrics:
                out[key] = Score(key, math.nan, reason)
            return out
        calibrated = ctx.calibrator(sim)
        for key, fn in calibrated_metrics:
            out[key] = fn(key, real, calibrated)
        return out
