"""Judge noise: how much does the correlation score move when the *same* explanation is simulated again?

The scoring split is re-simulated ``repeats`` times with a sampled simulator (the run's, or the one
given in ``simulator``), and the pooled correlation (top-and-random) of each repeat is computed:
``judge_noise/std`` (sample standard deviation across repeats, ddof=1), ``judge_noise/mean`` and
``judge_noise/range`` (max - min).  Aggregated over units like every score, with a bootstrap CI.

Repeat ``j`` is drawn as the simulator allows, in this order: ``simulate(..., sample_index=j)`` when
its ``simulate`` takes a ``sample_index``; else the simulator with its ``llm.seed`` advanced by ``j``
(a dataclass copy; the loaded model is shared).  A simulator that can do neither gets NaN with the
reason.  A deterministic estimator (prompt logprobs) honestly gives a std of 0: the details say whether
all repeats were identical.  Usage of every repeat is counted as this scorer's cost.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from bench.protocols import ScoringContext
from bench.records import Score, Simulation, Usage
from bench.scorers import metrics
from bench.scorers.correlation import pooled

NAMES = ("std", "mean", "range")


def resampler(simulator: Any) -> tuple[Callable[[int, str, list[Any]], Simulation] | None, str]:
    """A function ``(j, explanation, records) -> Simulation`` drawing repeat ``j``, and how it does it."""
    params: Mapping[str, Any]
    try:
        params = inspect.signature(simulator.simulate).parameters
    except (TypeError, ValueError):
        params = {}
    if "sample_index" in params:
        return (lambda j, text, records: simulator.simulate(text, records, sample_index=j)), "sample_index"
    llm = simulator.llm
    # a bool first: is_dataclass() would narrow ``simulator`` to a bare DataclassInstance for mypy
    replaceable = dataclasses.is_dataclass(simulator) and dataclasses.is_dataclass(llm)
    if replaceable and "seed" in {f.name for f in dataclasses.fields(llm)}:

        def reseeded(j: int, text: str, records: list[Any]) -> Simulation:
            copy = dataclasses.replace(simulator, llm=dataclasses.replace(llm, seed=llm.seed + j))
            return copy.simulate(text, records)

        return reseeded, "llm_seed"
    return None, "none"


@dataclass(frozen=True)
class JudgeNoiseScorer:
    """Spread of the correlation score across re-simulations of the same explanation."""

    repeats: int = 3
    simulator: Any = None  # a sampled simulator to re-run; null: the run's simulator
    name: str = "judge_noise"
    version: int = 1
    needs_calibration: bool = False
    needs_subject: ClassVar[bool] = False
    llm: ClassVar[None] = None  # asks no LLM judge

    def __post_init__(self) -> None:
        if self.repeats < 2:
            raise ValueError(f"repeats: must be >= 2 to measure a spread, got {self.repeats}")

    def _nan(self, reason: str) -> dict[str, Score]:
        return {f"{self.name}/{n}": Score(f"{self.name}/{n}", math.nan, reason) for n in NAMES}

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        simulator = self.simulator if self.simulator is not None else ctx.simulator
        if simulator is None:
            return self._nan("no simulator given to the scorer")
        draw, how = resampler(simulator)
        if draw is None:
            reason = (
                f"simulator {simulator.name!r} cannot be re-sampled "
                "(its simulate takes no sample_index and its llm has no seed)"
            )
            ctx.details[self.name] = {"resampled_by": how, "reason": reason}
            return self._nan(reason)
        records = list(ctx.scoring_records)
        values, usage, predictions = [], Usage(), []
        for j in range(self.repeats):
            sim = draw(j, ctx.explanation.text, records)
            usage = usage + sim.usage
            real, pred = pooled(sim.sequences)
            predictions.append(pred)
            values.append(metrics.correlation("judge_noise", real, pred).value)
        identical = all(np.array_equal(predictions[0], p) for p in predictions[1:])
        ctx.details[self.name] = {
            "simulator": simulator.name,
            "resampled_by": how,
            "correlations": values,
            "identical_repeats": identical,
            "usage": asdict(usage),
        }
        finite = np.array([v for v in values if not math.isnan(v)])
        if finite.size < 2:
            return self._nan(f"fewer than 2 repeats have a defined correlation ({finite.size} of {self.repeats})")
        out = {
            f"{self.name}/std": float(finite.std(ddof=1)),
            f"{self.name}/mean": float(finite.mean()),
            f"{self.name}/range": float(np.ptp(finite)),
        }
        return {k: Score(k, v) for k, v in out.items()}
