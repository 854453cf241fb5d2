"""Streaming top-k mining against brute force, on tiny random GPT-2 / GPT-NeoX / Llama models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest_models import FAMILIES, WIDTH, random_token_ids, save_tiny_subject, tiny_config, tiny_model

from bench.protocols import ExcerptSet, SubjectInfo
from bench.records import UnitRecord
from bench.subject import record_cache
from bench.subject.hook_sites import HOOK_SITES, hook_site_for
from bench.subject.mining import LazyUnitRecords, capture_activations, mine_layer, token_strings
from bench.subject.transformers_subject import TransformersSubject, clear_cache

N, LENGTH, BATCH = 37, 8, 5  # an uneven last batch on purpose


def all_activations(model, site, layer, ids, batch=BATCH):
    """Brute force: every activation of every excerpt, (N, L, U), computed with the same batches."""
    chunks = [capture_activations(model, site, layer, _t(ids[s : s + batch])).float().numpy()
              for s in range(0, len(ids), batch)]  # fmt: skip
    return np.concatenate(chunks)


def _t(a):
    import torch

    return torch.from_numpy(a)


@pytest.fixture(scope="module", params=FAMILIES)
def mined(request):
    family = request.param
    model = tiny_model(family, seed=1)
    site = hook_site_for(model.config)
    ids = random_token_ids(N, LENGTH, seed=2)
    result = mine_layer(model, site, 1, ids, top_k=6, random_k=9, seed=3, batch_size=BATCH, progress=False)
    acts = all_activations(model, site, 1, ids)
    return family, model, site, ids, result, acts


def test_top_k_equals_brute_force(mined) -> None:
    _, _, _, _, result, acts = mined
    assert acts.shape == (N, LENGTH, WIDTH)
    maxes = acts.max(axis=1)  # (N, U)
    for unit in range(WIDTH):
        order = np.lexsort((np.arange(N), -maxes[:, unit]))[:6]  # max descending, then lower index
        assert result.top_indices[:, unit].tolist() == order.tolist()
        np.testing.assert_array_equal(result.top_max[:, unit], maxes[order, unit])
        np.testing.assert_array_equal(result.top_acts[:, unit, :], acts[order, :, unit])
    assert np.all(np.diff(result.top_max, axis=0) <= 0)


def test_random_sample_is_seeded_and_exact(mined) -> None:
    _, model, site, ids, result, acts = mined
    expected = np.random.default_rng(3).choice(N, size=9, replace=False)
    assert result.random_indices.tolist() == expected.tolist()
    np.testing.assert_array_equal(result.random_acts, acts[expected].transpose(0, 2, 1))
    again = mine_layer(model, site, 1, ids, top_k=6, random_k=9, seed=3, batch_size=BATCH, progress=False)
    assert again.random_indices.tolist() == result.random_indices.tolist()
    other = mine_layer(model, site, 1, ids, top_k=6, random_k=9, seed=4, batch_size=BATCH, progress=False)
    assert other.random_indices.tolist() != result.random_indices.tolist()


def test_moments_match_numpy(mined) -> None:
    _, _, _, _, result, acts = mined
    a = acts.reshape(-1, WIDTH).astype(np.float64)
    mean = a.mean(axis=0)
    d = a - mean
    m2, m3, m4 = (d**2).mean(axis=0), (d**3).mean(axis=0), (d**4).mean(axis=0)
    assert result.count == N * LENGTH
    np.testing.assert_allclose(result.mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.variance, m2, rtol=1e-7)
    np.testing.assert_allclose(result.skewness, m3 / m2**1.5, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.kurtosis, m4 / m2**2 - 3, rtol=1e-6, atol=1e-9)


def test_early_stop_equals_full_forward(mined) -> None:
    import torch

    _, model, site, ids, _, _ = mined
    batch = torch.from_numpy(ids[:4])
    early = capture_activations(model, site, 1, batch, stop=True)
    full = capture_activations(model, site, 1, batch, stop=False)
    torch.testing.assert_close(early, full, rtol=0, atol=0)
    # the early stop really skips the LM head
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        capture_activations(model, site, 1, batch, stop=True)
        assert calls == []
        capture_activations(model, site, 1, batch, stop=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_unit_records_and_lazy_records(mined) -> None:
    family, _, _, ids, result, acts = mined
    strings = {i: f"<{i}>" for i in range(int(ids.max()) + 1)}
    records = result.unit_records(ids, strings)
    assert len(records) == WIDTH and all(isinstance(r, UnitRecord) for r in records)
    rec = records[7]
    assert rec.unit.layer == 1 and rec.unit.index == 7 and rec.unit.kind == "mlp_neuron"
    assert len(rec.top) == 6 and len(rec.random) == 9
    first = int(result.top_indices[0, 7])
    assert rec.top[0].tokens == [strings[int(t)] for t in ids[first]]
    assert rec.top[0].activations == pytest.approx(acts[first, :, 7].tolist())
    assert [r.max_activation for r in rec.top] == sorted((r.max_activation for r in rec.top), reverse=True)
    assert rec.stats.mean == pytest.approx(float(result.mean[7]))
    lazy = result.lazy_records(ids, strings)
    assert isinstance(lazy, LazyUnitRecords) and len(lazy) == WIDTH
    assert lazy[7] == rec and lazy[-1] == records[-1] and lazy[2:4] == records[2:4]
    assert result.unit_records(ids, strings, units=[9, 3]) == [records[9], records[3]]
    with pytest.raises(IndexError):
        lazy[WIDTH]


def test_top_k_larger_than_corpus_keeps_everything() -> None:
    model = tiny_model("llama", seed=5)
    ids = random_token_ids(4, LENGTH, seed=6)
    result = mine_layer(model, hook_site_for(model.config), 0, ids, 50, 50, 0, batch_size=3, progress=False)
    assert result.top_indices.shape == (4, WIDTH) and result.random_indices.shape == (4,)
    assert sorted(result.top_indices[:, 0].tolist()) == [0, 1, 2, 3]


def test_token_strings_keep_leading_spaces() -> None:
    from conftest_models import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok.encode(" the dog, the sun", add_special_tokens=False)
    strings = token_strings(tok, ids)
    assert "".join(strings[i] for i in ids) == " the dog, the sun"
    assert any(s.startswith(" ") for s in strings.values())


# ---------------------------------------------------------------------------------------------------
# Record cache
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_subject_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_subject("llama", tmp_path_factory.mktemp("tiny-llama"), seed=11)


def test_record_cache_round_trip(tiny_subject_dir: Path, tmp_path: Path, monkeypatch) -> None:
    clear_cache()
    subject = TransformersSubject(model_id=str(tiny_subject_dir), batch_size=4, progress=False)
    ids = random_token_ids(10, LENGTH, seed=12)
    excerpts = ExcerptSet(token_ids=ids, fingerprint="fp-test")
    first = record_cache.load_or_mine(subject, excerpts, 1, 4, 3, 0, cache_dir=tmp_path)
    assert len(first) == WIDTH
    eager = subject.mine(excerpts, 1, 4, 3, 0)
    assert [first[i] for i in range(WIDTH)] == eager

    def boom(*args, **kwargs):
        raise AssertionError("mined again instead of loading the cache")

    monkeypatch.setattr(TransformersSubject, "mine_layer", boom)
    monkeypatch.setattr(TransformersSubject, "token_strings", boom)
    second = record_cache.load_or_mine(subject, excerpts, 1, 4, 3, 0, cache_dir=tmp_path)
    assert [second[i] for i in range(WIDTH)] == eager
    assert record_cache.load_or_mine(subject, excerpts, 1, 4, 3, 0, cache_dir=tmp_path, units=[5, 2]) == [
        eager[5],
        eager[2],
    ]
    files = list((tmp_path / "records").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "records").glob("*.tmp"))


def test_corrupt_cache_file_is_mined_again(tiny_subject_dir: Path, tmp_path: Path) -> None:
    subject = TransformersSubject(model_id=str(tiny_subject_dir), batch_size=4, progress=False)
    excerpts = ExcerptSet(token_ids=random_token_ids(6, LENGTH, seed=13), fingerprint="fp-corrupt")
    first = record_cache.load_or_mine(subject, excerpts, 0, 2, 2, 0, cache_dir=tmp_path)
    (path,) = (tmp_path / "records").glob("*.npz")
    path.write_bytes(b"not a zip")
    again = record_cache.load_or_mine(subject, excerpts, 0, 2, 2, 0, cache_dir=tmp_path)
    assert again[3] == first[3]


def test_record_cache_key_changes_with_every_determinant() -> None:
    info = SubjectInfo("m", "rev", "abc", "float32", "llama", "model.layers.{layer}.mlp.down_proj:input", 2, 64)
    base = ("fp", 1, 50, 50, 0)
    paths = {record_cache.record_cache_path(record_cache.record_cache_key(info, *base), "/tmp/x")}
    variants = [
        (replace(info, model="m2"), base),
        (replace(info, revision="rev2"), base),
        (replace(info, weights_sha256="def"), base),
        (replace(info, dtype="bfloat16"), base),
        (replace(info, hook_site="model.layers.{layer}.mlp.act:output"), base),
        (info, ("fp2", 1, 50, 50, 0)),
        (info, ("fp", 0, 50, 50, 0)),
        (info, ("fp", 1, 40, 50, 0)),
        (info, ("fp", 1, 50, 40, 0)),
        (info, ("fp", 1, 50, 50, 1)),
    ]
    for variant_info, args in variants:
        paths.add(record_cache.record_cache_path(record_cache.record_cache_key(variant_info, *args), "/tmp/x"))
    assert len(paths) == 1 + len(variants)
    same = record_cache.record_cache_path(record_cache.record_cache_key(info, *base), "/tmp/x")
    assert same in paths


def test_every_declared_family_resolves_on_a_tiny_model() -> None:
    """The gated families share one layout; check each module name against transformers itself."""
    import transformers

    from bench.subject.hook_sites import mlp_width, n_layers, resolve_module

    extra = {
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma": transformers.GemmaConfig,
        "gemma2": transformers.Gemma2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
        "phi3": transformers.Phi3Config,
        "olmo2": transformers.Olmo2Config,
    }
    small = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=32, pad_token_id=0)  # fmt: skip
    configs = [tiny_config(f, 64) for f in FAMILIES] + [cls(**small) for cls in extra.values()]
    seen = set()
    for config in configs:
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        site = hook_site_for(config)
        seen.add(site.family)
        module = resolve_module(model, site, n_layers(config) - 1)
        import torch

        acts = capture_activations(model, site, 1, torch.zeros((2, 5), dtype=torch.long))
        assert acts.shape == (2, 5, mlp_width(config)), site.family
        assert module is not None
    assert seen == set(HOOK_SITES) - {"gemma3"}


@pytest.mark.e2e
def test_real_smollm2_layer_15_over_256_excerpts(monkeypatch) -> None:
    """The offline default subject end to end: 256 real excerpts, all 1,536 neurons of layer 15."""
    from bench.data.offline_default import OfflineCorpus

    clear_cache()
    subject = TransformersSubject(progress=False)
    info = subject.info
    assert (info.family, info.n_layers, info.width) == ("llama", 30, 1536)
    assert info.weights_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    excerpts = OfflineCorpus(n_excerpts=256).excerpts(subject.tokenizer, seed=0)
    records = record_cache.load_or_mine(subject, excerpts, 15, 50, 50, 0)
    assert len(records) == 1536
    rec = records[100]
    assert len(rec.top) == 50 and len(rec.random) == 50 and len(rec.top[0].tokens) == 64
    assert rec.top[0].max_activation >= rec.top[-1].max_activation

    def boom(*args, **kwargs):
        raise AssertionError("mined again instead of loading the cache")

    monkeypatch.setattr(TransformersSubject, "mine_layer", boom)  # no time limit: machines differ in speed
    again = record_cache.load_or_mine(subject, excerpts, 15, 50, 50, 0)
    assert again[100] == rec
