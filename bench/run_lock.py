"""One process at a time per run folder, and per fresh MLflow sqlite store.

Two runs of one configuration (two terminals, a launcher that starts a job twice) share a run folder:
both would run every unit, append every line of ``results.jsonl`` twice and write into one MLflow run.
So a run holds an OS file lock (``filelock``: ``flock`` on POSIX, released by the kernel when the
process dies, so a ``kill -9`` leaves no stale lock) on ``<run folder>/.lock`` from before it reads
the folder until its sinks are closed; a second run stops at once with one line.

Separately, MLflow creates a fresh sqlite store by running its migrations; two processes doing that at
once (a sweep's parallel jobs in a fresh folder) crash one of them, so creating the store and the
run is serialised by :func:`store_setup_lock` (a lock file beside the database).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import UserError

LOCK_FILE = ".lock"
STORE_SETUP_TIMEOUT_S = 600.0  # migrations take seconds; this only bounds a wait on a hung process
# Locks this process took, by path.  A job that stopped with an exception before releasing its lock
# (the traceback keeps it alive) must not block the next job of the same process on that folder: jobs
# of one process run one after another, so a lock this process already holds is stale and taken over.
_HELD: dict[str, Any] = {}


def lock_run_folder(run_dir: Path, shard: Any = None) -> Any:
    """Take the run folder's lock (a held ``filelock.FileLock``; call ``release()`` when done) or stop
    with a :class:`~bench.errors.UserError` when another process holds it.  A shard
    (:class:`bench.run.shards.Shard`) takes its own lock: the shards of one run share the folder."""
    from filelock import FileLock, Timeout

    from bench.run.folder import RunFolder

    path = RunFolder(Path(run_dir)).lock_of(shard)
    stale = _HELD.pop(str(path.resolve()), None)
    if stale is not None:  # this process ran the folder before and stopped without releasing: take over
        stale.release(force=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"run folder {run_dir} is in use: another neuronbench run of this configuration"
            f"{f' (shard {shard})' if shard is not None else ''} is in progress "
            f"(it holds {path}); wait for it to finish -- re-running then resumes, nothing is duplicated"
        ) from None
    except OSError as err:
        raise UserError(f"cannot lock the run folder {run_dir} ({err}); check output_dir is writable") from None
    _HELD[str(path.resolve())] = lock
    return lock


@contextlib.contextmanager
def store_setup_lock(uri: str | None) -> Iterator[None]:
    """Hold a lock beside a ``sqlite:///`` MLflow database while it is created or opened."""
    if not uri or not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db.with_name(db.name + ".lock")), timeout=STORE_SETUP_TIMEOUT_S):
        yield
