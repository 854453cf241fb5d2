"""Hostile text (from models, corpora, configs) stays text in every format we write (issue 12 item 5)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bench.aggregate import correlation_matrix_csv
from bench.escape import csv_cell, html_text, markdown_cell
from bench.leaderboard import write_leaderboard
from bench.records import Explanation, Score, UnitId, UnitResult
from bench.tracking.mlflow_sink import units_table

HOSTILE = "a | b `code` <script>alert(1)</script>\nnew line\r\n| c |"


def test_markdown_cell_keeps_one_cell_on_one_line_without_raw_html() -> None:
    cell = markdown_cell(HOSTILE)
    assert "\n" not in cell and "\r" not in cell
    assert "<" not in cell and ">" not in cell and "&lt;script&gt;" in cell
    # every pipe and backtick is escaped, so a table row keeps its cells and no code span opens
    assert cell.count("|") == cell.count("\\|") == 3 and cell.count("`") == cell.count("\\`") == 2
    assert markdown_cell("plain text 0.5") == "plain text 0.5"


@pytest.mark.parametrize("text", ["=1+2", "+1", "-cmd", "@SUM(A1)", "\t=x", "\r=x"])
def test_csv_cell_defuses_formula_prefixes(text: str) -> None:
    assert csv_cell(text) == "'" + text
    assert csv_cell("cats and dogs") == "cats and dogs" and csv_cell(-0.5) == -0.5  # numbers stay numbers


def test_html_text_escapes_tags_and_quotes() -> None:
    assert html_text('<script>"x"</script>') == "&lt;script&gt;&quot;x&quot;&lt;/script&gt;"


def test_leaderboard_rows_keep_their_cells_with_hostile_names(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "evil|run`x`"
    run.mkdir(parents=True)
    config = {
        "subject": {"model_id": "org/model|<script>alert(1)</script>"},
        "explainer": {"name": "exp\n| injected | row |", "version": 1},
        "simulator": {"name": "sim`", "version": 1},
    }
    (run / "config.json").write_text(json.dumps(config))
    summary = {"units/total": 1, "units/failed": 0, "score/correlation/top_and_random/mean": 0.5}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "results.jsonl").write_text("")
    md = write_leaderboard(tmp_path / "runs", tmp_path / "out", "Title <b>|").read_text()
    assert "<script>" not in md and "<b>" not in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 3  # header, separator, ONE row: the newline did not start another
    unescaped_pipes = [line.replace("\\|", "").count("|") for line in table]
    assert unescaped_pipes[2] == unescaped_pipes[0]  # the row has exactly as many cells as the header


def test_units_csv_and_correlation_csv_hold_no_formulas() -> None:
    results = [
        UnitResult(UnitId(0, 1), "ok", explanation=Explanation('=HYPERLINK("http://x")', "t"), scores={}),
        UnitResult(UnitId(0, 2), "failed", error="@boom\nsecond line", stage="explain"),
        UnitResult(UnitId(0, 3), "ok", explanation=Explanation("cats", "t"), scores={"s": Score("s", -0.25)}),
    ]
    rows = list(csv.reader(io.StringIO(units_table(results))))
    cells = [c for row in rows for c in row]
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    assert '\'=HYPERLINK("http://x")' in cells and "'@boom\nsecond line" in cells
    assert "-0.25" in cells  # a negative score is a number, not a defused string
    matrix = {"scores": ["=evil", "ok"], "rho": [[1.0, None], [None, 1.0]], "n": [[1, 0], [0, 1]]}
    header = next(csv.reader(io.StringIO(correlation_matrix_csv(matrix))))
    assert header == ["score", "'=evil", "ok"]
