"""The per-unit write path made cheaper for 10^5-unit runs (benchmarks/bench_engine.py orchestration) must
write exactly what it wrote before: results lines equal the old ``asdict`` conversion, redaction still
sees environment variables set after an earlier redaction, results.jsonl is complete after close."""

from __future__ import annotations

import json
import math
from collections import OrderedDict, namedtuple
from dataclasses import asdict

import numpy as np

from bench.records import (
    Explanation,
    Score,
    SequenceSimulation,
    Simulation,
    UnitId,
    UnitResult,
    Usage,
    _nan_to_none,
    unit_result_from_json,
)
from bench.run.folder import JsonlSink, read_results
from bench.tracking.redact import MASK, redact

Pair = namedtuple("Pair", "a b")


def _rich_result() -> UnitResult:
    sim = Simulation(
        sequences=[
            SequenceSimulation(
                tokens=["a", " b"],
                expected=[0.5, math.nan],
                true_activations=[1.0, 0.0],
                unparsed=1,
                distributions=[[0.1] * 11, [math.nan] * 11],
            )
        ],
        simulator="s",
        estimator="all_at_once/prompt_logprobs",
        usage=Usage(calls=2, input_tokens=10, dollars=math.nan),
        meta={"k": (1, 2.5, math.nan), "nested": {"deep": [Pair(1, math.nan)]}},
        top_k=20,
    )
    return UnitResult(
        unit=UnitId(3, 7),
        status="ok",
        explanation=Explanation("text", "x", meta={"usage": Usage(calls=1)}, usage=Usage(calls=1, dollars=0.25)),
        simulation=sim,
        scores={"c": Score("c", math.nan, "constant"), "d": Score("d", 0.75)},
        extras={
            "od": OrderedDict([("z", 1), ("y", math.nan)]),
            "np": np.float64(0.5),
            "npnan": np.float64("nan"),
            "none": None,
            "flag": True,
        },
    )


def test_to_json_equals_the_asdict_conversion() -> None:
    result = _rich_result()
    fast, old = result.to_json(), _nan_to_none(asdict(result))
    assert json.dumps(fast) == json.dumps(old)
    assert fast["simulation"]["sequences"][0]["expected"][1] is None
    assert fast["simulation"]["meta"]["k"] == [1, 2.5, None]
    assert fast["extras"]["npnan"] is None and fast["extras"]["flag"] is True
    back = unit_result_from_json(json.loads(json.dumps(fast)))
    assert back.unit == result.unit and back.scores["d"].value == 0.75 and math.isnan(back.scores["c"].value)


def test_to_json_does_not_share_mutable_values_with_the_result() -> None:
    result = _rich_result()
    line = result.to_json()
    line["scores"]["d"]["value"] = -1.0
    line["extras"]["od"]["z"] = 99
    assert result.scores["d"].value == 0.75 and result.extras["od"]["z"] == 1


def test_redaction_sees_a_variable_set_after_an_earlier_redaction(monkeypatch) -> None:
    secret = "sk-late-secret-value-123456"
    assert redact({"msg": f"key {secret}"}) == {"msg": f"key {secret}"}  # not a secret yet: the scan is cached
    monkeypatch.setenv("LATE_API_KEY", secret)
    assert redact({"msg": f"key {secret}"}) == {"msg": f"key {MASK}"}
    monkeypatch.setenv("LATE_API_KEY", "sk-another-secret-value-654321")  # a changed value is seen too
    assert redact("sk-another-secret-value-654321 and " + secret) == f"{MASK} and {secret}"


def test_results_lines_are_complete_without_one_fsync_per_line(tmp_path) -> None:
    sink = JsonlSink(tmp_path / "results.jsonl")
    results = [UnitResult(unit=UnitId(0, i), status="ok", scores={"s": Score("s", i / 10)}) for i in range(50)]
    for r in results:
        sink.write(r)
    assert set(read_results(tmp_path / "results.jsonl")) == {r.unit.key for r in results}  # flushed per line
    sink.close({"units/total": 50.0})
    again = JsonlSink(tmp_path / "results.jsonl")  # a re-run sees every unit as finished
    assert again.finished_units() == {r.unit.key for r in results}
