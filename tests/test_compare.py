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


def _write_run(path, values: dict[int, float], subject: str = "m", excerpts: str = "fp", split: str = "valid"):
    path.mkdir(parents=True)
    provenance = {"subject": {"model": subject, "revision": None, "hook_site": "mlp"}, "excerpts": excerpts}
    rows = [
        UnitResult(
            UnitId(1, i), "ok", scores={"correlation/top_and_random": Score("c", v)}, extras={"provenance": provenance}
        )
        for i, v in values.items()
    ]
    (path / "results.jsonl").write_text("\n".join(json.dumps(r.to_json()) for r in rows) + "\n")
    (path / "config.json").write_text(json.dumps({"scoring": {"split": split}, "units": {"examples_per_split": 5}}))
    return str(path)


def test_cli_compare_reports_an_exact_permutation_p_for_small_n(tmp_path, capsys):
    a = _write_run(tmp_path / "a", {i: 0.5 + i / 10 for i in range(5)})
    b = _write_run(tmp_path / "b", {i: 0.1 for i in range(5)})
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "p = 0.0625, exact" in out  # all 5 differences positive: 2 of 2^5 sign patterns as extreme
    assert main(["compare", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p_exact"] is True
    many = compare(
        results({i: 1.0 + i for i in range(20)}), results({i: 0.0 for i in range(20)}), "correlation/top_and_random"
    )
    assert many.p_exact is False and many.p_value < 0.01


@pytest.mark.parametrize(
    "b_kwargs,values,named",
    [
        ({"subject": "other-model"}, {0: 0.1, 1: 0.2}, "subject (A m, B other-model)"),
        ({"excerpts": "fp2"}, {0: 0.1, 1: 0.2}, "excerpts (fingerprint)"),
        ({"split": "test"}, {0: 0.1, 1: 0.2}, "scoring split"),
        ({}, {0: 0.1, 5: 0.2}, "units (A has 2 units, B 2, 1 shared)"),
    ],
)
def test_cli_compare_refuses_runs_that_cannot_pair_in_one_line(tmp_path, capsys, b_kwargs, values, named):
    a = _write_run(tmp_path / "a", {0: 0.5, 1: 0.8})
    b = _write_run(tmp_path / "b", values, **b_kwargs)
    assert main(["compare", a, b]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the runs differ in {named}" in err
