"""The leaderboard as markdown, CSV, HTML and LaTeX: one table, four renderings, one escaping module.

Markdown, HTML and LaTeX show the same cells (:func:`cells`); CSV gives every number in its own
column (mean, CI bounds, p) for spreadsheets and scripts.  Text from configs, models and run names
goes through :mod:`bench.escape` in every format.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench import escape
from bench.leaderboard import CONTROL_FAIL, CONTROL_PASS, GROUPS, Leaderboard, Row

NOTE = (
    "Means over units with bootstrap 95% CIs. *control* = the same excerpts simulated with another unit's "
    "explanation; *specificity* = real − control: a run whose specificity CI includes 0 has a simulator that "
    "ignores explanations -- it is flagged and ranked below every run that passes the control. "
    "*Δ vs best* = this run − the best run on the shared units (paired bootstrap CI, sign-flip permutation p). "
    "Failed units are counted, never scored as 0."
)


def _num(v: float, digits: int = 3) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _ci(v: tuple[float, float, float]) -> str:
    mean, low, high = v
    if math.isnan(mean):
        return "—"
    if math.isnan(low):
        return _num(mean)
    return f"{_num(mean)} [{_num(low)}, {_num(high)}]"


def _paired(row: Row) -> str:
    if row.rank == 1:
        return "best"
    p = row.paired
    if p is None:
        return "—"
    if p.n_pairs == 0:
        return "no shared units"
    p_text = "" if math.isnan(p.p_value) else f" p={p.p_value:.3g}"
    return f"{p.mean_diff:+.3f} [{_num(p.ci_low)}, {_num(p.ci_high)}]{p_text} (n={p.n_pairs})"


def _money(v: float) -> str:
    return "—" if math.isnan(v) else f"${v:.4f}"


def _control(row: Row) -> str:
    return {CONTROL_PASS: "pass", CONTROL_FAIL: "⚠ ignores explanations"}.get(row.control, "⚠ no control")


def _varying(board: Leaderboard) -> tuple[bool, bool]:
    """(show a settings column, show a subject column): only when they tell the runs apart."""
    return any(r.settings for r in board.rows), len({r.subject for r in board.rows}) > 1


def cells(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows (plain text, not yet escaped) shared by markdown, HTML and LaTeX."""
    settings, subject = _varying(board)
    head = ["#", "run", *(["subject"] if subject else []), *GROUPS, *(["settings"] if settings else [])]
    head += ["control", f"Δ {board.primary} vs best", *board.score_names, "failed", "$/unit", "tokens/unit"]
    rows = []
    for r in board.rows:
        line = [str(r.rank), r.run, *([r.subject] if subject else []), *(r.groups[g] for g in GROUPS)]
        line += [r.settings] if settings else []
        line += [_control(r), _paired(r), *(_ci(r.scores[n]) for n in board.score_names)]
        line += [f"{r.failed}/{r.units}", _money(r.dollars_per_unit), _num(r.tokens_per_unit, 0)]
        rows.append(line)
    return head, rows


def _context(board: Leaderboard) -> str:
    subjects = sorted({r.subject for r in board.rows})
    cards = sorted({r.card for r in board.rows if r.card})
    text = f"Subject: {', '.join(subjects)}. Ranked by {board.primary}."
    return text + (f" Benchmark card: {', '.join(cards)}." if cards else "")


def markdown(board: Leaderboard, title: str, figures: list[Path]) -> str:
    head, rows = cells(board)
    lines = [f"# {escape.markdown_cell(title)}", "", escape.markdown_cell(_context(board)), "", NOTE, ""]
    lines.append("| " + " | ".join(escape.markdown_cell(h) for h in head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(escape.markdown_cell(c) for c in row) + " |" for row in rows]
    pngs = [f for f in figures if f.suffix == ".png"]
    if pngs:
        lines += ["", *(f"![{escape.markdown_cell(f.stem)}]({f.as_posix()})" for f in pngs)]
    return "\n".join(lines) + "\n"


def csv_table(board: Leaderboard) -> str:
    """Every number in its own column; text cells guarded against spreadsheet formulas."""
    buf = io.StringIO()
    w = csv.writer(buf)
    score_cols = [f"{n}/{f}" for n in board.score_names for f in ("mean", "ci_low", "ci_high")]
    w.writerow(
        [
            "rank", "run", "subject", *GROUPS, "settings", "control", "units", "failed", "failure_rate",
            "dollars_per_unit", "tokens_per_unit", *score_cols,
            "paired/n", "paired/diff_vs_best", "paired/ci_low", "paired/ci_high", "paired/p", "card",
        ]
    )  # fmt: skip

    def n(v: float | int | None) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v)

    for r in board.rows:
        p = r.paired
        w.writerow(
            [
                r.rank,
                escape.csv_cell(r.run),
                escape.csv_cell(r.subject),
                *(escape.csv_cell(r.groups[g]) for g in GROUPS),
                escape.csv_cell(r.settings),
                r.control,
                r.units,
                r.failed,
                n(r.failure_rate),
                n(r.dollars_per_unit),
                n(r.tokens_per_unit),
                *(n(v) for name in board.score_names for v in r.scores[name]),
                *([n(p.n_pairs), n(p.mean_diff), n(p.ci_low), n(p.ci_high), n(p.p_value)] if p else [""] * 5),
                escape.csv_cell(r.card or ""),
            ]
        )
    return buf.getvalue()


def html_page(board: Leaderboard, title: str, figures: list[Path]) -> str:
    from bench.report.templating import render

    head, rows = cells(board)
    flagged = [r.control != CONTROL_PASS for r in board.rows]
    return render(
        "leaderboard.html.j2",
        title=title,
        context=_context(board),
        note=NOTE.replace("*", ""),
        head=head,
        rows=list(zip(rows, flagged, strict=True)),
        figures=[f.as_posix() for f in figures if f.suffix == ".png"],
    )


def latex(board: Leaderboard, title: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), landscape-friendly, every cell escaped."""
    head, rows = cells(board)

    def tex(text: str) -> str:
        plain = text.replace("—", "--").replace("Δ", "Delta").replace("⚠ ", "").replace(" · ", ", ").replace("−", "-")
        return escape.latex_cell(plain)  # ASCII only: compiles with any LaTeX engine

    out = [
        f"% {tex(title)} -- generated by `neuronbench leaderboard`; needs \\usepackage{{booktabs}}",
        "\\begin{table}[ht]",
        "\\centering\\scriptsize",
        f"\\caption{{{tex(title)}. {tex(_context(board))}}}",
        "\\begin{tabular}{" + "l" * len(head) + "}",
        "\\toprule",
        " & ".join(tex(h) for h in head) + " \\\\",
        "\\midrule",
        *(" & ".join(tex(c) for c in row) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(out) + "\n"
