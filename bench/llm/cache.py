"""A persistent on-disk cache of LLM API responses, shared by processes (``diskcache``, sqlite underneath).

Keys are SHA-256 digests of a canonical JSON *key material*: provider, base URL, model, the request
parameters actually sent, the messages and the sample index -- never the API key (callers build the
material from the request body, which carries no credentials).  Values are plain JSON-able dicts
(the parsed answer and its usage), so entries are readable without the SDKs.  Sampled generations
*are* cached, one entry per ``sample_index``: k samples of one prompt stay k distinct entries, and
re-running the same requests makes no HTTP call.  Errors are never cached.

``FORMAT`` is part of every key: bump it when the stored value's shape changes.

A damaged cache (``cache.db`` overwritten or truncated, an entry that is not ``{"result": ..., "usage":
{...}}``) must not fail the units that use it: the entry -- or, when sqlite cannot read the database,
the whole cache for this process -- counts as a miss, and one warning names the folder and the fix.

**Several processes** (joblib or Ray sweep jobs, shards of one run) share one cache folder: sqlite in WAL
mode makes their reads and writes safe, and :meth:`ResponseCache.claim` makes them pay once for a request
they all miss -- the first process to claim a key sends it while the others wait on that key's lock file
(``inflight/<2 hex>/<key>.lock``, ``filelock``), then find its answer in the cache.  The lock is the
kernel's (``flock``): a process that dies mid-request releases it, and the next claimant sends again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

FORMAT = 1
INFLIGHT_DIR = "inflight"  # per-key lock files of requests being sent (see ResponseCache.claim)
CLAIM_POLL_S = 0.05  # how often a process waiting for another's request tries its lock again
REPAIR = "delete that folder to rebuild the cache (answers are requested again)"
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$NEURONBENCH_CACHE/llm`` or ``~/.cache/neuronbench/llm``."""
    root = os.environ.get("NEURONBENCH_CACHE") or str(Path.home() / ".cache" / "neuronbench")
    return Path(root) / "llm"


def cache_key(material: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``material`` (sorted keys, no whitespace)."""
    blob = json.dumps({"format": FORMAT, **material}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``get`` / ``set`` of JSON-able values under :func:`cache_key` digests; opened lazily.

    ``directory=None`` disables the cache (every ``get`` misses, ``set`` does nothing).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        well_formed: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """``well_formed``: what a usable entry looks like (the HTTP backends pass :func:`answer_shape`);
        an entry that is not a JSON object, or fails it, is a miss."""
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._well_formed = well_formed
        self._cache: Any = None
        self._lock = threading.Lock()
        self._damaged = False  # the database could not be read: every get misses, set does nothing
        self._warned: set[str] = set()

    def _warn_once(self, what: str, err: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            _log.warning(
                "LLM response cache %s: %s (%s); treated as a cache miss -- %s", self.directory, what, err, REPAIR
            )

    def _give_up(self, err: BaseException) -> None:
        """sqlite cannot read the database: run without the cache rather than fail every unit."""
        self._warn_once("unreadable database", f"{type(err).__name__}: {err}")
        with self._lock:
            self._damaged = True
            cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except Exception:  # noqa: BLE001 - closing a damaged database may fail too
                pass

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def _open(self) -> Any:
        """The diskcache, or None when it is disabled or damaged."""
        import sqlite3

        with self._lock:
            if self._cache is None and self.directory is not None and not self._damaged:
                import diskcache

                self.directory.mkdir(parents=True, exist_ok=True)
                try:
                    # sqlite in WAL mode: safe for concurrent readers and writers across processes.
                    self._cache = diskcache.Cache(str(self.directory), size_limit=2**34, eviction_policy="none")
                except sqlite3.DatabaseError as err:
                    error: BaseException | None = err
                else:
                    error = None
            else:
                error = None
            cache = self._cache
        if error is not None:
            self._give_up(error)
        return cache

    def get(self, key: str) -> dict[str, Any] | None:
        import sqlite3

        cache = self._open()
        if cache is None:
            return None
        try:
            value = cache.get(key)
        except sqlite3.DatabaseError as err:
            self._give_up(err)
            return None
        except Exception as err:  # noqa: BLE001 - an entry diskcache cannot unpickle: a miss
            self._warn_once("unreadable entries", f"{type(err).__name__}: {err}")
            return None
        if value is None:
            return None
        try:
            parsed = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or (self._well_formed is not None and not self._well_formed(parsed)):
            self._warn_once("entries of the wrong shape", f"key {key[:12]}...")
            return None
        return parsed

    def set(self, key: str, value: dict[str, Any]) -> None:
        import sqlite3

        cache = self._open()
        if cache is None:
            return
        try:
            cache.set(key, json.dumps(value, ensure_ascii=False))
        except sqlite3.DatabaseError as err:
            self._give_up(err)

    def __contains__(self, key: str) -> bool:
        cache = self._open()
        return cache is not None and key in cache

    def _stored(self, key: str) -> bool:
        """Whether ``key`` has an entry, without reading it (an answer with 20 top logprobs per token is
        ~100 KB of JSON: reading it back only to test presence was a visible share of a run's CPU); a
        damaged database counts as not stored."""
        import sqlite3

        try:
            return key in self
        except sqlite3.DatabaseError as err:
            self._give_up(err)
            return False

    def __len__(self) -> int:
        cache = self._open()
        return 0 if cache is None else len(cache)

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    def lock_path(self, key: str) -> Path:
        """The lock file of ``key`` in :meth:`claim` (two-level, as git objects: no folder holds too many)."""
        assert self.directory is not None
        return self.directory / INFLIGHT_DIR / key[:2] / f"{key}.lock"

    @asynccontextmanager
    async def claim(self, key: str) -> AsyncIterator[dict[str, Any] | None]:
        """Hold ``key``'s inter-process lock while the request is sent and its answer cached; yields the
        answer when another process (or a twin job of this one) cached it meanwhile -- then send nothing.

        The cache is read again once the lock is held: whoever waited finds the answer of the process it
        waited for instead of paying again.  Two coroutines of one process exclude each other too (each
        lock object opens its own descriptor, and ``flock`` locks exclude each other per descriptor).
        Each lock attempt (with the re-read) and the release run in one worker thread each, never on the
        event loop; a contended key is retried every :data:`CLAIM_POLL_S`.  The lock file is removed
        while still held once the answer is cached -- a late waiter then re-reads and hits; after a
        failure it stays, so the next claimant still takes its turn.  A disabled or damaged cache claims
        nothing (there is nothing to share).
        """
        if self.directory is None or self._damaged:
            yield None
            return
        from filelock import FileLock

        path = self.lock_path(key)
        lock = FileLock(str(path), thread_local=False)  # taken and released on (possibly different) threads
        while True:
            try:
                taken, hit = await asyncio.to_thread(self._try_claim, key, path, lock)
            except OSError as err:  # a full or read-only disk: send without the claim rather than fail
                self._warn_once("lock files", f"{type(err).__name__}: {err}")
                yield None
                return
            if taken:
                break
            await asyncio.sleep(CLAIM_POLL_S)
        try:
            yield hit
        finally:
            await asyncio.to_thread(self._release, key, path, lock, hit is None)

    def _try_claim(self, key: str, path: Path, lock: Any) -> tuple[bool, dict[str, Any] | None]:
        """Take ``key``'s lock without waiting; when taken, the cached answer (None: send it)."""
        from filelock import Timeout

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return False, None
        return True, self.get(key)

    def _release(self, key: str, path: Path, lock: Any, sent: bool) -> None:
        """Remove ``key``'s lock file once its answer is cached (while still held), then release it."""
        try:
            if not sent or self._stored(key):
                path.unlink(missing_ok=True)
        except OSError as err:  # tidying lock files must never fail a request
            self._warn_once("lock files", f"{type(err).__name__}: {err}")
        finally:
            lock.release()

    def check_writable(self) -> None:
        """Raise ``OSError`` if the cache folder cannot be created or written."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()


def answer_shape(value: dict[str, Any]) -> bool:
    """The shape every backend stores (``Job`` in bench/llm/types.py): ``{"result": ..., "usage": {...}}``."""
    return "result" in value and isinstance(value.get("usage") or {}, dict)
