"""Where an MLP neuron lives, per architecture family: the ONE place that says so.

A neuron (method.md section 1) is the post-activation of the MLP, i.e. the input of its down
projection.  For GPT-2 and GPT-NeoX that is the output of the MLP's activation module; for the gated
(SwiGLU / GeGLU) families it is the input of ``mlp.down_proj`` (``act(gate) * up``).  Module names were
checked against transformers 5.24 (``models/*/modeling_*.py``) for the ``AutoModelForCausalLM`` class of
each ``config.model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import UserError


@dataclass(frozen=True)
class HookSite:
    """A module (name template with ``{layer}``) and which side of it carries the neurons."""

    family: str
    module: str  # e.g. "model.layers.{layer}.mlp.down_proj"
    io: str  # "output": the module's output; "input": its first positional input
    layers_attr: str  # dotted path of the decoder-layer list, for counting / error messages

    def module_name(self, layer: int) -> str:
        return self.module.format(layer=layer)

    @property
    def describe(self) -> str:
        """Recorded with results, e.g. ``model.layers.{layer}.mlp.down_proj:input``."""
        return f"{self.module}:{self.io}"


_GPT2 = HookSite("gpt2", "transformer.h.{layer}.mlp.act", "output", "transformer.h")
_NEOX = HookSite("gpt_neox", "gpt_neox.layers.{layer}.mlp.act", "output", "gpt_neox.layers")


def _gated(family: str, prefix: str = "model") -> HookSite:
    return HookSite(family, prefix + ".layers.{layer}.mlp.down_proj", "input", prefix + ".layers")


# config.model_type -> hook site
HOOK_SITES: dict[str, HookSite] = {
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
    "llama": _gated("llama"),
    "mistral": _gated("mistral"),
    "qwen2": _gated("qwen2"),
    "qwen3": _gated("qwen3"),
    "gemma": _gated("gemma"),
    "gemma2": _gated("gemma2"),
    "gemma3_text": _gated("gemma3_text"),
    # The multimodal Gemma 3 checkpoints load as Gemma3ForConditionalGeneration.
    "gemma3": _gated("gemma3", "model.language_model"),
}


def supported_families() -> list[str]:
    return sorted(HOOK_SITES)


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter(decoder=True)
        except (TypeError, ValueError):
            return getter()
    return config


def hook_site_for(config: Any) -> HookSite:
    """The hook site for a transformers config; UserError for an unsupported family."""
    model_type = getattr(config, "model_type", None)
    site = HOOK_SITES.get(model_type)
    if site is None:
        raise UserError(
            f"subject model type {model_type!r} is not supported for MLP neurons; supported families: "
            f"{', '.join(supported_families())} (add one in bench/subject/hook_sites.py)"
        )
    return site


def n_layers(config: Any) -> int:
    """Number of decoder layers."""
    return int(_text_config(config).num_hidden_layers)


def mlp_width(config: Any) -> int:
    """MLP neurons per layer."""
    cfg = _text_config(config)
    if getattr(cfg, "model_type", None) == "gpt2":
        return int(cfg.n_inner if getattr(cfg, "n_inner", None) else 4 * cfg.n_embd)
    return int(cfg.intermediate_size)


def resolve_module(model: Any, site: HookSite, layer: int) -> Any:
    """The hooked ``torch.nn.Module`` of ``layer``; UserError if the layer or module does not exist."""
    count = n_layers(model.config)
    if not 0 <= layer < count:
        raise UserError(f"layer {layer} does not exist: this subject has layers 0..{count - 1}")
    name = site.module_name(layer)
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise UserError(
            f"the subject model has no module {name!r} (family {site.family}, class "
            f"{type(model).__name__}); load it with AutoModelForCausalLM"
        ) from err
