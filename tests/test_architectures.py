"""Site adapters per family on tiny random models, and the one hooks module (capture / override / add)."""

from __future__ import annotations

import pytest
import torch
import transformers

from bench.errors import UserError
from bench.subject import hooks
from bench.subject.architectures import (
    CANONICAL_SITES,
    architecture_for,
    hidden_size,
    mlp_width,
    n_heads,
    parse_site,
    supported_families,
)

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=32, pad_token_id=0)  # fmt: skip
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, n_inner=24),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=24,
                                                   max_position_embeddings=32),  # fmt: skip
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "mistral": lambda: transformers.MistralConfig(**SMALL),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL),
    "gemma": lambda: transformers.GemmaConfig(**SMALL),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**SMALL),
    "phi3": lambda: transformers.Phi3Config(**SMALL),
    "olmo2": lambda: transformers.Olmo2Config(**SMALL),
}
_MODELS: dict[str, object] = {}


def tiny(family: str):
    if family not in _MODELS:
        torch.manual_seed(0)
        _MODELS[family] = transformers.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    return _MODELS[family]


IDS = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(0))


def test_every_text_family_has_a_tiny_model_test() -> None:
    assert set(supported_families()) - {"gemma3"} == set(CONFIGS)  # gemma3: the multimodal wrapper of gemma3_text


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_canonical_site_captures_the_expected_shape(family: str) -> None:
    model = tiny(family)
    arch = architecture_for(model.config)
    assert set(CANONICAL_SITES) <= set(arch.sites)
    points = {name: (arch.site(name), 1) for name in CANONICAL_SITES}
    with hooks.capture(model, list(points.values()), stop=False) as got:
        logits = hooks.forward(model, IDS, logits=True)
    assert logits is not None and logits.shape[:2] == IDS.shape
    d, width = hidden_size(model.config), mlp_width(model.config)
    heads = n_heads(model.config)
    expected = {"resid.pre": d, "resid.post": d, "mlp.out": d, "mlp.in": d, "mlp.post": width}
    for name, size in expected.items():
        assert tuple(got[points[name]].shape) == (2, 7, size), (family, name)
    z = got[points["attn.z"]]
    assert z.shape[:2] == (2, 7) and z.shape[-1] % heads == 0
    # the residual stream leaving block 0 is the one entering block 1
    with hooks.capture(model, [(arch.site("resid.post"), 0)], stop=True) as first:
        assert hooks.forward(model, IDS, logits=True) is None  # stopped: no logits
    assert torch.allclose(first[(arch.site("resid.post"), 0)], got[points["resid.pre"]], atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "olmo2"])
def test_override_changes_the_output_and_handles_are_always_removed(family: str) -> None:
    model = tiny(family)
    arch = architecture_for(model.config)
    point = (arch.site("mlp.post"), 0)
    base = hooks.forward(model, IDS, logits=True)
    with hooks.capture(model, [point], stop=False) as seen:
        hooks.forward(model, IDS)
    same = seen[point][..., 3]
    with hooks.override(model, point, 3, same):  # writing the unit's own values changes nothing
        assert torch.allclose(hooks.forward(model, IDS, logits=True), base, atol=1e-5)
    with hooks.override(model, point, 3, same + 5.0):
        assert (hooks.forward(model, IDS, logits=True) - base).abs().max() > 1e-3
    with hooks.add(model, point, 5.0, 3):
        boosted = hooks.forward(model, IDS, logits=True)
    with hooks.override(model, point, 3, same + 5.0):
        assert torch.allclose(hooks.forward(model, IDS, logits=True), boosted, atol=1e-5)
    with pytest.raises(RuntimeError), hooks.add(model, point, 1.0, 3):
        raise RuntimeError("inside")
    module = model.get_submodule(point[0].module_name(0))
    assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.allclose(hooks.forward(model, IDS, logits=True), base)


def test_transformerlens_aliases() -> None:
    assert parse_site("blocks.15.hook_resid_post") == ("resid.post", 15)
    assert parse_site("blocks.3.mlp.hook_post") == ("mlp.post", 3)
    assert parse_site("blocks.0.attn.hook_z") == ("attn.z", 0)
    assert parse_site("blocks.2.hook_resid_pre") == ("resid.pre", 2)
    assert parse_site("resid.post", 4) == ("resid.post", 4)
    with pytest.raises(UserError, match="unknown TransformerLens hook"):
        parse_site("blocks.1.hook_nonsense")


def test_unknown_family_names_the_override_and_the_override_works() -> None:
    config = transformers.BertConfig()
    with pytest.raises(UserError) as info:
        architecture_for(config)
    assert "subject.sites=" in str(info.value) and "'bert'" in str(info.value) and "\n" not in str(info.value)
    arch = architecture_for(config, {"mlp.post": "bert.encoder.layer.{layer}.intermediate:output"})
    assert arch.site("mlp.post").describe == "bert.encoder.layer.{layer}.intermediate:output"
    llama = architecture_for(tiny("llama").config, {"resid.post": "model.layers.{layer}:output"})
    assert llama.site("mlp.post").io == "input"
    with pytest.raises(UserError, match="subject.sites"):
        architecture_for(config, {"mlp.post": "no-io-suffix"})
