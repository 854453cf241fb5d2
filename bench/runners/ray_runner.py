"""``runner.kind=ray``: a run's units on the worker actors of a Ray cluster.

Each worker actor builds the run's components from the same resolved config (``RunSettings.config``),
reads the records from the record cache (the driver mined them first, so workers never mine), and
runs the units it is handed on its own request engine (``engine.units_in_flight`` at a time, LLM
requests coalesced per backend as in one process).  Results stream back unit by unit (a Ray
streaming generator) to the driver, which alone writes the run folder -- so the run folder, resume
and MLflow work exactly as in a local run.

**Pull, not push.**  The units of a stage are cut into tasks of ``units_per_task``; one driver thread
per worker hands it the next task when the previous one has finished, so a slow worker takes fewer.

**A worker that dies loses nothing.**  Its actor restarts (``max_restarts=-1``); the units of its task
that had already streamed back are kept, the others go back into the queue and are run by whichever
worker is free -- never twice, because the driver keeps one result per unit and a retried unit's
earlier attempt produced none.  After ``max_task_retries`` deaths a unit is recorded as a transient
failure (a plain re-run retries it), never dropped.  A killed driver is an ordinary interrupted run:
re-running the command resumes from the run folder.

Ray is imported lazily; without it the run stops with one line saying which extra to install.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.errors import UserError

log = logging.getLogger(__name__)
DIE_AT_ENV = "NEURONBENCH_TEST_RAY_DIE_AT"  # tests: "<unit key>=<marker file>": a worker exits once at that unit


def mine_one_layer(config: dict[str, Any]) -> int:
    """A Ray task: mine the records of the config's (single) layer into the shared record cache."""
    from omegaconf import OmegaConf

    from bench.config import validate
    from bench.pipeline import load_records

    settings, parts = validate(OmegaConf.create(config))
    records, _ = load_records(settings, parts.subject, parts.dataset)
    return len(records)


class UnitWorker:
    """One Ray actor: the run's components and records, built once from the config."""

    def __init__(self, config: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        from bench.config import validate
        from bench.llm.budget import install as install_budget
        from bench.pipeline import UnitContext, load_records

        settings, parts = validate(OmegaConf.create(config))
        cap = settings.budget.max_usd  # split evenly: the workers together never spend more than the cap
        install_budget(None if cap is None else cap / settings.runner.workers)
        records, provenance = load_records(settings, parts.subject, parts.dataset)
        self.context = UnitContext(settings, parts, records, provenance)

    def ready(self) -> int:
        return len(self.context.records)

    def run(self, stage: str, items: list[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, result)`` per unit as each finishes (a Ray streaming generator)."""
        from bench.pipeline import TASKS, as_finished, in_flight

        task = TASKS[stage]
        die_at = os.environ.get(DIE_AT_ENV, "")

        def one(item: tuple[str, Any]) -> Any:
            key, payload = item
            if die_at and die_at.split("=", 1)[0] == key:
                marker = Path(die_at.split("=", 1)[1])
                if not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os._exit(1)  # the test's simulated crash: no cleanup, like kill -9
            return task(self.context, key, payload)

        workers = in_flight(self.context.settings, self.context.parts, len(items))
        for item, value in as_finished(one, items, workers):
            yield item[0], value


def _wait_alive(actor: Any, stop: threading.Event, timeout_s: float = 300.0) -> bool:
    """Wait until a restarting worker answers again (it rebuilds the run's components first)."""
    import time

    import ray
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=timeout_s)
            return True
        except RayActorError:
            time.sleep(0.2)  # still restarting
        except Exception:  # noqa: BLE001 - a timeout: give up on this worker
            return False
    return False


class RayRunner:
    """Hands a stage's units to the worker actors and yields their results as they arrive."""

    def __init__(self, settings: Any, run_dir: Path) -> None:
        if settings.config is None:
            raise UserError("runner=ray: the config could not be resolved for the workers; set every value explicitly")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("runner=ray needs Ray: pip install 'neuronbench[cluster]'") from None
        self.settings = settings
        self.runner = settings.runner
        self._actors: list[Any] | None = None
        self._started_ray = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(address=self.runner.address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as err:
            raise UserError(f"runner.address={self.runner.address!r}: no Ray cluster there ({err})") from None
        self._started_ray = True

    def _start(self) -> list[Any]:
        import ray

        if self._actors is not None:
            return self._actors
        self._init_ray()
        env = {k: v for k, v in os.environ.items() if k.startswith("NEURONBENCH_")}  # never API keys
        actor = ray.remote(num_cpus=self.runner.cpus_per_worker, num_gpus=self.runner.gpus_per_worker, max_restarts=-1)(
            UnitWorker
        )
        self._actors = [
            actor.options(runtime_env={"env_vars": env}).remote(self.settings.config)
            for _ in range(self.runner.workers)
        ]
        ray.get([a.ready.remote() for a in self._actors])  # build errors surface here, once
        return self._actors

    def close(self) -> None:
        import ray

        for a in self._actors or []:
            ray.kill(a)
        self._actors = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # -- mining -------------------------------------------------------------------------------------
    def premine(self) -> bool:
        """Mine each layer in its own Ray task (a GPU each) when the run reads several layers and
        ``runner.parallel_mining`` is true (null: when GPUs are reserved); the driver then finds every
        layer in the record cache.  Without GPUs one pass over all layers is cheaper than parallel
        passes, hence the default."""
        import copy

        layers = list(self.settings.units.layers or [])
        mode = self.runner.parallel_mining
        wanted = mode if mode is not None else self.runner.gpus_per_worker > 0
        if not wanted or len(layers) < 2 or self.settings.units.kind not in ("mlp_neuron", "attention_head"):
            return False
        import ray

        self._init_ray()  # no worker actors yet: the mining tasks get the CPUs / GPUs
        task = ray.remote(num_cpus=self.runner.cpus_per_worker, num_gpus=self.runner.gpus_per_worker)(mine_one_layer)
        configs = []
        for layer in layers:
            config = copy.deepcopy(self.settings.config)
            config["units"]["layers"] = [layer]
            configs.append(config)
        log.info("mining %d layers as parallel Ray tasks", len(layers))
        try:
            ray.get([task.remote(c) for c in configs])
        except Exception as err:  # noqa: BLE001 - e.g. a RayTaskError around a user error
            cause = getattr(err, "cause", None)
            raise cause if isinstance(cause, BaseException) else err from None
        return True

    # -- one stage ------------------------------------------------------------------------------------
    def map(
        self, stage: str, items: Sequence[tuple[str, Any]], lost: Callable[[str, str], Any]
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, result)`` for every item, as each arrives; ``lost(key, why)`` stands in for a unit
        whose worker died more than ``max_task_retries`` times."""
        if not items:
            return
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        actors = self._start()
        size = self.runner.units_per_task
        tasks: queue.SimpleQueue[list[tuple[str, Any]]] = queue.SimpleQueue()
        for i in range(0, len(items), size):
            tasks.put(list(items[i : i + size]))
        deaths: dict[str, int] = {}
        out: queue.SimpleQueue[tuple[str, Any] | BaseException | None] = queue.SimpleQueue()
        pending = {key for key, _ in items}
        lock = threading.Lock()
        stop = threading.Event()

        def drive(actor: Any) -> None:
            while not stop.is_set():
                with lock:
                    if not pending:
                        break
                try:
                    task = tasks.get(timeout=0.05)
                except queue.Empty:
                    continue  # another driver thread may still requeue a dead worker's units
                done: set[str] = set()
                try:
                    for ref in actor.run.options(num_returns="streaming").remote(stage, task):
                        key, value = ray.get(ref)
                        done.add(key)
                        out.put((key, value))
                except RayActorError as err:  # the worker died (or is restarting): its unfinished units go back
                    died = not isinstance(err, ActorUnavailableError)  # unavailable: it had not started them
                    retry: list[Any] = []
                    gone: list[Any] = []
                    with lock:
                        for key, payload in task:
                            if key in done:
                                continue
                            deaths[key] = deaths.get(key, 0) + int(died)
                            (gone if deaths[key] > self.runner.max_task_retries else retry).append((key, payload))
                    log.warning(
                        "a Ray worker died (%s); %d unit(s) go to another worker", type(err).__name__, len(retry)
                    )
                    for key, _ in gone:
                        out.put((key, lost(key, f"its Ray worker died {deaths[key]} times: {err}")))
                    if retry:
                        tasks.put(retry)
                    if not _wait_alive(actor, stop):
                        return  # this worker does not come back: the others take the queue
                except RayTaskError as err:  # the unit code raised (a user error): stop the run with it
                    cause = getattr(err, "cause", None)  # the unit code's own exception (Ray keeps it)
                    out.put(cause if isinstance(cause, BaseException) else err)
                    return
                except BaseException as err:  # noqa: BLE001 - handed to the consumer
                    out.put(err)
                    return

        threads = [
            threading.Thread(target=drive, args=(a,), daemon=True, name=f"ray-{i}") for i, a in enumerate(actors)
        ]
        for t in threads:
            t.start()
        try:
            while pending:
                got = out.get()
                if isinstance(got, BaseException):
                    raise got
                if got is None:
                    continue
                key, value = got
                with lock:
                    if key not in pending:  # never twice (a retried unit's first attempt produced nothing)
                        continue
                    pending.discard(key)
                yield key, value
        finally:
            stop.set()
