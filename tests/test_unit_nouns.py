"""Prompts say what the unit is: 'neuron' for MLP neurons (unchanged text), the kind's noun otherwise."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bench.config import build_parts, compose, validate
from bench.records import ActivationRecord
from bench.unit_nouns import for_unit_kind, reword

RECORDS = [ActivationRecord(tokens=["The", " rain", " fell"], activations=[0.0, 3.0, 0.5])]
# an explanation that itself mentions neurons: explanations are never reworded
EXPLANATION = "rain, like a neuron for weather"


def texts(parts: dict) -> dict[str, str]:
    """Every prompt text the explainer and the simulator would send, joined per component."""
    explainer, simulator = parts.explainer, parts.simulator
    explain = "\n".join(m.content for q in explainer.dry_run_requests(RECORDS) for m in q.messages)
    explain += "\n" + explainer.prompt.lead_in
    simulate = "\n".join(m.content for m in simulator.build_request(EXPLANATION, ["The", " rain"]).messages)
    return {"explainer": explain, "simulator": simulate}


def test_reword_keeps_case_plural_and_article() -> None:
    text = "A neuron and the neurons; a Neuron. Neurons! neuronal"
    assert reword(text, "attention_head") == (
        "An attention head and the attention heads; an Attention head. Attention heads! neuronal"
    )
    assert reword(text, "sae_latent") == "A feature and the features; a Feature. Features! neuronal"
    assert reword(text, "mlp_neuron") is text and reword(text, "unknown_kind") is text


def test_mlp_neuron_prompts_are_unchanged_character_for_character() -> None:
    settings, parts = validate(compose([]))
    assert settings.units.kind == "mlp_neuron"
    fresh = build_parts(compose([]))  # built as configured, never reworded
    assert for_unit_kind(fresh.simulator, "mlp_neuron") is fresh.simulator
    got = texts(parts)
    # the reference wording, as it was before unit kinds had nouns
    assert (
        "Neuron 3\nExplanation of neuron 3: the main thing this neuron does is find " + EXPLANATION in got["simulator"]
    )
    assert "You predict how strongly one neuron of a language model reacts" in got["simulator"]
    assert "You are studying the neurons of a language model. Each neuron reacts" in got["explainer"]
    assert got == texts(fresh)


@pytest.mark.parametrize(
    "kind,overrides,word",
    [
        ("sae_latent", [], "feature"),
        ("attention_head", ["units=attention_head"], "attention head"),
        ("synthetic", ["units=synthetic"], "feature"),
    ],
)
def test_other_kinds_name_their_unit_in_every_prompt(kind: str, overrides: list[str], word: str) -> None:
    if kind == "sae_latent":  # units=sae_latent needs an SAE folder to validate: reword the default parts
        parts = validate(compose([]))[1]
        parts = dataclasses.replace(
            parts, explainer=for_unit_kind(parts.explainer, kind), simulator=for_unit_kind(parts.simulator, kind)
        )
    else:
        settings, parts = validate(compose(overrides))
        assert settings.units.kind == kind
    for name, text in texts(parts).items():
        without = text.replace(EXPLANATION, "")
        assert not re.search("neuron", without, re.IGNORECASE), (name, kind)
        assert word in text.lower(), (name, kind)
        if name == "simulator":
            assert EXPLANATION in text  # the explanation itself is passed through as written
    assert parts.explainer.prompt.lead_in == f"the main thing this {word} does is find"


def test_one_at_a_time_question_names_the_unit() -> None:
    parts = validate(compose(["simulator=smollm2_one_at_a_time", "units=attention_head"]))[1]
    request = parts.simulator.build_requests(EXPLANATION, ["The", " rain"])[0]
    text = "\n".join(m.content for m in request.messages).replace(EXPLANATION, "")
    assert "How strongly does the attention head react to the last token?" in text
    assert "Attention head" in text and not re.search("neuron", text, re.IGNORECASE)


def test_detection_and_fuzzing_judges_name_the_unit() -> None:
    plain = validate(compose(["scorer=[detection,fuzzing]"]))[1].scorers
    assert "You check explanations of neurons" in plain["detection"].conversation(EXPLANATION, ["a"])[0].content
    scorers = validate(compose(["units=synthetic", "scorer=[correlation,detection,fuzzing]"]))[1].scorers
    for conversation in (scorers["detection"].conversation(EXPLANATION, ["a", "b"]),
                         scorers["fuzzing"].conversation(EXPLANATION, ["a", "b"], [1])):  # fmt: skip
        text = "\n".join(m.content for m in conversation)
        assert EXPLANATION in text and "features" in text
        assert not re.search("neuron", text.replace(EXPLANATION, ""), re.IGNORECASE)
