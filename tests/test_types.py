"""The type checker on bench/ (``[tool.mypy]`` in pyproject.toml), so that the README's test command
catches type errors too; ``.ci/run`` runs ``mypy`` again after ruff (then from the warm cache).

Marked ``slow``: a cold run takes one to two minutes on 2 cores (``-m "not slow"`` skips it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes_on_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy comes with the test extra: pip install -e '.[test]'")
    monkeypatch.chdir(ROOT)  # pyproject.toml's [tool.mypy] (files = bench) and its .mypy_cache
    stdout, stderr, status = api.run([])
    assert status == 0, f"mypy found type errors (run `mypy` in the repository root):\n{stdout}{stderr}"
    assert "no issues found" in stdout
