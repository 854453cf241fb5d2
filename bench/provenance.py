"""Git commit and package versions, recorded with every run (results must say how they were made)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "neuronbench",
    "torch",
    "transformers",
    "mlflow",
    "hydra-core",
    "numpy",
    "scikit-learn",
    "openai",
    "anthropic",
)


def git_commit(repo: Path | None = None) -> str:
    """HEAD commit, with ``+dirty`` when the tree has uncommitted changes; ``unknown`` outside git."""
    where = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
