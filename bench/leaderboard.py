"""Leaderboard: one row per run folder, read from its config.json and summary.json.

The run folders (``runs/<name>-<hash>/``) are the source of truth, so the leaderboard needs neither
MLflow nor a network; rows carry the config versions so numbers from different prompt or
component versions are never silently mixed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.escape import markdown_cell
from bench.state_files import json_object, jsonl_objects
from bench.tracking.jsonl import RESULTS_FIX

log = logging.getLogger(__name__)

COLUMNS = (
    ("correlation (top+random)", "score/correlation/top_and_random"),
    ("control", "score/control/correlation/top_and_random"),
    ("specificity", "score/specificity/correlation/top_and_random"),
    ("ablation (KL)", "score/ablation"),
)


@dataclass(frozen=True)
class Row:
    run: str
    subject: str
    explainer: str
    simulator: str
    estimator: str
    units: int
    failed: int
    values: dict[str, tuple[float, float, float]]  # column -> (mean, ci_low, ci_high)


def _target_name(node: Any) -> str:
    if not isinstance(node, dict):
        return "?"
    name = node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    llm = node.get("llm")
    if isinstance(llm, dict) and llm.get("model"):
        name = f"{name} ({llm['model']})"
    return f"{name} v{node.get('version', '?')}"


def run_folders(runs_dir: Path, selected: list[str] | None = None) -> list[Path]:
    """The run folders to show: those named, or every finished one under ``runs_dir``."""
    if selected:
        return [Path(s) for s in selected]
    return sorted(p.parent for p in runs_dir.glob("*/summary.json"))


def _subject_name(node: Any) -> str:
    node = node if isinstance(node, dict) else {}
    return str(node.get("model_id") or node.get("model") or "?")


def read_rows(run_dirs: list[Path]) -> list[Row]:
    rows = []
    for run_dir in run_dirs:
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise UserError(f"leaderboard: {run_dir} has no summary.json (not a finished run folder)")
        config_path = run_dir / "config.json"
        if not config_path.exists():
            continue
        try:
            rows.append(_read_row(run_dir, summary_path, config_path))
        except (UserError, ValueError, TypeError, KeyError, AttributeError) as err:
            # one damaged run folder must not hide the others: skip it, naming it and why
            log.warning("leaderboard: skipped run folder %s: %s", run_dir, err)
    return rows


def _read_row(run_dir: Path, summary_path: Path, config_path: Path) -> Row:
    fix = "re-run that configuration to rewrite it (its finished units are kept)"
    summary = json_object(summary_path, fix)
    config = json_object(config_path, fix)
    estimator = "?"
    results = run_dir / "results.jsonl"
    if results.exists():
        for _number, item in jsonl_objects(results, RESULTS_FIX):
            if item.get("simulation"):
                estimator = str(item["simulation"]["estimator"])
                break
    values = {}
    for label, key in COLUMNS:
        raw = (summary.get(f"{key}/{field}") for field in ("mean", "ci_low", "ci_high"))
        values[label] = tuple(math.nan if v is None else float(v) for v in raw)
    return Row(
        run=run_dir.name,
        subject=_subject_name(config.get("subject")),
        explainer=_target_name(config.get("explainer")),
        simulator=_target_name(config.get("simulator")),
        estimator=estimator,
        units=int(summary.get("units/total") or 0),
        failed=int(summary.get("units/failed") or 0),
        values=values,
    )


def _cell(v: tuple[float, float, float]) -> str:
    mean, low, high = v
    if math.isnan(mean):
        return "—"
    if math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def render_markdown(rows: list[Row]) -> str:
    head = ["run", "subject", "explainer", "simulator (estimator)", "units (failed)", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    key = COLUMNS[0][0]
    for r in sorted(rows, key=lambda r: -(r.values[key][0] if not math.isnan(r.values[key][0]) else -9)):
        cells = [r.run, r.subject, r.explainer, f"{r.simulator} ({r.estimator})"]
        cells = [*(markdown_cell(c) for c in cells), f"{r.units} ({r.failed})"]  # names come from configs and runs
        lines.append("| " + " | ".join([*cells, *(_cell(r.values[c]) for c, _ in COLUMNS)]) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(runs_dir: Path, out_dir: Path, title: str, selected: list[str] | None = None) -> Path:
    rows = read_rows(run_folders(runs_dir, selected))
    if not rows:
        raise UserError(f"leaderboard: no finished runs under {runs_dir} (each needs summary.json and config.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "leaderboard.md"
    note = (
        "Means over units with bootstrap 95% CIs. *control* = the same excerpts simulated with another unit's "
        "explanation; *specificity* = real − control (a CI including 0 means the simulator ignores explanations). "
        "Failed units are counted, never scored as 0.\n"
    )
    md.write_text(f"# {markdown_cell(title)}\n\n{note}\n{render_markdown(rows)}")
    (out_dir / "leaderboard.json").write_text(
        json.dumps([{**r.__dict__, "values": {k: list(v) for k, v in r.values.items()}} for r in rows], indent=1)
    )
    return md
