"""The table printed at the end of a run: every score's mean, CI and failures side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

HEADLINE = (
    "correlation/top_and_random",
    "correlation/top_only",
    "correlation/random_only",
    "rsquared",
    "absolute_dev_explained",
    "explained_variance",
    "control/correlation/top_and_random",
    "specificity/correlation/top_and_random",
)


# Raw ingredients of a score (e.g. the divergences behind the ablation score) stay in MLflow and the
# JSONL; the table shows the scores themselves.
DETAIL_SUFFIXES = ("/simulated", "/mean_ablated")


def _fmt(v: float) -> str:
    if v is None or math.isnan(v):
        return "nan"
    return f"{v:.3f}" if v == 0 or abs(v) >= 0.001 else f"{v:.1e}"


def score_rows(summary: dict[str, float]) -> list[tuple[str, str, str, str, str, str]]:
    names = [
        k.removeprefix("score/").removesuffix("/mean")
        for k in summary
        if k.startswith("score/") and k.endswith("/mean")
    ]
    names = [n for n in names if not n.endswith(DETAIL_SUFFIXES)]
    ordered = [n for n in HEADLINE if n in names] + sorted(n for n in names if n not in HEADLINE)
    rows = []
    for n in ordered:
        g = lambda f, n=n: summary.get(f"score/{n}/{f}", math.nan)  # noqa: E731
        rows.append(
            (
                n,
                _fmt(g("mean")),
                _fmt(g("median")),
                f"[{_fmt(g('ci_low'))}, {_fmt(g('ci_high'))}]",
                f"{int(g('n'))}",
                f"{int(g('n_nan'))}",
            )
        )
    return rows


def print_summary(name: str, run_dir: Path, outcome: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    s = outcome.summary
    console = Console(stderr=False)
    table = Table(title=Text(f"neuronbench run {name}"))
    for col in ("score", "mean", "median", "95% CI", "units", "NaN"):
        if col == "score":  # a long name wraps inside its cell (80 columns) instead of being cut with "…"
            table.add_column(col, justify="left", overflow="fold", min_width=12)
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for row in score_rows(s):
        table.add_row(Text(row[0]), *row[1:])  # Text: a plugin's score name is never read as rich markup
    console.print(table)
    console.print(
        f"units: {int(s['units/ok'])} ok, {int(s['units/failed'])} failed "
        f"(failure rate {_fmt(s['units/failure_rate'])}); unparsed simulated tokens: "
        f"{int(s['simulation/unparsed_tokens'])} of {int(s['simulation/tokens'])}"
    )
    failed = [r for r in outcome.results if r.status != "ok"]
    for r in failed[:5]:
        console.print(f"  failed {r.unit.key} at {r.stage}: {r.error}", markup=False)
    console.print(f"results: {run_dir / 'results.jsonl'}")
    for warning in outcome.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
