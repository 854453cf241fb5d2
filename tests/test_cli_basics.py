"""CLI basics users reach for first (issue 12 item 9): --version, --cfg job, -q / --log-level, and an
end-of-run table that shows every score name whole at 80 columns."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.cli
import bench.jobs
from bench.cli import main
from bench.summary import print_summary, wrap_name

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120, env=env
    )


def test_version_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"neuronbench {version('neuronbench')}"


def test_cfg_job_as_printed_by_help_prints_the_config_and_runs_nothing(tmp_path: Path) -> None:
    assert "neuronbench run --cfg job" in run_cli("run", "--help", cwd=tmp_path).stdout
    proc = run_cli("run", "--cfg", "job", "units.count=2", "explainer=token_list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "units:" in proc.stdout and "count: 2" in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # printed, not run


@pytest.mark.parametrize(
    "flags,progress,level",
    [
        ([], True, None),
        (["-q"], False, "WARNING"),
        (["--log-level", "debug"], True, "DEBUG"),
        (["-q", "--log-level", "ERROR"], False, "ERROR"),
    ],
)
def test_quiet_and_log_level_reach_the_run(flags, progress, level, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(bench.cli, "command_run", lambda overrides, **kw: seen.update(kw, overrides=overrides) or 0)
    assert main(["run", *flags, "units.count=2"]) == 0
    assert seen["progress"] is progress and seen["log_level"] == level and seen["overrides"] == ["units.count=2"]


def test_log_level_applies_inside_the_hydra_job(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    levels = []
    monkeypatch.setattr(bench.jobs, "run_job", lambda cfg, progress=True, **_: levels.append(logging.getLogger().level))
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        assert main(["run", "-q", "explainer=token_list", "units.count=1"]) == 0
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    assert levels == [logging.WARNING]


def test_end_of_run_table_keeps_whole_score_names_at_80_columns(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    names = [
        "correlation/top_and_random",
        "specificity/correlation/top_and_random",
        "detection/balanced_accuracy/top_and_random",
        "plugin/[bold]markup[/bold]/score",
    ]
    summary = {"units/ok": 3, "units/failed": 0, "units/failure_rate": 0.0}
    summary |= {"simulation/unparsed_tokens": 0, "simulation/tokens": 10}
    for n in names:
        for field, v in [
            ("mean", 0.5),
            ("median", 0.4),
            ("ci_low", -0.123),
            ("ci_high", 0.987),
            ("n", 3),
            ("n_nan", 0),
        ]:
            summary[f"score/{n}/{field}"] = v
    print_summary("run", Path("r"), SimpleNamespace(summary=summary, results=[], warnings=[]))
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    # the score column, read top to bottom, spells every name whole (wrapped, never cut)
    column = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    for n in names:
        assert n in column, n
    assert "[-0.123, 0.987]" in out  # numbers are never wrapped


def test_wrap_name_breaks_after_slashes_and_keeps_every_character() -> None:
    assert wrap_name("correlation/top_and_random", 26) == "correlation/top_and_random"
    assert wrap_name("specificity/correlation/top_and_random", 26) == "specificity/correlation/\ntop_and_random"
    assert wrap_name("abcdefghij", 4) == "abcd\nefgh\nij"
