"""Interoperability with the reference's public data format (method.md section 8).

An optional extra, built on ``bench``'s public API only (records, protocols, errors):

* :class:`ReferenceFileExplainer` -- score *published* explanations (one
  ``explanations/{layer}/{neuron}.jsonl`` per neuron) with any neuronbench simulator and scorer:
  ``neuronbench run explainer=reference_files explainer.root=/data/explanations``.
* :func:`unit_record_to_reference` / :func:`unit_record_from_reference` -- ``NeuronRecord`` JSON.
* :func:`unit_result_to_reference` -- ``NeuronSimulationResults`` JSON of a scored unit.

Objects carry a ``"dataclass_name"`` key and NaN is written as ``null``, as in the published files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records import ActivationRecord, Explanation, UnitId, UnitRecord, UnitResult, UnitStats


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def _activation_record(record: ActivationRecord) -> dict[str, Any]:
    return {
        "dataclass_name": "ActivationRecord",
        "tokens": list(record.tokens),
        "activations": list(record.activations),
    }


def unit_record_to_reference(record: UnitRecord) -> dict[str, Any]:
    """A ``NeuronRecord`` (quantile samples are not mined here: written as null)."""
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": record.unit.layer,
            "neuron_index": record.unit.index,
        },
        "random_sample": [_activation_record(r) for r in record.random],
        "random_sample_by_quantile": None,
        "quantile_boundaries": None,
        "mean": _num(record.stats.mean),
        "variance": _num(record.stats.variance),
        "skewness": _num(record.stats.skewness),
        "kurtosis": _num(record.stats.kurtosis),
        "most_positive_activation_records": [_activation_record(r) for r in record.top],
    }


def unit_record_from_reference(data: dict[str, Any]) -> UnitRecord:
    """Read a published ``NeuronRecord`` (e.g. ``collated-activations/{layer}/{neuron}.json``)."""

    def records(items: Sequence[dict[str, Any]]) -> list[ActivationRecord]:
        return [
            ActivationRecord(tokens=list(i["tokens"]), activations=[float(a) for a in i["activations"]]) for i in items
        ]

    nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
    nid = data["neuron_id"]
    top = sorted(records(data["most_positive_activation_records"]), key=lambda r: -r.max_activation)
    return UnitRecord(
        unit=UnitId(layer=int(nid["layer_index"]), index=int(nid["neuron_index"])),
        top=top,
        random=records(data["random_sample"]),
        stats=UnitStats(
            count=0,
            mean=nan(data.get("mean")),
            variance=nan(data.get("variance")),
            skewness=nan(data.get("skewness")),
            kurtosis=nan(data.get("kurtosis")),
        ),
    )


def unit_result_to_reference(result: UnitResult) -> dict[str, Any]:
    """``NeuronSimulationResults`` of one scored unit (uncalibrated simulation, as the reference)."""
    sequences = []
    if result.simulation is not None:
        for s in result.simulation.sequences:
            sequences.append(
                {
                    "dataclass_name": "ScoredSequenceSimulation",
                    "simulation": {
                        "dataclass_name": "SequenceSimulation",
                        "tokens": list(s.tokens),
                        "expected_activations": list(s.expected),
                        "activation_scale": "simulated_normalized_activations",
                        "distribution_values": [list(range(11)) for _ in s.tokens] if s.distributions else None,
                        "distribution_probabilities": s.distributions,
                        "uncalibrated_simulation": None,
                    },
                    "true_activations": list(s.true_activations),
                    "ev_correlation_score": None,
                    "rsquared_score": None,
                    "absolute_dev_explained_score": None,
                }
            )
    score = lambda name: _num(result.scores[name].value) if name in result.scores else None  # noqa: E731
    return {
        "dataclass_name": "NeuronSimulationResults",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": result.unit.layer,
            "neuron_index": result.unit.index,
        },
        "scored_explanations": [
            {
                "dataclass_name": "ScoredExplanation",
                "explanation": result.explanation.text if result.explanation else None,
                "scored_simulation": {
                    "dataclass_name": "ScoredSimulation",
                    "scored_sequence_simulations": sequences,
                    "ev_correlation_score": score("correlation/top_and_random"),
                    "rsquared_score": score("rsquared"),
                    "absolute_dev_explained_score": score("absolute_dev_explained"),
                },
            }
        ],
    }


@dataclass(frozen=True)
class ReferenceFileExplainer:
    """Explanations read from published ``{root}/{layer}/{neuron}.jsonl`` files instead of an LLM.

    A unit without a file fails at the explain stage with the missing path as its reason (counted,
    never scored as 0).  ``which`` picks among several scored explanations in a file.
    """

    root: str
    which: int = 0
    name: str = "reference_files"
    version: int = 1

    def __post_init__(self) -> None:
        if not Path(self.root).expanduser().is_dir():
            raise ValueError(f"root: no such directory {self.root!r} (the folder holding <layer>/<neuron>.jsonl)")
        if self.which < 0:
            raise ValueError(f"which: must be >= 0, got {self.which}")

    def explain(self, unit: UnitId, records: Sequence[ActivationRecord]) -> list[Explanation]:
        path = Path(self.root).expanduser() / str(unit.layer) / f"{unit.index}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"no published explanation for {unit.key} at {path}")
        first = next(line for line in path.read_text().splitlines() if line.strip())
        scored = json.loads(first)["scored_explanations"]
        if self.which >= len(scored):
            raise ValueError(f"{path} has {len(scored)} explanations; which={self.which} is out of range")
        text = scored[self.which]["explanation"]
        return [Explanation(text=text, explainer=self.name, meta={"source": str(path), "which": self.which})]
