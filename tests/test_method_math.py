"""Normalisation, splits, the expected-value rule and every score against hand-computed values."""

import math

import numpy as np
import pytest

from bench.errors import UserError
from bench.normalize import max_activation, normalize_activations, normalize_records
from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats
from bench.scorers import metrics
from bench.scorers.calibration import CalibrationError, fit_calibration
from bench.simulators.expected_value import expected_value_from_logprobs, expected_value_from_probabilities
from bench.splits import make_splits


def rec(*acts: float) -> ActivationRecord:
    return ActivationRecord(tokens=[f"t{i}" for i in range(len(acts))], activations=list(acts))


# --- normalisation ---------------------------------------------------------------------------------
def test_normalize_multiply_divide_floor_cap_order():
    # 10 * 0.3 / 1.0 = 3.0000000000000004 -> 3 ; computing 0.3 / 1.0 * 10 first would give the same,
    # but 10 * 2.9 / 2.9 must be exactly 10 and values above max are capped at 10.
    assert normalize_activations([0.3, 2.9, 1.45, 3.5], 2.9) == [1, 10, 5, 10]
    assert normalize_activations([0.0, 0.999, 1.0], 1.0) == [0, 9, 10]


def test_normalize_negative_values_are_relu_zeroed():
    assert normalize_activations([-5.0, -0.1, 2.0], 4.0) == [0, 0, 5]


def test_normalize_all_zero_when_max_not_positive():
    assert normalize_activations([-1.0, -2.0], 0.0) == [0, 0]
    assert normalize_activations([1.0], -3.0) == [0]
    assert normalize_activations([], 1.0) == []


def test_max_recomputed_over_shown_records():
    records = [rec(-3.0, 1.0), rec(0.5, 4.0)]
    assert max_activation(records) == 4.0
    assert normalize_records(records) == [[0, 2], [1, 10]]
    assert max_activation([rec(-1.0, -2.0)]) == 0.0
    assert normalize_records([rec(-1.0)]) == [[0]]


# --- splits ----------------------------------------------------------------------------------------
def unit_record(n_top: int, n_random: int) -> UnitRecord:
    top = [rec(float(100 - i)) for i in range(n_top)]
    random = [rec(float(-i)) for i in range(n_random)]
    return UnitRecord(UnitId(0, 0), top, random, UnitStats(1, 0.0, 0.0, 0.0, 0.0))


def test_splits_interleave_as_method_says():
    r = unit_record(20, 15)
    s = make_splits(r, 5)
    tops = lambda split: [x.activations[0] for x in split.top]  # noqa: E731
    rands = lambda split: [x.activations[0] for x in split.random]  # noqa: E731
    assert tops(s.train) == [100, 96, 92, 88, 84] and s.train.random == []
    assert tops(s.calibration) == [99, 95, 91, 87, 83] and rands(s.calibration) == [0, -3, -6, -9, -12]
    assert tops(s.valid) == [98, 94, 90, 86, 82] and rands(s.valid) == [-1, -4, -7, -10, -13]
    assert tops(s.test) == [97, 93, 89, 85, 81] and rands(s.test) == [-2, -5, -8, -11, -14]
    assert len(s.valid.select("top_and_random")) == 10
    assert s.valid.select("random_only") == s.valid.random


def test_too_few_records_names_unit_and_counts():
    with pytest.raises(UserError, match=r"mlp_neuron/L0/0 has 19 top and 15 random.*at least 20 top and 15 random"):
        make_splits(unit_record(19, 15), 5)


# --- expected value ----------------------------------------------------------------------------------
def test_expected_value_renormalises_over_valid_tokens_only():
    ev = expected_value_from_logprobs({"0": math.log(0.2), "10": math.log(0.2), "unknown": math.log(0.5), " 3": -0.1})
    assert ev.parsed and ev.value == pytest.approx(5.0)
    assert ev.distribution[0] == pytest.approx(0.5) and ev.distribution[10] == pytest.approx(0.5)


def test_expected_value_no_valid_token_is_unparsed_zero():
    ev = expected_value_from_logprobs({"unknown": -0.1, "a": -2.0})
    assert ev.value == 0.0 and not ev.parsed
    assert not expected_value_from_probabilities({}).parsed


def test_expected_value_single_value():
    assert expected_value_from_probabilities({"7": 0.01}).value == pytest.approx(7.0)


# --- scores ----------------------------------------------------------------------------------------
def test_correlation_hand_computed():
    assert metrics.correlation("c", [1, 2, 3], [2, 4, 6]).value == pytest.approx(1.0)
    assert metrics.correlation("c", [1, 2, 3], [3, 2, 1]).value == pytest.approx(-1.0)
    # by hand: sum dx*dy = 4.5, sum dx^2 = 5, sum dy^2 = 4.75 -> r = 4.5 / sqrt(23.75)
    assert metrics.correlation("c", [0, 1, 2, 3], [0, 1, 1, 3]).value == pytest.approx(4.5 / math.sqrt(23.75))


def test_correlation_nan_with_reason_never_zero():
    s = metrics.correlation("c", [1, 1, 1], [1, 2, 3])
    assert math.isnan(s.value) and "real activations are constant" in s.reason
    s = metrics.correlation("c", [1, 2, 3], [0, 0, 0])
    assert math.isnan(s.value) and "simulated" in s.reason
    assert math.isnan(metrics.correlation("c", [1.0], [1.0]).value)
    assert math.isnan(metrics.correlation("c", [], []).value)


def test_rsquared_and_absolute_dev_reference_formulas():
    real, sim = [1.0, -2.0, 3.0], [1.0, 0.0, 2.0]
    # mean((r-s)^2) = (0 + 4 + 1)/3 = 5/3 ; mean(r^2) = 14/3 -> 1 - 5/14
    assert metrics.rsquared("r", real, sim).value == pytest.approx(1 - 5 / 14)
    # mean|r-s| = 1 ; mean|r| = 2 -> 0.5
    assert metrics.absolute_dev_explained("a", real, sim).value == pytest.approx(0.5)
    assert math.isnan(metrics.rsquared("r", [0, 0], [1, 2]).value)
    assert math.isnan(metrics.absolute_dev_explained("a", [], []).value)


def test_explained_variance_is_variance_normalised():
    real, sim = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]  # constant offset: all variance explained
    assert metrics.explained_variance("e", real, sim).value == pytest.approx(1.0)
    assert metrics.rsquared("r", real, sim).value == pytest.approx(1 - 1 / 7.5)
    assert math.isnan(metrics.explained_variance("e", [2, 2], [1, 2]).value)


def test_scores_refuse_mismatched_lengths():
    with pytest.raises(ValueError):
        metrics.correlation("c", [1, 2], [1])


# --- calibration -----------------------------------------------------------------------------------
def test_linear_calibration_recovers_affine_map():
    sim = np.array([0.0, 5.0, 10.0, 2.0])
    cal = fit_calibration("linear", sim, 0.3 * sim - 1.0)
    assert cal(np.array([4.0])) == pytest.approx([0.2])


def test_percentile_calibration_maps_quantiles():
    cal = fit_calibration("percentile", [0, 1, 2, 3], [10, 20, 30, 40])
    assert list(cal(np.array([0.0, 1.5, 3.0]))) == pytest.approx([10, 25, 40])


def test_calibration_refuses_constant_simulation():
    with pytest.raises(CalibrationError, match="constant"):
        fit_calibration("linear", [1, 1, 1], [0, 1, 2])
    assert list(fit_calibration("none", [], [])(np.array([3.0]))) == [3.0]


def test_derangement_never_maps_a_unit_to_itself_and_repeats_use_distinct_donors():
    from types import SimpleNamespace

    from bench.pipeline import assign_controls, derangement

    for n in range(2, 9):
        for shift in range(1, n):
            perm = derangement(n, shift, seed=3)
            assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert derangement(1, 1, 0) is None
    settings = SimpleNamespace(control=SimpleNamespace(enabled=True, repeats=5), seed=0)
    controls = assign_controls(settings, ["a", "b", "c"])
    assert all(len(v) == 2 and len(set(v)) == 2 and k not in v for k, v in controls.items())
