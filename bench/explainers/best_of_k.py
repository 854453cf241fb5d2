"""Best-of-k explanations (Transluce; method.md section 7): sample k, keep the one that simulates best.

The wrapped explainer writes ``k`` explanations from the train split (its ``samples`` is set to ``k``);
each distinct one is simulated on the **calibration** split with the run's simulator and scored by the
pooled correlation (top-and-random); the best is returned and scored as usual on the scoring split, so
the choice never sees the scoring excerpts.  Ties go to the earlier sample; when no candidate has a
defined correlation the first one is kept, and the meta says so.

All k explanations, their rerank scores (NaN with reasons) and usages are kept in
``Explanation.meta["best_of_k"]``; the returned explanation's ``usage`` is the sum over all k
generations and all rerank simulations, so the run's explainer cost is the real cost of best-of-k.

The pipeline hands the reranker over (:func:`explain_unit`): an explainer with an
``explain_reranked(unit, records, rerank)`` method gets a ``rerank(text) -> Rerank`` callable bound to
the run's simulator and the unit's calibration split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.protocols import Capability, Explainer, LLMClient, Reranks, Simulator
from bench.records import ActivationRecord, Explanation, Splits, UnitId, Usage
from bench.scorers import metrics
from bench.scorers.correlation import pooled

RERANK_SPLIT = "calibration"
RERANK_SCORE = "correlation/top_and_random"


@dataclass(frozen=True)
class Rerank:
    """A candidate's simulated score on the rerank split (NaN with a reason when undefined)."""

    score: float
    reason: str | None
    usage: Usage


def simulation_reranker(simulator: Simulator, records: Sequence[ActivationRecord]) -> Callable[[str], Rerank]:
    """``rerank(text)``: simulate ``records`` from ``text`` and return the pooled Pearson correlation."""

    def rerank(text: str) -> Rerank:
        simulation = simulator.simulate(text, list(records))
        real, predicted = pooled(simulation.sequences)
        score = metrics.correlation(RERANK_SCORE, real, predicted)
        return Rerank(score.value, score.reason, simulation.usage)

    return rerank


def explain_unit(explainer: Explainer, simulator: Simulator, unit: UnitId, splits: Splits) -> list[Explanation]:
    """Explanations of ``unit`` from its train split; a reranking explainer also gets a reranker on the
    calibration split bound to the run's simulator."""
    if isinstance(explainer, Reranks):
        rerank_records = [*splits.calibration.top, *splits.calibration.random]
        return explainer.explain_reranked(unit, splits.train.top, simulation_reranker(simulator, rerank_records))
    return explainer.explain(unit, splits.train.top)


@dataclass(frozen=True)
class BestOfKExplainer:
    """Wrap an explainer: sample ``k`` explanations, keep the one with the best simulated rerank score."""

    explainer: Any  # an explainer with a ``samples`` field (e.g. LLMExplainer); its samples becomes k
    k: int = 3
    name: str = "best_of_k"
    version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k: must be an integer >= 1, got {self.k!r}")
        inner = self.explainer
        fields = {f.name for f in dataclasses.fields(inner)} if dataclasses.is_dataclass(inner) else set()
        if "samples" not in fields:
            raise ValueError(
                "explainer: must be an explainer with a 'samples' field (e.g. LLMExplainer), "
                f"got {type(inner).__name__}"
            )
        if inner.samples != self.k:
            object.__setattr__(self, "explainer", dataclasses.replace(inner, samples=self.k))

    def for_unit_kind(self, kind: str) -> BestOfKExplainer:
        """The wrapped explainer worded for ``kind``'s units (:mod:`bench.unit_nouns`)."""
        from bench.unit_nouns import for_unit_kind

        return dataclasses.replace(self, explainer=for_unit_kind(self.explainer, kind))

    @property
    def required_capabilities(self) -> frozenset[Capability]:
        return frozenset(self.explainer.required_capabilities)

    @property
    def llm(self) -> LLMClient | None:
        return self.explainer.llm

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]:
        raise RuntimeError(
            f"{self.name}: best-of-k needs a reranker; call explain_reranked(unit, records, rerank) "
            "(the pipeline does, with the run's simulator on the calibration split)"
        )

    def explain_reranked(
        self, unit: UnitId, records: Sequence[ActivationRecord], rerank: Callable[[str], Rerank]
    ) -> list[Explanation]:
        candidates = self.explainer.explain(unit, records)
        if not candidates:
            raise RuntimeError(f"{self.name}: the wrapped explainer returned no explanation for {unit.key}")
        reranked: dict[str, Rerank] = {}
        for c in candidates:  # a text written twice is simulated once
            if c.text not in reranked:
                reranked[c.text] = rerank(c.text)
        scores = [reranked[c.text].score for c in candidates]
        finite = [i for i, s in enumerate(scores) if not math.isnan(s)]
        winner = max(finite, key=lambda i: (scores[i], -i)) if finite else 0
        generation_usage = sum((c.usage for c in candidates), Usage())
        rerank_usage = sum((r.usage for r in reranked.values()), Usage())
        best = candidates[winner]
        meta = {
            **best.meta,
            "best_of_k": {
                "k": self.k,
                "explained": len(candidates),  # samples the wrapped explainer kept (empty ones are dropped)
                "winner": winner,
                "chosen_by": "rerank score" if finite else "first sample: no candidate has a defined rerank score",
                "rerank_split": RERANK_SPLIT,
                "rerank_score": RERANK_SCORE,
                "candidates": [
                    {
                        "text": c.text,
                        "sample_index": c.meta.get("sample_index", i),
                        "rerank_score": None if math.isnan(reranked[c.text].score) else reranked[c.text].score,
                        "rerank_reason": reranked[c.text].reason,
                        "usage": asdict(c.usage),
                    }
                    for i, c in enumerate(candidates)
                ],
                "usage": {"explanations": asdict(generation_usage), "rerank": asdict(rerank_usage)},
                "inner_explainer": self.explainer.name,
            },
        }
        return [Explanation(text=best.text, explainer=self.name, meta=meta, usage=generation_usage + rerank_usage)]
