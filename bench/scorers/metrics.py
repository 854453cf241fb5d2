"""Score formulas of method.md section 6, as pure functions over pooled arrays.

Each returns a :class:`~bench.records.Score`; undefined values are NaN *with a reason* (constant
input, empty input) and never 0.  Callers pool all excerpts first (concatenate, then score).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from bench.records import Score

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _arrays(real: ArrayLike, sim: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(real, dtype=np.float64).ravel()
    s = np.asarray(sim, dtype=np.float64).ravel()
    if r.shape != s.shape:
        raise ValueError(f"real has {r.size} values but simulated has {s.size}")
    return r, s


def correlation(name: str, real: ArrayLike, sim: ArrayLike) -> Score:
    """Pearson r of real vs simulated activations (the paper's explanation score)."""
    r, s = _arrays(real, sim)
    if r.size < 2:
        return Score(name, math.nan, f"needs at least 2 tokens, got {r.size}")
    if np.ptp(r) == 0:
        return Score(name, math.nan, "real activations are constant")
    if np.ptp(s) == 0:
        return Score(name, math.nan, "simulated activations are constant")
    value = float(np.corrcoef(r, s)[0, 1])
    return Score(name, value)


def rsquared(name: str, real: ArrayLike, sim: ArrayLike) -> Score:
    """Reference rsquared: ``1 - mean((real - sim)^2) / mean(real^2)``."""
    r, s = _arrays(real, sim)
    if r.size == 0:
        return Score(name, math.nan, "no tokens")
    denom = float(np.mean(r**2))
    if denom == 0:
        return Score(name, math.nan, "real activations are all zero")
    return Score(name, 1.0 - float(np.mean((r - s) ** 2)) / denom)


def absolute_dev_explained(name: str, real: ArrayLike, sim: ArrayLike) -> Score:
    """Reference absolute deviation explained: ``1 - mean|real - sim| / mean|real|``."""
    r, s = _arrays(real, sim)
    if r.size == 0:
        return Score(name, math.nan, "no tokens")
    denom = float(np.mean(np.abs(r)))
    if denom == 0:
        return Score(name, math.nan, "real activations are all zero")
    return Score(name, 1.0 - float(np.mean(np.abs(r - s))) / denom)


def explained_variance(name: str, real: ArrayLike, sim: ArrayLike) -> Score:
    """Variance-normalised: ``1 - var(real - sim) / var(real)`` (distinct from the reference rsquared)."""
    r, s = _arrays(real, sim)
    if r.size < 2:
        return Score(name, math.nan, f"needs at least 2 tokens, got {r.size}")
    denom = float(np.var(r))
    if denom == 0:
        return Score(name, math.nan, "real activations are constant")
    return Score(name, 1.0 - float(np.var(r - s)) / denom)
