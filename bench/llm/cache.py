"""A persistent on-disk cache of LLM API responses, shared by processes (``diskcache``, sqlite underneath).

Keys are SHA-256 digests of a canonical JSON *key material*: provider, base URL, model, the request
parameters actually sent, the messages and the sample index -- never the API key (callers build the
material from the request body, which carries no credentials).  Values are plain JSON-able dicts
(the parsed answer and its usage), so entries are readable without the SDKs.  Sampled generations
*are* cached, one entry per ``sample_index``: k samples of one prompt stay k distinct entries, and
re-running the same requests makes no HTTP call.  Errors are never cached.

``FORMAT`` is part of every key: bump it when the stored value's shape changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

FORMAT = 1


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

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._cache: Any = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def _open(self) -> Any:
        with self._lock:
            if self._cache is None:
                import diskcache

                assert self.directory is not None
                self.directory.mkdir(parents=True, exist_ok=True)
                # sqlite in WAL mode: safe for concurrent readers and writers across processes.
                self._cache = diskcache.Cache(str(self.directory), size_limit=2**34, eviction_policy="none")
            return self._cache

    def get(self, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        value = self._open().get(key)
        return json.loads(value) if isinstance(value, str) else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self._open().set(key, json.dumps(value, ensure_ascii=False))

    def __contains__(self, key: str) -> bool:
        return self.directory is not None and key in self._open()

    def __len__(self) -> int:
        return 0 if self.directory is None else len(self._open())

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    def check_writable(self) -> None:
        """Raise ``OSError`` if the cache folder cannot be created or written."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
