import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.leaderboard import read_rows, run_folders, write_leaderboard


def make_run(root: Path, name: str, corr: float, explainer: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps(
            {
                "subject": {"model_id": "smollm2-135m-instruct"},
                "explainer": {"_target_": f"x.{explainer}", "name": explainer, "version": 2},
                "simulator": {"name": "proxy_lexical", "version": 1},
            }
        )
    )
    summary = {
        "units/total": 5,
        "units/failed": 1,
        "score/correlation/top_and_random/mean": corr,
        "score/correlation/top_and_random/ci_low": corr - 0.1,
        "score/correlation/top_and_random/ci_high": corr + 0.1,
        "score/ablation/mean": None,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "results.jsonl").write_text(json.dumps({"simulation": {"estimator": "proxy/lexical"}}) + "\n")
    return d


def test_rows_sorted_by_correlation_with_versions_and_failures(tmp_path):
    make_run(tmp_path, "a", 0.2, "token_list")
    make_run(tmp_path, "b", 0.5, "smollm2")
    rows = read_rows(run_folders(tmp_path))
    assert {r.subject for r in rows} == {"smollm2-135m-instruct"} and rows[0].failed == 1
    md = write_leaderboard(tmp_path, tmp_path / "out", "T").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| a") or line.startswith("| b")]
    assert lines[0].startswith("| b") and "smollm2 v2" in lines[0] and "0.500 [0.400, 0.600]" in lines[0]
    assert "—" in lines[0]  # a missing score is a dash, never 0
    assert json.loads((tmp_path / "out" / "leaderboard.json").read_text())[0]["units"] == 5


def test_selected_runs_and_errors(tmp_path, capsys):
    a = make_run(tmp_path, "a", 0.2, "token_list")
    make_run(tmp_path, "b", 0.5, "smollm2")
    assert main(["leaderboard", str(a), "--out", str(tmp_path / "o")]) == 0
    assert "| a" in (tmp_path / "o" / "leaderboard.md").read_text()
    assert "| b" not in (tmp_path / "o" / "leaderboard.md").read_text()
    with pytest.raises(UserError):
        write_leaderboard(tmp_path / "empty", tmp_path / "o2", "T")
    assert main(["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")]) == 2
