"""Mined records cached on disk: one ``.npz`` per (subject, excerpts, layer, k's, seed, code version).

The key hashes everything that determines the records -- the subject's identity (model id,
revision, weights sha256, dtype, family, hook site), the excerpt set's fingerprint (corpus, tokenizer,
sizes, seed), the layer, ``top_k``, ``random_k``, the seed and :data:`~bench.subject.mining.MINING_VERSION`
-- so any change mines again and nothing stale is ever reused.  The batch size and device are not
part of the key (they change activations only at float rounding level); they are recorded in the
file's metadata.  Files are written to a temporary name and renamed (atomic), under a file lock so
parallel jobs mine a layer once.  A hit needs neither the model nor its tokenizer: the token strings of
kept excerpts are stored with the arrays.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols import ExcerptSet, SubjectInfo
from bench.records import UnitRecord
from bench.state_files import NPZ_READ_ERRORS

log = logging.getLogger(__name__)

# Bump when the file layout changes.
RECORD_CACHE_VERSION = 1


def record_cache_key(
    info: SubjectInfo, excerpts_fingerprint: str, layer: int, top_k: int, random_k: int, seed: int
) -> dict[str, Any]:
    """Everything that determines a layer's records (see the module docstring)."""
    from bench.subject.mining import MINING_VERSION

    return {
        "subject": {
            "model": info.model,
            "revision": info.revision,
            "weights_sha256": info.weights_sha256,
            "dtype": info.dtype,
            "family": info.family,
            "hook_site": info.hook_site,
        },
        "excerpts": excerpts_fingerprint,
        "layer": int(layer),
        "top_k": int(top_k),
        "random_k": int(random_k),
        "seed": int(seed),
        "mining_version": MINING_VERSION,
        "cache_version": RECORD_CACHE_VERSION,
    }


def record_cache_path(key: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    from bench.assets import cache_root
    from bench.data.windows import stable_hash

    return cache_root(cache_dir) / "records" / f"{stable_hash(key)}.npz"


def load_or_mine(
    subject: Any,
    excerpts: ExcerptSet,
    layer: int,
    top_k: int,
    random_k: int,
    seed: int,
    cache_dir: str | Path | None = None,
    units: Sequence[int] | None = None,
) -> Sequence[UnitRecord]:
    """Records of every unit of ``layer``, from disk or mined once; ``result[i]`` is unit ``i``.

    Without ``units`` the result is a :class:`~bench.subject.mining.LazyUnitRecords` (a read-only
    sequence building each record on first access: a cache hit returns in ~0.1 s instead of ~2 s for
    1,536 units); with ``units`` a list of exactly those units, in that order.  A subject without
    ``mine_layer`` (a plugin implementing only :meth:`Subject.mine`) is mined without caching.
    """
    if not hasattr(subject, "mine_layer"):
        log.info("subject %s has no mine_layer(): mining without the record cache", type(subject).__name__)
        records = subject.mine(excerpts, layer, top_k, random_k, seed)
        return records if units is None else [records[int(u)] for u in units]
    mined, strings = load_or_mine_layer(subject, excerpts, layer, top_k, random_k, seed, cache_dir)
    if units is None:
        return mined.lazy_records(excerpts.token_ids, strings)
    return mined.unit_records(excerpts.token_ids, strings, units=units)


def load_or_mine_layer(
    subject: Any,
    excerpts: ExcerptSet,
    layer: int,
    top_k: int,
    random_k: int,
    seed: int,
    cache_dir: str | Path | None = None,
) -> tuple[Any, dict[int, str]]:
    """``(MinedLayer, token id -> string)`` for ``layer``, from the cache or mined and stored."""
    from bench.assets import file_lock

    key = record_cache_key(subject.info, excerpts.fingerprint, layer, top_k, random_k, seed)
    path = record_cache_path(key, cache_dir)
    found = _load(path, key)
    if found is not None:
        return found
    with file_lock(path):
        found = _load(path, key)  # another process may have mined it while we waited
        if found is not None:
            return found
        started = time.perf_counter()
        mined = subject.mine_layer(excerpts, layer, top_k, random_k, seed)
        seconds = time.perf_counter() - started
        kept = np.unique(np.concatenate([mined.top_indices.ravel(), mined.random_indices]))
        strings = subject.token_strings(excerpts.token_ids[kept])
        meta = {
            "key": key,
            "token_strings": {str(k): v for k, v in strings.items()},
            "mined": {
                "seconds": round(seconds, 3),
                "batch_size": getattr(subject, "batch_size", None),
                "device": getattr(subject, "resolved_device", None),
                "n_excerpts": int(excerpts.token_ids.shape[0]),
                "excerpt_len": int(excerpts.token_ids.shape[1]),
            },
        }
        _save(path, mined, meta)
        log.info("mined layer %d in %.1f s -> %s", layer, seconds, path)
        return mined, strings


_ARRAYS = ("top_indices", "top_max", "top_acts", "random_indices", "random_acts", "mean", "variance",
           "skewness", "kurtosis")  # fmt: skip


def _save(path: Path, mined: Any, meta: dict[str, Any]) -> None:
    from bench.assets import atomic_write_bytes

    buf = io.BytesIO()
    arrays = {name: getattr(mined, name) for name in _ARRAYS}
    meta = {**meta, "layer": int(mined.layer), "count": int(mined.count)}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path, key: dict[str, Any]) -> tuple[Any, dict[int, str]] | None:
    from bench.subject.mining import MinedLayer

    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta.get("key") != json.loads(json.dumps(key)):
                log.warning("record cache %s holds another key; mining again", path)
                return None
            arrays = {name: data[name] for name in _ARRAYS}
    except NPZ_READ_ERRORS as err:  # truncated, emptied or overwritten: it is a cache, so mine again
        log.warning("unreadable record cache %s (%s); mining again", path, err)
        return None
    mined = MinedLayer(layer=int(meta["layer"]), count=int(meta["count"]), **arrays)
    strings = {int(k): v for k, v in meta["token_strings"].items()}
    return mined, strings
