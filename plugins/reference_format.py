"""Interoperability with the reference's public data format (method.md section 8).

An optional extra, built on ``bench``'s public API only (records, protocols, errors):

* :class:`ReferenceFileExplainer` -- score *published* explanations (one
  ``explanations/{layer}/{neuron}.jsonl`` per neuron) with any neuronbench simulator and scorer:
  ``neuronbench run explainer=reference_files explainer.root=/data/explanations``.
* :func:`unit_record_to_reference` / :func:`unit_record_from_reference` -- ``NeuronRecord`` JSON
  (defined in :mod:`bench.reference_format`, which ``dataset=reference_records`` reads with).
* :func:`unit_result_to_reference` -- ``NeuronSimulationResults`` JSON of a scored unit.

Objects carry a ``"dataclass_name"`` key and NaN is written as ``null``, as in the published files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.protocols import Capability
from bench.records import ActivationRecord, Explanation, UnitId, UnitResult
from bench.reference_format import nan_to_null as _num
from bench.reference_format import unit_record_from_reference, unit_record_to_reference

__all__ = [
    "ReferenceFileExplainer",
    "unit_record_from_reference",
    "unit_record_to_reference",
    "unit_result_to_reference",
]


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
    llm: ClassVar[None] = None  # bench.protocols.Explainer: reads files, asks no LLM
    required_capabilities: ClassVar[frozenset[Capability]] = frozenset()

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
