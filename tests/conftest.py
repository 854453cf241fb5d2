"""Shared fixtures: an isolated MLflow store per test (migrated once per session, then copied), and the
tiny llama subject + text corpus that the CLI / pipeline test modules run on (a module may define its own)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly migrated sqlite store: migrations cost seconds, copying the file costs nothing."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{path}")
    mlflow.search_experiments()
    return path


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama saved as a ``from_pretrained`` folder (one per module)."""
    from conftest_models import save_tiny_subject

    return save_tiny_subject("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text corpus of the tiny tokenizer's training text (one per module)."""
    from conftest_models import _TRAINING_TEXT

    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 6))
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, _mlflow_template: Path) -> dict[str, str]:
    """A private MLflow tracking URI and artifact folder for one test."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(_mlflow_template, db)
    return {"uri": f"sqlite:///{db}", "artifacts": str(tmp_path / "mlruns" / "artifacts")}


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A CLI run inside a test lets Hydra add handlers to the root logger that write to that test's
    captured streams and job folder; left in place they make a later test's warnings raise
    "--- Logging error ---".  Each test ends with the root logger it started with."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
