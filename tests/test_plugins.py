"""plugins/: optional components on bench's public API; bench never imports them."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from bench.records import (
    ActivationRecord,
    Explanation,
    Score,
    SequenceSimulation,
    Simulation,
    UnitId,
    UnitRecord,
    UnitResult,
    UnitStats,
)
from plugins.reference_format import (
    ReferenceFileExplainer,
    unit_record_from_reference,
    unit_record_to_reference,
    unit_result_to_reference,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"bench.records", "bench.protocols", "bench.errors", "bench.normalize", "bench.reference_format"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_bench_never_imports_plugins_and_plugins_use_public_api_only():
    for path in (ROOT / "bench").rglob("*.py"):
        assert not any(m.split(".")[0] == "plugins" for m in imported_modules(path)), path
    for path in (ROOT / "plugins").rglob("*.py"):
        used = {m for m in imported_modules(path) if m.split(".")[0] == "bench"}
        assert used <= PUBLIC, (path, used - PUBLIC)


def test_neuron_record_round_trip_keeps_records_and_writes_nan_as_null():
    rec = UnitRecord(
        UnitId(3, 17),
        top=[ActivationRecord([" a", "b"], [2.0, 5.0]), ActivationRecord([" c"], [1.0])],
        random=[ActivationRecord(["x"], [-0.5])],
        stats=UnitStats(10, 0.1, 1.0, math.nan, 3.0),
    )
    data = json.loads(json.dumps(unit_record_to_reference(rec)))
    assert data["dataclass_name"] == "NeuronRecord" and data["skewness"] is None
    assert data["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 3, "neuron_index": 17}
    back = unit_record_from_reference(data)
    assert back.unit == rec.unit and back.top == rec.top and back.random == rec.random
    assert math.isnan(back.stats.skewness)


def test_simulation_results_export_carries_scores_and_sequences():
    sim = Simulation([SequenceSimulation(["a"], [3.0], [1.0])], "s", "all_at_once/prompt_logprobs")
    result = UnitResult(
        UnitId(1, 2),
        "ok",
        Explanation("dogs", "x"),
        sim,
        scores={"correlation/top_and_random": Score("c", 0.5), "rsquared": Score("r", math.nan, "no calibration")},
    )
    data = unit_result_to_reference(result)
    scored = data["scored_explanations"][0]
    assert scored["explanation"] == "dogs"
    assert scored["scored_simulation"]["ev_correlation_score"] == 0.5
    assert scored["scored_simulation"]["rsquared_score"] is None
    assert scored["scored_simulation"]["scored_sequence_simulations"][0]["true_activations"] == [1.0]


def test_reference_file_explainer_reads_published_files_and_fails_loudly(tmp_path):
    (tmp_path / "5").mkdir()
    line = {"neuron_id": {"layer_index": 5, "neuron_index": 9}, "scored_explanations": [{"explanation": " cats"}]}
    (tmp_path / "5" / "9.jsonl").write_text(json.dumps(line) + "\n")
    explainer = ReferenceFileExplainer(root=str(tmp_path))
    assert explainer.explain(UnitId(5, 9), [])[0].text == " cats"
    with pytest.raises(FileNotFoundError, match="mlp_neuron/L5/10"):
        explainer.explain(UnitId(5, 10), [])
    with pytest.raises(ValueError, match="root"):
        ReferenceFileExplainer(root=str(tmp_path / "nope"))
