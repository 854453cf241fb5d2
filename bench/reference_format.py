"""The reference's public ``NeuronRecord`` JSON format (method.md section 8), read and written.

Kept in ``bench`` because ``dataset=reference_records`` reads published records as unit records;
``plugins/reference_format.py`` builds its exporters and the published-explanation reader on it.
Objects carry a ``"dataclass_name"`` key and NaN is written as ``null``, as in the published files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats


def nan_to_null(value: float | None) -> float | None:
    """NaN (or None) as JSON ``null``, the published files' convention."""
    return None if value is None or math.isnan(value) else value


def activation_record_to_reference(record: ActivationRecord) -> dict[str, Any]:
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
        "random_sample": [activation_record_to_reference(r) for r in record.random],
        "random_sample_by_quantile": None,
        "quantile_boundaries": None,
        "mean": nan_to_null(record.stats.mean),
        "variance": nan_to_null(record.stats.variance),
        "skewness": nan_to_null(record.stats.skewness),
        "kurtosis": nan_to_null(record.stats.kurtosis),
        "most_positive_activation_records": [activation_record_to_reference(r) for r in record.top],
    }


def unit_record_from_reference(data: dict[str, Any], kind: str = "mlp_neuron") -> UnitRecord:
    """Read a published ``NeuronRecord`` (e.g. ``collated-activations/{layer}/{neuron}.json``).

    Top records are ordered by their maximum activation (descending), as mined ones; the random
    sample keeps the file's order.  ``stats.count`` is 0: the files do not say how many tokens the
    statistics cover.  ``null`` activations (NaN in the reference) read back as NaN.
    """

    def records(items: Sequence[dict[str, Any]] | None) -> list[ActivationRecord]:
        return [
            ActivationRecord(
                tokens=list(i["tokens"]), activations=[math.nan if a is None else float(a) for a in i["activations"]]
            )
            for i in items or ()
        ]

    nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
    nid = data["neuron_id"]
    top = sorted(records(data["most_positive_activation_records"]), key=lambda r: -r.max_activation)
    return UnitRecord(
        unit=UnitId(layer=int(nid["layer_index"]), index=int(nid["neuron_index"]), kind=kind),
        top=top,
        random=records(data.get("random_sample")),
        stats=UnitStats(
            count=0,
            mean=nan(data.get("mean")),
            variance=nan(data.get("variance")),
            skewness=nan(data.get("skewness")),
            kurtosis=nan(data.get("kurtosis")),
        ),
    )
