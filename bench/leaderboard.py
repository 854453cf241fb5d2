"""Leaderboard: one row per finished run folder, ranked so that a number worth publishing comes first.

The run folders (``runs/<name>-<hash>/``) are the source of truth, so the leaderboard needs neither
MLflow nor a network.  Each row names what was swept -- explainer (model, version), prompt variant
(name, version), simulator (strategy, estimator, model, version), scorers (versions) -- so numbers
from different component versions are never silently mixed.

Ranking: a run whose simulator ignores explanations (the specificity CI against the shuffled-explanation
control includes 0, or no control ran) is flagged and never ranked above a run that passes the control,
however high its raw score.  Every row carries its paired difference to the best run on the shared
units (bootstrap CI, sign-flip permutation p); pairing is refused for runs over different subjects,
unit sets or excerpts, because a paired test is meaningless there.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.records import _nan_to_none
from bench.run.folder import FinishedRun, read_run, run_folders

log = logging.getLogger(__name__)

__all__ = ["Leaderboard", "Row", "build", "read_rows", "run_folders", "write_leaderboard"]

PRIMARY = "correlation/top_and_random"
SPECIFICITY = f"specificity/{PRIMARY}"
GROUPS = ("explainer", "prompt", "simulator", "scorer")
# Config nodes picked from conf/<group>/: when their name differs between runs, their inner fields
# differ wholesale and are not listed again under "settings".
WHOLE_NODES = ("subject", "dataset", "units", *GROUPS)
CONTROL_PASS, CONTROL_FAIL, CONTROL_NONE = "pass", "ignores explanations", "no control"


@dataclass(frozen=True)
class Paired:
    """This run minus the best run on their shared units, for the primary score."""

    n_pairs: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True)
class Row:
    rank: int
    run: str
    path: str
    subject: str
    groups: dict[str, str]  # explainer / prompt / simulator / scorer -> "name (model) · version"
    settings: str  # other config fields that differ between the runs, "key=value, ..."
    units: int
    failed: int
    failure_rate: float
    scores: dict[str, tuple[float, float, float]]  # score -> (mean, ci_low, ci_high)
    dollars_per_unit: float
    tokens_per_unit: float
    control: str  # CONTROL_PASS | CONTROL_FAIL | CONTROL_NONE
    paired: Paired | None  # None for the best run itself, or with --no-pairing
    card: str | None


@dataclass(frozen=True)
class Leaderboard:
    primary: str
    rows: list[Row]
    score_names: list[str]
    runs: dict[str, FinishedRun]  # row.run -> its folder (plots read per-unit values)


# ----------------------------------------------------------------------------------------- labels
def _version(node: dict[str, Any]) -> str:
    return f" · v{node['version']}" if node.get("version") is not None else ""


def _llm_model(node: dict[str, Any]) -> str | None:
    for key in ("llm", "explainer"):
        inner = node.get(key)
        if isinstance(inner, dict):
            model = inner.get("model") or _llm_model(inner)
            if model:
                return str(model)
    return None


def _component(node: Any) -> str:
    if not isinstance(node, dict):
        return "—"
    name = str(node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1])
    model = _llm_model(node)
    return f"{name}{f' ({model})' if model else ''}{_version(node)}"


def _simulator(node: Any, run: FinishedRun) -> str:
    label = _component(node)
    sims = [r.simulation for r in run.results if r.simulation is not None]
    if sims:
        estimator = sims[0].estimator
        top_k = sims[0].top_k  # alternatives read per token (recorded by logprob estimators)
        extra = [f"k={top_k}"] if top_k is not None else []
        if top_k is not None and sims[0].top_k_taper:  # a ramped cut reads differently from the reference's step
            extra.append(f"taper={sims[0].top_k_taper:g}")
        extra += [f"{k}={v}" for k, v in sorted(sims[0].meta.items()) if k in ("samples",) and v is not None]
        label += f" · {estimator}{' ' + ' '.join(extra) if extra else ''}"
    return label


def _scorers(node: Any) -> str:
    if not isinstance(node, dict):
        return "—"
    return ", ".join(f"{name}{_version(v) if isinstance(v, dict) else ''}" for name, v in node.items())


def _subject(node: Any) -> str:
    node = node if isinstance(node, dict) else {}
    name = str(node.get("model_id") or node.get("model") or "?")
    return f"{name}@{node['revision']}" if node.get("revision") else name


def group_labels(run: FinishedRun) -> dict[str, str]:
    """What each swept group was in this run (``v1_no_examples · v1``, never just ``v1``)."""
    c = run.config
    return {
        "explainer": _component(c.get("explainer")),
        "prompt": _component(c.get("prompt")),
        "simulator": _simulator(c.get("simulator"), run),
        "scorer": _scorers(c.get("scorer")),
    }


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def differing_settings(runs: list[FinishedRun]) -> list[str]:
    """One ``key=value, ...`` per run: config fields that differ between the runs and that the group
    columns do not already show (e.g. ``explainer.top_n=3``).  Fields that never change results
    (paths, tracking, progress) are left out."""
    from bench.jobs import NOT_DETERMINING, NOT_DETERMINING_ANYWHERE

    flat = [_flatten(r.config) for r in runs]

    def name_of(run: FinishedRun, node: str) -> str:
        value = run.config.get(node)
        if node == "scorer" and isinstance(value, dict):  # a multi-select group: its choice is the set of scorers
            return json.dumps(sorted(value))
        return json.dumps(value.get("name") if isinstance(value, dict) else value, default=str)

    swapped = {node for node in WHOLE_NODES if len({name_of(r, node) for r in runs}) > 1}
    keys = sorted({k for f in flat for k in f})
    differing = []
    for key in keys:
        parts = key.split(".")
        if parts[0] in NOT_DETERMINING or parts[0] in swapped or any(p in NOT_DETERMINING_ANYWHERE for p in parts):
            continue
        if parts[-1] in ("name", "version", "_target_") or parts[0] in ("card",):
            continue
        if len({json.dumps(f.get(key), sort_keys=True, default=str) for f in flat}) > 1:
            differing.append(key)
    return [", ".join(f"{k}={json.dumps(f.get(k), default=str)}" for k in differing) for f in flat]


# ---------------------------------------------------------------------------------------- pairing
def check_pairable(runs: list[FinishedRun]) -> None:
    """Refuse (one line) to pair runs whose units cannot be paired: the check of ``neuronbench compare``
    (:func:`bench.compare.check_comparable`) -- same subject, excerpts, scored split and unit set."""
    from bench.compare import check_comparable, run_definition

    if len(runs) < 2:
        return
    first = runs[0]
    base = run_definition(first.results, first.config)
    for other in runs[1:]:
        check_comparable(
            base,
            run_definition(other.results, other.config),
            who="leaderboard",
            names=(first.name, other.name),
            hint="paired differences need the same units on the same excerpts: pass runs of one benchmark, "
            "or --no-pairing for an unpaired table",
        )


def check_same_card(runs: list[FinishedRun]) -> None:
    """Refuse (one line) to rank runs of different benchmark cards together."""
    from bench.cards import card_label

    first = runs[0]
    for other in runs[1:]:
        a, la, b, lb = first.name, card_label(first.config), other.name, card_label(other.config)
        if la == lb:
            continue
        raise UserError(
            f"leaderboard: {a} ran card {la or '(none)'} but {b} ran card {lb or '(none)'}; a leaderboard "
            "ranks runs of one benchmark card: pass the run folders of one card"
        )


# ---------------------------------------------------------------------------------------- rows
def _control(run: FinishedRun) -> str:
    low, high = run.metric(f"score/{SPECIFICITY}/ci_low"), run.metric(f"score/{SPECIFICITY}/ci_high")
    if math.isnan(low) or math.isnan(high):
        return CONTROL_NONE
    return CONTROL_PASS if low > 0 else CONTROL_FAIL


def score_names(runs: list[FinishedRun]) -> list[str]:
    from bench.summary import DETAIL_SUFFIXES, HEADLINE

    names = {
        k.removeprefix("score/").removesuffix("/mean")
        for r in runs
        for k in r.summary
        if k.startswith("score/") and k.endswith("/mean")
    }
    names = {n for n in names if not n.endswith(DETAIL_SUFFIXES)}
    return [n for n in HEADLINE if n in names] + sorted(names - set(HEADLINE))


def _per_unit(run: FinishedRun, total: str) -> float:
    units = run.metric("units/total")
    value = sum(run.metric(f"cost/total/{field}") for field in total.split("+"))
    return value / units if units else math.nan


def build(runs: list[FinishedRun], primary: str = PRIMARY, pairing: bool = True) -> Leaderboard:
    """Rank the runs and compute every column (no files written)."""
    from bench.compare import compare

    if not runs:
        raise UserError("leaderboard: no runs given")
    check_same_card(runs)
    if pairing:
        check_pairable(runs)
    names = score_names(runs)
    if primary not in names:
        raise UserError(f"leaderboard: no score {primary!r} in these runs (--score); available: {', '.join(names)}")

    def sort_key(r: FinishedRun) -> tuple[int, float]:
        mean = r.metric(f"score/{primary}/mean")
        return (_control(r) != CONTROL_PASS, -mean if not math.isnan(mean) else math.inf)

    ordered = sorted(runs, key=sort_key)
    best = ordered[0]
    settings = dict(zip([r.name for r in runs], differing_settings(runs), strict=True))
    rows = []
    for rank, run in enumerate(ordered, start=1):
        paired = None
        if pairing and run is not best:
            c = compare(run.results, best.results, primary)
            paired = Paired(c.n_pairs, c.mean_diff, c.ci_low, c.ci_high, c.p_value)
        units = int(run.metric("units/total")) if not math.isnan(run.metric("units/total")) else 0
        rows.append(
            Row(
                rank=rank,
                run=run.name,
                path=str(run.path),
                subject=_subject(run.config.get("subject")),
                groups=group_labels(run),
                settings=settings[run.name],
                units=units,
                failed=int(run.metric("units/failed")) if units else 0,
                failure_rate=run.metric("units/failure_rate"),
                scores={
                    n: tuple(run.metric(f"score/{n}/{f}") for f in ("mean", "ci_low", "ci_high"))  # type: ignore[misc]
                    for n in names
                },
                dollars_per_unit=_per_unit(run, "dollars"),
                tokens_per_unit=_per_unit(run, "input_tokens+output_tokens"),
                control=_control(run),
                paired=paired,
                card=_card(run),
            )
        )
    return Leaderboard(primary=primary, rows=rows, score_names=names, runs={r.name: r for r in runs})


def _card(run: FinishedRun) -> str | None:
    from bench.cards import card_label

    return card_label(run.config)


def read_rows(run_dirs: list[Path], primary: str = PRIMARY, pairing: bool = True) -> list[Row]:
    """The ranked rows of these run folders."""
    return build([read_run(d) for d in run_dirs], primary, pairing).rows


# ---------------------------------------------------------------------------------------- output
def default_out_dir(root: Path = Path("outputs/leaderboards")) -> Path:
    """A folder new to this call (UTC time stamp), so a leaderboard never overwrites an earlier one."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out, n = root / stamp, 1
    while out.exists():
        n += 1
        out = root / f"{stamp}-{n}"
    return out


def write_leaderboard(
    runs_dir: Path,
    out_dir: Path | None,
    title: str,
    selected: list[str] | None = None,
    primary: str = PRIMARY,
    pairing: bool = True,
    plots: bool = True,
    mlflow: tuple[str, str] | None = None,
) -> Path:
    """Write leaderboard.{md,csv,html,tex,json} (+ plots/) into ``out_dir``; return the markdown path.

    ``mlflow=(uri, experiment)`` reads the runs of that experiment instead of run folders (their
    files are downloaded into ``out_dir/runs/``)."""
    from bench.report import formats

    out_dir = default_out_dir() if out_dir is None else Path(out_dir)
    if mlflow is not None:
        from bench.report.mlflow_runs import download_runs

        dirs, skipped = download_runs(mlflow[0], mlflow[1], out_dir / "runs")
        where = f"MLflow experiment {mlflow[1]!r} at {mlflow[0]} ({skipped} runs without run files skipped)"
    else:
        dirs, where = run_folders(runs_dir, selected), str(runs_dir)
    runs = []
    for d in dirs:
        try:
            runs.append(read_run(d))
        except UserError as err:
            if selected:
                raise  # a folder the user named: its problem is the answer
            log.warning("skipped: %s", err)  # one damaged folder must not hide the others
    if not runs:
        raise UserError(
            f"leaderboard: no finished runs in {where} (each needs summary.json); pass --runs DIR or run folders"
        )
    board = build(runs, primary, pairing)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    if plots:
        from bench.report.plots import write_plots

        figures = write_plots(board, out_dir / "plots")
    md = out_dir / "leaderboard.md"
    md.write_text(formats.markdown(board, title, [p.relative_to(out_dir) for p in figures]))
    (out_dir / "leaderboard.csv").write_text(formats.csv_table(board))
    (out_dir / "leaderboard.html").write_text(
        formats.html_page(board, title, [p.relative_to(out_dir) for p in figures])
    )
    (out_dir / "leaderboard.tex").write_text(formats.latex(board, title))
    (out_dir / "leaderboard.json").write_text(
        json.dumps(_nan_to_none({"primary": primary, "rows": [asdict(r) for r in board.rows]}), indent=1)
    )
    return md
