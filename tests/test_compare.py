import json
import math

import numpy as np
import pytest

from bench.cli import main
from bench.compare import compare, load_results, permutation_p_value
from bench.records import Score, UnitId, UnitResult


def results(values: dict[int, float]) -> list[UnitResult]:
    return [
        UnitResult(UnitId(1, i), "ok", scores={"correlation/top_and_random": Score("c", v)}) for i, v in values.items()
    ]


def test_paired_difference_and_unpaired_count():
    a = results({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9})
    b = results({0: 0.4, 1: 0.5, 2: 0.6, 4: 0.1})
    c = compare(a, b, "correlation/top_and_random", resamples=500)
    assert c.n_pairs == 3 and c.n_unpaired == 2
    assert c.mean_diff == pytest.approx(0.1)
    assert c.ci_low == pytest.approx(0.1) and c.ci_high == pytest.approx(0.1)
    # all three differences positive: exact sign-flip p = 2/8
    assert c.p_value == pytest.approx(0.25)


def test_permutation_p_value_exact_small_n():
    assert permutation_p_value(np.array([1.0, -1.0]), 100, 0) == pytest.approx(1.0)
    assert permutation_p_value(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 100, 0) == pytest.approx(2 / 32)


def test_nan_and_failed_units_are_not_paired():
    a = results({0: math.nan, 1: 0.3}) + [UnitResult(UnitId(1, 2), "failed", error="x")]
    b = results({0: 0.2, 1: 0.1, 2: 0.5})
    c = compare(a, b, "correlation/top_and_random")
    assert c.n_pairs == 1 and c.n_unpaired == 2


def test_cli_compare_reads_run_folders(tmp_path, capsys):
    for name, vals in (("a", {0: 0.5, 1: 0.8}), ("b", {0: 0.4, 1: 0.6})):
        d = tmp_path / name
        d.mkdir()
        (d / "results.jsonl").write_text("\n".join(json.dumps(r.to_json()) for r in results(vals)) + "\n")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_pairs"] == 2 and out["mean_diff"] == pytest.approx(0.15)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert load_results(str(tmp_path / "a"))[0].unit.layer == 1
