"""Leaderboard plots (matplotlib, PNG + SVG): score distributions, score vs $ per unit, per-layer scores.

Runs are labelled by their rank (``#1`` ...) -- the tables name them -- so long run names never crowd
a figure.  Flagged runs (simulator ignores explanations) are drawn in orange, as in the HTML table.
SVGs carry no date and a fixed id salt, so regenerating the same leaderboard gives the same files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.leaderboard import CONTROL_PASS, Leaderboard, Row

PASS_COLOUR, FLAG_COLOUR = "#1f77b4", "#ff7f0e"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "neuronbench"
    return plt


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    fig.clf()
    return paths


def _colour(row: Row) -> str:
    return PASS_COLOUR if row.control == CONTROL_PASS else FLAG_COLOUR


def unit_scores(board: Leaderboard, row: Row, score: str) -> list[tuple[int, float]]:
    """(layer, value) of every ok unit with a finite value of ``score`` in this row's run."""
    out = []
    for r in board.runs[row.run].results:
        s = r.scores.get(score)
        if r.status == "ok" and s is not None and not math.isnan(s.value):
            out.append((r.unit.layer, s.value))
    return out


def distributions(board: Leaderboard, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    rows = board.rows
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.6))
    data = [[v for _, v in unit_scores(board, r, board.primary)] or [math.nan] for r in rows]
    positions = list(range(len(rows), 0, -1))
    ax.boxplot(
        data, positions=positions, orientation="horizontal", widths=0.5, showfliers=False, medianprops={"color": "k"}
    )
    for pos, values, row in zip(positions, data, rows, strict=True):
        jitter = [pos + 0.12 * ((i % 5) - 2) / 2 for i in range(len(values))]
        ax.scatter(values, jitter, s=14, color=_colour(row), zorder=3)
    ax.set_yticks(positions, [f"#{r.rank}" for r in rows])
    ax.set_xlabel(f"{board.primary} per unit")
    ax.set_title("Score distribution per run (orange: simulator ignores explanations)", fontsize=10)
    return _save(fig, out_dir, "score_distributions")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (lower) and score (higher), by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front


def score_vs_cost(board: Leaderboard, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points: list[tuple[float, float]] = []
    labels: dict[tuple[float, float], list[str]] = {}  # runs on the same spot share one label
    for row in board.rows:
        mean, low, high = row.scores[board.primary]
        cost = row.dollars_per_unit
        if math.isnan(mean) or math.isnan(cost):
            continue
        points.append((cost, mean))
        labels.setdefault((cost, mean), []).append(f"#{row.rank}")
        err = [[mean - low], [high - mean]] if not math.isnan(low) else None
        ax.errorbar([cost], [mean], yerr=err, fmt="o", color=_colour(row), capsize=3)
    for (cost, mean), names in labels.items():
        ax.annotate(", ".join(names), (cost, mean), textcoords="offset points", xytext=(6, 4), fontsize=9)
    front = pareto_front(points)
    if front:
        ax.step([c for c, _ in front], [s for _, s in front], where="post", color="grey", ls="--", label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(r"\$ per unit (LLM calls; local models cost \$0)")
    ax.set_ylabel(f"{board.primary} (mean, 95% CI)")
    ax.set_title("Score vs cost", fontsize=10)
    return _save(fig, out_dir, "score_vs_cost")


def per_layer(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Mean score per layer per run; only when some run covers several layers."""
    plt = _pyplot()
    layers = sorted({layer for row in board.rows for layer, _ in unit_scores(board, row, board.primary)})
    if len(layers) < 2:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in board.rows:
        by_layer: dict[int, list[float]] = {}
        for layer, value in unit_scores(board, row, board.primary):
            by_layer.setdefault(layer, []).append(value)
        xs = sorted(by_layer)
        style = ("-", "--", ":", "-.")[(row.rank - 1) % 4]  # identical runs stay visible on top of each other
        ax.plot(xs, [sum(by_layer[x]) / len(by_layer[x]) for x in xs], marker="o", ls=style, label=f"#{row.rank}")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{board.primary} (mean over units)")
    ax.set_title("Score per layer", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, out_dir, "score_per_layer")


def write_plots(board: Leaderboard, out_dir: Path) -> list[Path]:
    """Every plot that applies to this leaderboard (PNG and SVG of each)."""
    paths = [*distributions(board, out_dir), *score_vs_cost(board, out_dir), *per_layer(board, out_dir)]
    _pyplot().close("all")
    return paths
