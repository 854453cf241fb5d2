"""dataset=reference_records: the reference's published NeuronRecord files scored as they are (no mining)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from conftest_models import save_tiny_subject

from bench.cli import main, run_job
from bench.config import compose, validate
from bench.errors import ConfigError
from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats
from bench.reference_format import unit_record_from_reference, unit_record_to_reference
from bench.splits import make_splits

LAYER = 7  # deeper than the tiny subject's 2 layers: published records do not come from the subject
WORDS = [" cat", " the", " dog", " sat", " on", " a", " mat", " and"]


def published_record(neuron: int, word: str) -> UnitRecord:
    """Excerpts where ``word`` fires; top records get larger values the earlier they rank."""

    def excerpt(seed: int, strength: float) -> ActivationRecord:
        tokens = [WORDS[(seed * 3 + i) % len(WORDS)] for i in range(12)]
        tokens[seed % 12] = word
        return ActivationRecord(tokens, [strength if t == word else 0.0 for t in tokens])

    top = [excerpt(i, 10.0 - 0.1 * i) for i in range(20)]
    random = [excerpt(100 + i, 1.0) for i in range(15)]
    return UnitRecord(UnitId(LAYER, neuron), top=top, random=random, stats=UnitStats(0, 0.1, 0.5, 3.0, math.nan))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    records, explanations = root / "collated-activations", root / "explanations"
    for neuron, word in ((3, " dog"), (11, " cat"), (40, " mat")):
        (records / str(LAYER)).mkdir(parents=True, exist_ok=True)
        (records / str(LAYER) / f"{neuron}.json").write_text(
            json.dumps(unit_record_to_reference(published_record(neuron, word)))
        )
        (explanations / str(LAYER)).mkdir(parents=True, exist_ok=True)
        line = {"scored_explanations": [{"explanation": f'the word "{word.strip()}"'}]}
        (explanations / str(LAYER) / f"{neuron}.jsonl").write_text(json.dumps(line) + "\n")
    subject = save_tiny_subject("gpt2", root / "tiny-gpt2")
    return {"records": records, "explanations": explanations, "subject": subject}


def overrides(tmp: Path, published: dict[str, Path], *extra: str) -> list[str]:
    return [
        f"subject.model_id={published['subject']}",
        "dataset=reference_records",
        f"dataset.root={published['records']}",
        f"units.layers=[{LAYER}]",
        "units.examples_per_split=2",
        "explainer=reference_files",
        f"explainer.root={published['explanations']}",
        "simulator=proxy_lexical",
        "scorer=[correlation]",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


def test_published_records_are_scored_on_exactly_the_published_excerpts(tmp_path, published, mlflow_store):
    import mlflow

    extra = [
        "units.indices=[3,40]",
        f"tracking.uri={mlflow_store['uri']}",
        f"tracking.artifact_location={mlflow_store['artifacts']}",
    ]
    outcome = run_job(compose(overrides(tmp_path, published, *extra)), progress=False)
    assert [r.unit.key for r in outcome.results] == [f"mlp_neuron/L{LAYER}/3", f"mlp_neuron/L{LAYER}/40"]
    assert all(r.status == "ok" for r in outcome.results), [r.error for r in outcome.results]
    for result, word in zip(outcome.results, (" dog", " mat"), strict=True):
        assert result.explanation.text == f'the word "{word.strip()}"'  # the published explanation
        valid = make_splits(published_record(result.unit.index, word), 2).valid
        expected = [*valid.top, *valid.random]
        assert [s.tokens for s in result.simulation.sequences] == [r.tokens for r in expected]
        assert [s.true_activations for s in result.simulation.sequences] == [r.activations for r in expected]
        assert result.scores["correlation/top_only"].value > 0.9  # the proxy matches the quoted word
        path = published["records"] / str(LAYER) / f"{result.unit.index}.json"
        sha = result.extras["provenance"]["records"]["sha256"][result.unit.key]
        assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    run_dir = next((tmp_path / "runs").iterdir())
    mlflow.set_tracking_uri(mlflow_store["uri"])
    run = mlflow.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["units/failure_rate"] == 0


def test_units_are_sampled_among_the_files_present(tmp_path, published):
    settings, parts = validate(compose(overrides(tmp_path, published, "units.count=2", "units.seed=1")))
    records, _ = parts.dataset.unit_records(settings.units)
    assert len(records) == 2 and {r.unit.index for r in records.values()} <= {3, 11, 40}


def test_reading_keeps_the_published_order_of_top_records_and_nan_stats():
    rec = published_record(11, " cat")
    data = json.loads(json.dumps(unit_record_to_reference(rec)))
    data["most_positive_activation_records"].reverse()  # a file in another order reads back ranked
    back = unit_record_from_reference(data)
    assert back.top == rec.top and back.random == rec.random and math.isnan(back.stats.kurtosis)


@pytest.mark.parametrize(
    "extra,key",
    [
        (["units.layers=[8]"], "units.layers"),  # no folder for that layer
        (["units.indices=[4]"], "units.indices"),  # no file for that neuron
        (["units.count=9"], "units.count"),  # more than the 3 files
        (["scorer=[correlation,ablation]"], "scorer.ablation"),  # no subject token ids in published records
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path, published, capsys, extra, key):
    args = [o for o in overrides(tmp_path, published) if not o.startswith(("units.layers", "scorer"))]
    defaults = [f"units.layers=[{LAYER}]", "scorer=[correlation]"]
    defaults = [d for d in defaults if not any(e.split("=")[0] == d.split("=")[0] for e in extra)]
    assert main(["run", "--no-progress", *args, *defaults, *extra, "tracking=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"'{key}'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # stopped before any run folder or MLflow run exists


def test_the_root_must_exist():
    with pytest.raises(ConfigError, match="dataset.root"):
        validate(compose(["dataset=reference_records", "dataset.root=/nonexistent/folder", "scorer=[correlation]"]))
