"""SAE and transcoder latents (method.md section 1).

The latent is ``f_i(x(t))``, the SAE's encoder applied to the activation at its hook site (its
``hook_name``, a TransformerLens name mapped to a canonical site).  The override adds
``(v(t) - f_i(t)) * W_dec[i]`` to the activation -- at the same site for an SAE, at ``hook_name_out``
for a transcoder, which first captures ``f_i`` where it reads -- so only that latent's contribution
changes and the reconstruction error stays in.  The output direction is ``W_dec[i]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.subject import hooks
from bench.subject.architectures import Architecture, Site, parse_site
from bench.subject.hooks import Point
from bench.subject.sae import Sae


def _point(arch: Architecture, hook_name: str) -> tuple[str, Point]:
    name, layer = parse_site(hook_name)
    if layer is None:
        raise UserError(
            f"config error at 'units.sae.path': hook {hook_name!r} names no layer; SAELens hooks look like "
            "blocks.15.hook_resid_post"
        )
    return name, (arch.site(name), layer)


@dataclass(frozen=True)
class SaeSource:
    sae: Sae = field(repr=False)
    read_site: str
    read: Point
    write_site: str
    write: Point
    kind: str = "sae_latent"
    # mining's reusable output buffer (see encode); not part of the source's identity
    _scratch: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def build(cls, arch: Architecture, sae: Sae) -> SaeSource:
        spec = sae.spec
        read_name, read = _point(arch, spec.hook_name)
        write_name, write = _point(arch, spec.hook_name_out) if spec.hook_name_out else (read_name, read)
        return cls(sae, read_name, read, write_name, write)

    @property
    def layer(self) -> int:
        return self.read[1]

    @property
    def site(self) -> Site:
        return self.read[0]

    @property
    def points(self) -> list[Point]:
        return [self.read]

    @property
    def n_units(self) -> int:
        return self.sae.spec.d_sae

    @property
    def describe(self) -> dict[str, Any]:
        spec = self.sae.spec
        return {
            "kind": self.kind,
            "site": self.read_site,
            "hook_site": self.read[0].describe,
            "layer": self.layer,
            "write_site": self.write_site,
            "write_layer": self.write[1],
            "sae": spec.describe,
        }

    def encode(self, captured: Mapping[Point, Any]) -> Any:
        """The latents of a captured batch, written into one buffer reused by every call of this source.

        Mining consumes each batch before the next forward pass, and a fresh ``tokens x d_sae`` array
        per batch costs more than the encoder's arithmetic; so the result is only valid until the next
        call (copy it to keep it).
        """
        import torch

        x = captured[self.read]
        shape = (*x.shape[:-1], self.sae.spec.d_sae)
        buf = self._scratch.get("out")
        if buf is None or tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0] or buf.device != x.device:
            buf = self._scratch["out"] = torch.empty(shape, dtype=torch.float32, device=x.device)
        return self.sae.encode(x, out=buf[: shape[0]])

    @contextmanager
    def _edit(self, model: Any, index: int, change: Any) -> Iterator[None]:
        """Add ``change(f_i, x_read)`` times the decoder row at the write point."""
        if self.read == self.write:

            def same(x: Any) -> Any:
                f = self.sae.encode(x)[..., index]
                return (x.float() + self.sae.delta(x, change(f), index)).to(x.dtype)

            with hooks.edit(model, self.write, same):
                yield
            return
        seen: dict[str, Any] = {}

        def keep(x: Any) -> None:
            seen["x"] = x.detach()

        def write(y: Any) -> Any:
            x = seen.pop("x")
            f = self.sae.encode(x)[..., index]
            return (y.float() + self.sae.delta(x, change(f), index)).to(y.dtype)

        with hooks.hooked(model, [(self.read, keep), (self.write, write)]):
            yield

    def replaced(self, model: Any, index: int, values: Any) -> Any:
        return self._edit(model, index, lambda f: values.to(f.device, f.dtype) - f)

    def boosted(self, model: Any, index: int, delta: float) -> Any:
        return self._edit(model, index, lambda f: f.new_full(f.shape, float(delta)))

    def output_direction(self, model: Any, index: int) -> Any | None:
        direction = self.sae.direction(index).detach().float()
        hidden = model.get_output_embeddings().weight.shape[1]
        return direction if direction.shape[-1] == hidden else None
