"""The Python API: run a configuration from a notebook or script, and read a run's per-unit results.

``bench.evaluate(["explainer=token_list", "units.count=3"])`` composes, validates and runs exactly
what ``neuronbench run explainer=token_list units.count=3`` runs (same run folder, same resume, same
MLflow run) and returns the :class:`~bench.pipeline.RunOutcome`; ``bench.load_run(outcome.run_dir)``
gives one DataFrame row per unit with every score (the columns of the ``units.csv`` artifact).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from bench.pipeline import RunOutcome


def evaluate(overrides: Sequence[str] = (), progress: bool = False) -> RunOutcome:
    """Run one configuration (Hydra overrides, as on the command line); a sweep is refused (use the CLI's
    ``-m``).  Config mistakes raise :class:`~bench.errors.UserError` before any model loads."""
    from bench.cli import run_job
    from bench.config import compose, expand_sweep

    overrides = list(overrides)
    if len(expand_sweep(overrides)) > 1:
        raise UserError("evaluate: the overrides contain a sweep (a,b or range(...)); call evaluate once per value")
    return run_job(compose(overrides), progress=progress, choices=_choices(overrides))  # validates first


def _choices(overrides: list[str]) -> dict[str, str]:
    """The config group choices of a composition (what ``neuronbench run`` gets from its Hydra job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bench.config import conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None and not k.startswith("hydra/")}


def load_run(path: str | Path) -> pd.DataFrame:
    """One row per unit of a run folder (or its ``results.jsonl``): unit, layer, index, status, stage,
    error, explanation, explainer, simulator, estimator, dollars, every score (NaN where missing) and
    ``<score>/reason``.  Failed units are rows too."""
    import pandas as pd

    from bench.compare import load_results
    from bench.unit_table import FIXED_COLUMNS, unit_rows

    try:
        results = load_results(str(path))
    except UserError as err:
        raise UserError(f"load_run: {str(err).removeprefix('compare: ')}") from None
    # results.jsonl holds units in the order they finished (many are in flight): rows in unit order
    results = sorted(results, key=lambda r: (r.unit.kind, r.unit.layer, r.unit.index))
    rows: list[dict[str, Any]] = unit_rows(results)
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else list(FIXED_COLUMNS))
