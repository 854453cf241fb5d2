"""MLP neurons (and, with ``units.site``, the coordinates of any site): the identity encoder."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from bench.subject import hooks
from bench.subject.architectures import Architecture, Site, parse_site
from bench.subject.hooks import Point


@dataclass(frozen=True)
class NeuronSource:
    site_name: str
    site: Site
    layer: int
    width: int | None = None
    kind: str = "mlp_neuron"

    @classmethod
    def build(cls, arch: Architecture, layer: int, site: str = "mlp.post") -> NeuronSource:
        name, at = parse_site(site, layer)
        return cls(name, arch.site(name), int(at if at is not None else layer))

    @property
    def point(self) -> Point:
        return (self.site, self.layer)

    @property
    def points(self) -> list[Point]:
        return [self.point]

    @property
    def n_units(self) -> int:
        if self.width is None:
            raise ValueError("width unknown before the first batch")
        return self.width

    @property
    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "site": self.site_name, "hook_site": self.site.describe, "layer": self.layer}

    def encode(self, captured: Mapping[Point, Any]) -> Any:
        return captured[self.point]

    def replaced(self, model: Any, index: int, values: Any) -> AbstractContextManager[None]:
        return hooks.override(model, self.point, index, values)

    def boosted(self, model: Any, index: int, delta: float) -> AbstractContextManager[None]:
        return hooks.add(model, self.point, float(delta), index)

    def output_direction(self, model: Any, index: int) -> Any | None:
        from bench.scorers.output_centric import down_projection, output_direction

        if self.site_name != "mlp.post":
            return None
        return output_direction(down_projection(model, self.site.describe, self.layer), index)
