"""Where an MLP neuron lives, per family: a view of :mod:`bench.subject.architectures` (site ``mlp.post``).

Kept for callers written before unit kinds existed (``HookSite.describe`` is what results record as
``hook_site`` for MLP neurons).  New code uses :mod:`bench.subject.architectures` and
:mod:`bench.subject.hooks` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.subject.architectures import (
    ARCHITECTURES,
    Site,
    architecture_for,
    mlp_width,
    n_layers,
    resolve,
    supported_families,
)

__all__ = ["HOOK_SITES", "HookSite", "hook_site_for", "mlp_width", "n_layers", "resolve_module", "supported_families"]


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
    def site(self) -> Site:
        return Site(self.module, self.io)

    @property
    def describe(self) -> str:
        """Recorded with results, e.g. ``model.layers.{layer}.mlp.down_proj:input``."""
        return f"{self.module}:{self.io}"


def _neuron_site(family: str) -> HookSite:
    arch = ARCHITECTURES[family]
    site = arch.sites["mlp.post"]
    return HookSite(family, site.module, site.io, arch.layers)


# config.model_type -> hook site of its MLP neurons
HOOK_SITES: dict[str, HookSite] = {family: _neuron_site(family) for family in ARCHITECTURES}


def hook_site_for(config: Any) -> HookSite:
    """The neuron hook site for a transformers config; UserError (naming ``subject.sites=``) when unknown."""
    arch = architecture_for(config)
    site = arch.site("mlp.post")
    return HookSite(arch.family, site.module, site.io, arch.layers)


def resolve_module(model: Any, site: HookSite, layer: int) -> Any:
    """The hooked ``torch.nn.Module`` of ``layer``; UserError if the layer or module does not exist."""
    return resolve(model, site.site, layer)
