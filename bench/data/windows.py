"""Tokenize documents and cut them into excerpts: the one implementation every dataset shares.

A dataset supplies documents (``(doc_id, text)`` pairs, ``doc_id`` starting with ``<source>/``) and
a cache key describing them; :func:`make_excerpt_set` does the rest:

1. tokenize each document whole with the subject's tokenizer, without special tokens;
2. cut non-overlapping windows of ``excerpt_len`` tokens from its start (a shorter tail is dropped);
3. when a document has more than ``max_windows_per_document`` windows, keep a seeded random subset of
   them (so one huge document -- the KJV Bible -- cannot dominate);
4. pick ``n_excerpts`` of all windows without replacement with a seeded RNG, in that random order
   (so any prefix of the set is itself a uniform sample).

Both the tokenized corpus (all windows, ``<cache>/excerpts/windows-<hash>.npz``) and the selection
(``<cache>/excerpts/<fingerprint>.npz``) are cached; the fingerprint hashes everything that determines
the excerpts (dataset key, tokenizer identity, sizes, cap, seed, :data:`WINDOWS_VERSION`), so a hit
never needs the corpus, a new seed or size does not tokenize again, and a change to any input is a
different file.  Both are written atomically (a reader never sees a torn file), and the corpus is
tokenized under a file lock, so parallel jobs sharing the cache read and tokenize it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError
from bench.protocols import ExcerptSet
from bench.state_files import NPZ_READ_ERRORS

# Bump when a change here changes which token windows come out for the same inputs.
WINDOWS_VERSION = 1

Documents = Callable[[], Iterable[tuple[str, str]]]


def stable_hash(obj: Any, length: int = 32) -> str:
    """sha256 of the canonical JSON of ``obj`` (hex, truncated to ``length``)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash identifying a tokenizer's behaviour (vocabulary, merges, normalisation, added tokens).

    Fast tokenizers hash their serialised pipeline (padding/truncation state excluded); others hash
    their class name and full vocabulary.
    """
    size = len(tokenizer)
    cached = getattr(tokenizer, "_neuronbench_fingerprint", None)
    if isinstance(cached, tuple) and cached[0] == size:  # memo, invalidated when tokens are added
        return cached[1]
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    payload: bytes
    if backend is not None and hasattr(backend, "to_str"):
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        payload = json.dumps(spec, sort_keys=True).encode()
    else:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        payload = json.dumps([type(tokenizer).__name__, vocab]).encode()
    digest = hashlib.sha256(payload).hexdigest()[:32]
    try:
        tokenizer._neuronbench_fingerprint = (size, digest)
    except AttributeError:  # pragma: no cover - slotted tokenizers
        pass
    return digest


def decode_bytes(data: bytes) -> str:
    """UTF-8 text, falling back to Windows-1252 (a few Gutenberg books are Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_text(path: str | Path) -> str:
    return decode_bytes(Path(path).read_bytes())


def tokenize_documents(
    tokenizer: Any, documents: Iterable[tuple[str, str]], batch_size: int = 32, batch_chars: int = 2_000_000
) -> Iterator[tuple[str, np.ndarray]]:
    """``(doc_id, token ids)`` per document, tokenized whole without special tokens.

    Documents go to the tokenizer in batches of at most ``batch_size`` documents or about
    ``batch_chars`` characters (whichever comes first) to bound memory.
    """
    batch: list[tuple[str, str]] = []
    chars = 0

    def flush() -> Iterator[tuple[str, np.ndarray]]:
        encoded = tokenizer([text for _, text in batch], add_special_tokens=False)["input_ids"]
        for (doc_id, _), ids in zip(batch, encoded, strict=True):
            yield doc_id, np.asarray(ids, dtype=np.int64)
        batch.clear()

    for doc_id, text in documents:
        if not text:
            continue
        batch.append((doc_id, text))
        chars += len(text)
        if len(batch) >= batch_size or chars >= batch_chars:
            yield from flush()
            chars = 0
    if batch:
        yield from flush()


def make_excerpt_set(
    *,
    name: str,
    documents: Documents,
    dataset_key: dict[str, Any],
    tokenizer: Any,
    n_excerpts: int,
    excerpt_len: int,
    seed: int,
    max_windows_per_document: int | None,
    cache_dir: str | Path | None,
    stop_after_windows: int | None = None,
    n_excerpts_key: str = "dataset.n_excerpts",
) -> ExcerptSet:
    """Excerpts of ``documents`` as described in the module docstring; cached on disk.

    Two cache levels: every window of the tokenized corpus (``windows-<hash>.npz``, independent of
    ``n_excerpts``, the seed and the cap), then the selection (``<fingerprint>.npz``).  ``documents`` is
    only called when the first level misses.  ``stop_after_windows`` stops reading documents once that
    many (capped) windows are collected, for streamed corpora too large to read whole.
    """
    from bench.assets import atomic_write_bytes, cache_root, file_lock

    tok_fp = tokenizer_fingerprint(tokenizer)
    key = {
        "dataset": dataset_key,
        "tokenizer": tok_fp,
        "n_excerpts": int(n_excerpts),
        "excerpt_len": int(excerpt_len),
        "seed": int(seed),
        "max_windows_per_document": max_windows_per_document,
        "stop_after_windows": stop_after_windows,
        "windows_version": WINDOWS_VERSION,
    }
    fingerprint = stable_hash(key)
    folder = cache_root(cache_dir) / "excerpts"
    path = folder / f"{fingerprint}.npz"
    loaded = _load(path)
    if loaded is not None:
        return ExcerptSet(token_ids=loaded[0], fingerprint=fingerprint, description=loaded[1])

    corpus_key = {
        "dataset": dataset_key,
        "tokenizer": tok_fp,
        "excerpt_len": int(excerpt_len),
        # reading stops at a count of capped windows: the cap then matters to what is read
        "stop_after_windows": stop_after_windows,
        "cap_while_reading": max_windows_per_document if stop_after_windows is not None else None,
        "windows_version": WINDOWS_VERSION,
    }
    corpus_path = folder / f"windows-{stable_hash(corpus_key)}.npz"
    corpus = _load_corpus(corpus_path)
    if corpus is None:
        with file_lock(corpus_path):  # parallel jobs on one corpus read and tokenize it once
            corpus = _load_corpus(corpus_path)  # another process may have written it while we waited
            if corpus is None:
                corpus = _tokenize_corpus(
                    documents(), tokenizer, excerpt_len, max_windows_per_document, stop_after_windows
                )
                buf = io.BytesIO()
                grid, offsets, doc_ids = corpus
                np.savez(buf, grid=grid, offsets=offsets, doc_ids=_json_bytes(doc_ids), key=_json_bytes(corpus_key))
                atomic_write_bytes(corpus_path, buf.getvalue())

    token_ids, doc_index, starts, counts = _select(
        *corpus,
        n_excerpts=n_excerpts,
        excerpt_len=excerpt_len,
        seed=seed,
        max_windows_per_document=max_windows_per_document,
        n_excerpts_key=n_excerpts_key,
    )
    doc_ids = corpus[2]
    description = {
        "name": name,
        "n_excerpts": int(n_excerpts),
        "excerpt_len": int(excerpt_len),
        "seed": int(seed),
        "documents": len(doc_ids),
        "windows_available": int(counts["available"]),
        "windows_per_source": counts["per_source"],
        "excerpts_per_source": counts["chosen_per_source"],
        "key": key,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        token_ids=token_ids.astype(np.int32 if token_ids.max(initial=0) < 2**31 else np.int64),
        doc_index=doc_index.astype(np.int32),
        start=starts.astype(np.int64),
        doc_ids=_json_bytes(doc_ids),
        meta=_json_bytes(description),
    )
    atomic_write_bytes(path, buf.getvalue())
    return ExcerptSet(token_ids=token_ids, fingerprint=fingerprint, description=description)


def excerpt_origins(excerpts: ExcerptSet, cache_dir: str | Path | None = None) -> list[tuple[str, int]]:
    """``(doc_id, start token)`` of each excerpt, read back from the excerpt cache."""
    from bench.assets import cache_root

    path = cache_root(cache_dir) / "excerpts" / f"{excerpts.fingerprint}.npz"
    with np.load(path) as data:
        doc_ids = json.loads(data["doc_ids"].tobytes())
        return [(doc_ids[int(d)], int(s)) for d, s in zip(data["doc_index"], data["start"], strict=True)]


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def _load(path: Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return data["token_ids"].astype(np.int64), json.loads(data["meta"].tobytes())
    except NPZ_READ_ERRORS:
        return None  # unreadable (truncated, empty) or from an older layout: rebuild


def _load_corpus(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return data["grid"], data["offsets"], json.loads(data["doc_ids"].tobytes())
    except NPZ_READ_ERRORS:
        return None


def _tokenize_corpus(
    documents: Iterable[tuple[str, str]],
    tokenizer: Any,
    excerpt_len: int,
    max_windows_per_document: int | None,
    stop_after_windows: int | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every window of every document: ``grid`` (windows, len), ``offsets`` (docs + 1), doc ids."""
    doc_ids: list[str] = []
    grids: list[np.ndarray] = []
    offsets = [0]
    capped_total = 0
    for doc_id, ids in tokenize_documents(tokenizer, documents):
        n_win = len(ids) // excerpt_len
        if n_win == 0:
            continue
        grid = ids[: n_win * excerpt_len].reshape(n_win, excerpt_len)
        grids.append(grid.astype(np.int32) if grid.max(initial=0) < 2**31 else grid)
        offsets.append(offsets[-1] + n_win)
        doc_ids.append(doc_id)
        capped_total += n_win if max_windows_per_document is None else min(n_win, max_windows_per_document)
        if stop_after_windows is not None and capped_total >= stop_after_windows:
            break
    grid_all = np.concatenate(grids) if grids else np.zeros((0, excerpt_len), dtype=np.int32)
    return grid_all, np.asarray(offsets, dtype=np.int64), doc_ids


def _select(
    grid: np.ndarray,
    offsets: np.ndarray,
    doc_ids: list[str],
    *,
    n_excerpts: int,
    excerpt_len: int,
    seed: int,
    max_windows_per_document: int | None,
    n_excerpts_key: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Cap each document (seeded subset), then draw ``n_excerpts`` windows without replacement."""
    rows: list[np.ndarray] = []
    per_source: dict[str, int] = {}
    for d, doc_id in enumerate(doc_ids):
        lo, hi = int(offsets[d]), int(offsets[d + 1])
        n_win = hi - lo
        chosen = np.arange(n_win)
        if max_windows_per_document is not None and n_win > max_windows_per_document:
            doc_rng = np.random.default_rng([seed, d, 0x5EED])
            chosen = np.sort(doc_rng.choice(n_win, size=max_windows_per_document, replace=False))
        rows.append(lo + chosen)
        source = doc_id.split("/", 1)[0]
        per_source[source] = per_source.get(source, 0) + len(chosen)
    candidates = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    total = len(candidates)
    if total < n_excerpts:
        raise UserError(
            f"{n_excerpts_key}={n_excerpts} is more than the {total} windows of {excerpt_len} tokens "
            f"available in this dataset: use {n_excerpts_key}<={total} or a larger corpus"
        )
    picked = candidates[np.random.default_rng([seed, 0xC401CE]).choice(total, size=n_excerpts, replace=False)]
    doc_index = np.searchsorted(offsets, picked, side="right") - 1
    starts = (picked - offsets[doc_index]) * excerpt_len
    chosen_sources: dict[str, int] = {}
    for d in doc_index:
        src = doc_ids[int(d)].split("/", 1)[0]
        chosen_sources[src] = chosen_sources.get(src, 0) + 1
    counts = {"available": total, "per_source": per_source, "chosen_per_source": chosen_sources}
    return grid[picked].astype(np.int64), doc_index, starts, counts


def check_positive(name: str, value: Any, minimum: int = 1) -> None:
    """Shared ``__post_init__`` check: an int >= ``minimum`` (ValueError naming the field)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def path_exists_or_raise(path: str, field: str) -> None:
    if not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{field}: no such file {path!r}")


__all__ = [
    "WINDOWS_VERSION",
    "check_positive",
    "path_exists_or_raise",
    "decode_bytes",
    "excerpt_origins",
    "make_excerpt_set",
    "read_text",
    "stable_hash",
    "tokenize_documents",
    "tokenizer_fingerprint",
]


class DocumentCorpus:
    """``excerpts()`` for a dataset that lists its documents with ``documents()`` (text files, the
    offline corpus); subclasses are dataclasses with the fields read below."""

    name: str
    n_excerpts: int
    excerpt_len: int
    max_windows_per_document: int | None
    cache_dir: str | None

    def documents(self) -> Any:
        raise NotImplementedError

    def dataset_key(self) -> dict[str, Any]:
        raise NotImplementedError

    def excerpts(self, tokenizer: Any, seed: int) -> ExcerptSet:
        return make_excerpt_set(
            name=self.name,
            documents=self.documents,
            dataset_key=self.dataset_key(),
            tokenizer=tokenizer,
            n_excerpts=self.n_excerpts,
            excerpt_len=self.excerpt_len,
            seed=seed,
            max_windows_per_document=self.max_windows_per_document,
            cache_dir=self.cache_dir,
        )
