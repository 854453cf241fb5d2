"""The per-unit table of a run: one row per unit with every score and its NaN reason.

One definition serves the MLflow artifact ``units.csv`` and :func:`bench.api.load_run`, so the file a
reader downloads from the UI and the DataFrame a notebook gets have the same columns.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from bench.escape import csv_cell
from bench.records import UnitResult

FIXED_COLUMNS = (
    "unit",
    "layer",
    "index",
    "kind",
    "status",
    "stage",
    "error",
    "explanation",
    "explainer",
    "simulator",
    "estimator",
    "dollars",
)


def score_columns(results: Sequence[UnitResult]) -> list[str]:
    """Every score name of the run, in first-seen order (a failed unit has none)."""
    names: dict[str, None] = {}
    for r in results:
        for k in r.scores:
            names.setdefault(k, None)
    return list(names)


def unit_rows(results: Sequence[UnitResult]) -> list[dict[str, Any]]:
    """One dict per unit: the fixed columns, then each score (NaN when missing), then ``<score>/reason``.

    Failed units stay in the table with their stage and error: a reader counts them, never loses them.
    """
    names = score_columns(results)
    rows = []
    for r in results:
        usage = [u for u in (r.explanation and r.explanation.usage, r.simulation and r.simulation.usage) if u]
        row: dict[str, Any] = {
            "unit": r.unit.key,
            "layer": r.unit.layer,
            "index": r.unit.index,
            "kind": r.unit.kind,
            "status": r.status,
            "stage": r.stage or "",
            "error": r.error or "",
            "explanation": r.explanation.text if r.explanation else "",
            "explainer": r.explanation.explainer if r.explanation else "",
            "simulator": r.simulation.simulator if r.simulation else "",
            "estimator": r.simulation.estimator if r.simulation else "",
            "dollars": sum(u.dollars for u in usage),
        }
        for n in names:
            row[n] = r.scores[n].value if n in r.scores else math.nan
        for n in names:
            row[f"{n}/reason"] = (r.scores[n].reason or "") if n in r.scores else ""
        rows.append(row)
    return rows


def units_csv(results: Sequence[UnitResult]) -> str:
    """:func:`unit_rows` as CSV (an empty cell where a score is NaN; its reason sits in ``<score>/reason``)."""
    names = score_columns(results)
    header = [*FIXED_COLUMNS, *names, *(f"{n}/reason" for n in names)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    for row in unit_rows(results):
        # an explanation "=HYPERLINK(...)" stays text in a spreadsheet (bench.escape.csv_cell)
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else csv_cell(v) for k, v in row.items()})
    return buf.getvalue()
