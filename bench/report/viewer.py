"""``neuronbench view RUN_DIR``: a static HTML site of one run, readable from ``file://``.

index.html lists the units (sortable by each score); one page per unit shows its explanation, the
control explanation(s), every score with its reason, every scored excerpt with tokens shaded by the
real activation and by the simulated one side by side, and the train excerpts the explainer saw.

Tokens and explanations come from corpora and models: templates render them through Jinja2 with
autoescape forced on (:mod:`bench.report.templating`), and each page's Content-Security-Policy allows
only the site's own script by its hash -- so a ``<script>`` token is text, twice over.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records import UnitResult
from bench.report.templating import TEMPLATES, render
from bench.run.folder import FinishedRun, RunFolder, read_run

SORT_SCRIPT = (TEMPLATES / "sort.js").read_text()


@dataclass(frozen=True)
class Token:
    text: str  # shown (whitespace made visible)
    shade: float  # 0..1
    title: str  # hover text: the values


def unit_page_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".html"


def _visible(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "→") or "∅"


def _shade(value: float, top: float) -> float:
    if top <= 0 or math.isnan(value):
        return 0.0
    return max(0.0, min(1.0, value / top))


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def _score_names(results: list[UnitResult]) -> list[str]:
    from bench.summary import DETAIL_SUFFIXES, HEADLINE

    names = {k for r in results for k in r.scores if not k.endswith(DETAIL_SUFFIXES)}
    return [n for n in HEADLINE if n in names] + sorted(names - set(HEADLINE))


def _excerpt_pairs(result: UnitResult) -> list[dict[str, Any]]:
    """Every scored excerpt as two token rows: real activation and simulated (0-10 scale)."""
    sims = result.simulation.sequences if result.simulation else []
    top = max((a for s in sims for a in s.true_activations), default=0.0)
    out = []
    for i, s in enumerate(sims):
        real = [
            Token(_visible(t), _shade(a, top), f"real {a:.3f} · simulated {e:.2f}")
            for t, a, e in zip(s.tokens, s.true_activations, s.expected, strict=False)
        ]
        sim = [
            Token(_visible(t), _shade(e, 10.0), f"simulated {e:.2f} · real {a:.3f}")
            for t, a, e in zip(s.tokens, s.true_activations, s.expected, strict=False)
        ]
        out.append({"number": i + 1, "real": real, "sim": sim, "max_real": max(s.true_activations, default=0.0)})
    return out


def _train(run: FinishedRun, key: str) -> dict[str, Any]:
    """The train excerpts (top; random too if a split ever gives the explainer some), shaded by activation."""
    item = run.train.get(key) or {}
    records = [*item.get("top", []), *item.get("random", [])]
    top = max((a for r in records for a in r["activations"]), default=0.0)
    return {"recorded": bool(item)} | {
        part: [
            [
                Token(_visible(t), _shade(a, top), f"activation {a:.3f}")
                for t, a in zip(r["tokens"], r["activations"], strict=False)
            ]
            for r in item.get(part, [])
        ]
        for part in ("top", "random")
    }


def _csp(script: str | None) -> str:
    """Only our own inline script (by its hash) may run; unit pages run none."""
    allowed = "'none'"
    if script:
        allowed = "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
    return f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src {allowed}"


def _unit_context(run: FinishedRun, r: UnitResult, names: list[str]) -> dict[str, Any]:
    control = r.extras.get("control") or {}
    return {
        "key": r.unit.key,
        "page": unit_page_name(r.unit.key),
        "layer": r.unit.layer,
        "index": r.unit.index,
        "status": r.status,
        "stage": r.stage,
        "error": r.error,
        "explanation": r.explanation.text if r.explanation else None,
        "controls": list(zip(control.get("explanations", []), control.get("scores", []), strict=False)),
        "scores": [
            (n, r.scores[n].value if n in r.scores else math.nan, r.scores[n].reason if n in r.scores else "not run")
            for n in names
        ],
        "excerpts": _excerpt_pairs(r),
        "train": _train(run, r.unit.key),
    }


def write_site(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the site (index.html + units/*.html) and return the index path."""
    run = read_run(Path(run_dir), command="view")
    out = Path(out_dir) if out_dir is not None else RunFolder(run.path).viewer
    if out.exists():
        shutil.rmtree(out / "units", ignore_errors=True)
    (out / "units").mkdir(parents=True, exist_ok=True)
    names = _score_names(run.results)
    units = [_unit_context(run, r, names) for r in run.results]
    common = {"run": run.name, "fmt": _fmt, "names": names}
    index = out / "index.html"
    index.write_text(render("viewer_index.html.j2", units=units, csp=_csp(SORT_SCRIPT), script=SORT_SCRIPT, **common))
    for i, unit in enumerate(units):
        neighbours = {
            "prev": units[i - 1]["page"] if i > 0 else None,
            "next": units[i + 1]["page"] if i + 1 < len(units) else None,
        }
        (out / "units" / unit["page"]).write_text(
            render("viewer_unit.html.j2", unit=unit, csp=_csp(None), **neighbours, **common)
        )
    return index
