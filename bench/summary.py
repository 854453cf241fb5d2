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


def wrap_name(name: str, width: int) -> str:
    """``name`` in lines of at most ``width`` characters, broken after a "/" where possible (a part longer
    than ``width`` is cut into pieces), so a score name is never truncated."""
    lines: list[str] = []
    current = ""
    parts = name.split("/")
    for part in [*(p + "/" for p in parts[:-1]), parts[-1]]:
        for piece in (part[i : i + width] for i in range(0, len(part), max(width, 1))):
            if current and len(current) + len(piece) > width:
                lines.append(current)
                current = ""
            current += piece
    lines.append(current)
    return "\n".join(line for line in lines if line)


def print_summary(name: str, run_dir: Path, outcome: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    s = outcome.summary
    console = Console(stderr=False)
    table = Table(title=Text(f"neuronbench run {name}"))
    columns = ("score", "mean", "median", "95% CI", "units", "NaN")
    rows = score_rows(s)
    # what the number columns take (content + 2 padding + 1 border each, + the two outer borders); the
    # score column gets the rest, and long names wrap at "/" instead of being cut with "..." (80 columns)
    numbers = sum(max(len(c), *(len(r[i]) for r in rows)) + 3 for i, c in enumerate(columns) if i) if rows else 0
    name_width = max(12, console.width - numbers - 4)
    for col in columns:
        if col == "score":
            table.add_column(col, justify="left", overflow="fold", min_width=min(12, name_width))
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(Text(wrap_name(row[0], name_width)), *row[1:])  # Text: a plugin's name is not markup
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
