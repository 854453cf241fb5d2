"""Unit kinds as (activation source, index): SAE latents (ReLU, JumpReLU, TopK, transcoder), attention
heads and neurons -- encoding, overrides, one-pass multi-source mining, exact shard merge, and whole runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_models import _TRAINING_TEXT, random_token_ids, save_tiny_subject, tiny_model
from saes import write_sae

from bench.errors import ConfigError, UserError
from bench.subject import hooks
from bench.subject.architectures import architecture_for
from bench.subject.mining import merge_mined, mine_layer, mine_sources
from bench.subject.sae import Sae, read_spec
from bench.subject.units.attention_head import HeadSource
from bench.subject.units.mlp_neuron import NeuronSource
from bench.subject.units.sae_latent import SaeSource

IDS = torch.from_numpy(random_token_ids(3, 9, seed=1))


def logits(model, edit=None):
    from contextlib import nullcontext

    with edit if edit is not None else nullcontext():
        return hooks.forward(model, IDS, logits=True)


def capture(model, point):
    with hooks.capture(model, [point], stop=False) as got:
        hooks.forward(model, IDS)
    return got[point]


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_sae_encoding_follows_the_saelens_formulas(tmp_path: Path, architecture: str) -> None:
    extra = {"k": 5} if architecture == "topk" else {}
    folder = write_sae(tmp_path / "sae", 32, 48, "blocks.1.hook_resid_post", architecture, **extra)
    sae = Sae(read_spec(folder))
    x = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(3))
    from safetensors.torch import load_file

    w = load_file(str(folder / "sae_weights.safetensors"))
    h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        expected = h.relu()
    elif architecture == "jumprelu":
        expected = h.relu() * (h > w["threshold"])
    else:
        vals, idx = h.topk(5, dim=-1)
        expected = torch.zeros_like(h).scatter(-1, idx, vals.relu())
        assert ((sae.encode(x) > 0).sum(-1) <= 5).all()
    assert torch.allclose(sae.encode(x), expected, atol=1e-6)
    assert sae.encode(x).abs().sum() > 0
    try:  # the same folder through SAELens itself, when the optional `sae` extra is installed
        from sae_lens import SAE
    except ImportError:
        return
    reference = SAE.load_from_disk(str(folder), device="cpu")
    assert torch.allclose(reference.encode(x), sae.encode(x), atol=1e-5)


def test_sae_folder_problems_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="units.sae.path") as info:
        read_spec(tmp_path)
    assert "\n" not in str(info.value)
    write_sae(tmp_path / "g", 8, 8, "blocks.0.hook_resid_post", "gated")
    with pytest.raises(UserError, match="'gated' is not supported"):
        read_spec(tmp_path / "g")
    write_sae(tmp_path / "t", 8, 8, "blocks.0.hook_resid_post", "topk")
    with pytest.raises(UserError, match="k >= 1"):
        read_spec(tmp_path / "t")


def test_sae_override_changes_only_that_latents_contribution(tmp_path: Path) -> None:
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    sae = Sae(read_spec(write_sae(tmp_path / "sae", 32, 48, "blocks.0.hook_resid_post")))
    source = SaeSource.build(arch, sae)
    assert source.layer == 0 and source.read == source.write and source.n_units == 48
    x = capture(model, source.read)
    f = sae.encode(x)
    index = int(f.mean(dim=(0, 1)).argmax())
    base = logits(model)
    assert torch.allclose(logits(model, source.replaced(model, index, f[..., index])), base, atol=1e-5)
    zeroed = capture_with(model, source.read, source.replaced(model, index, torch.zeros_like(f[..., index])))
    expected = x - f[..., index : index + 1] * sae.direction(index)
    assert torch.allclose(zeroed, expected, atol=1e-5)
    assert (logits(model, source.replaced(model, index, f[..., index] + 3.0)) - base).abs().max() > 1e-4
    direction = source.output_direction(model, index)
    assert direction is not None and torch.equal(direction, sae.direction(index))


def capture_with(model, point, edit):
    """The tensor at ``point`` as the rest of the model sees it, with ``edit`` applied (a later hook)."""
    seen = {}
    with edit, hooks.hooked(model, [(point, lambda t: seen.setdefault("x", t.detach().clone()))]):
        hooks.forward(model, IDS)
    return seen["x"]


def test_transcoder_reads_one_site_and_writes_another(tmp_path: Path) -> None:
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    folder = write_sae(tmp_path / "tc", 32, 40, "blocks.1.ln2.hook_normalized", "transcoder",
                       hook_name_out="blocks.1.hook_mlp_out")  # fmt: skip
    source = SaeSource.build(arch, Sae(read_spec(folder)))
    assert (source.read_site, source.write_site) == ("mlp.in", "mlp.out")
    f = source.sae.encode(capture(model, source.read))
    index = int(f.mean(dim=(0, 1)).argmax())
    base = logits(model)
    assert torch.allclose(logits(model, source.replaced(model, index, f[..., index])), base, atol=1e-5)
    out = capture(model, source.write)
    changed = capture_with(model, source.write, source.replaced(model, index, f[..., index] + 2.0))
    assert torch.allclose(changed - out, 2.0 * source.sae.direction(index).expand_as(out), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_attention_head_activation_is_the_norm_of_its_output(family: str) -> None:
    model = tiny_model(family)
    arch = architecture_for(model.config)
    source = HeadSource.build(model, arch, 1)
    z = capture(model, source.point)
    acts = source.encode({source.point: z})
    heads, d = source.heads, z.shape[-1] // source.heads
    assert acts.shape == (3, 9, heads)
    projection = model.get_submodule(source.site.module_name(1))
    for h in range(heads):
        zh = torch.zeros_like(z)
        zh[..., h * d : (h + 1) * d] = z[..., h * d : (h + 1) * d]
        written = projection(zh) - projection(torch.zeros_like(z))  # remove the bias: z_h W_O[h]
        assert torch.allclose(acts[..., h], written.norm(dim=-1), atol=1e-5)
    base = logits(model)
    assert torch.allclose(logits(model, source.replaced(model, 0, acts[..., 0])), base, atol=1e-5)
    scaled = capture_with(model, source.point, source.replaced(model, 0, 2 * acts[..., 0]))
    assert torch.allclose(scaled[..., :d], 2 * z[..., :d], atol=1e-5)
    assert torch.allclose(scaled[..., d:], z[..., d:])
    assert source.output_direction(model, 0) is None


def test_all_sources_in_one_pass_equal_separate_passes(tmp_path: Path) -> None:
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    ids = random_token_ids(20, 8, seed=2)
    sae = Sae(read_spec(write_sae(tmp_path / "sae", 32, 48, "blocks.0.hook_resid_post")))
    sources = [NeuronSource.build(arch, 0), NeuronSource.build(arch, 1), SaeSource.build(arch, sae),
               HeadSource.build(model, arch, 1)]  # fmt: skip
    calls = {"n": 0}
    handle = model.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1))
    try:
        together = mine_sources(model, sources, ids, top_k=4, random_k=3, seed=0, batch_size=5, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 4  # 20 excerpts / batch 5: one forward pass per batch for all four sources
    from bench.subject.hook_sites import hook_site_for

    for layer in (0, 1):
        alone = mine_layer(model, hook_site_for(model.config), layer, ids, 4, 3, 0, batch_size=7, progress=False)
        np.testing.assert_array_equal(together[layer].top_indices, alone.top_indices)
        np.testing.assert_allclose(together[layer].top_acts, alone.top_acts, atol=1e-5)
    sae_alone = mine_sources(model, [sources[2]], ids, 4, 3, 0, batch_size=20, progress=False)[0]
    np.testing.assert_array_equal(together[2].top_indices, sae_alone.top_indices)
    assert together[2].n_units == 48 and together[3].n_units == 2


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_fast_sae_mining_equals_the_plain_path(tmp_path: Path, monkeypatch, architecture: str) -> None:
    """Mining's fast path (encoder into a reused buffer, slot-kept winners, column chunks) against the plain
    one: every batch encoded by ``Sae.encode`` without a buffer, all activations kept, top-k by sorting."""
    import bench.subject.mining as mining

    monkeypatch.setattr(mining, "CHUNK_UNITS", 64)  # 200 latents: three full chunks and a ragged one
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    ids = random_token_ids(41, 7, seed=4)
    folder = write_sae(tmp_path / "sae", 32, 200, "blocks.1.hook_resid_post", architecture, seed=3)
    source = SaeSource.build(arch, Sae(read_spec(folder)))
    dead = source.sae._weights["b_enc"]
    dead[150:] = -1e4  # latents that never fire: every excerpt ties at 0, the lower index must win
    fast = mine_sources(model, [source], ids, top_k=6, random_k=5, seed=2, batch_size=4, progress=False)[0]

    plain = []
    for s in range(0, len(ids), 4):
        with hooks.capture(model, [source.read], stop=True) as captured:
            hooks.forward(model, torch.from_numpy(ids[s : s + 4]))
        plain.append(source.sae.encode(captured[source.read]).numpy())
    acts = np.concatenate(plain)  # (N, L, U)
    maxes = acts.max(axis=1)
    assert np.all(maxes[:, 150:] == 0) and np.any(maxes[:, :150] > 0)
    for unit in range(200):
        order = np.lexsort((np.arange(len(ids)), -maxes[:, unit]))[:6]
        assert fast.top_indices[:, unit].tolist() == order.tolist()
        np.testing.assert_array_equal(fast.top_max[:, unit], maxes[order, unit])
        np.testing.assert_array_equal(fast.top_acts[:, unit, :], acts[order, :, unit])
    np.testing.assert_array_equal(fast.random_acts, acts[fast.random_indices].transpose(0, 2, 1))
    flat = acts.reshape(-1, 200).astype(np.float64)
    d = flat - flat.mean(axis=0)
    m2 = (d**2).mean(axis=0)
    live = m2 > 0
    np.testing.assert_allclose(fast.mean, flat.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.variance, m2, rtol=1e-7, atol=1e-12)
    skew = (d[:, live] ** 3).mean(axis=0) / m2[live] ** 1.5
    np.testing.assert_allclose(fast.skewness[live], skew, rtol=1e-6, atol=1e-9)
    assert not live[150:].any() and np.all(np.isnan(fast.skewness[~live]))  # constant latents: undefined, not 0


def test_shards_merge_exactly_into_one_pass() -> None:
    model = tiny_model("gpt2")
    source = NeuronSource.build(architecture_for(model.config), 1)
    ids = random_token_ids(23, 6, seed=5)
    whole = mine_sources(model, [source], ids, 5, 7, seed=1, batch_size=4, progress=False)[0]
    parts = [mine_sources(model, [source], ids, 5, 7, 1, batch_size=3, progress=False, start=s, stop=e)[0]
             for s, e in ((0, 9), (9, 10), (10, 23))]  # fmt: skip
    merged = merge_mined(merge_mined(parts[0], parts[1]), parts[2])
    np.testing.assert_array_equal(merged.top_indices, whole.top_indices)
    np.testing.assert_allclose(merged.top_acts, whole.top_acts, atol=1e-5)
    np.testing.assert_array_equal(merged.random_indices, whole.random_indices)
    np.testing.assert_allclose(merged.random_acts, whole.random_acts, atol=1e-5)
    assert merged.count == whole.count
    for name in ("mean", "variance", "skewness", "kurtosis"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Whole runs (Hydra composition -> MLflow), tiny Llama, no LLM
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 6))
    return path


def run_overrides(tmp: Path, subject: Path, corpus: Path, store: dict[str, str], *extra: str) -> list[str]:
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=16",
        "units.count=2",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=token_list",
        "simulator=proxy_lexical",
        f"tracking.uri={store['uri']}",
        f"tracking.artifact_location={store['artifacts']}",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


def check_run(outcome, store: dict[str, str], kind: str) -> list:
    import mlflow

    assert outcome.results and all(r.unit.kind == kind for r in outcome.results)
    ok = [r for r in outcome.results if r.status == "ok"]
    assert ok, [r.error for r in outcome.results]
    for r in ok:
        for score in r.scores.values():
            assert not math.isnan(score.value) or score.reason, score
        assert r.extras["provenance"]["units"]["kind"] == kind
    mlflow.set_tracking_uri(store["uri"])
    runs = mlflow.search_runs(experiment_names=["neuronbench"], output_format="list")
    assert runs and any(m.startswith("score/") for m in runs[0].data.metrics)
    return ok


def test_run_sae_latent_end_to_end(tmp_path: Path, corpus: Path, mlflow_store: dict[str, str]) -> None:
    from bench.cli import run_job
    from bench.config import compose

    subject = save_tiny_subject("llama", tmp_path / "tiny-llama")
    folder = write_sae(tmp_path / "sae", 32, 64, "blocks.1.hook_resid_post", "jumprelu")
    cfg = compose(run_overrides(tmp_path, subject, corpus, mlflow_store, "units=sae_latent",
                                f"units.sae.path={folder}", "scorer=[correlation,ablation,output_centric]",
                                "scorer.output_centric.similarity=lexical"))  # fmt: skip
    outcome = run_job(cfg, progress=False)
    ok = check_run(outcome, mlflow_store, "sae_latent")
    assert {r.unit.key.split("/")[1] for r in outcome.results} == {"L1"}
    for r in ok:
        assert "ablation/kl/mean_ablated" in r.scores and "output_centric/projection/lexical" in r.scores
        sae = r.extras["provenance"]["units"]["sources"][0]["sae"]
        assert sae["weights_sha256"] and sae["architecture"] == "jumprelu"
    # the SAE weights' hash is in the record-cache key: other weights, other records
    records = sorted((tmp_path / "cache" / "records").glob("*.npz"))
    write_sae(folder, 32, 64, "blocks.1.hook_resid_post", "jumprelu", seed=9)
    run_job(compose(run_overrides(tmp_path, subject, corpus, mlflow_store, "units=sae_latent",
                                  f"units.sae.path={folder}", "output_dir=" + str(tmp_path / "runs2"))),
            progress=False)  # fmt: skip
    assert len(sorted((tmp_path / "cache" / "records").glob("*.npz"))) == len(records) + 1


def test_run_attention_heads_end_to_end_and_undefined_scorers_refused(
    tmp_path: Path, corpus: Path, mlflow_store: dict[str, str]
) -> None:
    from bench.cli import run_job
    from bench.config import compose, validate

    subject = save_tiny_subject("gpt2", tmp_path / "tiny-gpt2")
    base = run_overrides(tmp_path, subject, corpus, mlflow_store, "units=attention_head", "units.layers=[0,1]")
    with pytest.raises(ConfigError, match="output_centric") as info:
        validate(compose([*base, "scorer=[correlation,output_centric]"]))
    assert "\n" not in str(info.value)
    outcome = run_job(compose([*base, "scorer=[correlation,ablation]"]), progress=False)
    ok = check_run(outcome, mlflow_store, "attention_head")
    assert len(outcome.results) == 4
    assert any(not math.isnan(r.scores["ablation/kl/mean_ablated"].value) for r in ok)


def test_random_subject_baseline(tmp_path: Path, corpus: Path, mlflow_store: dict[str, str]) -> None:
    from bench.cli import run_job
    from bench.config import compose

    subject = save_tiny_subject("llama", tmp_path / "tiny-llama")
    common = run_overrides(tmp_path, subject, corpus, mlflow_store, "units.layers=[1]", "units.indices=[3,7]",
                           "scorer=[correlation]")  # fmt: skip
    trained = run_job(compose(common), progress=False)
    random = run_job(compose([*common, "subject.randomize=true", "subject.randomize_seed=4",
                              f"output_dir={tmp_path / 'runs-random'}"]), progress=False)  # fmt: skip
    prov = random.results[0].extras["provenance"]["subject"]
    assert prov["randomize_seed"] == 4
    assert trained.results[0].extras["provenance"]["subject"]["randomize_seed"] is None
    caches = list((tmp_path / "cache" / "records").glob("*.npz"))
    assert len(caches) == 2  # the random subject's records are mined, never read from the trained one's
    assert json.dumps(prov) != json.dumps(trained.results[0].extras["provenance"]["subject"])


def test_units_config_refusals() -> None:
    from bench.config import compose, validate
    from bench.pipeline import check_layers

    settings, parts = validate(compose(["units=sae_latent", "tracking=none"]))  # composes; the run refuses:
    with pytest.raises(UserError, match="units.sae.path=") as info:
        check_layers(settings, None)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="units.site"):
        validate(compose(["units=attention_head", "units.site=resid.post", "tracking=none"]))
    with pytest.raises(ConfigError, match="units.kind"):
        validate(compose(["units.kind=mlp_neurons", "tracking=none"]))


def test_dtype_auto_is_float32_on_cpu_and_recorded(tmp_path: Path) -> None:
    from bench.subject.transformers_subject import TransformersSubject

    subject = TransformersSubject(model_id=str(save_tiny_subject("gpt2", tmp_path / "g")), dtype="auto", device="cpu")
    assert subject.resolved_dtype == "float32" and subject.info.dtype == "float32"
    assert next(subject.model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        TransformersSubject(model_id=str(tmp_path / "g"), dtype="int8")


def test_sharded_mining_resumes_after_an_interruption_and_matches_one_pass(tmp_path: Path, monkeypatch) -> None:
    from bench.protocols import ExcerptSet
    from bench.subject import record_cache
    from bench.subject.transformers_subject import TransformersSubject

    subject = TransformersSubject(model_id=str(save_tiny_subject("llama", tmp_path / "m")), batch_size=4,
                                  progress=False)  # fmt: skip
    excerpts = ExcerptSet(token_ids=random_token_ids(25, 8, seed=4), fingerprint="fp-shards")
    sources = [NeuronSource.build(subject.architecture, 0), NeuronSource.build(subject.architecture, 1)]
    real = TransformersSubject.mine_sources
    calls: list[tuple[int, int | None]] = []

    def flaky(self, excerpts, sources, top_k, random_k, seed, start=0, stop=None):
        calls.append((start, stop))
        if start == 10 and len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while mining the second shard
        return real(self, excerpts, sources, top_k, random_k, seed, start, stop)

    monkeypatch.setattr(TransformersSubject, "mine_sources", flaky)
    with pytest.raises(KeyboardInterrupt):
        record_cache.load_or_mine_sources(subject, excerpts, sources, 5, 4, 0, tmp_path / "c", shard_excerpts=10)
    got = record_cache.load_or_mine_sources(subject, excerpts, sources, 5, 4, 0, tmp_path / "c", shard_excerpts=10)
    assert calls == [(0, 10), (10, 20), (10, 20), (20, 25)]  # the finished first shard was not mined again
    assert len(list((tmp_path / "c" / "records").glob("*.npz"))) == 2  # shard files replaced by the two records
    monkeypatch.setattr(TransformersSubject, "mine_sources", real)
    whole = subject.mine_sources(excerpts, sources, 5, 4, 0)
    for (mined, strings), one in zip(got, whole, strict=True):
        np.testing.assert_array_equal(mined.top_indices, one.top_indices)
        np.testing.assert_allclose(mined.random_acts, one.random_acts, atol=1e-6)
        assert strings


def test_hub_release_goes_through_saelens_once_and_is_cached_as_a_folder(tmp_path: Path, monkeypatch) -> None:
    import sys
    from types import SimpleNamespace

    from bench.subject.sae import load_sae

    calls = []

    class FakeSAE:  # SAELens' API: from_pretrained(release, sae_id, device) -> SAE with save_model(path)
        @classmethod
        def from_pretrained(cls, release, sae_id, device="cpu"):
            calls.append((release, sae_id, device))
            return cls()

        def save_model(self, path):
            write_sae(Path(path), 32, 16, "blocks.1.hook_resid_post")

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # not installed: one line naming the extra
    with pytest.raises(UserError, match=r"neuronbench\[sae\]"):
        load_sae(release="r", sae_id="blocks.1", cache_dir=str(tmp_path))
    monkeypatch.setitem(sys.modules, "sae_lens", SimpleNamespace(SAE=FakeSAE))
    first = load_sae(release="gpt2-small-res-jb", sae_id="blocks.1.hook_resid_post", cache_dir=str(tmp_path))
    again = load_sae(release="gpt2-small-res-jb", sae_id="blocks.1.hook_resid_post", cache_dir=str(tmp_path))
    assert calls == [("gpt2-small-res-jb", "blocks.1.hook_resid_post", "cpu")]
    assert first.spec == again.spec and first.spec.d_sae == 16 and Path(first.spec.path).parent.name == "saes"


def test_neurons_at_another_site_via_a_transformerlens_name() -> None:
    model = tiny_model("gpt2")
    source = NeuronSource.build(architecture_for(model.config), 0, "blocks.1.hook_resid_post")
    assert (source.site_name, source.layer) == ("resid.post", 1)  # the alias carries its own layer
    mined = mine_sources(model, [source], random_token_ids(6, 5, seed=3), 2, 2, 0, progress=False)[0]
    assert mined.n_units == model.config.n_embd and mined.layer == 1
    assert source.output_direction(model, 0) is None  # only mlp.post neurons have a down-projection column
