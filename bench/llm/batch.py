"""Opt-in batch mode: the OpenAI Batch API and Anthropic Message Batches (about half price, results
within 24 hours), resumable across process restarts.

With ``batch: true`` on an :class:`~bench.llm.openai_backend.OpenAIChatModel` or an
:class:`~bench.llm.anthropic_backend.AnthropicModel`, ``generate(requests)`` answers what it can from the
response cache and sends **every other request as one batch job** (split only above the provider's
per-batch request limit), then polls until the batch has ended:

* OpenAI: the requests go up as a JSONL file (``files.create(purpose="batch")``, one line
  ``{custom_id, method: POST, url: /v1/chat/completions, body}`` each), ``batches.create(endpoint=
  "/v1/chat/completions", completion_window="24h")``, ``batches.retrieve`` until ``completed`` /
  ``expired`` / ``cancelled`` / ``failed``, then the ``output_file_id`` and ``error_file_id`` contents.
* Anthropic: ``messages.batches.create(requests=[{custom_id, params}])``, ``messages.batches.retrieve``
  until ``processing_status == "ended"``, then ``messages.batches.results`` (JSONL).

``custom_id`` is the request's response-cache key (64 hex characters: within both APIs' limits), so
results are matched back by key, identical requests in one call go up once, and every answer lands in
the same response cache as a non-batch call would put it -- a later run (batch or not) makes no call.

**Resumable.**  Right after a batch is created -- before the first poll -- its id and custom ids are
written to ``<cache_dir>/batches/<provider>-<hash of the pending keys>.json`` (atomically).  A process
that restarts and asks for the same requests finds that file, polls the same batch and collects its
results instead of submitting again; any persisted batch of the same provider and base URL that holds
some of the missing keys is claimed the same way.  The file is deleted once the results are in the cache.
A batch the API no longer knows (HTTP 404: another account or key) is forgotten with a warning and
its requests are submitted again.  Crashing between the batch's creation and the write of its file (a
few milliseconds) would orphan it; nothing else does.

**Several processes** (sweep jobs, shards, Ray workers) sharing one cache folder submit each request once:
claiming saved batches and submitting new ones happens under ``batches/<provider>.lock`` (after re-reading
the response cache), so a process that misses the same requests as another finds the other's state file
and claims that batch instead of submitting again.  One process polls and collects a batch, holding
``<state>.lock``; the others wait (within their own ``batch_timeout_s``) and then read its answers from the
cache.  The locks are ``filelock`` (kernel) locks: a process that dies releases them.

**Errors are per request.**  A request the batch reports as failed (an HTTP error of its own, expired,
cancelled, a batch that failed validation, no result line at all) becomes a
:class:`~bench.llm._http.BackendError` for that request only -- never an empty answer, never cached --
so the pipeline records that unit as failed and a later run submits it again.  A batch still running
after ``batch_timeout_s`` raises :class:`BatchPending` (a :class:`~bench.errors.UserError`: the run
stops with one line, finished units are kept, and re-running the same command resumes polling).
``batch_timeout_s: 0`` submits, saves the id and stops at once.

**Costs.**  Each request answered through a batch counts as one call in ``Usage`` and the backend's
counters (``batches`` counts the jobs), billed at the backend's prices times ``batch_discount``
(default 0.5).  Polls and file transfers are not model calls and are not counted.

In a run, the request engine (:mod:`bench.engine`) gathers the requests of every unit in flight
(``engine.units_in_flight``) before ``Engine.run`` sends them, so one stage of all those units is ONE
batch job (split only at the provider's limits), not one per unit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from bench.errors import UserError

if TYPE_CHECKING:
    from bench.llm._http import Engine, Job, Outcome

_log = logging.getLogger(__name__)
STATE_FORMAT = 1
STATE_DIR = "batches"


class BatchPending(UserError):
    """A batch still running after ``batch_timeout_s``; its id is saved, a re-run collects it."""


class ItemResult(NamedTuple):
    """One request's line of a batch's results: the raw answer, or an error (status, message)."""

    raw: Any
    status: int | None = None
    error: str | None = None
    transient: bool = False  # expired, cancelled, overloaded, 429/5xx: a re-run submits it again


TRANSIENT_ANTHROPIC_ERRORS = ("api_error", "overloaded_error", "rate_limit_error", "timeout_error")


def _transient_status(status: int | None) -> bool:
    return status is not None and (status in (408, 429) or status >= 500)


class BatchStatus(NamedTuple):
    ended: bool
    status: str
    info: Any  # the provider's batch object


Call = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BatchAPI(Protocol):
    """A provider's batch endpoints (all SDK calls go through ``call``: the engine's retries)."""

    provider: str
    base_url: str
    max_requests: int

    def parse(self, raw: Any) -> dict[str, Any]: ...

    async def submit(self, client: Any, call: Call, items: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict]: ...

    async def poll(self, client: Any, call: Call, batch_id: str) -> BatchStatus: ...

    async def results(
        self, client: Any, call: Call, status: BatchStatus
    ) -> tuple[dict[str, ItemResult], str | None]: ...


@dataclass(frozen=True)
class BatchMode:
    """What ``Engine.run(jobs, batch=...)`` needs: the provider's API, the poll interval and the timeout."""

    api: Any  # a BatchAPI
    poll_s: float = 30.0
    timeout_s: float = 25 * 3600.0


# ---------------------------------------------------------------------------------------------------
# Provider adapters
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenAIBatches:
    """The OpenAI Batch API for chat completions; ``parse`` turns a response body into the cached value."""

    base_url: str
    parse_body: Callable[[dict[str, Any]], dict[str, Any]]
    endpoint: str = "/v1/chat/completions"
    provider: str = "openai"
    max_requests: int = 50_000

    def parse(self, raw: Any) -> dict[str, Any]:
        return self.parse_body(raw)

    async def submit(self, client: Any, call: Call, items: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict]:
        lines = [
            json.dumps({"custom_id": cid, "method": "POST", "url": self.endpoint, "body": body}, ensure_ascii=False)
            for cid, body in items
        ]
        data = ("\n".join(lines) + "\n").encode()
        uploaded = await call(
            lambda: client.files.create(file=("neuronbench-batch.jsonl", data, "application/jsonl"), purpose="batch")
        )
        created = await call(
            lambda: client.batches.create(
                input_file_id=uploaded.id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata={"source": "neuronbench"},
            )
        )
        return created.id, {"input_file_id": uploaded.id}

    async def poll(self, client: Any, call: Call, batch_id: str) -> BatchStatus:
        batch = await call(lambda: client.batches.retrieve(batch_id))
        return BatchStatus(batch.status in ("completed", "expired", "cancelled", "failed"), batch.status, batch)

    async def results(self, client: Any, call: Call, status: BatchStatus) -> tuple[dict[str, ItemResult], str | None]:
        batch = status.info
        if batch.status == "failed":
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            detail = "; ".join(
                f"{e.code or 'error'}: {e.message}" + (f" (line {e.line})" if e.line is not None else "")
                for e in errors
            )
            return {}, f"the batch failed: {detail or 'no reason given'}"
        out: dict[str, ItemResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await call(lambda fid=file_id: client.files.content(fid))
            for line in content.text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    out[entry["custom_id"]] = _openai_line(entry)
        default = None if batch.status == "completed" else f"the batch ended as {batch.status}"
        return out, default


def _openai_line(entry: dict[str, Any]) -> ItemResult:
    response = entry.get("response") or {}
    status = response.get("status_code")
    if entry.get("error"):
        err = entry["error"]
        gone = err.get("code") in ("batch_expired", "batch_cancelled")  # never ran: worth another try
        return ItemResult(
            None, status, f"{err.get('message') or err} [{err.get('code')}]", gone or _transient_status(status)
        )
    if status is not None and 200 <= int(status) < 300:
        return ItemResult(response.get("body"))
    body = response.get("body") or {}
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict):
        kind = inner.get("type") or inner.get("code")
        message = f"{inner.get('message') or inner}" + (f" [{kind}]" if kind else "")
    else:
        message = str(inner)
    code = int(status) if status is not None else None
    return ItemResult(None, code, message, _transient_status(code))


@dataclass(frozen=True)
class AnthropicBatches:
    """Anthropic Message Batches; ``parse`` turns a result's ``Message`` into the cached value."""

    base_url: str
    parse_message: Callable[[Any], dict[str, Any]]
    provider: str = "anthropic"
    max_requests: int = 100_000

    def parse(self, raw: Any) -> dict[str, Any]:
        return self.parse_message(raw)

    async def submit(self, client: Any, call: Call, items: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict]:
        requests = [{"custom_id": cid, "params": body} for cid, body in items]
        created = await call(lambda: client.messages.batches.create(requests=requests))
        return created.id, {}

    async def poll(self, client: Any, call: Call, batch_id: str) -> BatchStatus:
        batch = await call(lambda: client.messages.batches.retrieve(batch_id))
        return BatchStatus(batch.processing_status == "ended", batch.processing_status, batch)

    async def results(self, client: Any, call: Call, status: BatchStatus) -> tuple[dict[str, ItemResult], str | None]:
        batch_id = status.info.id

        async def fetch() -> dict[str, ItemResult]:
            out: dict[str, ItemResult] = {}
            decoder = await client.messages.batches.results(batch_id)
            async for item in decoder:
                result = item.result
                if result.type == "succeeded":
                    out[item.custom_id] = ItemResult(result.message)
                elif result.type == "errored":
                    err = getattr(result.error, "error", None)
                    kind = getattr(err, "type", "error")
                    message = f"{getattr(err, 'message', err)} [{kind}]"
                    out[item.custom_id] = ItemResult(None, None, message, kind in TRANSIENT_ANTHROPIC_ERRORS)
                else:  # canceled, expired
                    out[item.custom_id] = ItemResult(None, None, f"the request was {result.type} before it ran", True)
            return out

        return await call(fetch), None


# ---------------------------------------------------------------------------------------------------
# Persisted pending batches
# ---------------------------------------------------------------------------------------------------
@dataclass
class Pending:
    """One submitted batch, as saved on disk."""

    path: Path
    batch_id: str
    custom_ids: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


class PendingStore:
    """``<cache_dir>/batches/*.json``: the batches of one provider + base URL not yet collected."""

    def __init__(self, directory: Path, provider: str, base_url: str) -> None:
        self.directory = directory
        self.provider = provider
        from bench.tracking.redact import redact_text

        self.base_url = redact_text(base_url)  # the state file must not hold a key given as URL userinfo

    def load(self) -> list[Pending]:
        """This provider's saved batches, oldest first; unreadable files are skipped with a warning."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob(f"{self.provider}-*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                _log.warning("ignoring unreadable batch state %s (%s)", path, err)
                continue
            if data.get("format") != STATE_FORMAT or data.get("base_url") != self.base_url:
                continue
            found.append(Pending(path, data["batch_id"], list(data["custom_ids"]), data, resumed=True))
        found.sort(key=lambda p: p.data.get("created_at", 0))
        return found

    def save(self, batch_id: str, custom_ids: Sequence[str], label: str, extra: dict[str, Any]) -> Pending:
        digest = hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()[:24]
        path = self.directory / f"{self.provider}-{digest}.json"
        data = {
            "format": STATE_FORMAT,
            "provider": self.provider,
            "base_url": self.base_url,
            "backend": label,
            "batch_id": batch_id,
            "created_at": time.time(),
            "custom_ids": list(custom_ids),
            **extra,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        with tmp.open("w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return Pending(path, batch_id, list(custom_ids), data)

    def forget(self, pending: Pending) -> None:
        """Delete a collected batch's state file (and its lock file: a process still waiting on the old
        lock finds the state gone and reads the answers from the cache)."""
        for path in (pending.path, self._lock_path(pending)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def lock(self) -> Any:
        """The inter-process lock held while claiming saved batches and submitting new ones, so that two
        processes missing the same requests submit them once: the second finds the first's state file."""
        from filelock import AsyncFileLock

        self.directory.mkdir(parents=True, exist_ok=True)
        return AsyncFileLock(str(self.directory / f"{self.provider}.lock"))

    def batch_lock(self, pending: Pending) -> Any:
        """The inter-process lock of one saved batch, held while it is polled and collected."""
        from filelock import AsyncFileLock

        return AsyncFileLock(str(self._lock_path(pending)))

    def _lock_path(self, pending: Pending) -> Path:
        return pending.path.with_suffix(".lock")


# ---------------------------------------------------------------------------------------------------
# The batch run
# ---------------------------------------------------------------------------------------------------
class _Lost(Exception):
    """A persisted batch the API does not know (404): forget it and submit its requests again."""


async def run_batch(engine: Engine, jobs: Sequence[Job], mode: BatchMode) -> list[Outcome]:
    """Answer ``jobs`` (all cache misses) through batch jobs; one :class:`Outcome` per job, in order."""
    from bench.llm._http import BackendError, Outcome

    api = mode.api
    assert engine.cache.directory is not None, "batch mode needs the response cache"
    store = PendingStore(engine.cache.directory / STATE_DIR, api.provider, api.base_url)
    positions: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        positions.setdefault(job.key, []).append(i)
    first = {key: jobs[idx[0]] for key, idx in positions.items()}
    answers: dict[str, Outcome] = {}

    remaining = list(positions)  # in request order
    claims: list[Pending] = []
    async with store.lock():  # other processes sharing the cache claim and submit one at a time (module doc)
        remaining = await _cached(engine, remaining, answers)
        for pending in await asyncio.to_thread(store.load):
            mine = set(pending.custom_ids) & set(remaining)
            if mine:
                _log.info(
                    "%s: resuming batch %s (%d requests)", engine.label, pending.batch_id, len(pending.custom_ids)
                )
                claims.append(pending)
                remaining = [k for k in remaining if k not in mine]
        claims += await _submit(engine, api, store, remaining, first, answers)
        remaining = []

    for _round in range(2):  # a second round only for the requests of batches the API had lost
        if remaining:
            async with store.lock():
                remaining = await _cached(engine, remaining, answers)
                claims += await _submit(engine, api, store, remaining, first, answers)
        done = await asyncio.gather(*(_collect(engine, store, p, mode) for p in claims), return_exceptions=True)
        stop: BaseException | None = None
        lost: list[str] = []
        for pending, got in zip(claims, done, strict=True):
            if isinstance(got, _Lost):
                lost += [k for k in pending.custom_ids if k in positions and k not in answers]
            elif isinstance(got, BackendError):  # polling failed for good: the batch may still finish
                mine = [k for k in pending.custom_ids if k in positions and k not in answers]
                answers.update((key, Outcome(None, error=got)) for key in mine)
                engine.counters.add(failures=len(mine))
            elif isinstance(got, BaseException):  # a timeout (BatchPending), a crash, a cancellation
                stop = stop or got
            else:
                answers.update((key, outcome) for key, outcome in got.items() if key in positions)
        if stop is not None:
            raise stop
        remaining, claims = lost, []
        if not remaining:
            break

    out: list[Outcome] = [Outcome(None)] * len(jobs)
    for key, idx in positions.items():
        outcome = answers.get(key) or Outcome(
            None, error=BackendError(f"{engine.label}: no batch answered this request", retryable=True)
        )
        for n, i in enumerate(idx):
            # identical requests went up once: the copies spent nothing
            out[i] = outcome if n == 0 or outcome.error is not None else Outcome(outcome.value, cached=True)
    return out


async def _cached(engine: Engine, keys: list[str], answers: dict[str, Outcome]) -> list[str]:
    """The ``keys`` still missing from the response cache; the others go into ``answers`` as cache hits
    (another process collected them while this one waited for the lock)."""
    from bench.llm._http import Outcome

    missing = []
    for key in keys:
        value = await asyncio.to_thread(engine.cache.get, key)
        if value is None:
            missing.append(key)
        else:
            answers[key] = Outcome(value, cached=True)
            engine.counters.add(cache_hits=1)
    return missing


async def _submit(
    engine: Engine,
    api: Any,
    store: PendingStore,
    keys: list[str],
    first: dict[str, Job],
    answers: dict[str, Outcome],
) -> list[Pending]:
    """Submit ``keys`` as batch jobs (split at the provider's limit) and save each one's state file."""
    from bench.llm._http import BackendError, Outcome

    claims = []
    for start in range(0, len(keys), api.max_requests):
        chunk = keys[start : start + api.max_requests]
        try:
            batch_id, extra = await api.submit(engine.client, engine.call, [(key, first[key].request) for key in chunk])
        except BackendError as err:
            for key in chunk:
                answers[key] = Outcome(None, error=err)
            engine.counters.add(failures=len(chunk))
            continue
        engine.counters.add(batches=1)
        claims.append(await asyncio.to_thread(store.save, batch_id, chunk, engine.label, extra))
    return claims


async def _collect(engine: Engine, store: PendingStore, pending: Pending, mode: BatchMode) -> dict[str, Outcome]:
    """Collect one batch while holding its lock: one process polls it, the others wait (bounded by their own
    ``batch_timeout_s``) and then find its answers in the cache."""
    from filelock import Timeout

    loop = asyncio.get_running_loop()
    deadline = loop.time() + mode.timeout_s
    lock = store.batch_lock(pending)
    try:
        await lock.acquire(timeout=max(mode.timeout_s, 0.0))
    except Timeout:
        raise BatchPending(
            f"{engine.label}: batch {pending.batch_id} is being collected by another process after "
            f"{mode.timeout_s:g} s (batch_timeout_s); re-run the same command later (nothing is submitted twice)"
        ) from None
    try:
        if not pending.path.exists():  # another process collected it and forgot its state
            return await _from_cache(engine, pending)
        return await _poll_and_collect(engine, store, pending, mode, deadline)
    finally:
        await lock.release()


async def _from_cache(engine: Engine, pending: Pending) -> dict[str, Outcome]:
    from bench.llm._http import BackendError, Outcome

    answers: dict[str, Outcome] = {}
    await _cached(engine, list(pending.custom_ids), answers)
    for key in pending.custom_ids:
        answers.setdefault(
            key,
            Outcome(
                None,
                error=BackendError(
                    f"{engine.label}: batch {pending.batch_id} was collected by another process without an "
                    "answer for this request",
                    retryable=True,
                ),
            ),
        )
    return answers


async def _poll_and_collect(
    engine: Engine, store: PendingStore, pending: Pending, mode: BatchMode, deadline: float
) -> dict[str, Outcome]:
    """Poll one batch until it ends, cache its answers, forget its state; answers by custom id."""
    from bench.llm._http import BackendError, Outcome

    api = mode.api
    loop = asyncio.get_running_loop()
    while True:
        try:
            status = await api.poll(engine.client, engine.call, pending.batch_id)
        except BackendError as err:
            if err.status == 404 and pending.resumed:
                _log.warning(
                    "%s: batch %s from %s is unknown to the API (%s); submitting its requests again",
                    engine.label,
                    pending.batch_id,
                    pending.path,
                    err,
                )
                await asyncio.to_thread(store.forget, pending)
                raise _Lost(pending.custom_ids) from err
            raise
        if engine.batch_hook is not None:
            engine.batch_hook(pending.batch_id, status.status)
        if status.ended:
            break
        left = deadline - loop.time()
        if left <= 0:
            raise BatchPending(
                f"{engine.label}: batch {pending.batch_id} is still {status.status} after "
                f"{mode.timeout_s:g} s (batch_timeout_s); its id is saved in {pending.path} -- re-run the "
                "same command later to collect its results (nothing is submitted twice)"
            )
        await engine.sleep(min(mode.poll_s, left))
    items, default_error = await api.results(engine.client, engine.call, status)
    answers: dict[str, Outcome] = {}
    where = f"batch {pending.batch_id}"
    for key in pending.custom_ids:
        item = items.get(key)
        if item is not None and item.error is None:
            try:
                value = api.parse(item.raw)
            except Exception as err:  # noqa: BLE001 - a malformed answer fails this request only
                item = ItemResult(None, None, f"malformed answer ({type(err).__name__}: {err})", True)
            else:
                try:
                    await asyncio.to_thread(engine.cache.set, key, value)
                except Exception as err:  # noqa: BLE001 - a full disk must not lose the answer now
                    _log.warning("%s: could not write the response cache (%s)", engine.label, err)
                engine.counters.add(calls=1)
                engine._account(value.get("usage") or {}, batched=True)
                answers[key] = Outcome(value, cached=False, attempts=1, batched=True)
                continue
        if item is None:
            message = default_error or f"the batch ended ({status.status}) without a result for this request"
            item = ItemResult(None, None, message, True)  # expired, cancelled or lost: worth another try
        engine.counters.add(calls=1, failures=1)
        status_text = f"HTTP {item.status}: " if item.status is not None else ""
        answers[key] = Outcome(
            None,
            attempts=1,
            batched=True,
            error=BackendError(
                f"{engine.label}: {where}: {status_text}{item.error}", status=item.status, retryable=item.transient
            ),
        )
    await asyncio.to_thread(store.forget, pending)
    return answers


__all__ = ["AnthropicBatches", "BatchMode", "BatchPending", "OpenAIBatches", "PendingStore", "run_batch"]
