"""neuronbench: benchmark natural-language explanations of language-model units.

The Python API (imports stay light: nothing heavy loads until a function is called)::

    import bench
    outcome = bench.evaluate(["explainer=token_list", "units.count=3"])
    df = bench.load_run(outcome.run_dir)        # pandas DataFrame, one row per unit
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.api import evaluate, load_run

__all__ = ["evaluate", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
