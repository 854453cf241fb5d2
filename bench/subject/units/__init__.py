"""A unit is (activation source, index): a source reads a site of the subject and maybe encodes it.

Every kind (method.md section 1) is one small module implementing :class:`ActivationSource`:

* ``mlp_neuron``     -- :mod:`.mlp_neuron`: the site's coordinates as they are (an identity encoder);
* ``sae_latent``     -- :mod:`.sae_latent`: an SAE (or transcoder) encoder applied to the site;
* ``attention_head`` -- :mod:`.attention_head`: ``a_h = ||z_h W_O[h]||`` from ``attn.z``.

Mining asks each source which points to capture, runs one forward pass for all of them and calls
:meth:`ActivationSource.encode`; the ablation score asks it to *replace* a unit's values, the
output-centric score to *boost* a unit and for its output direction.  Whatever a source needs to say
how activations were produced is in :attr:`ActivationSource.describe` (recorded with results and part
of the record-cache key).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from bench.errors import UserError
from bench.subject.hooks import Point

KINDS = ("mlp_neuron", "sae_latent", "attention_head")
# Scorers that need something a kind does not have (refused at config time, one line).
UNDEFINED_SCORERS: dict[str, dict[str, str]] = {
    "attention_head": {
        "output_centric": "a head writes a subspace, not one direction: output_centric is undefined for attention_head",
    },
}


class ActivationSource(Protocol):
    kind: str
    layer: int

    @property
    def points(self) -> list[Point]:
        """Where to capture during the forward pass."""
        ...

    @property
    def n_units(self) -> int: ...

    @property
    def describe(self) -> dict[str, Any]: ...

    def encode(self, captured: Mapping[Point, Any]) -> Any:
        """``(batch, tokens, units)`` float32 activations from the captured tensors."""
        ...

    def replaced(self, model: Any, index: int, values: Any) -> AbstractContextManager[None]:
        """While inside, unit ``index`` takes ``values`` ``(batch, tokens)`` (method.md section 1's override)."""
        ...

    def boosted(self, model: Any, index: int, delta: float) -> AbstractContextManager[None]:
        """While inside, ``delta`` is added to unit ``index`` at every token."""
        ...

    def output_direction(self, model: Any, index: int) -> Any | None:
        """The unit's write direction in the residual stream, or None when it has none."""
        ...


def width(kind: str, config: Any, sae_spec: Any = None) -> int:
    """Units per layer of ``kind`` from the config alone (no weights loaded)."""
    from bench.subject.architectures import mlp_width, n_heads

    if kind == "mlp_neuron":
        return mlp_width(config)
    if kind == "attention_head":
        return n_heads(config)
    if kind == "sae_latent":
        return int(sae_spec.d_sae)
    raise UserError(f"config error at 'units.kind': unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def build_sources(
    subject: Any, kind: str, layers: Sequence[int], sae: Any = None, site: str | None = None
) -> list[Any]:
    """One source per layer (an SAE defines its own layer): what :func:`bench.subject.mining.mine_sources` mines."""
    arch = subject.architecture
    if kind == "mlp_neuron":
        from bench.subject.units.mlp_neuron import NeuronSource

        return [NeuronSource.build(arch, layer, site or "mlp.post") for layer in layers]
    if kind == "attention_head":
        from bench.subject.units.attention_head import HeadSource

        return [HeadSource.build(subject.model, arch, layer) for layer in layers]
    if kind == "sae_latent":
        from bench.subject.units.sae_latent import SaeSource

        return [SaeSource.build(arch, sae)]
    raise UserError(f"config error at 'units.kind': unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def iter_points(sources: Sequence[Any]) -> Iterator[Point]:
    for source in sources:
        yield from source.points
