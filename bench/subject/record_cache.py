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

from bench.protocols import ExcerptSet, LayerMining, MinesInBatches, SubjectInfo
from bench.records import UnitRecord
from bench.state_files import NPZ_READ_ERRORS

log = logging.getLogger(__name__)

# Bump when the file layout changes.
RECORD_CACHE_VERSION = 1


def record_cache_key(
    info: SubjectInfo,
    excerpts_fingerprint: str,
    layer: int,
    top_k: int,
    random_k: int,
    seed: int,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a layer's records (see the module docstring).

    ``source`` is the activation source's ``describe`` (site, encoder and the SAE weights' sha256) for
    any unit other than an MLP neuron at ``mlp.post`` (whose key stays what it was before unit kinds).
    """
    from bench.subject.mining import MINING_VERSION

    key: dict[str, Any] = {
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
    if source is not None:
        key["source"] = source
    if info.randomize_seed is not None:
        key["subject"]["randomize_seed"] = info.randomize_seed
    return key


def source_key_part(source: Any) -> dict[str, Any] | None:
    """What of a source goes into the key (None for the neurons at ``mlp.post``: the historical key)."""
    describe = dict(source.describe)
    if describe.get("kind") == "mlp_neuron" and describe.get("site") == "mlp.post":
        return None
    return describe


def load_or_mine_sources(
    subject: Any,
    excerpts: ExcerptSet,
    sources: Sequence[Any],
    top_k: int,
    random_k: int,
    seed: int,
    cache_dir: str | Path | None = None,
    shard_excerpts: int = 0,
) -> list[tuple[Any, dict[int, str]]]:
    """``(MinedLayer, token strings)`` per source: cached ones read, all others mined in ONE pass.

    With ``shard_excerpts`` the corpus is mined in shards of that many excerpts, each shard's result
    stored as it finishes (an interrupted mining resumes at the first missing shard) and the shards
    merged exactly (:func:`bench.subject.mining.merge_mined`).
    """
    from bench.assets import file_lock

    keys = [
        record_cache_key(subject.info, excerpts.fingerprint, s.layer, top_k, random_k, seed, source_key_part(s))
        for s in sources
    ]
    paths = [record_cache_path(k, cache_dir) for k in keys]
    found: list[Any] = [_load(p, k) for p, k in zip(paths, keys, strict=True)]
    missing = [i for i, f in enumerate(found) if f is None]
    if not missing:
        return found
    with file_lock(paths[missing[0]]):
        found = [f if f is not None else _load(p, k) for f, p, k in zip(found, paths, keys, strict=True)]
        missing = [i for i, f in enumerate(found) if f is None]
        if not missing:
            return found
        started = time.perf_counter()
        mined = _mine_shards(subject, excerpts, [sources[i] for i in missing], [keys[i] for i in missing],
                             top_k, random_k, seed, cache_dir, shard_excerpts)  # fmt: skip
        seconds = time.perf_counter() - started
        kept = np.unique(np.concatenate([np.concatenate([m.top_indices.ravel(), m.random_indices]) for m in mined]))
        strings = subject.token_strings(excerpts.token_ids[kept])
        for i, m in zip(missing, mined, strict=True):
            used = np.unique(np.concatenate([m.top_indices.ravel(), m.random_indices]))
            needed = {int(t) for t in np.unique(excerpts.token_ids[used])}
            own = {t: s for t, s in strings.items() if t in needed}
            _save(paths[i], m, _meta(keys[i], own, seconds, subject, excerpts, len(missing)))
            _drop_shards(keys[i], int(excerpts.token_ids.shape[0]), shard_excerpts, cache_dir)
            found[i] = (m, own)
        log.info("mined %d source(s) in one pass in %.1f s", len(missing), seconds)
    return found


def _meta(key: dict[str, Any], strings: dict[int, str], seconds: float, subject: Any, excerpts: ExcerptSet,
          together: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "key": key,
        "token_strings": {str(k): v for k, v in strings.items()},
        "mined": {
            "seconds": round(seconds, 3),
            "sources_in_pass": together,
            "batch_size": subject.batch_size if isinstance(subject, MinesInBatches) else None,
            "device": subject.resolved_device if isinstance(subject, MinesInBatches) else None,
            "n_excerpts": int(excerpts.token_ids.shape[0]),
            "excerpt_len": int(excerpts.token_ids.shape[1]),
        },
    }


def _mine_shards(
    subject: Any,
    excerpts: ExcerptSet,
    sources: list[Any],
    keys: list[dict[str, Any]],
    top_k: int,
    random_k: int,
    seed: int,
    cache_dir: str | Path | None,
    shard_excerpts: int,
) -> list[Any]:
    """Mine ``sources`` over the whole corpus, shard by shard (each shard stored), and merge."""
    from bench.subject.mining import merge_mined

    n = int(excerpts.token_ids.shape[0])
    if shard_excerpts <= 0 or shard_excerpts >= n:
        return subject.mine_sources(excerpts, sources, top_k, random_k, seed)
    merged: list[Any] = [None] * len(sources)
    for start in range(0, n, shard_excerpts):
        stop = min(start + shard_excerpts, n)
        shard_keys = [{**k, "shard": [start, stop]} for k in keys]
        shard_paths = [record_cache_path(k, cache_dir) for k in shard_keys]
        parts = [_load(p, k) for p, k in zip(shard_paths, shard_keys, strict=True)]
        todo = [i for i, part in enumerate(parts) if part is None]
        if todo:
            fresh = subject.mine_sources(excerpts, [sources[i] for i in todo], top_k, random_k, seed, start, stop)
            for i, m in zip(todo, fresh, strict=True):
                _save(shard_paths[i], m, {"key": shard_keys[i], "token_strings": {}})
                parts[i] = (m, {})
        for i, part in enumerate(parts):
            assert part is not None  # loaded, or mined just above
            merged[i] = part[0] if merged[i] is None else merge_mined(merged[i], part[0])
    return merged


def _drop_shards(key: dict[str, Any], n: int, shard_excerpts: int, cache_dir: str | Path | None) -> None:
    """Delete a source's shard files once its merged record is stored."""
    if 0 < shard_excerpts < n:
        for start in range(0, n, shard_excerpts):
            shard = {**key, "shard": [start, min(start + shard_excerpts, n)]}
            record_cache_path(shard, cache_dir).unlink(missing_ok=True)


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
    if not isinstance(subject, LayerMining):
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
                "batch_size": subject.batch_size if isinstance(subject, MinesInBatches) else None,
                "device": subject.resolved_device if isinstance(subject, MinesInBatches) else None,
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
    meta = {**meta, "layer": int(mined.layer), "count": int(mined.count), "start": int(mined.start),
            "stop": None if mined.stop is None else int(mined.stop)}  # fmt: skip
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
    mined = MinedLayer(layer=int(meta["layer"]), count=int(meta["count"]), start=int(meta.get("start", 0)),
                       stop=meta.get("stop"), **arrays)  # fmt: skip
    strings = {int(k): v for k, v in meta["token_strings"].items()}
    return mined, strings
