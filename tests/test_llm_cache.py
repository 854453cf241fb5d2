"""The on-disk response cache, prices, Retry-After parsing and counters (no SDK, no server)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.llm.cache import ResponseCache, cache_key, default_cache_dir
from bench.llm.errors import parse_retry_after
from bench.llm.pricing import Prices, check_prices, lookup, resolve
from bench.llm.types import BackendStats


def test_key_is_canonical_and_sensitive_to_every_part() -> None:
    base = {"provider": "openai-chat", "base_url": "http://a/v1", "params": {"model": "m", "t": 1}, "sample_index": 0}
    same = {"sample_index": 0, "params": {"t": 1, "model": "m"}, "base_url": "http://a/v1", "provider": "openai-chat"}
    assert cache_key(base) == cache_key(same) and len(cache_key(base)) == 64
    for change in ({"sample_index": 1}, {"base_url": "http://b/v1"}, {"params": {"model": "m2", "t": 1}}):
        assert cache_key({**base, **change}) != cache_key(base)


def test_get_set_roundtrip_and_disabled(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    assert cache.get("k") is None
    cache.set("k", {"result": {"text": "héllo"}, "usage": {"input_tokens": 3}})
    assert cache.get("k") == {"result": {"text": "héllo"}, "usage": {"input_tokens": 3}}
    assert "k" in cache and len(cache) == 1
    cache.close()
    assert ResponseCache(tmp_path / "c").get("k") is not None  # persistent
    off = ResponseCache(None)
    off.set("k", {"x": 1})
    assert off.get("k") is None and not off.enabled and len(off) == 0


def test_shared_across_processes(tmp_path: Path) -> None:
    """Two processes write concurrently into one cache; both sets of entries are readable here."""
    script = (
        "import sys; from bench.llm.cache import ResponseCache\n"
        "c = ResponseCache(sys.argv[1])\n"
        "for i in range(50): c.set(f'{sys.argv[2]}-{i}', {'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag]) for tag in ("a", "b")]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    cache = ResponseCache(tmp_path)
    assert len(cache) == 100 and cache.get("a-49") == {"i": 49} and cache.get("b-0") == {"i": 0}


def test_default_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "llm"


def test_prices() -> None:
    p = Prices(input=1.0, output=4.0, cached_input=0.1, cache_write=1.25)
    # 1M-token units: 600k fresh + 200k cached + 200k written + 100k out
    assert p.dollars(1_000_000, 200_000, 100_000, 200_000) == pytest.approx(0.6 + 0.02 + 0.25 + 0.4)
    assert Prices(input=2.0, output=0.0).dollars(1000, 500, 0) == pytest.approx(0.002)  # no cache price: as input
    assert lookup("gpt-4o-mini-2024-07-18") == lookup("gpt-4o-mini") != lookup("gpt-4o")
    assert lookup("my-local-model") is None
    assert resolve("gpt-4o", {"input": 0.0, "output": 0.0}) == Prices(input=0.0, output=0.0)
    for bad in ({"input": 1.0}, {"input": 1.0, "output": -1.0}, {"input": 1, "output": 1, "typo": 1}):
        with pytest.raises(ValueError, match="^prices: "):
            check_prices(bad)


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


def test_stats_metrics_are_flat_and_slash_named() -> None:
    metrics = BackendStats(calls=3, retries=1, dollars=0.5).as_metrics("cost/simulator/")
    assert metrics["cost/simulator/calls"] == 3.0 and metrics["cost/simulator/dollars"] == 0.5
    assert all("/" in k for k in metrics) and not any(math.isnan(v) for v in metrics.values())
