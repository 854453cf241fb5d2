"""AllAtOnceSimulator on the fake backend: EVs, unparsed counting, escaping, capability refusal."""

from __future__ import annotations

import math

import pytest

from bench.errors import UserError
from bench.llm.fake import FakeLLM
from bench.protocols import VALUE_STRINGS, SlotRequest
from bench.records import ActivationRecord as R
from bench.simulators.all_at_once import AllAtOnceSimulator, supported_estimators
from bench.simulators.expected_value import expected_value_from_probabilities
from bench.simulators.prompt_format import UNKNOWN, escape_token, unescape_token

WEIRD = [" cat", "\t", "\n", 'say "hi"', "é", "\\n", "\u2028", "", " the", "猫"]


def _ev(target: int, sharpness: float) -> float:
    w = [math.exp(-sharpness * abs(v - target)) for v in range(11)]
    return sum(v * x for v, x in enumerate(w)) / sum(w)


def test_expected_values_follow_the_fake_rule() -> None:
    llm = FakeLLM(sharpness=1.5, value_mass=0.3)
    sim = AllAtOnceSimulator(llm=llm)
    out = sim.simulate("cats, the cat", [R([" cat", " sat", " the"], [3.0, 0.0, 1.0]), R([" dog"], [2.0])])
    high, low = _ev(10, 1.5), _ev(0, 1.5)
    assert out.sequences[0].expected == pytest.approx([high, low, high])
    assert out.sequences[1].expected == pytest.approx([low])
    assert out.sequences[0].true_activations == [3.0, 0.0, 1.0]
    assert out.sequences[0].tokens == [" cat", " sat", " the"]
    assert out.estimator == "all_at_once/prompt_logprobs" and out.simulator == "all_at_once"
    assert out.unparsed_tokens == 0 and out.usage.calls == 2
    dist = out.sequences[0].distributions[0]
    assert sum(dist) == pytest.approx(1.0) and dist[10] > dist[0]  # renormalised over the values
    assert out.meta["mean_value_mass"] == pytest.approx(0.3)
    assert out.meta["value_handling"]["multi_token_values"] == "single_token"
    assert len(llm.calls) == 2  # one request per excerpt


def test_unparsed_tokens_are_counted_not_hidden() -> None:
    sim = AllAtOnceSimulator(llm=FakeLLM(unparsed_tokens=("é", "猫")))
    out = sim.simulate("cat", [R(WEIRD, [0.0] * len(WEIRD))])
    seq = out.sequences[0]
    assert seq.unparsed == 2 and out.unparsed_tokens == 2
    assert seq.expected[WEIRD.index("é")] == 0.0 and seq.distributions[WEIRD.index("é")] == [0.0] * 11
    assert seq.expected[0] == pytest.approx(_ev(10, 2.0))  # " cat" matches the explanation


def test_weird_tokens_are_escaped_and_slots_point_at_unknown() -> None:
    req = AllAtOnceSimulator(llm=FakeLLM()).build_request("x", WEIRD)
    content = req.messages[-1].content
    lines = content.split("\n")
    assert lines[0] == "<start>" and lines[len(WEIRD) + 1] == "<end>" and len(lines) == len(WEIRD) + 3
    assert len(req.slots) == len(WEIRD)
    for token, slot, line in zip(WEIRD, req.slots, lines[1:], strict=False):
        assert content[slot : slot + len(UNKNOWN)] == UNKNOWN and content[slot - 1] == "\t"
        head, value = line.split("\t")
        assert value == UNKNOWN and unescape_token(head) == token
    assert escape_token("a\tb\nc\\d\u2028") == "a\\tb\\nc\\\\d\\u2028"
    # few-shot examples switch from unknown to numbers; the target is all unknown
    example = req.messages[2].content
    assert "\tunknown\n" in example and "\t10\n" in example
    assert (
        req.messages[-2].content.startswith("Neuron 3\n")
        and "the main thing this neuron does is find x" in req.messages[-2].content
    )
    assert req.values == VALUE_STRINGS


def test_a_backend_without_prompt_logprobs_is_refused_before_any_call() -> None:
    llm = FakeLLM(supports=("generate", "generated_logprobs"))
    sim = AllAtOnceSimulator(llm=llm)
    assert sim.required_capabilities == {"prompt_logprobs"}
    with pytest.raises(UserError, match="needs prompt_logprobs.*estimators it can serve: all_at_once/generated_logpr"):
        sim.simulate("cat", [R([" cat"], [1.0])])
    assert llm.calls == []
    assert supported_estimators(FakeLLM().capabilities) == [
        "prompt_logprobs",
        "prompt_logprobs_exact",
        "generated_logprobs",
        "sampled",
    ]
    with pytest.raises(UserError, match="estimators it can serve: none"):
        AllAtOnceSimulator(llm=FakeLLM(supports=())).simulate("cat", [R([" cat"], [1.0])])


def test_unsupported_estimator_and_bad_examples_are_config_errors() -> None:
    with pytest.raises(ValueError, match="^estimator: 'logprobs' is not an all-at-once estimator; use one of prompt"):
        AllAtOnceSimulator(llm=FakeLLM(), estimator="logprobs")
    with pytest.raises(ValueError, match="^few_shot:"):
        AllAtOnceSimulator(llm=FakeLLM(), few_shot=[{"explanation": "x", "tokens": ["a"], "values": [11]}])
    zero_shot = AllAtOnceSimulator(llm=FakeLLM(), few_shot=[])
    req = zero_shot.build_request("x", ["a"])
    assert [m.role for m in req.messages] == ["system", "user", "assistant"]


def test_fake_slot_fn_and_empty_excerpts() -> None:
    def slot_fn(req: SlotRequest, k: int) -> dict[str, float]:
        return {"3": 0.2, "5": 0.2} if k % 2 == 0 else {"not a value": 0.9}

    out = AllAtOnceSimulator(llm=FakeLLM(slot_fn=slot_fn)).simulate(
        "x", [R(["a", "b", "c"], [1.0, 2.0, 3.0]), R([], [])]
    )
    assert out.sequences[0].expected == pytest.approx([4.0, 0.0, 4.0])
    assert out.sequences[0].unparsed == 1
    assert out.sequences[1].expected == [] and out.sequences[1].unparsed == 0
    assert expected_value_from_probabilities({"3": 0.2, "5": 0.2}).value == pytest.approx(4.0)
