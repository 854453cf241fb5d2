"""Every config composes and validates; every user mistake is one line, exit code 2, before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import build_parts, compose, conf_dir, expand_sweep, validate
from bench.errors import ConfigError, UserError
from bench.protocols import CONTRACTS, Scorer, missing_members

GROUPS = ("subject", "dataset", "units", "explainer", "prompt", "simulator", "tracking")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


# Options whose units the subject does not compute refuse the default ablation scorer (one line);
# units=synthetic drops it from the default list itself (test_synthetic_units).
NEEDS = {("dataset", "reference_records"): ["scorer=[correlation]"]}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group: str, option: str) -> None:
    """Catches stale _target_ strings and unknown fields in every YAML (compose-everything test)."""
    cfg = compose([f"{group}={option}", *NEEDS.get((group, option), [])])
    settings, parts = validate(cfg)
    assert settings.units.count >= 1
    for role in ("subject", "dataset", "explainer", "simulator"):  # every member its Protocol declares
        assert missing_members(getattr(parts, role), CONTRACTS[role]) == [], role
    assert all(missing_members(s, Scorer) == [] for s in parts.scorers.values())


@pytest.mark.parametrize("option", options("scorer"))
def test_every_scorer_builds(option: str) -> None:
    parts = build_parts(compose([f"scorer=[{option}]"]))
    assert option in parts.scorers
    assert missing_members(parts.scorers[option], Scorer) == []


class BareSimulator:
    """A plugin simulator that declares only ``name`` and ``simulate`` (not the whole contract)."""

    name = "bare"

    def simulate(self, explanation, records):
        raise AssertionError("never called: the config is refused first")


def test_a_component_missing_part_of_its_contract_is_refused_in_one_line() -> None:
    from omegaconf import OmegaConf

    cfg = compose([])
    cfg.simulator = OmegaConf.create({"_target_": f"{__name__}.BareSimulator"})
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "simulator._target_"
    text = str(err.value)
    assert "does not implement bench.protocols.Simulator" in text and "\n" not in text
    for member in ("estimator", "recorded_estimator", "top_k", "llm", "required_capabilities"):
        assert member in text
    assert "simulate" not in text.split("lacks", 1)[1]  # what it has is not listed


def test_every_option_file_documents_an_override_and_a_version() -> None:
    for path in conf_dir().rglob("*.yaml"):
        if path.name == "config.yaml":
            continue
        text = path.read_text()
        assert text.startswith("#"), f"{path} must start with a comment showing an example override"
        assert "version:" in text, f"{path} needs a version: key"


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["units.count=0"], "units.count"),
        (["units.count=abc"], "units.count"),
        (["units.layers=[]"], "units.layers"),
        (["units.examples_per_split=20"], "mining.top_k"),
        (["explainer=nope"], "explainer"),
        (["units.cout=3"], "units.cout"),
        (["scoring.split=train"], "scoring.split"),
        (["scoring.calibration=magic"], "scoring.calibration"),
        (["mining.top_k=-1"], "mining.top_k"),
        (["subject.batch_size=abc"], "subject.batch_size"),
        (["dataset=text_files", "dataset.paths=[/nonexistent/file.txt]"], "dataset"),
    ],
)
def test_bad_config_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(UserError) as info:
        validate(compose(overrides))
    message = str(info.value)
    assert key in message and "\n" not in message


def test_sweep_expands_every_combination() -> None:
    combos = expand_sweep(["explainer=smollm2,token_list", "units.count=2", "seed=0,1"])
    assert len(combos) == 4 and ["explainer=token_list", "units.count=2", "seed=1"] in combos


def test_config_error_has_key() -> None:
    err = ConfigError("units.count", "must be >= 1")
    assert err.key == "units.count" and str(err) == "config error at 'units.count': must be >= 1"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "args,key",
    [
        (["run", "units.count=0"], "units.count"),
        (["run", "explainer=nope"], "explainer"),
        (["run", "-m", "explainer=token_list,nope"], "explainer"),
        (["run", "explainer=token_list,smollm2"], "-m"),
    ],
)
def test_cli_bad_override_is_one_line_exit_2(args: list[str], key: str, tmp_path: Path) -> None:
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing may start before validation passes"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, time; t=time.time(); import bench.cli, bench.pipeline, bench.config;"
        "heavy=[m for m in ('torch','transformers','mlflow','openai','anthropic','sklearn') if m in sys.modules];"
        "print(heavy, time.time()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("[]"), out
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "neuronbench" in proc.stdout
