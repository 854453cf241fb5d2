"""Token prices (USD per 1M tokens) and the dollars of a call.

Where a backend's prices come from, first match wins:

1. its ``prices`` config field (``conf/llm/*.yaml``): the override, and what a run records;
2. the ``genai-prices`` package (pydantic's maintained price data, shipped inside the package and read
   offline: it never downloads an update unless someone starts its ``UpdatePrices``, which we never do)
   for a hosted API -- the official API (``base_url: null``) by provider and model id, or a base URL that
   genai-prices knows (OpenRouter, Together ...);
3. a server genai-prices does not know (localhost, your own vLLM): the backend provider's list price when
   it lists the model id (a proxy or stand-in for the official API; an upper bound for the budget), else
   free: ``Prices(0, 0)``;
4. else (a hosted API serving a model genai-prices does not list) the prices are unknown: token counts are
   recorded, dollars are NaN ("unknown", never a made-up zero) and one warning says so.
"""

from __future__ import annotations

import functools
import logging
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


FREE = Prices(input=0.0, output=0.0)
_log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str | None]] = set()


@functools.lru_cache(maxsize=256)
def lookup(model: str, provider: str | None = None, base_url: str | None = None) -> Prices | None:
    """genai-prices' current list prices of ``model`` at ``provider`` (an id such as ``openai``) or at the
    provider serving ``base_url``; ``gpt-4o-mini-2024-07-18`` finds ``gpt-4o-mini``.  None: not listed."""
    from datetime import datetime

    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, None if base_url else provider, base_url)
    except LookupError:
        return None
    price = info.get_prices(datetime.now())

    def number(name: str) -> float | None:
        value = getattr(price, name, None)
        value = getattr(value, "base", value)  # tiered prices: the base tier (prompts under the first tier)
        return None if value is None else float(value)

    inp, out = number("input_mtok"), number("output_mtok")
    if inp is None or out is None:
        return None
    return Prices(input=inp, output=out, cached_input=number("cache_read_mtok"), cache_write=number("cache_write_mtok"))


def known_host(base_url: str) -> bool:
    """Whether genai-prices knows the provider behind ``base_url`` (a hosted API, billed by token)."""
    from genai_prices import data_snapshot

    try:
        data_snapshot.get_snapshot().find_provider(None, None, base_url)
    except LookupError:
        return False
    return True


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


def resolve(
    model: str, prices: Mapping[str, float] | None, provider: str | None = None, base_url: str | None = None
) -> Prices | None:
    """A backend's prices (see the module docstring): config, else genai-prices for a hosted API, else free
    for an unknown server, else None (unknown; warned once per model)."""
    if prices is not None:
        return Prices(
            input=float(prices["input"]),
            output=float(prices["output"]),
            cached_input=None if prices.get("cached_input") is None else float(prices["cached_input"]),
            cache_write=None if prices.get("cache_write") is None else float(prices["cache_write"]),
        )
    hosted = base_url is None or known_host(base_url)
    found = lookup(model, provider, base_url if hosted else None)
    if found is None and not hosted:
        return FREE  # a local or self-hosted server of a model no provider lists: free unless priced
    if found is None and (model, provider) not in _WARNED:
        _WARNED.add((model, provider))
        _log.warning(
            "no prices for model %r of %s in genai-prices: its dollars are unknown (give the backend's prices, "
            "USD per 1M tokens, e.g. prices: {input: 0.15, output: 0.6})",
            model,
            provider or base_url,
        )
    return found


# Prompt caching applies only to prompts of at least this many tokens (a shorter prompt is billed in
# full, however often it repeats).  OpenAI: 1,024 for every model that caches (hits in 128-token steps);
# Anthropic, per model (its prompt-caching docs, late 2025): Opus 4.5 and Haiku 4.5 4,096; Haiku 3 / 3.5
# 2,048; Sonnet and the older Opus 1,024.  Keys match by the longest prefix.
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
