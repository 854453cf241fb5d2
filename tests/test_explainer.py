"""Explainers: the LLM prompt (golden text, sparse-repeat rule, budget), answer handling, the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.explainers.llm_explainer import ExplanationError, LLMExplainer, PromptSpec
from bench.explainers.token_list import TokenListExplainer
from bench.llm.fake import FakeLLM
from bench.records import ActivationRecord as R
from bench.records import UnitId

CONF = Path(__file__).resolve().parents[1] / "conf"
UNIT = UnitId(layer=3, index=7)
SPEC = {
    "name": "golden",
    "version": 3,
    "system": "SYS",
    "lead_in": "it finds",
    "examples": [
        {
            "explanation": "rain",
            "records": [
                {"tokens": ["a", " rain"], "activations": [0.0, 2.0]},
                {"tokens": ["b\tc"], "activations": [1.0]},
            ],
        }
    ],
}
# 1 of 10 values non-zero (< 20 %): the non-zero line is repeated on its own.
TARGET = [R([" x", "\n", "y", "z", "w"], [0.0, -1.0, 4.0, 0.1, 0.0]), R(["p", "q", "r", "s", "t"], [0.0] * 5)]

GOLDEN = [
    ("system", "SYS"),
    ("user", "Neuron 1\nActivations:\n<start>\na\t0\n rain\t10\n<end>\n<start>\nb\\tc\t5\n<end>\n"),
    ("assistant", "it finds rain"),
    (
        "user",
        "Neuron 2\nActivations:\n"
        "<start>\n x\t0\n\\n\t0\ny\t10\nz\t0\nw\t0\n<end>\n"
        "<start>\np\t0\nq\t0\nr\t0\ns\t0\nt\t0\n<end>\n"
        "Same activations, non-zero lines only:\n<start>\ny\t10\n<end>\n",
    ),
]


def test_prompt_golden_text() -> None:
    messages, fit = LLMExplainer(llm=FakeLLM(), prompt=SPEC).fit_prompt(TARGET)
    assert [(m.role, m.content) for m in messages] == GOLDEN
    assert fit["dropped"] == {"example_records": 0, "examples": 0, "target_records": 0}


def test_no_repeat_when_values_are_dense_enough() -> None:
    dense = [R(["a", "b", "c", "d", "e"], [1.0, 0.0, 0.0, 0.0, 0.0])]  # exactly 20 %: no repeat
    messages, _ = LLMExplainer(llm=FakeLLM(), prompt=SPEC).fit_prompt(dense)
    assert messages[-1].content == "Neuron 2\nActivations:\n<start>\na\t10\nb\t0\nc\t0\nd\t0\ne\t0\n<end>\n"


def test_budget_drops_example_excerpts_then_examples_then_target_excerpts() -> None:
    def fit(max_context: int | None) -> tuple:
        return LLMExplainer(llm=FakeLLM(max_context=max_context), prompt=SPEC, max_tokens=10).fit_prompt(TARGET)

    full_messages, full = fit(None)
    steps = [full["prompt_tokens"]]
    for budget_drop in ("example_records", "examples", "target_records"):
        messages, info = fit(steps[-1] + 10 - 1)  # one token too many for the previous prompt
        assert info["dropped"][budget_drop] == 1 and info["prompt_tokens"] + 10 <= steps[-1] + 9
        steps.append(info["prompt_tokens"])
        if budget_drop == "example_records":
            # the example's max is recomputed over what is shown: " rain" stays 10
            assert messages[1].content == "Neuron 1\nActivations:\n<start>\na\t0\n rain\t10\n<end>\n"
        if budget_drop == "examples":
            assert [m.role for m in messages] == ["system", "user"] and messages[1].content.startswith("Neuron 1\n")
    with pytest.raises(ValueError, match="max_context"):
        fit(steps[-1] + 10 - 1)
    assert full_messages[0].content == "SYS"


def test_explain_cuts_the_answer_and_records_meta() -> None:
    llm = FakeLLM(responses=(" cats and dogs.\nNeuron 3 ...",))
    [e] = LLMExplainer(llm=llm, prompt=SPEC, name="x", temperature=0.7).explain(UNIT, TARGET)
    assert e.text == "cats and dogs" and e.explainer == "x"
    assert e.meta["prompt"] == "golden" and e.meta["prompt_version"] == 3 and e.meta["sample_index"] == 0
    assert e.meta["raw"] == " cats and dogs." and e.usage.calls == 1  # the fake honours the "\n" stop
    [req] = llm.calls
    assert req.assistant_prefix == "it finds" and req.stop == ("\n",) and req.temperature == 0.7
    assert req.max_tokens == 60


def test_empty_answer_is_an_error_with_the_raw_text() -> None:
    with pytest.raises(ExplanationError, match="raw completions") as err:
        LLMExplainer(llm=FakeLLM(responses=("  \nsomething on line two",)), prompt=SPEC).explain(UNIT, TARGET)
    assert err.value.raw == ["  "]


def test_a_backend_that_cannot_generate_is_refused_before_any_call() -> None:
    from bench.errors import UserError

    llm = FakeLLM(supports=("prompt_logprobs",))
    with pytest.raises(UserError, match="needs text generation"):
        LLMExplainer(llm=llm, prompt=SPEC).explain(UNIT, TARGET)
    assert llm.calls == []


def test_samples_keep_the_good_ones_and_record_the_failed() -> None:
    llm = FakeLLM(responses=(" rain", "", " snow"))
    out = LLMExplainer(llm=llm, prompt=SPEC, samples=3).explain(UNIT, TARGET)
    assert [e.text for e in out] == ["rain", "snow"]
    assert [e.meta["sample_index"] for e in out] == [0, 2]
    assert out[0].meta["failed_samples"] == [{"sample_index": 1, "raw": ""}]
    assert [r.sample_index for r in llm.calls] == [0, 1, 2]


def test_prompt_configs_parse_and_validation_names_fields() -> None:
    import yaml
    from omegaconf import OmegaConf

    v1 = PromptSpec.parse(yaml.safe_load((CONF / "prompt" / "v1.yaml").read_text()))
    assert v1.name == "v1" and len(v1.examples) == 2 and v1.lead_in.endswith("find")
    zero = PromptSpec.parse(OmegaConf.load(CONF / "prompt" / "v1_no_examples.yaml"))
    assert zero.examples == () and zero.system == v1.system
    messages, _ = LLMExplainer(llm=FakeLLM(), prompt=OmegaConf.create(SPEC)).fit_prompt(TARGET)
    assert [(m.role, m.content) for m in messages] == GOLDEN
    with pytest.raises(ValueError, match="^prompt: unknown keys"):
        PromptSpec.parse({**SPEC, "sytem": "typo"})
    with pytest.raises(ValueError, match="^samples:"):
        LLMExplainer(llm=FakeLLM(), prompt=SPEC, samples=0)


def test_configs_instantiate_with_hydra() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench.config import compose

    # explainer and simulator pull their backend from conf/llm/ through Hydra defaults lists
    cfg = compose(["seed=5", "cache_dir=/tmp/nb-cache", "explainer=smollm2", "simulator=smollm2_all_at_once"])
    OmegaConf.set_struct(cfg, False)
    cfg.baseline = OmegaConf.load(CONF / "explainer" / "token_list.yaml")
    explainer = instantiate(cfg.explainer, _convert_="all")
    simulator = instantiate(cfg.simulator, _convert_="all")
    assert explainer.prompt.name == "v1" and explainer.llm.seed == 5 and explainer.llm.cache_dir == "/tmp/nb-cache"
    assert explainer.llm == simulator.llm  # same model key: one loaded copy per process
    assert instantiate(cfg.baseline).top_n == 5
    for path in [*CONF.glob("explainer/*.yaml"), *CONF.glob("prompt/*.yaml"), *CONF.glob("simulator/*.yaml")]:
        text = path.read_text()
        assert text.startswith("# ") and "Example:" in text.splitlines()[0], path
        assert "version:" in text, path


def test_token_list_baseline() -> None:
    records = [
        R([" the", " cat", " sat", "\n"], [0.1, 9.0, 0.0, 6.0]),
        R(["The", " cat", " of", " the"], [5.0, 10.0, 0.0, 4.0]),
        R([' "a"', " dog"], [7.0, 5.0]),
    ]
    [e] = TokenListExplainer(top_n=3).explain(UNIT, records)
    # normalised over all train records (max 10): cat 9,10; "\n" 6; The 5; "a" 7; dog 5; " the" 0 and 4
    assert e.text == 'tokens such as " cat", " \\"a\\"", "\\n"'
    assert e.explainer == "token_list" and e.meta["tokens"][0] == {"token": " cat", "count": 2, "activation_sum": 19.0}
    assert TokenListExplainer(top_n=3).explain(UNIT, records) == [e]  # deterministic
    with pytest.raises(ValueError, match="no positive activations"):
        TokenListExplainer().explain(UNIT, [R(["a"], [-1.0])])
    with pytest.raises(ValueError, match="^top_n:"):
        TokenListExplainer(top_n=0)
