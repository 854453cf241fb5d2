"""The Python API (``bench.evaluate`` / ``bench.load_run``), ``neuronbench list`` and a non-editable
install: the wheel carries ``conf/`` and runs a job from a fresh virtual environment."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_run

import bench
from bench.cli import main
from bench.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    return save_tiny_subject("llama", root / "llama"), corpus


def tiny_overrides(subject: Path, corpus: Path, tmp: Path) -> list[str]:
    return [
        "explainer=token_list",
        "simulator=proxy_lexical",
        *tiny_run(subject, corpus),
        "tracking=none",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
    ]


def test_evaluate_runs_a_config_and_load_run_gives_one_row_per_unit(tiny, tmp_path):
    outcome = bench.evaluate(tiny_overrides(*tiny, tmp_path))
    assert len(outcome.results) == 3 and outcome.run_dir is not None
    df = bench.load_run(outcome.run_dir)
    assert len(df) == 3 and list(df["unit"]) == [r.unit.key for r in outcome.results]
    score = "correlation/top_and_random"
    assert {"status", "explanation", "estimator", score, f"{score}/reason"} <= set(df.columns)
    for r, (_, row) in zip(outcome.results, df.iterrows(), strict=True):
        value = r.scores["correlation/top_and_random"].value
        assert (math.isnan(value) and math.isnan(row["correlation/top_and_random"])) or row[
            "correlation/top_and_random"
        ] == value
    assert (df["estimator"] == "proxy/lexical").all()
    # the same overrides again: the finished run folder is read back, nothing recomputed
    again = bench.evaluate(tiny_overrides(*tiny, tmp_path))
    assert again.run_dir == outcome.run_dir and [r.to_json() for r in again.results] == [
        r.to_json() for r in outcome.results
    ]


def test_evaluate_refuses_a_sweep_and_load_run_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="sweep"):
        bench.evaluate(["explainer=token_list,smollm2"])
    with pytest.raises(UserError, match="^load_run: no results at"):
        bench.load_run(tmp_path / "nothing")


def test_import_bench_stays_light():
    code = (
        "import sys, bench; bench.evaluate; bench.load_run;"
        "heavy=[m for m in ('torch','transformers','mlflow','pandas','hydra','numpy') if m in sys.modules];"
        "print(heavy)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_list_shows_each_groups_options_with_their_first_comment_line(capsys):
    assert main(["list", "prompt"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "prompt:"
    v1 = next(line for line in out if line.split()[:1] == ["v1_no_examples"])
    assert "Zero-shot variant of v1" in v1
    assert main(["list"]) == 0
    everything = capsys.readouterr().out
    for group in ("subject:", "dataset:", "explainer:", "simulator:", "scorer:", "tracking:"):
        assert f"\n{group}" in "\n" + everything
    assert main(["list", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config group 'nope'; groups: dataset, explainer" in err


# ---------------------------------------------------------------------------------------------------
# A non-editable install
# ---------------------------------------------------------------------------------------------------
def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEURONBENCH_CONF", "VIRTUAL_ENV")}


def test_the_wheel_ships_conf_and_runs_a_job_from_a_fresh_venv(tiny, tmp_path):
    # Build from a copy (the build leaves build/ and *.egg-info behind), keeping bench/conf a link.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bench", "plugins", "conf", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"symlinks": True} if copy is shutil.copytree else {}))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        check=True,
        env=_clean_env(),
        capture_output=True,
    )
    wheel = next(dist.glob("neuronbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"bench/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names

    # A fresh venv that borrows the dependencies (not neuronbench itself) from this environment.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "hydra").is_dir())
    Path(purelib, "_deps.pth").write_text(deps + "\n")  # a plain path: its editable-install hooks stay off
    env = _clean_env()
    subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
        check=True,
        env=env,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [py, "-c", "import bench, bench.config; print(bench.__file__); print(bench.config.conf_dir())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(env_dir) for p in where), where
    cli = env_dir / "bin" / "neuronbench"
    listed = subprocess.run([cli, "list", "simulator"], cwd=work, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "proxy_lexical" in listed.stdout, listed.stderr
    run = subprocess.run(
        [cli, "run", "--no-progress", *tiny_overrides(*tiny, work)], cwd=work, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len((next((work / "runs").iterdir()) / "results.jsonl").read_text().splitlines()) == 3
