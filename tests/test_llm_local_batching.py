"""Padded batching and shared-prefix KV reuse of the in-process backend change nothing but speed.

Requests of several units (different explanations and excerpt lengths, one few-shot header) are
answered once one request at a time with no prefix reuse -- the reference -- and then in sorted,
padded batches over a prefix computed once, under several batch_size / batch_tokens settings.
Probabilities must agree to 1e-5 absolute and, since the random model gives the value tokens tiny
probabilities, to 1e-4 relative as well (fp32 noise is ~1e-6 relative); generated texts exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bench.protocols import VALUE_STRINGS, ChatMessage, GenerationRequest, SlotRequest

torch = pytest.importorskip("torch")

from test_llm_local import WEIRD_TOKENS, _build  # noqa: E402  (the tiny random Llama of the local tests)

TOL = 1e-5
REL = 1e-4
# logprobs of generated tokens: the tiny random model has huge logits (|logit| ~ 100), so padding alone
# moves its logprobs by up to ~3e-5 in fp32; 5e-4 (a relative 5e-4 on the probability) is far above that
GEN_TOL = 5e-4


@pytest.fixture(scope="module", params=["gpt2", "gpt2_split_digits"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp(request.param), request.param.endswith("split_digits"))


def _llm(path: Path, **kw: Any) -> Any:
    from bench.llm.local_transformers import LocalChatModel

    return LocalChatModel(model=str(path), device="cpu", max_context=4096, **kw)


def _units_requests(top_k: int | None) -> list[SlotRequest]:
    """Slot requests of three units (as a cross-unit caller would hand them over), lengths mixed."""
    from bench.llm.fake import FakeLLM
    from bench.simulators.all_at_once import AllAtOnceSimulator

    sim = AllAtOnceSimulator(llm=FakeLLM())
    excerpts = [WEIRD_TOKENS, WEIRD_TOKENS[:3], [" a"], WEIRD_TOKENS[4:9]]
    reqs = [
        sim.build_request(explanation, tokens)
        for explanation in ("cats", "dogs and cats in gardens", "the word 10")
        for tokens in excerpts
    ]
    return [dataclasses.replace(r, top_k=top_k) for r in reqs]


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> list[Any]:
    """The exact slot requests answered one request at a time, no prefix reuse (computed once per model)."""
    llm = _llm(tiny_dir, batch_size=1, prefix_reuse=False)
    return [llm.slot_distributions([r])[0] for r in _units_requests(top_k=None)]


def _assert_equal(a: list[Any], b: list[Any]) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert len(ra.probabilities) == len(rb.probabilities)
        for pa, pb in zip(ra.probabilities, rb.probabilities, strict=True):
            for v in VALUE_STRINGS:
                assert abs(pa[v] - pb[v]) <= TOL and abs(pa[v] - pb[v]) <= REL * abs(pa[v]) + 1e-30, (v, pa, pb)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 16},  # everything in one padded pass over the shared prefix
        {"batch_size": 5},  # sorted batches of unequal widths
        {"batch_size": 16, "batch_tokens": 120},  # the token budget splits batches
        {"batch_size": 16, "prefix_reuse": False},  # padding only
    ],
)
def test_padded_slot_batches_equal_one_request_at_a_time(
    tiny_dir: Path, reference: list[Any], settings: dict[str, Any]
) -> None:
    reqs = _units_requests(top_k=None)
    batched = _llm(tiny_dir, **settings).slot_distributions(reqs)
    _assert_equal(reference, batched)
    # the units differ (by far more than the tolerance): rows cannot have been mixed up unnoticed
    firsts = [r.probabilities[0]["0"] for r in reference]
    assert max(firsts) > 1.5 * min(firsts) > 0
    shared = {r.meta["shared_prefix_tokens"] for r in batched}
    assert len(shared) == 1 and (shared.pop() > 0) == settings.get("prefix_reuse", True)
    assert all(r.meta["shared_prefix_tokens"] == 0 for r in reference)
    assert [r.usage.calls for r in batched] == [1] * len(reqs)


def test_prefix_reuse_equals_no_reuse_for_top_k_reading(tiny_dir: Path) -> None:
    reqs = _units_requests(top_k=5)
    reused = _llm(tiny_dir, batch_size=8).slot_distributions(reqs)
    recomputed = _llm(tiny_dir, batch_size=8, prefix_reuse=False).slot_distributions(reqs)
    _assert_equal(recomputed, reused)
    assert reused[0].meta["shared_prefix_tokens"] > 0 and recomputed[0].meta["shared_prefix_tokens"] == 0
    # the prefix counts as cached input, as the provider's prompt cache does
    assert all(r.usage.cached_input_tokens == r.meta["shared_prefix_tokens"] for r in reused)


def _generation_requests() -> list[GenerationRequest]:
    system = ChatMessage("system", "You explain neurons. " * 5)  # a long shared header
    questions = ["What does it find?", "Longer question: what exactly is found here?", "Cats?"]
    out = []
    for q in questions:
        msgs = (system, ChatMessage("user", q))
        out.append(GenerationRequest(messages=msgs, max_tokens=6, temperature=0.0, top_logprobs=3))
        out.extend(GenerationRequest(messages=msgs, max_tokens=6, temperature=1.0, sample_index=i) for i in range(2))
    return out


@pytest.mark.parametrize("settings", [{"batch_size": 16}, {"batch_size": 4, "batch_tokens": 20}])
def test_padded_generation_over_a_shared_prefix_equals_one_request_at_a_time(
    tiny_dir: Path, settings: dict[str, Any]
) -> None:
    reqs = _generation_requests()
    alone_llm = _llm(tiny_dir, batch_size=1, prefix_reuse=False)
    alone = [alone_llm.generate([r])[0] for r in reqs]
    together = _llm(tiny_dir, **settings).generate(reqs)
    assert [g.text for g in together] == [g.text for g in alone]
    assert len({g.text for g in alone}) > 1  # different prompts and samples: not a trivial comparison
    for a, b in zip(alone, together, strict=True):
        assert (a.logprobs is None) == (b.logprobs is None)
        for ta, tb in zip(a.logprobs or [], b.logprobs or [], strict=True):
            assert ta.token == tb.token and abs(ta.logprob - tb.logprob) <= GEN_TOL
            assert ta.top.keys() == tb.top.keys() and all(abs(ta.top[k] - tb.top[k]) <= GEN_TOL for k in ta.top)
        assert a.usage.input_tokens == b.usage.input_tokens and a.usage.output_tokens == b.usage.output_tokens
    assert all(g.usage.cached_input_tokens > 0 for g in together)
    assert all(g.usage.cached_input_tokens == 0 for g in alone)


def test_batches_are_sorted_by_length_and_respect_both_limits() -> None:
    from bench.llm.local_transformers import LocalChatModel

    lengths = [50, 10, 30, 20, 40]
    assert LocalChatModel(batch_size=2)._batches(lengths) == [[1, 3], [2, 4], [0]]
    # 3 rows x 20 tokens = 60 > 50: the budget closes a batch before batch_size does
    assert LocalChatModel(batch_size=4, batch_tokens=50)._batches(lengths) == [[1, 3], [2], [4], [0]]
    # a row longer than the budget still runs, alone
    assert LocalChatModel(batch_size=4, batch_tokens=5)._batches([9, 9]) == [[0], [1]]
    with pytest.raises(ValueError, match="^batch_tokens:"):
        LocalChatModel(batch_tokens=-1)


@pytest.mark.e2e
def test_smollm2_batched_with_prefix_reuse_equals_one_request_at_a_time() -> None:
    """The real offline SmolLM2 (fp32): two units' requests in one call vs one request at a time."""
    from bench.llm.local_transformers import LocalChatModel
    from bench.simulators.all_at_once import AllAtOnceSimulator

    batched = LocalChatModel(device="cpu", batch_size=4)
    alone = LocalChatModel(device="cpu", batch_size=1, prefix_reuse=False)
    sim = AllAtOnceSimulator(llm=batched, estimator="prompt_logprobs_exact")
    reqs = [
        sim.build_request(explanation, tokens)
        for explanation in ("the word rain", "words about music")
        for tokens in ([" the", " rain", " fell"], [" a", " song", " in", " the", " rain", " 10"])
    ]
    reference = [alone.slot_distributions([r])[0] for r in reqs]
    together = batched.slot_distributions(reqs)
    for ra, rb in zip(reference, together, strict=True):
        for pa, pb in zip(ra.probabilities, rb.probabilities, strict=True):
            assert all(abs(pa[v] - pb[v]) <= TOL for v in VALUE_STRINGS), (pa, pb)
    # real magnitudes (the values carry >= 1.3 % of the mass at every slot here), so 1e-5 is a meaningful bound
    assert min(sum(p.values()) for r in reference for p in r.probabilities) > 0.005
    assert together[0].meta["shared_prefix_tokens"] > 200 and reference[0].meta["shared_prefix_tokens"] == 0


@pytest.mark.parametrize("min_saving", [1, 10**9])  # grow each batch's prefix cache / only the call's prefix
def test_units_coalesced_by_the_engine_equal_one_request_at_a_time(
    tiny_dir: Path, reference: list[Any], min_saving: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three units in flight hand their requests to the engine: ONE call answers all of them, batches keep
    each unit's rows together over its longer shared prefix (explanation), and nothing changes."""
    from bench.engine import RequestEngine
    from bench.llm import local_transformers

    monkeypatch.setattr(local_transformers, "MIN_EXTRA_PREFIX_SAVING", min_saving)
    llm = _llm(tiny_dir, batch_size=4)
    calls: list[int] = []
    inner = llm._slots_now
    object.__setattr__(llm, "_slots_now", lambda tagged: calls.append(len(tagged)) or inner(tagged))
    reqs = _units_requests(top_k=None)
    per_unit = [reqs[0:4], reqs[4:8], reqs[8:12]]
    engine = RequestEngine()
    from bench import engine as engine_module

    monkeypatch.setattr(engine_module, "_ACTIVE", engine)
    got = dict(engine.run_units(lambda u: llm.slot_distributions(per_unit[u]), [0, 1, 2], workers=3))
    assert calls == [12]
    _assert_equal([r for u in range(3) for r in got[u]], reference)
    shared = [r.meta["shared_prefix_tokens"] for u in range(3) for r in got[u]]
    if min_saving == 1:  # some batch ran over a unit's explanation as well as the header
        assert max(shared) > min(shared)
    else:
        assert len(set(shared)) == 1
