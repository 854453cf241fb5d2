"""Token prices (USD per 1M tokens) and the dollars of a call.

A backend takes its prices from its ``prices`` config field when given (``conf/llm/*.yaml`` carry
them, dated), else from :data:`PRICE_TABLE` by the longest model-id prefix, else it has none: then
token counts are still recorded and dollars are NaN ("unknown"), never a made-up zero.
List prices change; the table is a convenience, the YAML's ``prices`` is what a run records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

PRICE_KEYS = ("input", "cached_input", "output", "cache_write")


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens.  ``cached_input``: prompt-cache reads; ``cache_write``: Anthropic cache writes."""

    input: float
    output: float
    cached_input: float | None = None  # None: billed as input
    cache_write: float | None = None  # None: billed as input

    def scaled(self, factor: float) -> Prices:
        """Every price times ``factor`` (batch APIs bill about half: ``scaled(0.5)``)."""
        return Prices(
            input=self.input * factor,
            output=self.output * factor,
            cached_input=None if self.cached_input is None else self.cached_input * factor,
            cache_write=None if self.cache_write is None else self.cache_write * factor,
        )

    def dollars(
        self, input_tokens: int, cached_input_tokens: int, output_tokens: int, cache_write_tokens: int = 0
    ) -> float:
        """Cost of one call; ``input_tokens`` is the whole prompt, cache reads and writes included."""
        cached = self.cached_input if self.cached_input is not None else self.input
        write = self.cache_write if self.cache_write is not None else self.input
        fresh = max(input_tokens - cached_input_tokens - cache_write_tokens, 0)
        total = (
            fresh * self.input + cached_input_tokens * cached + cache_write_tokens * write + output_tokens * self.output
        )
        return total / 1e6


# List prices as of 2025 (check the provider's pricing page before trusting a budget to them).
PRICE_TABLE: dict[str, Prices] = {
    "gpt-4o-mini": Prices(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4o": Prices(input=2.50, cached_input=1.25, output=10.00),
    "gpt-4.1-nano": Prices(input=0.10, cached_input=0.025, output=0.40),
    "gpt-4.1-mini": Prices(input=0.40, cached_input=0.10, output=1.60),
    "gpt-4.1": Prices(input=2.00, cached_input=0.50, output=8.00),
    "gpt-4-turbo": Prices(input=10.00, output=30.00),
    "gpt-4": Prices(input=30.00, output=60.00),
    "gpt-3.5-turbo": Prices(input=0.50, output=1.50),
    "claude-3-5-haiku": Prices(input=0.80, cached_input=0.08, cache_write=1.00, output=4.00),
    "claude-3-haiku": Prices(input=0.25, cached_input=0.03, cache_write=0.30, output=1.25),
    "claude-haiku-4-5": Prices(input=1.00, cached_input=0.10, cache_write=1.25, output=5.00),
    "claude-sonnet-4": Prices(input=3.00, cached_input=0.30, cache_write=3.75, output=15.00),
    "claude-3-7-sonnet": Prices(input=3.00, cached_input=0.30, cache_write=3.75, output=15.00),
    "claude-opus-4": Prices(input=15.00, cached_input=1.50, cache_write=18.75, output=75.00),
}


def lookup(model: str) -> Prices | None:
    """Prices of the longest table key that ``model`` starts with (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    matches = [key for key in PRICE_TABLE if model == key or model.startswith(key + "-")]
    return PRICE_TABLE[max(matches, key=len)] if matches else None


def check_prices(prices: Mapping[str, float] | None) -> None:
    """Validate a ``prices`` config mapping; ``ValueError("prices: ...")`` on a problem."""
    if prices is None:
        return
    unknown = set(prices) - set(PRICE_KEYS)
    if unknown:
        raise ValueError(f"prices: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(PRICE_KEYS)}")
    for key in ("input", "output"):
        if key not in prices:
            raise ValueError(f"prices: give '{key}' (USD per 1M tokens), e.g. prices: {{input: 0.15, output: 0.6}}")
    for key, value in prices.items():
        if value is None or not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"prices: {key} must be a number >= 0 (USD per 1M tokens), got {value!r}")


def resolve(model: str, prices: Mapping[str, float] | None) -> Prices | None:
    """The config's prices if given, else the table's, else None (dollars unknown)."""
    if prices is not None:
        return Prices(
            input=float(prices["input"]),
            output=float(prices["output"]),
            cached_input=None if prices.get("cached_input") is None else float(prices["cached_input"]),
            cache_write=None if prices.get("cache_write") is None else float(prices["cache_write"]),
        )
    return lookup(model)


# Prompt caching applies only to prompts of at least this many tokens (a shorter prompt is billed in
# full, however often it repeats).  OpenAI: 1,024 for every model that caches (hits in 128-token steps);
# Anthropic, per model (its prompt-caching docs, late 2025): Opus 4.5 and Haiku 4.5 4,096; Haiku 3 / 3.5
# 2,048; Sonnet and the older Opus 1,024.  Keys match like PRICE_TABLE's (longest prefix).
CACHE_MIN_TOKENS: dict[str, int] = {
    "gpt-": 1024,
    "o1": 1024,
    "o3": 1024,
    "o4": 1024,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-opus-4": 1024,
}


def cache_minimum(model: str) -> int | None:
    """The provider's minimum prompt length for prompt caching, or None when unknown (e.g. a local
    server, whose prefix cache has no minimum and no price)."""
    matches = [key for key in CACHE_MIN_TOKENS if model.startswith(key)]
    return CACHE_MIN_TOKENS[max(matches, key=len)] if matches else None
