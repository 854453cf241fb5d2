"""Benchmark cards: create (versioned), run card=NAME (overrides that change it refused), no mixing."""

import pytest
import yaml

from bench import cards
from bench.cli import main
from bench.errors import UserError
from bench.leaderboard import read_rows, run_folders
from tests.report_fixtures import make_run

BASE = ["simulator=proxy_lexical", "scorer=[correlation]", "units.count=3"]


@pytest.fixture
def cards_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # card=NAME reads results/cards/ of the working directory
    return tmp_path / "results" / "cards"


def test_create_is_versioned_and_never_written_twice(cards_dir):
    first = cards.create("tiny", BASE, cards_dir, fingerprint=False)
    assert first.name == "tiny.v1.yaml"
    card = yaml.safe_load(first.read_text())
    d = card["definition"]
    assert (
        d["units"]["keys"]
        and len(d["units"]["keys"]) == 3
        and all(k.startswith("mlp_neuron/L15/") for k in d["units"]["keys"])
    )
    assert d["judge"]["estimator"] == "proxy/lexical" and d["subject"]["model"] == "smollm2-135m-instruct"
    assert d["subject"]["weights_sha256"] and set(d["scorers"]) == {"correlation"}
    assert cards.create("tiny", BASE, cards_dir, fingerprint=False) == first  # same definition: same file
    second = cards.create("tiny", [*BASE[:2], "units.count=4"], cards_dir, fingerprint=False)
    assert second.name == "tiny.v2.yaml" and yaml.safe_load(second.read_text())["version"] == 2
    assert cards.load_card("tiny", cards_dir)["version"] == 2 and cards.load_card("tiny.v1", cards_dir)["version"] == 1


def test_run_card_keeps_free_overrides_and_refuses_defining_ones(cards_dir, capsys):
    cards.create("tiny", BASE, cards_dir, fingerprint=False)
    expanded = cards.apply(["card=tiny", "explainer=token_list", "prompt=v1_no_examples"])
    assert expanded[:3] == BASE and "explainer=token_list" in expanded
    assert "+card.name=tiny" in expanded and "+card.version=1" in expanded
    with pytest.raises(UserError, match=r"card tiny.v1 fixes units.config.count = 3; these overrides make it 5"):
        cards.apply(["card=tiny", "units.count=5"])
    assert main(["run", "--dry-run", "card=tiny", "simulator=smollm2_all_at_once"]) == 2
    err = capsys.readouterr().err
    assert "card tiny.v1 fixes judge." in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--dry-run", "card=tiny", "explainer=token_list"]) == 0
    assert main(["run", "--dry-run", "card=missing"]) == 2
    assert "no such card" in capsys.readouterr().err


def test_create_refuses_free_groups(cards_dir, capsys):
    assert main(["card", "create", "x", "explainer=token_list"]) == 2
    assert "leaves free" in capsys.readouterr().err
    assert not cards_dir.exists()


def test_leaderboard_refuses_runs_of_different_cards(tmp_path):
    make_run(tmp_path, "a", [0.3, 0.4], [0.0, 0.1], extra_config={"card": {"name": "tiny", "version": 1}})
    make_run(tmp_path, "b", [0.3, 0.4], [0.0, 0.1], extra_config={"card": {"name": "tiny", "version": 2}})
    with pytest.raises(UserError, match=r"a ran card tiny.v1 but b ran card tiny.v2"):
        read_rows(run_folders(tmp_path))
    make_run(tmp_path / "free", "c", [0.3, 0.4], [0.0, 0.1])
    with pytest.raises(UserError, match=r"card \(none\)"):
        read_rows([tmp_path / "a", tmp_path / "free" / "c"])


def test_run_card_refuses_other_excerpts(cards_dir, monkeypatch):
    monkeypatch.setattr(cards, "excerpt_fingerprint", lambda cfg, parts: "fp-made")
    cards.create("tiny", BASE, cards_dir)
    assert cards.load_card("tiny", cards_dir)["definition"]["excerpt_fingerprint"] == "fp-made"
    assert "+card.name=tiny" in cards.apply(["card=tiny"])
    monkeypatch.setattr(cards, "excerpt_fingerprint", lambda cfg, parts: "fp-elsewhere")
    with pytest.raises(UserError, match="fingerprint fp-made, but this machine builds fp-elsewhere"):
        cards.apply(["card=tiny", "explainer=token_list"])
