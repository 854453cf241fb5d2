"""Canonical activation sites per model family: the ONE place that maps a site name to a module.

A *site* is where a unit's activations are read (method.md section 1).  The canonical names are a
public, stable vocabulary (TransformerLens' lesson: hook names are API); each family's file maps them
to the modules of its ``transformers`` implementation (checked against transformers 5.24):

* ``mlp.in``    -- the MLP's input (after the block's norm): where transcoders read;
* ``mlp.post``  -- the MLP's hidden activations (the input of its down projection): MLP neurons;
* ``mlp.out``   -- the MLP's output (what it writes towards the residual stream);
* ``resid.pre`` -- the residual stream entering the block (the decoder layer's input);
* ``resid.post``-- the residual stream leaving the block (its output): where most SAEs read;
* ``attn.z``    -- every head's attention-weighted values, concatenated head by head, before the
  output projection (the input of ``o_proj`` / ``c_proj`` / ``dense``): attention heads.

TransformerLens names are accepted as aliases (:func:`parse_site`).  A family not listed here is
refused with one line naming ``subject.sites=``, a mapping of site name to module template
(``{layer}`` placeholder, ``:input`` or ``:output``) that adds or overrides sites for any model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bench.errors import UserError

CANONICAL_SITES = ("resid.pre", "attn.z", "mlp.in", "mlp.post", "mlp.out", "resid.post")
# Execution order inside one block: the capture of the last requested site ends the forward pass.
SITE_ORDER = {name: i for i, name in enumerate(CANONICAL_SITES)}

# TransformerLens hook names (blocks.{i}.<name>) -> canonical site names.
TL_ALIASES = {
    "hook_resid_pre": "resid.pre",
    "hook_resid_post": "resid.post",
    "hook_mlp_out": "mlp.out",
    "hook_mlp_in": "mlp.in",
    "ln2.hook_normalized": "mlp.in",
    "mlp.hook_post": "mlp.post",
    "attn.hook_z": "attn.z",
}
_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """A module (name template with ``{layer}``) and which side of it carries the activations."""

    module: str  # e.g. "model.layers.{layer}.mlp.down_proj"
    io: str  # "input": the module's first positional input (or hidden_states=); "output": its output

    def __post_init__(self) -> None:
        if self.io not in ("input", "output"):
            raise ValueError(f"site io must be 'input' or 'output', got {self.io!r}")

    def module_name(self, layer: int) -> str:
        return self.module.format(layer=layer)

    @property
    def describe(self) -> str:
        """Recorded with results, e.g. ``model.layers.{layer}.mlp.down_proj:input``."""
        return f"{self.module}:{self.io}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """``"model.layers.{layer}.mlp:output"`` -> Site; ValueError when malformed."""
        module, _, io = str(text).rpartition(":")
        if not module or io not in ("input", "output"):
            raise ValueError(f"{text!r} must look like 'model.layers.{{layer}}.mlp:output' (or ':input')")
        return cls(module, io)


@dataclass(frozen=True)
class Architecture:
    """One family: its decoder-layer list and the module behind every canonical site."""

    family: str
    layers: str  # dotted path of the decoder-layer list
    sites: Mapping[str, Site] = field(default_factory=dict)

    def site(self, name: str) -> Site:
        found = self.sites.get(name)
        if found is None:
            raise UserError(
                f"site {name!r} is not mapped for family {self.family}; known: {', '.join(sorted(self.sites))} "
                f"(add it with subject.sites={{{name}: '<module with {{layer}}>:input|output'}})"
            )
        return found

    def with_overrides(self, overrides: Mapping[str, str] | None) -> Architecture:
        if not overrides:
            return self
        return replace(self, sites={**self.sites, **{k: Site.parse(v) for k, v in overrides.items()}})


def block_sites(prefix: str, mlp_post: Site, attn_out: str) -> dict[str, Site]:
    """Sites of a pre-norm decoder block ``{prefix}.{layer}`` with ``.mlp`` and the given attention output."""
    block = prefix + ".{layer}"
    return {
        "resid.pre": Site(block, "input"),
        "resid.post": Site(block, "output"),
        "mlp.in": Site(block + ".mlp", "input"),
        "mlp.post": mlp_post,
        "mlp.out": Site(block + ".mlp", "output"),
        "attn.z": Site(block + "." + attn_out, "input"),
    }


def gated(family: str, prefix: str = "model.layers") -> Architecture:
    """The Llama layout shared by the gated (SwiGLU / GeGLU) families: neurons feed ``mlp.down_proj``."""
    return Architecture(
        family, prefix, block_sites(prefix, Site(prefix + ".{layer}.mlp.down_proj", "input"), "self_attn.o_proj")
    )


def _registry() -> dict[str, Architecture]:
    from bench.subject.architectures import gemma, gpt2, gpt_neox, llama, mistral, olmo2, phi3, qwen

    out: dict[str, Architecture] = {}
    for module in (gpt2, gpt_neox, llama, mistral, qwen, gemma, phi3, olmo2):
        out.update(module.ARCHITECTURES)
    return out


ARCHITECTURES: dict[str, Architecture] = _registry()


def supported_families() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture_for(config: Any, sites: Mapping[str, str] | None = None) -> Architecture:
    """The architecture of a transformers config, with ``subject.sites`` overrides applied.

    An unknown family with overrides becomes a custom architecture (layers counted from the config);
    without them it is one line naming ``subject.sites=``.
    """
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(str(model_type)) if model_type is not None else None
    if arch is None:
        if sites:
            try:
                return Architecture(str(model_type), "", {}).with_overrides(sites)
            except ValueError as err:
                raise UserError(f"config error at 'subject.sites': {err}") from None
        raise UserError(
            f"subject model type {model_type!r} has no site adapter (supported: {', '.join(supported_families())}); "
            "map its sites with subject.sites={mlp.post: 'model.layers.{layer}.mlp.down_proj:input', ...} "
            "or add a file under bench/subject/architectures/"
        )
    try:
        return arch.with_overrides(sites)
    except ValueError as err:
        raise UserError(f"config error at 'subject.sites': {err}") from None


def parse_site(name: str, layer: int | None = None) -> tuple[str, int | None]:
    """A canonical name or a TransformerLens alias -> (canonical name, layer from the alias or ``layer``).

    ``blocks.15.hook_resid_post`` -> ``("resid.post", 15)``; ``resid.post`` -> ``("resid.post", layer)``.
    """
    name = str(name).strip()
    m = _TL.match(name)
    if m:
        alias = TL_ALIASES.get(m.group(2))
        if alias is None:
            raise UserError(f"unknown TransformerLens hook {name!r}; known: {', '.join(sorted(TL_ALIASES))}")
        return alias, int(m.group(1))
    if name in TL_ALIASES:
        return TL_ALIASES[name], layer
    return name, layer


def text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter(decoder=True)
        except (TypeError, ValueError):
            return getter()
    return config


def n_layers(config: Any) -> int:
    """Number of decoder layers."""
    return int(text_config(config).num_hidden_layers)


def n_heads(config: Any) -> int:
    """Attention heads per layer."""
    return int(text_config(config).num_attention_heads)


def mlp_width(config: Any) -> int:
    """MLP neurons per layer."""
    cfg = text_config(config)
    if getattr(cfg, "model_type", None) == "gpt2":
        return int(cfg.n_inner if getattr(cfg, "n_inner", None) else 4 * cfg.n_embd)
    return int(cfg.intermediate_size)


def hidden_size(config: Any) -> int:
    return int(text_config(config).hidden_size)


def resolve(model: Any, site: Site, layer: int) -> Any:
    """The ``torch.nn.Module`` behind ``site`` at ``layer``; UserError if the layer or module does not exist."""
    count = n_layers(model.config)
    if not 0 <= layer < count:
        raise UserError(f"layer {layer} does not exist: this subject has layers 0..{count - 1}")
    name = site.module_name(layer)
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise UserError(
            f"the subject model has no module {name!r} (class {type(model).__name__}); load it with "
            "AutoModelForCausalLM or map the site with subject.sites="
        ) from err
