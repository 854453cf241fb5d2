"""The shared caches under several processes at once (sweep jobs, shards, Ray workers on one machine).

Every test starts REAL processes ('spawn') on one cache folder and makes them overlap for certain: the
processes leave marker files at the point where each has missed the cache, and whoever does the work
(answers the request, mines the layer) waits for all of them first -- so without the inter-process locks
the work would be done once per process, and the assertions (work done exactly once, every process
gets the same answer) would fail.  No sleeps, no timing assumptions: waits are for files, with a
generous deadline that only matters when something is broken.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_servers import FakeLLMServer

KEY = "sk-concurrency-test-0123456789"
DEADLINE_S = 60.0
N_PROCS = 2


def wait_for(folder: Path, count: int, pattern: str = "*") -> bool:
    """Wait until ``folder`` holds ``count`` files matching ``pattern`` (the deadline only catches a bug)."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if len(list(folder.glob(pattern))) >= count:
            return True
        time.sleep(0.02)
    return False


def is_locked(path: Path) -> bool:
    """Whether another process holds the ``filelock`` lock on ``path`` right now."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def spawn(target: Any, *args: Any) -> list[Any]:
    """Run ``target(tag, *args)`` in N_PROCS spawned processes; all must exit cleanly."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(f"p{i}", *args)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * N_PROCS, f"worker exit codes {codes}"
    return procs


# ---------------------------------------------------------------------------------------------------
# The response cache: in-flight requests are claimed across processes
# ---------------------------------------------------------------------------------------------------
def _llm_worker(tag: str, base_url: str, cache: str, markers: str, out: str, n: int, reverse: bool) -> None:
    os.environ["OPENAI_API_KEY"] = KEY
    from bench.llm.cache import ResponseCache
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.protocols import ChatMessage, GenerationRequest

    real_claim = ResponseCache.claim

    def claim(self: Any, key: str) -> Any:
        Path(markers, f"{tag}-{key}").touch()  # this process missed the cache and is about to claim the key
        return real_claim(self, key)

    ResponseCache.claim = claim  # type: ignore[method-assign]
    model = OpenAIChatModel(model="gpt-4o-mini", base_url=base_url, cache_dir=cache, concurrency=2 * n)
    order = range(n - 1, -1, -1) if reverse else range(n)
    gens = model.generate(
        [GenerationRequest(messages=(ChatMessage("user", f"REPLY: answer {i}"),), max_tokens=8) for i in order]
    )
    stats = model.stats
    result = {
        "texts": {str(i): g.text for i, g in zip(order, gens, strict=True)},
        "calls": stats.calls,
        "cache_hits": stats.cache_hits,
    }
    Path(out, f"{tag}.json").write_text(json.dumps(result))


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as srv:
        yield srv


def test_two_processes_asking_the_same_requests_pay_once(server: FakeLLMServer, tmp_path: Path) -> None:
    """Two processes x the same N uncached requests -> exactly N requests reach the server; the process
    that waited reads the other's answers from the cache (counted as hits, not calls)."""
    n = 6
    markers, out = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    out.mkdir()
    held: list[bool] = []

    def responder(body: dict[str, Any]) -> str:
        held.append(wait_for(markers, N_PROCS * n))  # both processes claim every key before any answer exists
        return body["messages"][-1]["content"].removeprefix("REPLY: ")

    server.responder = responder
    spawn(_llm_worker, server.base_url, str(tmp_path / "cache"), str(markers), str(out), n, True)
    results = [json.loads((out / f"p{i}.json").read_text()) for i in range(N_PROCS)]
    assert server.count("/v1/chat/completions") == n and len(held) == n and all(held)
    assert all(r["texts"] == {str(i): f"answer {i}" for i in range(n)} for r in results)
    assert sum(r["calls"] for r in results) == n  # paid once in all
    assert sum(r["cache_hits"] for r in results) == n  # the other process's answers, read from the cache
    assert not list((tmp_path / "cache" / "inflight").rglob("*.lock"))  # answered: no lock file left behind


def test_twin_jobs_in_one_call_are_sent_once(server: FakeLLMServer, tmp_path: Path, monkeypatch) -> None:
    """The same claim de-duplicates two identical requests of one process (one is a cache hit)."""
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.protocols import ChatMessage, GenerationRequest

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model = OpenAIChatModel(model="gpt-4o-mini", base_url=server.base_url, cache_dir=str(tmp_path))
    request = GenerationRequest(messages=(ChatMessage("user", "REPLY: same"),), max_tokens=8)
    gens = model.generate([request, request])
    assert [g.text for g in gens] == ["same", "same"]
    assert server.count("/v1/chat/completions") == 1
    assert model.stats.calls == 1 and model.stats.cache_hits == 1


# ---------------------------------------------------------------------------------------------------
# The record cache: one process mines a layer, the others wait and load it
# ---------------------------------------------------------------------------------------------------
class EmbeddingSubject:
    """A tiny in-process "model" in numpy (activations = a seeded embedding of each token), so the
    spawned processes need not import torch: the cache's locking does not depend on the model."""

    width, vocab = 16, 50

    def __init__(self, markers: str, tag: str) -> None:
        from bench.protocols import SubjectInfo

        self.info = SubjectInfo("embedding-toy", None, None, "float32", "toy", "embedding", 2, self.width)
        self.markers, self.tag = Path(markers), tag

    def mine_layer(self, excerpts: Any, layer: int, top_k: int, random_k: int, seed: int) -> Any:
        import numpy as np

        from bench.subject.mining import MinedLayer

        (self.markers / f"mined-{self.tag}").touch()
        wait_for(self.markers, N_PROCS, "missed-*")  # every process missed the cache before anything is saved
        emb = np.random.default_rng([seed, layer]).standard_normal((self.vocab, self.width)).astype(np.float32)
        acts = emb[excerpts.token_ids]  # (n, L, units)
        top = np.argsort(-acts.max(axis=1), axis=0, kind="stable")[:top_k]  # (k, units)
        chosen = np.random.default_rng(seed).choice(len(acts), size=random_k, replace=False)
        flat = acts.reshape(-1, self.width).astype(np.float64)
        return MinedLayer(
            layer=layer,
            top_indices=top.astype(np.int64),
            top_max=np.take_along_axis(acts.max(axis=1), top, axis=0),
            top_acts=np.stack([acts[top[:, u], :, u] for u in range(self.width)], axis=1),
            random_indices=chosen.astype(np.int64),
            random_acts=acts[chosen].transpose(0, 2, 1),
            count=flat.shape[0],
            mean=flat.mean(axis=0),
            variance=flat.var(axis=0),
            skewness=np.zeros(self.width),
            kurtosis=np.zeros(self.width),
        )

    def token_strings(self, ids: Any) -> dict[int, str]:
        return {int(t): f"tok{int(t)}" for t in set(ids.ravel().tolist())}


def _mine_worker(tag: str, cache: str, markers: str, out: str) -> None:
    import numpy as np

    from bench.protocols import ExcerptSet
    from bench.subject import record_cache

    real_load = record_cache._load

    def load(path: Path, key: Any) -> Any:
        found = real_load(path, key)
        if found is None:
            Path(markers, f"missed-{tag}").touch(exist_ok=True)
        return found

    record_cache._load = load
    ids = np.random.default_rng(12).integers(0, EmbeddingSubject.vocab, size=(10, 8))
    excerpts = ExcerptSet(token_ids=ids, fingerprint="fp-concurrent")
    mined, strings = record_cache.load_or_mine_layer(EmbeddingSubject(markers, tag), excerpts, 1, 4, 3, 0, cache)
    np.savez(Path(out, f"{tag}.npz"), top_indices=mined.top_indices, top_acts=mined.top_acts)
    Path(out, f"{tag}.json").write_text(json.dumps(strings))


def test_two_processes_mine_one_layer_once(tmp_path: Path) -> None:
    """Both processes miss the record cache; one mines, the other waits on the entry's lock and loads
    the file (identical arrays); no temporary file is left beside it."""
    import numpy as np

    markers, out, cache = tmp_path / "markers", tmp_path / "out", tmp_path / "cache"
    markers.mkdir()
    out.mkdir()
    spawn(_mine_worker, str(cache), str(markers), str(out))
    assert len(list(markers.glob("missed-*"))) == N_PROCS  # both looked before either had saved
    assert len(list(markers.glob("mined-*"))) == 1  # ... and the layer was mined once
    a, b = (np.load(out / f"p{i}.npz") for i in range(N_PROCS))
    assert a["top_indices"].shape == (4, EmbeddingSubject.width)
    assert np.array_equal(a["top_indices"], b["top_indices"]) and np.array_equal(a["top_acts"], b["top_acts"])
    assert (out / "p0.json").read_text() == (out / "p1.json").read_text()
    files = [f for f in (cache / "records").iterdir() if not f.name.endswith(".lock")]
    assert [f.suffix for f in files] == [".npz"]  # no torn temporary left


# ---------------------------------------------------------------------------------------------------
# Batch state: one process submits a batch and one collects it; the other claims it and reads the cache
# ---------------------------------------------------------------------------------------------------
def _batch_worker(tag: str, base_url: str, cache: str, markers: str, out: str, n: int) -> None:
    os.environ["OPENAI_API_KEY"] = KEY
    from bench.llm.batch import PendingStore
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.protocols import ChatMessage, GenerationRequest

    real_lock, real_batch_lock = PendingStore.lock, PendingStore.batch_lock

    def lock(self: Any) -> Any:
        Path(markers, f"submit-{tag}").touch()  # about to claim saved batches or submit new ones
        return real_lock(self)

    def batch_lock(self: Any, pending: Any) -> Any:
        Path(markers, f"collect-{tag}").touch()  # about to poll and collect a batch
        return real_batch_lock(self, pending)

    PendingStore.lock, PendingStore.batch_lock = lock, batch_lock  # type: ignore[method-assign]
    model = OpenAIChatModel(model="gpt-4o-mini", base_url=base_url, cache_dir=cache, batch=True, batch_poll_s=0.01)
    gens = model.generate(
        [GenerationRequest(messages=(ChatMessage("user", f"REPLY: answer {i}"),), max_tokens=8) for i in range(n)]
    )
    stats = model.stats
    result = {"texts": [g.text for g in gens], "batches": stats.batches, "calls": stats.calls}
    Path(out, f"{tag}.json").write_text(json.dumps(result))


def test_two_processes_in_batch_mode_submit_and_collect_one_batch(server: FakeLLMServer, tmp_path: Path) -> None:
    """Both processes miss the same requests: one batch goes up (the second process claims the first's
    saved state instead of submitting), one process downloads its results, both get every answer."""
    n = 4
    markers, out, cache = tmp_path / "markers", tmp_path / "out", tmp_path / "cache"
    markers.mkdir()
    out.mkdir()
    held: list[bool] = []
    locked: list[bool] = []

    def fault_fn(_n: int, path: str, body: dict[str, Any]) -> None:
        if path == "/v1/batches":  # creating: both processes are about to submit
            held.append(wait_for(markers, N_PROCS, "submit-*"))
            # ... and the submitting one holds the provider's lock (the other cannot load the saved
            # batches until this one's state file is written)
            locked.append(is_locked(cache / "batches" / "openai.lock"))
        elif path.startswith("/v1/batches/"):  # polling: both processes are about to collect
            held.append(wait_for(markers, N_PROCS, "collect-*"))
        return None

    server.fault_fn = fault_fn
    spawn(_batch_worker, server.base_url, str(cache), str(markers), str(out), n)
    results = [json.loads((out / f"p{i}.json").read_text()) for i in range(N_PROCS)]
    assert all(held) and len(held) >= 2 and locked == [True]
    assert server.count("/v1/batches", "POST") == 1  # submitted once
    downloads = [e for e in server.log if e["path"].startswith("/v1/files/") and e["path"].endswith("/content")]
    assert len(downloads) == 1  # collected by one process
    assert sum(1 for e in server.log if e["path"].endswith("/chat/completions")) == 0
    assert all(r["texts"] == [f"answer {i}" for i in range(n)] for r in results)
    assert sum(r["batches"] for r in results) == 1 and sum(r["calls"] for r in results) == n  # paid once
    assert not list((cache / "batches").glob("*.json"))  # collected: no state left to resume


# ---------------------------------------------------------------------------------------------------
# The excerpt cache: one process reads and tokenizes a corpus, the others wait and load it
# ---------------------------------------------------------------------------------------------------
class CharTokenizer:
    """A character-level toy tokenizer with the call shape make_excerpt_set uses (no transformers)."""

    def __len__(self) -> int:
        return 128

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(128)}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[ord(c) % 128 for c in text] for text in texts]}


def _excerpt_worker(tag: str, cache: str, markers: str, out: str) -> None:
    import numpy as np

    from bench.data import windows

    real_load = windows._load_corpus

    def load(path: Path) -> Any:
        found = real_load(path)
        if found is None:
            Path(markers, f"missed-{tag}").touch(exist_ok=True)
        return found

    def documents() -> Any:
        Path(markers, f"read-{tag}").touch()
        wait_for(Path(markers), N_PROCS, "missed-*")  # every process missed the corpus cache before it is saved
        return [(f"toy/{i}", f"document number {i} " * 20) for i in range(12)]

    windows._load_corpus = load
    excerpts = windows.make_excerpt_set(
        name="toy",
        documents=documents,
        dataset_key={"name": "toy"},
        tokenizer=CharTokenizer(),
        n_excerpts=20,
        excerpt_len=16,
        seed=0,
        max_windows_per_document=None,
        cache_dir=cache,
    )
    np.save(Path(out, f"{tag}.npy"), excerpts.token_ids)


def test_two_processes_tokenize_one_corpus_once(tmp_path: Path) -> None:
    import numpy as np

    markers, out, cache = tmp_path / "markers", tmp_path / "out", tmp_path / "cache"
    markers.mkdir()
    out.mkdir()
    spawn(_excerpt_worker, str(cache), str(markers), str(out))
    assert len(list(markers.glob("missed-*"))) == N_PROCS  # both looked before either had saved
    assert len(list(markers.glob("read-*"))) == 1  # ... and the corpus was read and tokenized once
    a, b = (np.load(out / f"p{i}.npy") for i in range(N_PROCS))
    assert a.shape == (20, 16) and np.array_equal(a, b)
    assert not list((cache / "excerpts").glob("*.tmp"))  # no torn temporary left


def test_a_killed_claimant_leaves_no_lock_behind(tmp_path: Path) -> None:
    """kill -9 of a process holding a key's claim mid-request: the kernel drops its lock, the next process
    takes the key (and sends it: nothing was cached), and finishing tidies the lock file."""
    import asyncio
    import signal
    import subprocess
    import sys

    from bench.llm.cache import ResponseCache

    key = "ab" * 32
    script = (
        "import asyncio, sys\n"
        "from bench.llm.cache import ResponseCache\n"
        "async def main():\n"
        "    async with ResponseCache(sys.argv[1]).claim(sys.argv[2]):\n"
        "        print('claimed', flush=True)\n"
        "        sys.stdin.read()  # hold the claim until killed\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), key], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "claimed"
        cache = ResponseCache(tmp_path)
        assert is_locked(cache.lock_path(key))  # held by the child
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()

    async def take() -> Any:
        async with cache.claim(key) as hit:
            cache.set(key, {"result": "mine", "usage": {}})
            return hit

    assert asyncio.run(asyncio.wait_for(take(), DEADLINE_S)) is None  # taken; nothing cached: this one sends
    assert cache.get(key) == {"result": "mine", "usage": {}} and not cache.lock_path(key).exists()


def test_a_lock_folder_that_cannot_be_written_does_not_fail_requests(
    server: FakeLLMServer, tmp_path: Path, monkeypatch, caplog
) -> None:
    """The claim is an optimisation of spending: when its lock file cannot be created (a full disk),
    the request is sent anyway and one warning names the cache folder."""
    from bench.llm.cache import INFLIGHT_DIR
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.protocols import ChatMessage, GenerationRequest

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / INFLIGHT_DIR).write_text("a file where the lock folder should be")
    model = OpenAIChatModel(model="gpt-4o-mini", base_url=server.base_url, cache_dir=str(tmp_path))
    requests = [GenerationRequest(messages=(ChatMessage("user", f"REPLY: r{i}"),), max_tokens=8) for i in range(2)]
    assert [g.text for g in model.generate(requests)] == ["r0", "r1"]
    assert server.count("/v1/chat/completions") == 2 and model.stats.failures == 0
    warnings = [r.getMessage() for r in caplog.records if "lock files" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0]
