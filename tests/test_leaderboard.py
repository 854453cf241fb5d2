import csv
import io
import json
import logging
import re

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.leaderboard import CONTROL_FAIL, CONTROL_PASS, read_rows, run_folders, write_leaderboard
from bench.report.plots import pareto_front
from tests.report_fixtures import make_run

GOOD = [0.30, 0.40, 0.50, 0.35, 0.45]
CONTROL_LOW = [0.0, 0.05, -0.05, 0.02, 0.01]


def test_run_that_ignores_explanations_never_ranks_above_one_that_passes(tmp_path):
    # "high" scores far better, but its control does just as well: its simulator ignores explanations
    make_run(tmp_path, "high", [0.9, 0.8, 0.85, 0.95, 0.7], [0.9, 0.8, 0.85, 0.95, 0.7])
    make_run(tmp_path, "modest", GOOD, CONTROL_LOW)
    rows = read_rows(run_folders(tmp_path))
    assert [r.run for r in rows] == ["modest", "high"]
    assert rows[0].control == CONTROL_PASS and rows[1].control == CONTROL_FAIL
    md = write_leaderboard(tmp_path, tmp_path / "out", "T").read_text()
    high_line = next(line for line in md.splitlines() if line.startswith("| 2 | high"))
    assert "ignores explanations" in high_line


def test_paired_difference_to_the_best_run(tmp_path):
    make_run(tmp_path, "a", GOOD, CONTROL_LOW)
    make_run(tmp_path, "b", [v - 0.2 for v in GOOD], CONTROL_LOW)
    best, other = read_rows(run_folders(tmp_path))
    assert best.run == "a" and best.paired is None
    assert other.paired.n_pairs == 5
    assert abs(other.paired.mean_diff + 0.2) < 1e-6  # every unit is exactly 0.2 worse
    assert other.paired.ci_high < 0 and other.paired.p_value == pytest.approx(2 / 32)  # exact sign-flip test


def test_prompt_variant_and_swept_settings_are_shown_in_full(tmp_path):
    make_run(tmp_path, "a", GOOD, CONTROL_LOW, prompt="v1")
    make_run(
        tmp_path,
        "b",
        GOOD,
        CONTROL_LOW,
        prompt="v1_no_examples",
        extra_config={"explainer": {"_target_": "x.token_list", "name": "token_list", "version": 1, "top_n": 3}},
    )
    rows = {r.run: r for r in read_rows(run_folders(tmp_path))}
    assert rows["b"].groups["prompt"] == "v1_no_examples · v1"
    assert rows["a"].groups["prompt"] == "v1 · v1"
    assert rows["b"].settings == "explainer.top_n=3" and rows["a"].settings == "explainer.top_n=5"
    assert rows["a"].groups["simulator"] == "proxy_lexical · v1 · proxy/lexical"
    md = write_leaderboard(tmp_path, tmp_path / "out", "T").read_text()
    assert r"v1\_no\_examples · v1" in md and r"explainer.top\_n=3" in md  # markdown-escaped, shown in full


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [({"fingerprint": "fp-2"}, "excerpts (fingerprint)"), ({"layers": [15, 15, 15, 15, 14]}, "units")],
)
def test_pairing_refuses_runs_over_different_units_or_excerpts(tmp_path, capsys, kwargs, what):
    make_run(tmp_path, "a", GOOD, CONTROL_LOW)
    make_run(tmp_path, "b", GOOD, CONTROL_LOW, **kwargs)
    with pytest.raises(UserError, match=re.escape(f"leaderboard: the runs differ in {what} (")):
        read_rows(run_folders(tmp_path))
    assert main(["leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert what in err and "--no-pairing" in err and len(err.strip().splitlines()) == 1
    assert main(["leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "o"), "--no-pairing"]) == 0


def test_every_format_and_plot_written_with_text_escaped(tmp_path):
    evil = "<script>alert(1)</script>|=cmd"
    make_run(tmp_path, "a", GOOD, CONTROL_LOW, explainer=evil, layers=[10, 10, 15, 15, 15], dollars=0.01)
    make_run(tmp_path, "b", [v - 0.1 for v in GOOD], CONTROL_LOW, layers=[10, 10, 15, 15, 15])
    out = tmp_path / "out"
    write_leaderboard(tmp_path, out, "T & <b>")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    plots = {
        f"plots/{s}.{e}" for s in ("score_distributions", "score_vs_cost", "score_per_layer") for e in ("png", "svg")
    }
    assert {
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.html",
        "leaderboard.tex",
        "leaderboard.json",
    } | plots <= names
    html = (out / "leaderboard.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "T &amp; &lt;b&gt;" in html
    md = (out / "leaderboard.md").read_text()
    assert "<script>" not in md and "\\|=cmd" in md
    tex = (out / "leaderboard.tex").read_text()
    assert "\\textless{}script\\textgreater{}" in tex and "T \\& " in tex
    assert tex.isascii()  # compiles with pdflatex as well
    table = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert table[0]["run"] == "a" and table[0]["control"] == "pass"
    assert table[0]["dollars_per_unit"] == "0.01" and float(table[1]["paired/diff_vs_best"]) < -0.09
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["rows"][0]["scores"]["rsquared"] == [None, None, None]  # NaN is null, never 0


def test_csv_guards_formula_cells(tmp_path):
    make_run(tmp_path, "a", GOOD, CONTROL_LOW, explainer="=HYPERLINK(1)")
    write_leaderboard(tmp_path, tmp_path / "out", "T", plots=False)
    row = next(csv.DictReader(io.StringIO((tmp_path / "out" / "leaderboard.csv").read_text())))
    assert row["explainer"].startswith("'=HYPERLINK")
    assert not (tmp_path / "out" / "plots").exists()


def test_default_output_folder_is_new_per_call(tmp_path, monkeypatch):
    make_run(tmp_path / "runs", "a", GOOD, CONTROL_LOW)
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--no-plots"]) == 0
    assert main(["leaderboard", "--no-plots"]) == 0
    made = sorted(p.parent for p in tmp_path.rglob("leaderboard.md"))
    assert len(made) == 2 and all("outputs/leaderboards" in p.as_posix() for p in made)
    assert not (tmp_path / "results").exists()


def test_selected_runs_and_errors(tmp_path, capsys):
    a = make_run(tmp_path, "a", GOOD, CONTROL_LOW)
    make_run(tmp_path, "b", GOOD, CONTROL_LOW)
    assert main(["leaderboard", str(a), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "| 1 | a |" in md and "| 2 |" not in md
    with pytest.raises(UserError):
        write_leaderboard(tmp_path / "empty", tmp_path / "o2", "T")
    assert main(["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")]) == 2
    assert main(["leaderboard", "--runs", str(tmp_path), "--score", "nope", "--out", str(tmp_path / "o4")]) == 2
    assert "available:" in capsys.readouterr().err


def test_pareto_front_keeps_only_undominated_points():
    points = [(0.0, 0.1), (0.0, 0.3), (1.0, 0.2), (2.0, 0.5), (3.0, 0.4)]
    assert pareto_front(points) == [(0.0, 0.3), (2.0, 0.5)]


def test_runs_read_from_an_mlflow_experiment(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store["uri"])
    exp = client.create_experiment("bench", artifact_location=(tmp_path / "mlruns" / "artifacts").as_uri())
    for name, values in (("a", GOOD), ("b", [v - 0.1 for v in GOOD])):
        folder = make_run(tmp_path / "src", name, values, CONTROL_LOW)
        run_id = client.create_run(exp, run_name=f"explainer={name}").info.run_id
        for file in ("config.json", "summary.json", "results.jsonl"):
            client.log_artifact(run_id, str(folder / file))
        client.set_terminated(run_id)
    client.set_terminated(client.create_run(exp, run_name="sweep parent").info.run_id)  # no run files: skipped
    out = tmp_path / "out"
    args = ["leaderboard", "--mlflow-uri", mlflow_store["uri"], "--experiment", "bench", "--out", str(out)]
    assert main([*args, "--no-plots"]) == 0
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert [r["run"].split("-")[0] for r in rows] == ["explainer=a", "explainer=b"]
    assert abs(rows[1]["paired"]["mean_diff"] + 0.1) < 1e-6
    assert main([*args[:3], "--experiment", "nope", "--out", str(out)]) == 2


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("summary.json", '{"units/total": 5, "score/'),  # torn by a crash
        ("summary.json", "[1]"),
        ("summary.json", '{"score/correlation/top_and_random/mean": "high"}'),
        ("results.jsonl", "not json\n"),
        ("results.jsonl", b"\xff\xfe\n"),
    ],
)
def test_a_damaged_run_folder_is_skipped_with_one_line_and_named_ones_are_refused(
    tmp_path, capsys, caplog, file, damage
):
    make_run(tmp_path, "a", GOOD, CONTROL_LOW)
    bad = make_run(tmp_path, "b", GOOD, CONTROL_LOW)
    (bad / file).write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    with caplog.at_level(logging.WARNING, logger="bench.leaderboard"):
        assert main(["leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "is damaged" in warnings[0] and "\n" not in warnings[0]
    assert "| 1 | a |" in (tmp_path / "o" / "leaderboard.md").read_text()
    assert main(["leaderboard", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and str(bad) in err and len(err.strip().splitlines()) == 1
