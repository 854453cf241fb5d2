"""Attention heads: ``a_h(t) = || z_h(t) W_O[h] ||_2`` (method.md section 1).

``z`` is captured at ``attn.z`` (the output projection's input, heads concatenated); ``W_O[h]`` is the
head's block of the output projection (``Linear``: columns ``h*d : (h+1)*d`` of the weight; GPT-2's
``Conv1D``: those rows).  The norm is computed as ``sqrt(z_h^T (W_O[h] W_O[h]^T) z_h)`` with the
``(heads, d, d)`` Gram matrices, so no ``(batch, tokens, heads, d_model)`` tensor is ever built.
The override scales ``z_h(t)`` by ``v(t) / a_h(t)`` (direction kept, magnitude replaced), leaving it
unchanged where ``a_h(t) = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from bench.subject import hooks
from bench.subject.architectures import Architecture, Site, n_heads, resolve
from bench.subject.hooks import Point


def head_output_matrices(projection: Any, heads: int) -> Any:
    """``(heads, head_dim, d_model)`` float32: each head's block of the output projection."""
    import torch

    weight = projection.weight.detach().float()
    if isinstance(projection, torch.nn.Linear):  # (d_model, heads*d)
        w = weight.T
    elif hasattr(projection, "nf"):  # transformers' Conv1D: (heads*d, d_model)
        w = weight
    else:
        raise ValueError(f"unsupported attention output projection {type(projection).__name__}")
    total, d_model = w.shape
    if total % heads:
        raise ValueError(f"output projection input {total} is not divisible by {heads} heads")
    return w.reshape(heads, total // heads, d_model)


@dataclass(frozen=True)
class HeadSource:
    site: Site
    layer: int
    heads: int
    w_o: Any = field(repr=False, compare=False)  # (heads, d, d_model)
    kind: str = "attention_head"

    @classmethod
    def build(cls, model: Any, arch: Architecture, layer: int) -> HeadSource:
        site = arch.site("attn.z")
        heads = n_heads(model.config)
        return cls(site, layer, heads, head_output_matrices(resolve(model, site, layer), heads))

    @property
    def point(self) -> Point:
        return (self.site, self.layer)

    @property
    def points(self) -> list[Point]:
        return [self.point]

    @property
    def n_units(self) -> int:
        return self.heads

    @property
    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "site": "attn.z", "hook_site": self.site.describe, "layer": self.layer,
                "activation": "||z_h W_O[h]||_2"}  # fmt: skip

    def _split(self, z: Any) -> Any:
        return z.reshape(*z.shape[:-1], self.heads, z.shape[-1] // self.heads)

    def norms(self, z: Any) -> Any:
        """``(batch, tokens, heads)`` head output norms of ``z`` ``(batch, tokens, heads*d)``."""
        import torch

        zh = self._split(z.float())
        w = self.w_o.to(zh.device)
        gram = w @ w.transpose(1, 2)  # (heads, d, d)
        sq = torch.einsum("bthd,hde,bthe->bth", zh, gram, zh)
        return sq.clamp_min(0).sqrt()

    def encode(self, captured: Mapping[Point, Any]) -> Any:
        return self.norms(captured[self.point])

    def replaced(self, model: Any, index: int, values: Any) -> AbstractContextManager[None]:
        import torch

        def scale(z: Any) -> Any:
            a = self.norms(z)[..., index]
            v = values.to(device=z.device, dtype=torch.float32)
            factor = torch.where(a > 0, v / a.clamp_min(1e-30), torch.ones_like(a))
            zh = self._split(z.clone())
            zh[..., index, :] = (zh[..., index, :].float() * factor.unsqueeze(-1)).to(z.dtype)
            return zh.reshape(z.shape)

        return hooks.edit(model, self.point, scale)

    def boosted(self, model: Any, index: int, delta: float) -> AbstractContextManager[None]:
        import torch

        def scale(z: Any) -> Any:
            a = self.norms(z)[..., index]
            values = a + float(delta)
            factor = torch.where(a > 0, values / a.clamp_min(1e-30), torch.ones_like(a))
            zh = self._split(z.clone())
            zh[..., index, :] = (zh[..., index, :].float() * factor.unsqueeze(-1)).to(z.dtype)
            return zh.reshape(z.shape)

        return hooks.edit(model, self.point, scale)

    def output_direction(self, model: Any, index: int) -> Any | None:
        return None  # a head writes a subspace (d directions), not one direction
