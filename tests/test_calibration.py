"""Calibration's use of scikit-learn under the engine's worker threads."""

from __future__ import annotations

import threading

from bench.scorers.calibration import fit_calibration


def test_concurrent_first_fits_warm_scikit_learn_once(monkeypatch) -> None:
    """16 threads reaching their first fit together run the warm-up fit (narwhals' plugin discovery) once."""
    from sklearn.linear_model import LinearRegression

    from bench.scorers import sklearn_once

    monkeypatch.setattr(sklearn_once, "_ready", False)
    calls = []
    original = LinearRegression.fit

    def counted(self, *args, **kwargs):
        calls.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LinearRegression, "fit", counted)
    start = threading.Barrier(16)

    errors: list[BaseException] = []

    def first_fit() -> None:
        start.wait()
        try:
            fit_calibration("linear", [0.0, 1.0, 2.0], [0.0, 2.0, 4.0])
        except BaseException as err:  # a thread's exception would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=first_fit) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(calls) == 1 + 16  # one warm-up, then each thread's own fit
    assert sklearn_once._ready
