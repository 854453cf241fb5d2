"""Calibration of simulated activations onto the real scale (method.md section 6).

Fitted on the calibration split, applied to the scoring split: simulations live on a 0-10 scale,
so rsquared, explained variance and ablation are only meaningful after this step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

Calibrator = Callable[[np.ndarray], np.ndarray]


class CalibrationError(ValueError):
    """The calibration split cannot support a fit (e.g. the simulation is constant on it)."""


def fit_calibration(method: str, simulated: ArrayLike, real: ArrayLike) -> Calibrator:
    """Return a function mapping simulated values to the real scale.

    ``linear``: least squares real ~ a * sim + b (scikit-learn).  ``percentile``: a simulated value
    goes to the real value at the same quantile of the calibration split.  ``none``: identity.
    """
    sim = np.asarray(simulated, dtype=np.float64).ravel()
    act = np.asarray(real, dtype=np.float64).ravel()
    if method == "none":
        return lambda x: np.asarray(x, dtype=np.float64)
    if sim.size != act.size or sim.size < 2:
        raise CalibrationError(f"calibration needs >= 2 paired values, got {sim.size} and {act.size}")
    if np.ptp(sim) == 0:
        raise CalibrationError("simulation is constant on the calibration split")
    if method == "linear":
        from sklearn.linear_model import LinearRegression

        from bench.scorers.sklearn_once import warm

        warm()  # 64 threads' first fits would each rediscover narwhals' plugins
        model = LinearRegression().fit(sim.reshape(-1, 1), act)
        return lambda x: model.predict(np.asarray(x, dtype=np.float64).reshape(-1, 1))
    if method == "percentile":
        sim_sorted = np.sort(sim)
        real_sorted = np.sort(act)
        return lambda x: np.interp(np.asarray(x, dtype=np.float64), sim_sorted, real_sorted)
    raise ValueError(f"unknown calibration {method!r}: use linear, percentile or none")
