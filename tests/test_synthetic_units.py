"""Synthetic units (units=synthetic) and `neuronbench judge-check`: rules, records, runs, separation."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject

from bench.cli import main, run_job
from bench.config import compose, validate
from bench.errors import ConfigError
from bench.records import SequenceSimulation, Simulation
from bench.subject.synthetic import activations, parse_rules, select


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    corpus = root / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    return save_tiny_subject("llama", root / "tiny-llama"), corpus


def overrides(tmp: Path, tiny: tuple[Path, Path], *extra: str) -> list[str]:
    subject, corpus = tiny
    return [
        "units=synthetic",
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=16",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=token_list",
        "simulator=proxy_lexical",
        "scorer=[correlation]",
        "tracking=none",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------
# Rules and activations
# ---------------------------------------------------------------------------------------------------
RULES = [
    {"name": "the", "tokens": ["The"], "explanation": 'the word "the"'},
    {"name": "digit", "regex": "[0-9]", "explanation": "digits", "value": 2.0},
    {"name": "first", "positions": [0, -1], "explanation": "first and last tokens"},
    {"name": "even", "every": 2, "offset": 1, "explanation": "odd positions"},
    {"name": "mix", "mixture": {"the": 1.0, "digit": 0.5}, "explanation": '"the", and digits weakly'},
]
STRINGS = {0: " the", 1: "THE", 2: " 42", 3: "x", 4: "the7"}


def test_each_rule_kind_fires_exactly_where_it_says():
    acts = activations(parse_rules(RULES), np.array([[0, 1, 2, 3], [3, 4, 3, 3]]), STRINGS)
    assert acts.shape == (5, 2, 4)
    assert acts[0].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]  # stripped, case-insensitive; "the7" is not "the"
    assert acts[1].tolist() == [[0, 0, 2, 0], [0, 2, 0, 0]]  # regex search, value 2
    assert acts[2].tolist() == [[1, 0, 0, 1], [1, 0, 0, 1]]  # positions, -1 = last
    assert acts[3].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]  # every 2, offset 1
    assert acts[4].tolist() == [[1, 1, 1, 0], [0, 1, 0, 0]]  # 1.0 * the + 0.5 * digit(2.0)


@pytest.mark.parametrize(
    "rules,problem",
    [
        ([], "at least one"),
        ([{"name": "a", "explanation": "x"}], "exactly one of"),
        ([{"name": "a", "tokens": ["a"], "regex": "a", "explanation": "x"}], "exactly one of"),
        ([{"name": "a", "tokens": ["a"]}], "explanation"),
        ([{"name": "a", "regex": "(", "explanation": "x"}], "invalid regex"),
        ([{"name": "a", "mixture": {"b": 1.0}, "explanation": "x"}], "not a non-mixture rule"),
        ([{"name": "a", "tokens": ["a"], "explanation": "x", "colour": 1}], "unknown keys"),
    ],
)
def test_bad_rules_are_refused_with_the_problem(rules, problem):
    with pytest.raises(ValueError, match=problem):
        parse_rules(rules)


def test_records_follow_the_miners_selection_rules():
    rng = np.random.default_rng(3)
    acts = (rng.random((3, 40, 8)) < 0.2).astype(np.float32) * rng.integers(1, 4, size=(3, 40, 8))
    mined = select(acts, 0, top_k=10, random_k=7, seed=5)
    assert mined.random_indices.tolist() == np.random.default_rng(5).choice(40, size=7, replace=False).tolist()
    for u in range(3):
        maxes = acts[u].max(axis=1)
        expected = sorted(range(40), key=lambda i: (-maxes[i], i))[:10]  # by max, ties -> lower excerpt index
        assert mined.top_indices[:, u].tolist() == expected
        assert np.array_equal(mined.top_acts[:, u], acts[u][expected])
        assert np.array_equal(mined.random_acts[:, u], acts[u][mined.random_indices])
        flat = acts[u].ravel().astype(np.float64)
        assert mined.mean[u] == pytest.approx(flat.mean(), abs=1e-9)
        assert mined.variance[u] == pytest.approx(flat.var(), abs=1e-9)
    assert mined.count == 40 * 8


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,key",
    [
        (["scorer=[ablation]"], "scorer.ablation"),  # chosen explicitly: undefined here, refused
        (["scorer=[correlation,detection,ablation]"], "scorer.ablation"),
        (["scorer=[correlation,output_centric]"], "scorer.output_centric"),
        (["scorer=[correlation]", "units.layers=[3]"], "units.layers"),
        (["scorer=[correlation]", "units.indices=[99]"], "units.indices"),
        (["scorer=[correlation]", "units.count=50"], "units.count"),
        (["scorer=[correlation]", "units.rules=[{name: a}]"], "units.rules"),
        (["scorer=[correlation]", "dataset=reference_records"], "dataset"),
    ],
)
def test_synthetic_config_mistakes_are_one_line_naming_the_key(extra, key):
    with pytest.raises(ConfigError) as err:
        validate(compose(["units=synthetic", *extra]))
    assert err.value.key == key and "\n" not in str(err.value)


def test_synthetic_units_with_the_default_scorers_drop_ablation_in_one_logged_line(caplog):
    import logging

    from bench.subject.synthetic import default_scorer_names

    assert "ablation" in default_scorer_names()  # else this test tests nothing
    cfg = compose(["units=synthetic"])
    with caplog.at_level(logging.INFO, logger="bench.subject.synthetic"):
        _settings, parts = validate(cfg)
    assert list(parts.scorers) == [n for n in default_scorer_names() if n != "ablation"]
    assert "ablation" not in cfg.scorer  # the composed config (hashed, saved with the run) says what ran
    lines = [r.getMessage() for r in caplog.records if "undefined for rules over tokens" in r.getMessage()]
    assert len(lines) == 1 and "ablation" in lines[0] and "\n" not in lines[0]
    # the same choice typed out runs the same configuration
    explicit = compose(["units=synthetic", "scorer=[correlation]"])
    validate(explicit)
    assert dict(explicit.scorer) == dict(cfg.scorer)


def test_rules_are_refused_for_other_kinds():
    with pytest.raises(ConfigError, match="units.rules"):
        validate(compose(["units.rules=[{name: a, tokens: [a], explanation: x}]"]))


# ---------------------------------------------------------------------------------------------------
# A run end to end, logged to MLflow, without the subject's weights
# ---------------------------------------------------------------------------------------------------
def test_synthetic_run_end_to_end_needs_no_forward_pass_and_logs_to_mlflow(tmp_path, tiny, mlflow_store):
    import mlflow

    from bench.subject import transformers_subject

    transformers_subject.clear_cache()
    extra = [
        "tracking=local",
        f"tracking.uri={mlflow_store['uri']}",
        f"tracking.artifact_location={mlflow_store['artifacts']}",
        "units.indices=[0,2,3]",  # the, of, comma (the tiny tokenizer splits " and")
    ]
    outcome = run_job(compose(overrides(tmp_path, tiny, *extra)), progress=False)
    assert not transformers_subject._MODELS  # only the tokenizer was loaded
    assert [r.unit.key for r in outcome.results] == ["synthetic/L0/0", "synthetic/L0/2", "synthetic/L0/3"]
    assert all(r.status == "ok" for r in outcome.results), [r.error for r in outcome.results]
    the = outcome.results[0]
    rules = the.extras["provenance"]["synthetic"]["rules"]
    assert rules[0]["name"] == "the" and list(rules[0]["tokens"]) == ["the"]
    for seq in the.simulation.sequences:  # the rule: 1 exactly on "the" tokens
        assert seq.true_activations == [1.0 if t.strip().lower() == "the" else 0.0 for t in seq.tokens]
    assert the.scores["correlation/top_and_random"].value > 0.5  # token_list names " the"; the proxy matches it
    run_dir = next((tmp_path / "runs").iterdir())
    mlflow.set_tracking_uri(mlflow_store["uri"])
    run = mlflow.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["units/failure_rate"] == 0
    assert run.data.params["units.kind"] == "synthetic"


# ---------------------------------------------------------------------------------------------------
# judge-check
# ---------------------------------------------------------------------------------------------------
def test_judge_check_separates_true_from_shuffled_and_empty_with_the_lexical_proxy(tmp_path, tiny, capsys):
    out = tmp_path / "check.json"
    code = main(
        ["judge-check", "--no-progress", "--out", str(out), *overrides(tmp_path, tiny, "units.indices=[0,2,6]")]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "separation" in printed and "verdict: separates" in printed
    report = json.loads(out.read_text())
    assert report["simulator"] == "proxy_lexical" and report["n_units"] == 3
    assert "units=synthetic" in report["overrides"]
    assert report["conditions"]["empty"]["n_constant"] == 3  # no words: a constant simulation, counted
    assert report["separation"]["ci_low"] > 0.3  # quoted words are matched exactly (r ~ 0.9)
    assert report["true_vs_shuffled"]["mean"] > 0.3 and report["win_rate"] == 1.0
    assert [u["texts"]["true"] for u in report["units"]][:2] == ['the word "the"', 'the word "of"']


class DeafSimulator:
    """Predicts 5 on every token ending in "e", whatever the explanation says."""

    name = "deaf"
    estimator = recorded_estimator = "test/deaf"
    top_k = llm = None
    required_capabilities: frozenset = frozenset()

    def simulate(self, explanation, records):
        seqs = [
            SequenceSimulation(list(r.tokens), [5.0 if t.endswith("e") else 0.0 for t in r.tokens], list(r.activations))
            for r in records
        ]
        return Simulation(seqs, self.name, self.estimator)


class BrokenSimulator(DeafSimulator):
    name = "broken"

    def simulate(self, explanation, records):
        if not explanation:
            raise RuntimeError("no explanation")
        return super().simulate(explanation, records)


def test_judge_check_reports_a_judge_that_ignores_explanations_and_counts_failures(tmp_path, tiny):
    from bench.judge_check import judge_check

    settings, parts = validate(compose(overrides(tmp_path, tiny, "units.indices=[0,2,3]")))
    deaf = judge_check(settings, replace(parts, simulator=DeafSimulator()), progress=False)
    assert deaf.separation.mean == 0.0 and deaf.verdict.startswith("does not separate")
    broken = judge_check(settings, replace(parts, simulator=BrokenSimulator()), progress=False)
    assert broken.conditions["empty"].n_failed == 3 and broken.conditions["true"].n_failed == 0
    assert broken.separation.n == 0 and math.isnan(broken.separation.mean)  # failed units are not paired
    assert broken.verdict.startswith("undetermined")


def test_judge_check_runs_the_offline_default_simulator_path(tmp_path, tiny):
    """simulator=smollm2_all_at_once (the offline default's judge) with a fake backend: the same code path."""
    from bench.judge_check import judge_check

    extra = ["simulator=smollm2_all_at_once", "~simulator.llm", "+simulator.llm={_target_:bench.llm.fake.FakeLLM}"]
    settings, parts = validate(compose(overrides(tmp_path, tiny, "units.indices=[0,2]", *extra)))
    check = judge_check(settings, parts, explain=True, progress=False)
    assert check.estimator == "all_at_once/prompt_logprobs_exact"
    assert set(check.conditions) == {"true", "shuffled", "empty", "explainer"}
    assert sum(c.n + c.n_failed for c in check.conditions.values()) == 4 * 2  # every simulation accounted for
    assert all(u["texts"]["explainer"] for u in check.units)  # token_list wrote one per unit


def test_judge_check_refuses_units_that_are_not_synthetic(capsys):
    assert main(["judge-check", "units=default"]) == 2
    err = capsys.readouterr().err
    assert "units=synthetic" in err and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_judge_check_with_the_real_offline_default_simulator(tmp_path, capsys):
    """The offline default's judge (real SmolLM2-135M, prompt logprobs) on two synthetic units."""
    out = tmp_path / "smollm2.json"
    args = ["units.indices=[0,2]", "units.examples_per_split=2", "dataset.n_excerpts=320", f"output_dir={tmp_path}"]
    assert main(["judge-check", "--no-progress", "--out", str(out), *args]) == 0
    report = json.loads(out.read_text())
    assert report["simulator"] == "smollm2_all_at_once" and report["estimator"] == "all_at_once/prompt_logprobs_exact"
    for condition in ("true", "shuffled", "empty"):
        c = report["conditions"][condition]
        assert c["n"] + c["n_failed"] == 2  # every simulation is a score or a counted failure
    assert "verdict:" in capsys.readouterr().out
