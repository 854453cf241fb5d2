"""Resume anywhere (issue 8 items 5 and 6): ``kill -9`` a real ``neuronbench run`` process at each stage --
while explaining (direct requests), while a batch job of the explainer is pending, while simulating, while
scoring (ablation) -- re-run the same command (after the last kill of a test with several units in flight),
and the run ends as if it had never been interrupted:

* ``results.jsonl`` holds one line per unit (nothing lost, nothing duplicated), and every line equals the
  uninterrupted run's (compared without ``usage``: a resumed run's usage counts only the requests *it*
  sent -- answers cached before the kill are cache hits, by :class:`bench.records.Usage`'s definition),
  and so do the run's aggregates (``summary.json`` but ``cost/...``, ``score_correlations.json``);
* no request answered before a kill is sent again: every model request the stand-in answered (directly
  or inside a batch job) over the killed and resumed processes, as a multiset of request bodies, equals
  the uninterrupted run's; the pending batch is polled again by its saved id, never resubmitted.

Kills are deterministic, without sleeps or timing races: the loopback stand-in (tests/fake_servers.py)
holds the request that marks the stage (the second explainer request; the first poll of the run's last
explainer batch; the third simulation request after the first unit's result was written) and every later
one, and the test waits for that request -- and for every answer given so far to be in the response
cache -- before SIGKILL.
Ablation makes no request: its stop point is the test-only scorer in tests/kill_points.py.

A last test runs the same configuration with several units in flight and seeded random delays per
request, so requests finish in another order: the results are the same.

The setting for units in flight is :data:`UNITS_IN_FLIGHT` (the engine renames it: change it there only).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_run
from fake_servers import FakeLLMServer, benchmark_responder
from kill_points import MARKER_ENV

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-loopback-kill9"
UNITS_IN_FLIGHT = "engine.units_in_flight"  # the override that sets how many units are in flight at once
WAIT_S = 300.0  # a bound on waiting for a stage to be reached (a loaded CI machine), never a measurement
CACHED_S = 60.0  # ... and for answers already given to reach the response cache (milliseconds, normally)

# several CLI processes killed and resumed per test: the slow tier (.ci/run runs it with -m slow)
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]


def _canon(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


class Gate:
    """The stand-in's ``fault_fn``: answers every request until ``close_when(path)`` first holds, then
    holds that request and every later one (they are never answered: their process is killed while it
    waits) until :meth:`open`.  Records the body of every chat completion it lets through (``paid``);
    ``delay(body)`` optionally delays answers (seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.paid: list[str] = []
        self.held = 0
        self.closed = False
        self.close_when: Callable[[str], bool] | None = None
        self.delay: Callable[[dict[str, Any]], float] | None = None
        self._release = threading.Event()

    def arm(self, close_when: Callable[[str], bool] | None) -> None:
        with self._lock:
            self.close_when, self.closed, self.held = close_when, False, 0
            self._release = threading.Event()

    def open(self) -> None:
        with self._lock:
            self.close_when, self.closed = None, False
            self._release.set()

    def __call__(self, n: int, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            if not self.closed and self.close_when is not None and self.close_when(path):
                self.closed = True
            hold = self.closed
            if hold:
                self.held += 1
                release = self._release
            elif path.endswith("/chat/completions"):
                self.paid.append(_canon(body))
        if hold:
            release.wait(WAIT_S)
            return {"status": 503, "message": "held until its client was killed"}  # nobody reads this answer
        if self.delay is not None:
            return {"delay": self.delay(body)}
        return None


class Stand:
    """One loopback stand-in for the module (its URL is part of the run's configuration hash)."""

    def __init__(self, server: FakeLLMServer, gate: Gate, subject: Path, corpus: Path) -> None:
        self.server, self.gate, self.subject, self.corpus = server, gate, subject, corpus

    def mark(self) -> tuple[int, int]:
        """Where the records of paid requests stand now (for :meth:`paid_since`)."""
        return len(self.gate.paid), len(self.server.batch_log)

    def paid_since(self, mark: tuple[int, int]) -> list[str]:
        """Bodies of every model request answered since ``mark``: directly, or inside a processed batch job."""
        direct, batched = mark
        return self.gate.paid[direct:] + [_canon(entry["body"]) for entry in self.server.batch_log[batched:]]

    def batches_created(self) -> int:
        return self.server.count("/v1/batches", "POST")

    def args(self, base: Path, in_flight: int = 1, explainer_batch: bool = True) -> list[str]:
        """The command line; one unit in flight unless told (the kill points below name "the second unit");
        the explainer's requests go through the Batch API (a kill can find a batch job pending) unless told."""
        backend = [
            f"{role}.llm.{key}"
            for role in ("explainer", "simulator")
            for key in (
                f"base_url={self.server.base_url}",
                "api_key_env=NB_TEST_KEY",
                "requests_per_minute=null",
                "tokens_per_minute=null",
                "max_retries=0",  # no request is retried: every request the stand-in sees is one the run paid
            )
        ]
        return [
            "run",
            "--no-progress",
            "explainer=openai",
            "simulator=openai_all_at_once_logprobs",
            *backend,
            f"explainer.llm.batch={str(explainer_batch).lower()}",
            "explainer.llm.batch_poll_s=0.001",
            "explainer.llm.batch_timeout_s=100000",
            *[o for o in tiny_run(self.subject, self.corpus) if not o.startswith("scorer=")],
            "scorer=[correlation,ablation]",
            "scorer.ablation._target_=kill_points.KillableAblation",
            "tracking=none",
            f"{UNITS_IN_FLIGHT}={in_flight}",
            f"output_dir={base / 'runs'}",
            f"cache_dir={base / 'cache'}",
        ]


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("kill9")
    subject = save_tiny_subject("llama", tmp / "tiny")
    corpus = tmp / "text.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))
    gate = Gate()
    with FakeLLMServer(api_key=KEY) as server:
        server.responder = benchmark_responder
        server.fault_fn = gate
        server.batch_polls = 2  # a batch is done at its second poll
        yield Stand(server, gate, subject, corpus)
        gate.open()


@pytest.fixture(scope="module")
def reference(stand: Stand, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: its unit lines and every request it paid for."""
    base = tmp_path_factory.mktemp("reference")
    paid, batches = stand.mark(), stand.batches_created()
    assert _main(stand.args(base), base) == 0
    run_dir = _run_dir(base)
    return {
        "results": _results(run_dir),
        "aggregates": _aggregates(run_dir),
        "paid": Counter(stand.paid_since(paid)),
        "batches": stand.batches_created() - batches,
    }


def _main(args: list[str], cwd: Path) -> int:
    from bench.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("NB_TEST_KEY", KEY)
        mp.delenv(MARKER_ENV, raising=False)
        return main(args)


def _run_dir(base: Path) -> Path:
    found = list((base / "runs").glob("*/")) if (base / "runs").is_dir() else []
    assert len(found) <= 1, found
    return found[0] if found else base / "runs" / "not-yet"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finished_lines(path: Path) -> int:
    """Complete lines of a file another process appends to (a line being written is not one yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """results.jsonl by unit key -- after checking that it holds exactly one line per unit."""
    lines = _lines(run_dir / "results.jsonl")
    keys = [json.dumps(line["unit"], sort_keys=True) for line in lines]
    duplicated = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicated, f"units written twice to results.jsonl: {duplicated}"
    return {k: line for k, line in zip(keys, lines, strict=True)}


def _without_usage(node: Any) -> Any:
    """A unit line without its ``usage`` records (what *this* process spent; see the module doc)."""
    if isinstance(node, dict):
        return {k: _without_usage(v) for k, v in node.items() if k != "usage"}
    if isinstance(node, list):
        return [_without_usage(v) for v in node]
    return node


def _differences(got: Any, want: Any, where: str = "") -> list[str]:
    """Where two JSON values differ; numbers compare with a margin far above rounding (same code on the
    same inputs gives equal numbers; the margin only keeps the test off float details)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(want) | set(got))
        return [
            d for k in keys for d in _differences(got.get(k, "<missing>"), want.get(k, "<missing>"), f"{where}.{k}")
        ]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in _differences(g, w, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool | None):
        return [] if got == pytest.approx(want, rel=1e-9, abs=1e-12) else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {str(got)[:200]} != {str(want)[:200]}"]


def _aggregates(run_dir: Path) -> dict[str, Any]:
    """What a run reports over its units, but for ``cost/...`` (see the module doc): every score's
    mean, median and bootstrap CI, counts, unparsed rates, and how scorers agree across units."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "summary": {k: v for k, v in summary.items() if not k.startswith("cost/")},
        "score_correlations": json.loads((run_dir / "score_correlations.json").read_text()),
    }


def _assert_same_run(run_dir: Path, reference: dict[str, Any]) -> None:
    """results.jsonl: one line per unit, each equal to the uninterrupted run's; the same aggregates."""
    got, want = _results(run_dir), reference["results"]
    assert sorted(got) == sorted(want)
    for key, line in want.items():
        assert line["status"] == "ok", (key, line.get("stage"), line.get("error"))
        differences = _differences(_without_usage(got[key]), _without_usage(line))
        assert not differences, f"unit {key} differs from the uninterrupted run: {differences[:10]}"
    differences = _differences(_aggregates(run_dir), reference["aggregates"])
    assert not differences, f"the run's aggregates differ from the uninterrupted run's: {differences[:10]}"


def _answers_cached(cache_dir: Path) -> int:
    """How many answers the response cache holds (read from this process while the run writes it)."""
    if not (cache_dir / "cache.db").exists():
        return 0
    import diskcache

    with diskcache.Cache(str(cache_dir)) as cache:
        return len(cache)


class Killable:
    """``neuronbench run`` in a subprocess (output to a file: a full pipe must not stall it)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
        self.log = cwd / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if k != MARKER_ENV},
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "NB_TEST_KEY": KEY,
            **env,
        }
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_until(self, condition: Callable[[], bool], what: str, limit_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + limit_s
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{what}: not reached within {limit_s:g} s:\n{self.tail()}")
            time.sleep(0.02)  # waiting for a state of the run, not measuring anything

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def tail(self) -> str:
        return self.log.read_text()[-4000:]


def _stop_at(
    stand: Stand, run: Killable, reached: Callable[[], bool], what: str, cache_dir: Path, paid0: tuple[int, int]
) -> None:
    """Wait until the run is held at the stage and every answer it got is cached; then SIGKILL it."""
    run.wait_until(reached, what)
    # Everything the stand-in answered has reached the cache (an answer still on its way when the process
    # dies would be paid again on resume; this wait keeps that window out of the test).
    run.wait_until(
        lambda: _answers_cached(cache_dir) >= len(set(stand.paid_since(paid0))),
        f"{what}: every answer given so far in the response cache (if never: an answer was paid twice)",
        CACHED_S,
    )
    run.kill()
    stand.gate.open()


def test_kill9_at_each_stage_then_resume_loses_nothing_duplicates_nothing_pays_nothing_twice(
    stand: Stand, reference: dict[str, Any], tmp_path: Path
) -> None:
    args = stand.args(tmp_path)
    cache_dir = tmp_path / "cache" / "llm"
    paid0, batches0 = stand.mark(), stand.batches_created()
    first_batch = len(stand.server.batches)

    def run_dir() -> Path:
        return _run_dir(tmp_path)

    # 1. Explaining, with a batch job pending: hold the first poll of the run's last explainer batch (its id
    #    is saved before that poll; one batch per unit today -- the earlier units are explained and written --,
    #    or one for all units once the engine fills batches across units).
    def last_explainer_batch_polled(path: str) -> bool:
        ids = list(stand.server.batches)[first_batch:]
        return len(ids) == reference["batches"] and path == f"/v1/batches/{ids[-1]}"

    stand.gate.arm(last_explainer_batch_polled)
    run = Killable(args, tmp_path, {}, "explaining")
    _stop_at(stand, run, lambda: stand.gate.held > 0, "the last explainer batch polled", cache_dir, paid0)
    assert len(_lines(run_dir() / "explanations.jsonl")) < 3 and not _lines(run_dir() / "results.jsonl")
    states = [json.loads(p.read_text()) for p in (cache_dir / "batches").glob("openai-*.json")]
    pending = list(stand.server.batches)[-1]
    assert [s["batch_id"] for s in states] == [pending], "the pending batch's id is saved before it is polled"
    polls_before = len(stand.server.log)

    # 2. Simulating: hold the third simulation request after the first unit's result was written (the second
    #    unit's simulation is under way: some of its requests answered and cached, the others held).
    seen = 0

    def third_after_first_result(path: str) -> bool:
        nonlocal seen
        if path.endswith("/chat/completions") and _finished_lines(run_dir() / "results.jsonl"):
            seen += 1
        return seen >= 3

    stand.gate.arm(third_after_first_result)
    run = Killable(args, tmp_path, {}, "simulating")
    _stop_at(stand, run, lambda: stand.gate.held > 0, "the second unit's simulation", cache_dir, paid0)
    assert len(_lines(run_dir() / "explanations.jsonl")) == 3 and len(_lines(run_dir() / "results.jsonl")) == 1
    resumed_polls = [e for e in stand.server.log[polls_before:] if e["path"] == f"/v1/batches/{pending}"]
    assert resumed_polls, "the resumed run polls the saved batch"
    assert stand.batches_created() - batches0 == reference["batches"], "no batch was submitted twice"

    # 3. Scoring, now with the two units left in flight at once (units in flight never change a run's
    #    identity): the first unit to reach the ablation scorer holds there (the test-only stop point), the
    #    other one holds there too or at its next request (held once the marker exists).
    marker = tmp_path / "ablating"
    stand.gate.arm(lambda path: marker.exists())
    in_flight = stand.args(tmp_path, in_flight=3)
    run = Killable(in_flight, tmp_path, {MARKER_ENV: str(marker)}, "scoring")
    _stop_at(stand, run, marker.exists, "the ablation scorer", cache_dir, paid0)
    assert len(_lines(run_dir() / "results.jsonl")) == 1

    # 4. The same command once more, to the end.
    stand.gate.arm(None)
    assert _main(in_flight, tmp_path) == 0
    _assert_same_run(run_dir(), reference)
    explained = [json.dumps(line["unit"]) for line in _lines(run_dir() / "explanations.jsonl")]
    assert len(explained) == 3 == len(set(explained)), "one explanation line per unit"
    paid = Counter(stand.paid_since(paid0))
    assert paid == reference["paid"], (
        f"requests paid over the killed and resumed runs differ from the uninterrupted run: "
        f"{sum((paid - reference['paid']).values())} paid twice, {sum((reference['paid'] - paid).values())} never"
    )
    assert stand.batches_created() - batches0 == reference["batches"]


def test_kill9_while_explaining_then_resume(stand: Stand, reference: dict[str, Any], tmp_path: Path) -> None:
    """Explaining with direct requests (no batch): hold the second explainer request -- the first unit is
    explained and written -- and kill; the re-run (with units in flight) sends each request once."""
    args = stand.args(tmp_path, explainer_batch=False)
    cache_dir = tmp_path / "cache" / "llm"
    paid0 = stand.mark()
    explainer_requests = 0

    def second_explainer_request(path: str) -> bool:
        nonlocal explainer_requests  # every unit is explained before any is simulated
        explainer_requests += path.endswith("/chat/completions")
        return explainer_requests >= 2

    stand.gate.arm(second_explainer_request)
    run = Killable(args, tmp_path, {}, "explaining")
    _stop_at(stand, run, lambda: stand.gate.held > 0, "the second explainer request", cache_dir, paid0)
    run_dir = _run_dir(tmp_path)
    assert len(_lines(run_dir / "explanations.jsonl")) == 1 and not _lines(run_dir / "results.jsonl")

    stand.gate.arm(None)
    assert _main(stand.args(tmp_path, in_flight=3, explainer_batch=False), tmp_path) == 0
    _assert_same_run(run_dir, reference)
    paid = Counter(stand.paid_since(paid0))
    assert paid == reference["paid"], (
        f"{sum((paid - reference['paid']).values())} requests paid twice, "
        f"{sum((reference['paid'] - paid).values())} never"
    )


def test_results_do_not_depend_on_completion_order(stand: Stand, reference: dict[str, Any], tmp_path: Path) -> None:
    """Three units in flight, every answer delayed by a seeded random time: requests finish in another
    order than in the reference run, and the results are the same."""
    stand.gate.arm(None)

    def delay(body: dict[str, Any]) -> float:
        return random.Random(hashlib.sha256(_canon(body).encode()).digest()).uniform(0.0, 0.05)

    stand.gate.delay = delay
    try:
        assert _main(stand.args(tmp_path, in_flight=3), tmp_path) == 0
    finally:
        stand.gate.delay = None
    _assert_same_run(_run_dir(tmp_path), reference)
