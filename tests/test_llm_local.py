"""LocalChatModel on tiny random Llama models with the real GPT-2 tokenizer (offline asset).

Two tokenizers: GPT-2 as shipped ("10" is one token) and GPT-2 with SmolLM2's digit splitting
("10" -> "1","0"), so both the single-token and the chained paths are compared with brute force.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.protocols import VALUE_STRINGS, Capability, ChatMessage, GenerationRequest, SlotRequest

torch = pytest.importorskip("torch")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEIRD_TOKENS = [" The", " cat", "\t", "\n", ' "q"', "é", "10", " 1", "\\", "中", " sat", "\u2028"]


def _build(path: Path, split_digits: bool) -> Path:
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from bench.assets import gpt2_tokenizer_dir

    backend = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir())).backend_tokenizer
    if split_digits:  # as SmolLM2: every digit is its own pre-token, so "10" is "1","0"
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make next-token distributions peaky so probabilities are not all ~1/V
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["gpt2", "gpt2_split_digits"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp(request.param), request.param.endswith("split_digits"))


def _llm(path: Path, **kw: Any) -> Any:
    from bench.llm.local_transformers import LocalChatModel

    return LocalChatModel(model=str(path), device="cpu", max_context=4096, **kw)


def _request(tokens: list[str], explanation: str = "cats") -> SlotRequest:
    from bench.llm.fake import FakeLLM
    from bench.simulators.all_at_once import AllAtOnceSimulator

    # the exact (full-vocabulary) request: what the brute-force references below compute
    return AllAtOnceSimulator(llm=FakeLLM(), estimator="prompt_logprobs_exact").build_request(explanation, tokens)


def _brute_force(llm: Any, req: SlotRequest) -> list[dict[str, float]]:
    """One full forward pass per slot and per chained token; nothing shared with the implementation."""
    tok, model = llm.tokenizer, llm.torch_model
    text, start = llm.render_prefill(req.messages)
    texts = tok.batch_decode([[i] for i in range(model.config.vocab_size)])
    continues = torch.tensor([bool(t) and t[0].isalnum() for t in texts])

    def next_dist(ids: list[int]) -> Any:
        with torch.no_grad():
            return torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)

    out = []
    for slot in req.slots:
        ctx = tok.encode(text[: start + slot], add_special_tokens=False)
        seqs = {v: tok.encode("\t" + v, add_special_tokens=False)[1:] for v in req.values}
        first = next_dist(ctx)
        probs = {}
        for v, ids in seqs.items():
            p = float(first[ids[0]])
            for d in range(1, len(ids)):
                p *= float(next_dist(ctx + ids[:d])[ids[d]])
            if any(len(o) > len(ids) and o[: len(ids)] == ids for o in seqs.values()):
                p *= 1.0 - float(next_dist(ctx + ids)[continues].sum())
            probs[v] = p
        out.append(probs)
    return out


def test_slot_distributions_equal_brute_force(tiny_dir: Path) -> None:
    llm = _llm(tiny_dir)
    req = _request(WEIRD_TOKENS)
    [result] = llm.slot_distributions([req])
    expected = _brute_force(llm, req)
    assert len(result.probabilities) == len(WEIRD_TOKENS)
    for got, want in zip(result.probabilities, expected, strict=True):
        assert set(got) == set(VALUE_STRINGS)
        for v in VALUE_STRINGS:
            assert got[v] == pytest.approx(want[v], rel=1e-4, abs=1e-9)
        assert sum(got.values()) <= 1.0 + 1e-6
    split = tiny_dir.name.startswith("gpt2_split_digits")
    assert result.meta["multi_token_values"] == ("chained" if split else "single_token")
    if split:
        assert result.meta["value_tokens"] == {"10": ["1", "0"]}
        assert result.meta["terminated_prefix_values"] == ["1"]
        # the chained values really carry mass here (the test would be vacuous otherwise)
        assert all(p["10"] > 0 and p["1"] < 1 for p in result.probabilities)


def _brute_force_top_k(llm: Any, req: SlotRequest, k: int, taper: float = 0.0) -> list[dict[str, float]]:
    """What an API returning the top ``k`` logprobs gives (``k + 1`` with a taper): one forward pass per
    slot and per visible piece, cut by the shared definition (visible_top, value_probabilities)."""
    from bench.simulators.topk_values import read_k, value_probabilities, visible_top, wanted_pieces

    tok, model = llm.tokenizer, llm.torch_model
    text, start = llm.render_prefill(req.messages)
    texts = tok.batch_decode([[i] for i in range(model.config.vocab_size)])

    def top(ids: list[int]) -> dict[str, float]:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        values, idx = torch.topk(lp, min(read_k(k, taper), lp.shape[-1]))
        return visible_top([(texts[i], v) for v, i in zip(values.tolist(), idx.tolist(), strict=True)], k, taper)

    out = []
    for slot in req.slots:
        ctx = tok.encode(text[: start + slot], add_special_tokens=False)
        dist = top(ctx)
        after = {
            piece: top(ctx + tok.encode("\t" + piece, add_special_tokens=False)[1:])
            for piece in wanted_pieces(req.values, dist, 0.0)
        }
        out.append(value_probabilities(req.values, dist, after))
    return out


@pytest.mark.parametrize("k", [1, 20, 0])
def test_top_k_slot_distributions_equal_an_api_reading_the_top_k(tiny_dir: Path, k: int) -> None:
    """prompt_logprobs (top-k) in-process = what a server returning the top k gives, token for token
    (k=0 here: the whole vocabulary)."""
    from dataclasses import replace

    llm = _llm(tiny_dir)
    k = k or llm.torch_model.config.vocab_size
    req = replace(_request(WEIRD_TOKENS), top_k=k)
    [result] = llm.slot_distributions([req])
    expected = _brute_force_top_k(llm, req, k)
    assert result.meta["top_k"] == k
    for got, want in zip(result.probabilities, expected, strict=True):
        for v in VALUE_STRINGS:
            assert got[v] == pytest.approx(want[v], rel=1e-4, abs=1e-9)
    exact = llm.slot_distributions([replace(req, top_k=None)])[0].probabilities
    visible = sum(sum(1 for v in VALUE_STRINGS if p[v] > 0) for p in result.probabilities)
    everywhere = sum(sum(1 for v in VALUE_STRINGS if p[v] > 0) for p in exact)
    if k == 1:  # one visible token per slot: most values are out of sight (the test is not vacuous)
        assert visible < everywhere
    if k == llm.torch_model.config.vocab_size and tiny_dir.name.startswith("gpt2_split_digits"):
        # wide enough to see every value and its chain: top-k agrees with the exact computation
        assert visible == everywhere
        for got, want in zip(result.probabilities, exact, strict=True):
            for v in VALUE_STRINGS:
                assert got[v] == pytest.approx(want[v], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("k", [3000])
def test_tapered_top_k_slot_distributions_equal_an_api_reading_k_plus_one(tiny_dir: Path, k: int) -> None:
    """top_k_taper > 0 in-process = a server asked for k + 1 logprobs, ramped by the shared definition;
    and the ramp really moves some value's probability (the test is not vacuous)."""
    from dataclasses import replace

    llm = _llm(tiny_dir)
    taper = 20.0  # a random tiny model is nearly flat: a wide k (values visible) and a ramp over all of it
    req = replace(_request(WEIRD_TOKENS), top_k=k, top_k_taper=taper)
    [result] = llm.slot_distributions([req])
    assert result.meta["top_k"] == k and result.meta["top_k_taper"] == taper
    for got, want in zip(result.probabilities, _brute_force_top_k(llm, req, k, taper), strict=True):
        for v in VALUE_STRINGS:
            assert got[v] == pytest.approx(want[v], rel=1e-4, abs=1e-9)
    [hard] = llm.slot_distributions([replace(req, top_k_taper=0.0)])
    assert "top_k_taper" not in hard.meta
    visible = sum(1 for p in hard.probabilities for v in VALUE_STRINGS if p[v] > 0)
    assert visible > 0 and any(
        a[v] != pytest.approx(b[v], rel=1e-3, abs=0.0)  # the tiny model's values are far down: ~1e-13
        for a, b in zip(result.probabilities, hard.probabilities, strict=True)
        for v in VALUE_STRINGS
    )


def test_deeper_chains_and_custom_values_equal_brute_force(tiny_dir: Path) -> None:
    """ "100" is three tokens with split digits; "10" then is a prefix-value too; "7 cats" has a word."""
    from dataclasses import replace

    llm = _llm(tiny_dir)
    values = ("0", "1", "10", "100", "7 cats")
    req = replace(_request(WEIRD_TOKENS[:4]), values=values)
    [result] = llm.slot_distributions([req])
    for got, want in zip(result.probabilities, _brute_force(llm, req), strict=True):
        for v in values:
            assert got[v] == pytest.approx(want[v], rel=1e-4, abs=1e-9)
        assert sum(got.values()) <= 1.0 + 1e-6
    split = tiny_dir.name.startswith("gpt2_split_digits")
    assert result.meta["terminated_prefix_values"] == (["1", "10"] if split else [])


def test_batching_and_left_padding_do_not_change_results(tiny_dir: Path) -> None:
    reqs = [_request(WEIRD_TOKENS[:3]), _request(WEIRD_TOKENS, "dogs and cats"), _request([" a"])]
    alone = [_llm(tiny_dir, batch_size=1).slot_distributions([r])[0] for r in reqs]
    together = _llm(tiny_dir, batch_size=3).slot_distributions(reqs)
    for a, b in zip(alone, together, strict=True):
        for pa, pb in zip(a.probabilities, b.probabilities, strict=True):
            for v in VALUE_STRINGS:
                assert pb[v] == pytest.approx(pa[v], rel=1e-4, abs=1e-9)
    assert [r.usage.calls for r in together] == [1, 1, 1]
    # the call's common prefix (system, few-shot examples, up to the explanation) was run once
    assert together[0].meta["shared_prefix_tokens"] > 0 and alone[0].meta["shared_prefix_tokens"] == 0


def test_a_slot_that_does_not_start_a_token_is_refused(tiny_dir: Path) -> None:
    content = "<start>\n cat unknown\n"  # GPT-2 merges " unknown": the slot is mid-token
    req = SlotRequest(
        messages=(ChatMessage("system", "s"), ChatMessage("user", "u"), ChatMessage("assistant", content)),
        slots=(content.index("unknown"),),
    )
    with pytest.raises(ValueError, match="does not start a token"):
        _llm(tiny_dir).slot_distributions([req])


def test_generate_is_seeded_greedy_stops_and_counts(tiny_dir: Path) -> None:
    llm = _llm(tiny_dir, batch_size=2)
    msgs = (ChatMessage("system", "You explain neurons."), ChatMessage("user", "What does it find?"))
    greedy = GenerationRequest(messages=msgs, max_tokens=8, temperature=0.0, top_logprobs=3)
    sampled = [GenerationRequest(messages=msgs, max_tokens=8, temperature=1.0, sample_index=i) for i in range(3)]
    first = llm.generate([greedy, *sampled])
    again = llm.generate([*sampled[::-1], greedy])[::-1]  # other order, other batches
    assert [g.text for g in first] == [g.text for g in again]
    other = (ChatMessage("system", "You explain neurons."), ChatMessage("user", "Longer question: what is found?"))
    mixed = llm.generate([GenerationRequest(messages=other, max_tokens=8, temperature=0.0), greedy])  # left-padded
    assert mixed[1].text == first[0].text
    assert mixed[0].text == llm.generate([GenerationRequest(messages=other, max_tokens=8, temperature=0.0)])[0].text
    assert len({g.text for g in first[1:]}) > 1  # samples differ by index
    g = first[0]
    assert g.usage.calls == 1 and g.usage.input_tokens == llm.count_tokens(msgs) and 1 <= g.usage.output_tokens <= 8
    assert g.logprobs is not None and len(g.logprobs) == g.usage.output_tokens
    assert all(len(t.top) <= 3 and t.logprob <= 0 for t in g.logprobs)
    assert first[1].logprobs is None
    # greedy = argmax of a plain forward pass on the rendered prompt + assistant prefix
    prompt = llm.render(msgs, assistant_prefix="the main thing")
    assert prompt.endswith("<|im_start|>assistant\nthe main thing")
    ids = llm.tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        top = int(llm.torch_model(torch.tensor([ids])).logits[0, -1].argmax())
    [pref] = llm.generate(
        [GenerationRequest(messages=msgs, max_tokens=1, temperature=0.0, assistant_prefix="the main thing")]
    )
    assert pref.text == llm.tokenizer.decode([top], skip_special_tokens=True)
    # stop strings cut the text
    stop = first[0].text[1:2] or "x"
    [cut] = llm.generate([GenerationRequest(messages=msgs, max_tokens=8, temperature=0.0, stop=(stop,))])
    assert stop not in cut.text and first[0].text.startswith(cut.text)


def test_simulator_end_to_end_on_a_tiny_model(tiny_dir: Path) -> None:
    from bench.records import ActivationRecord
    from bench.simulators.all_at_once import AllAtOnceSimulator

    sim = AllAtOnceSimulator(llm=_llm(tiny_dir), estimator="prompt_logprobs_exact")
    records = [ActivationRecord(WEIRD_TOKENS, [float(i) for i in range(len(WEIRD_TOKENS))]), ActivationRecord([], [])]
    out = sim.simulate("cats", records)
    assert out.estimator == "all_at_once/prompt_logprobs_exact" and out.top_k is None
    seq = out.sequences[0]
    assert len(seq.expected) == len(WEIRD_TOKENS) and all(0 <= e <= 10 for e in seq.expected)
    assert seq.unparsed == 0 and seq.distributions is not None
    assert all(sum(d) == pytest.approx(1.0) for d in seq.distributions)
    assert out.sequences[1].expected == [] and out.usage.calls == 1


def test_capabilities_and_validation() -> None:
    from bench.llm.local_transformers import LocalChatModel

    llm = LocalChatModel()
    assert llm.capabilities == frozenset(Capability)
    assert llm.name == "local/smollm2-135m-instruct"
    for kw, field in [
        ({"dtype": "float8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"chain_min_prob": 1.0}, "chain_min_prob"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            LocalChatModel(**kw)


def test_importing_components_stays_light() -> None:
    code = (
        "import sys, bench.llm.local_transformers, bench.llm.fake, bench.explainers.llm_explainer, "
        "bench.explainers.token_list, bench.simulators.all_at_once; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
