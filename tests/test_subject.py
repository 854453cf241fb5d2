"""TransformersSubject: cheap validated construction, lazy loading, provenance, hook sites per family."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest_models import FAMILIES, N_LAYERS, WIDTH, random_token_ids, save_tiny_subject, tiny_config

from bench.errors import UserError
from bench.protocols import ExcerptSet
from bench.subject.hook_sites import HOOK_SITES, hook_site_for, mlp_width, n_layers, supported_families
from bench.subject.transformers_subject import TransformersSubject, clear_cache


@pytest.fixture(scope="module")
def subject_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-subjects")
    return {f: save_tiny_subject(f, root / f, seed=3) for f in FAMILIES}


EXPECTED_SITES = {
    "gpt2": "transformer.h.{layer}.mlp.act:output",
    "gpt_neox": "gpt_neox.layers.{layer}.mlp.act:output",
    "llama": "model.layers.{layer}.mlp.down_proj:input",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_site_per_family(family: str) -> None:
    config = tiny_config(family, 50)
    site = hook_site_for(config)
    assert site.family == family and site.describe == EXPECTED_SITES[family]
    assert n_layers(config) == N_LAYERS and mlp_width(config) == WIDTH


def test_gpt2_default_width_is_four_times_hidden() -> None:
    from transformers import GPT2Config

    assert mlp_width(GPT2Config(n_embd=48, n_inner=None)) == 192


def test_unknown_family_is_a_user_error_listing_supported_ones() -> None:
    from transformers import BertConfig

    with pytest.raises(UserError) as info:
        hook_site_for(BertConfig())
    message = str(info.value)
    assert "'bert'" in message and all(f in message for f in supported_families())
    assert {"gpt2", "gpt_neox", "llama", "qwen2", "gemma", "gemma2", "gemma3_text", "mistral"} <= set(HOOK_SITES)


@pytest.mark.parametrize("family", FAMILIES)
def test_subject_info_and_mining_on_saved_tiny_models(family: str, subject_dirs: dict[str, Path]) -> None:
    clear_cache()
    path = subject_dirs[family]
    subject = TransformersSubject(model_id=str(path), batch_size=4, progress=False)
    info = subject.info
    assert info.family == family and info.hook_site == EXPECTED_SITES[family]
    assert (info.n_layers, info.width, info.dtype, info.model, info.revision) == (
        N_LAYERS,
        WIDTH,
        "float32",
        str(path),
        None,
    )
    weights = path / "model.safetensors"
    assert info.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert subject.resolved_device == "cpu"
    ids = random_token_ids(9, 6, seed=4)
    records = subject.mine(ExcerptSet(token_ids=ids, fingerprint="x"), 1, 3, 2, 0)
    assert len(records) == WIDTH and len(records[0].top) == 3 and len(records[0].random) == 2
    tokens = records[0].top[0].tokens
    assert len(tokens) == 6 and all(isinstance(t, str) for t in tokens)
    assert subject.model is subject.torch_model
    assert subject.model is TransformersSubject(model_id=str(path)).model  # loaded once per process


def test_info_loads_no_weights(subject_dirs: dict[str, Path], monkeypatch) -> None:
    clear_cache()
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("info must not load the weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    assert TransformersSubject(model_id=str(subject_dirs["gpt2"])).info.family == "gpt2"


def test_layer_out_of_range_is_a_user_error(subject_dirs: dict[str, Path]) -> None:
    subject = TransformersSubject(model_id=str(subject_dirs["llama"]), progress=False)
    with pytest.raises(UserError, match="layers 0..1"):
        subject.mine(ExcerptSet(token_ids=random_token_ids(2, 4), fingerprint="x"), 5, 1, 1, 0)


def test_construction_is_cheap_and_validates(monkeypatch) -> None:
    # "cheap" = loads nothing (asserted directly: a time limit would depend on the machine's speed)
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("constructing a subject must not load a config, tokenizer or weights")

    for loader in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(getattr(transformers, loader), "from_pretrained", no_loading)
    TransformersSubject(model_id="gpt2")
    TransformersSubject()
    bad = [
        ({"model_id": ""}, "model_id:"),
        ({"model_id": "./no/such/dir"}, "model_id: no such directory"),
        ({"dtype": "int8"}, "dtype:"),
        ({"device": "gpu"}, "device:"),
        ({"batch_size": 0}, "batch_size:"),
        ({"revision": "main"}, "revision:"),  # the offline asset has no revisions
    ]
    for kwargs, start in bad:
        with pytest.raises(ValueError) as info:
            TransformersSubject(**kwargs)
        assert str(info.value).startswith(start), kwargs


def test_unreachable_hub_model_is_a_one_line_user_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_cache()
    subject = TransformersSubject(model_id="neuronbench-tests/does-not-exist")
    with pytest.raises(UserError) as info:
        _ = subject.info
    message = str(info.value)
    assert "subject.model_id='neuronbench-tests/does-not-exist'" in message and "\n" not in message


def test_token_strings_decode_each_id_alone(subject_dirs: dict[str, Path]) -> None:
    subject = TransformersSubject(model_id=str(subject_dirs["gpt2"]))
    ids = np.asarray(subject.tokenizer.encode(" Call me Ishmael.", add_special_tokens=False))
    strings = subject.token_strings(ids)
    assert "".join(strings[int(i)] for i in ids) == " Call me Ishmael."
