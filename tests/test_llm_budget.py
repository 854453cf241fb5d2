"""``budget.max_usd``: the run stops cleanly before a request would pass the cap (threads included), batch
jobs reserve before they are submitted, the CLI exits 2 with one line and keeps finished units, a re-run
with a higher cap pays nothing twice; prices from genai-prices (offline) with the config as override;
the dry run counts batch jobs per stage and says when the plan exceeds the cap."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_models import tiny_run
from fake_servers import FakeLLMServer, benchmark_responder, simulating_next_token

from bench.errors import UserError
from bench.llm import budget
from bench.llm.budget import Budget, BudgetExceeded
from bench.llm.openai_backend import OpenAIChatModel
from bench.llm.pricing import Prices, lookup, resolve
from bench.protocols import ChatMessage, GenerationRequest

KEY = "sk-budget-test-DO-NOT-LEAK-0123456789"
PRICES = {"input": 1000.0, "output": 1000.0}  # USD per 1M tokens: a request costs about a dollar


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _key_and_fresh_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NB_TEST_KEY", KEY)
    yield
    budget.install(None)  # no cap leaks into other tests


def req(text: str, max_tokens: int = 100) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", text),), max_tokens=max_tokens)


# ---------------------------------------------------------------------------------------------------
# The budget itself
# ---------------------------------------------------------------------------------------------------
def test_reserve_spend_release_and_the_one_line_message() -> None:
    b = Budget(1.0)
    held = b.reserve(0.4, "api")
    b.spend(0.3)
    b.release(held)
    assert b.state().spent == pytest.approx(0.3) and b.state().reserved == 0.0
    held = b.reserve(0.5, "api")  # 0.3 + 0.5 fits
    with pytest.raises(BudgetExceeded) as info:
        b.reserve(0.3, "openai/gpt-4o-mini")  # 0.3 spent + 0.5 in flight + 0.3 > 1.0
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError) and info.value.exit_code == 2
    for part in ("spent $0.3000", "of $1.0000", "$0.7000 remaining", "$0.5000 reserved", "up to $0.3000"):
        assert part in message, message
    assert "raise budget.max_usd and re-run" in message and "finished units are kept" in message
    b.release(held)
    assert Budget(None).reserve(1e9, "api") == 0.0  # no cap: nothing reserved, nothing refused
    b.spend(math.nan)  # unknown prices add nothing
    assert b.state().spent == pytest.approx(0.3)
    with pytest.raises(ValueError, match="max_usd"):
        Budget(-1.0)


def test_unknown_prices_under_a_cap_are_a_user_error_naming_prices() -> None:
    with pytest.raises(UserError, match="prices") as info:
        Budget(1.0).reserve(math.nan, "openai/some-model")
    assert not isinstance(info.value, BudgetExceeded)


def test_threads_never_reserve_past_the_cap() -> None:
    b = Budget(10.0)
    granted: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            try:
                held = b.reserve(0.1, "api")
            except BudgetExceeded:
                with lock:
                    refused.append(1)
                continue
            with lock:
                granted.append(held)
            b.spend(held)
            b.release(held)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) + len(refused) == 1600
    assert b.state().spent <= 10.0 + 1e-9 and 95 <= len(granted) <= 100  # 100 x 0.1 fit (float sums: >= 95)


# ---------------------------------------------------------------------------------------------------
# In the shared engine
# ---------------------------------------------------------------------------------------------------
def make(server: FakeLLMServer, tmp_path: Path, **kw: Any) -> OpenAIChatModel:
    fields: dict[str, Any] = {"model": "gpt-4o-mini", "base_url": server.base_url, "cache_dir": str(tmp_path / "c")}
    return OpenAIChatModel(**{**fields, "prices": PRICES, **kw})


def test_the_engine_stops_before_a_request_would_pass_the_cap_and_keeps_what_it_paid(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    client = make(server, tmp_path, concurrency=1)
    one = client.estimate([req("REPLY: a")]).dollars  # the upper bound reserved per request
    cap = 2.5 * one
    budget.install(cap)
    answered = []
    with pytest.raises(BudgetExceeded, match="budget.max_usd reached"):  # noqa: PT012 - until the cap stops it
        for i in range(100):
            answered.append(client.generate([req(f"REPLY: {i}")])[0].text)
    state = budget.current().state()
    assert len(answered) >= 2 and state.spent <= cap  # real answers cost less than their upper bound
    assert state.spent + one > cap  # it stopped only when the next upper bound no longer fit
    assert state.reserved == pytest.approx(0.0, abs=1e-12)  # every reservation released
    sent = server.count()
    # answered requests cost nothing again: a fresh cap of 0 still serves them from the cache
    budget.install(0.0)
    assert [g.text for g in client.generate([req("REPLY: 0"), req("REPLY: 1")])] == ["0", "1"]
    assert server.count() == sent


def test_many_threads_through_one_backend_stay_under_the_cap(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, concurrency=4)
    one = client.estimate([req("REPLY: x")]).dollars
    cap = 6 * one
    budget.install(cap)
    stopped: list[BaseException] = []

    def unit(i: int) -> None:
        try:
            client.generate([req(f"REPLY: {i}-{j}") for j in range(3)])
        except BudgetExceeded as err:
            stopped.append(err)

    threads = [threading.Thread(target=unit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stopped  # 18 requests do not fit under 6 upper bounds
    assert budget.current().state().spent <= cap
    assert client.stats.dollars == pytest.approx(budget.current().state().spent)  # every answer was charged
    assert client.stats.calls < 18 and budget.current().state().reserved == pytest.approx(0.0, abs=1e-12)


def test_a_batch_job_that_would_pass_the_cap_is_never_submitted(server: FakeLLMServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, batch=True, batch_poll_s=0.01)
    requests = [req(f"REPLY: {i}") for i in range(4)]
    whole = client.estimate(requests).dollars  # at batch prices
    budget.install(whole / 2)
    with pytest.raises(BudgetExceeded):
        client.generate(requests)
    assert server.count(path="/v1/batches") == 0 and server.count(path="/v1/files") == 0
    budget.install(whole * 1.01)
    assert [g.text for g in client.generate(requests)] == ["0", "1", "2", "3"]
    assert server.count(path="/v1/batches") == 1  # one job for the four requests
    assert 0 < budget.current().state().spent <= whole * 1.01


def test_free_backends_never_touch_the_budget(server: FakeLLMServer, tmp_path: Path) -> None:
    local = make(server, tmp_path, model="some-local-model", prices=None)  # an unlisted model on a local server
    budget.install(0.0)
    assert local.generate([req("REPLY: ok")])[0].text == "ok"
    assert budget.current().state().spent == 0.0


# ---------------------------------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------------------------------
def test_genai_prices_know_hosted_models_and_the_config_wins() -> None:
    mini = lookup("gpt-4o-mini", "openai")
    assert mini is not None and mini.input > 0 and mini.output > mini.input
    assert lookup("gpt-4o-mini-2024-07-18", "openai") == mini  # a dated snapshot finds its model
    haiku = lookup("claude-haiku-4-5", "anthropic")
    assert haiku is not None and haiku.cache_write is not None and haiku.cached_input is not None
    assert resolve("gpt-4o-mini", {"input": 9.0, "output": 9.0}, "openai") == Prices(9.0, 9.0)  # config wins
    official = OpenAIChatModel(model="gpt-4o-mini")
    assert official.resolved_prices() == mini
    assert official.resolved_prices(batched=True) == mini.scaled(0.5)


def test_unknown_hosted_model_warns_once_and_dollars_are_unknown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bench.llm.pricing"):
        assert resolve("no-such-model-xyz", None, "openai") is None
        assert resolve("no-such-model-xyz", None, "openai") is None
    warnings = [r.getMessage() for r in caplog.records if "no-such-model-xyz" in r.getMessage()]
    assert len(warnings) == 1 and "unknown" in warnings[0] and "prices" in warnings[0]
    assert math.isnan(OpenAIChatModel(model="no-such-model-xyz").estimate([req("x" * 40)]).dollars)
    # a local server is free unless priced; one genai-prices knows is priced by its URL
    assert resolve("my-model", None, "openai", "http://127.0.0.1:8000/v1") == Prices(0.0, 0.0)
    routed = resolve("openai/gpt-4o-mini", None, "openai", "https://openrouter.ai/api/v1")
    assert routed is not None and routed.input > 0


def test_price_lookup_needs_no_network() -> None:
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "from bench.llm.pricing import lookup\n"
        "p = lookup('gpt-4o-mini', 'openai')\n"
        "assert p is not None and p.input > 0, p\n"
        "print('priced offline')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "priced offline" in done.stdout, done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------------
def test_dry_run_counts_batch_jobs_per_stage_and_checks_the_cap() -> None:
    from bench.config import compose, validate
    from bench.dryrun import estimate_run, format_estimate

    base = ["explainer=openai", "simulator=openai_all_at_once_sampled", "units.count=10"]
    batch = ["explainer.llm.batch=true", "simulator.llm.batch=true"]
    run, parts = validate(compose([*base, *batch]))
    stages = {s.stage: s for s in estimate_run(run, parts)}
    assert stages["explain"].batch_jobs == 1 and stages["simulate"].batch_jobs == 1  # one job per stage
    text = format_estimate(run, parts)
    assert "batch jobs" in text and "budget" not in text
    # auto: every unit in flight in batch mode -> one job per stage; an explicit 64: one per flush of 64
    run, parts = validate(compose([*base[:2], *batch, "units.count=200", "units.layers=[0]"]))
    assert run.engine.units_in_flight is None and estimate_run(run, parts)[0].batch_jobs == 1
    run, parts = validate(
        compose([*base[:2], *batch, "units.count=200", "units.layers=[0]", "engine.units_in_flight=64"])
    )
    flushed = {s.stage: s for s in estimate_run(run, parts)}
    assert run.engine.units_in_flight == 64 and flushed["explain"].batch_jobs == 4  # ceil(200 / 64)
    # 60,000 units all in flight: the explain stage holds 60,000 requests -> two OpenAI jobs (50,000 per job)
    big_run = [*base[:2], *batch, "units.count=60000", "units.layers=[0]", "engine.units_in_flight=60000"]
    run, parts = validate(compose(big_run))
    big = {s.stage: s for s in estimate_run(run, parts)}
    assert big["explain"].calls == 60_000 and big["explain"].batch_jobs == 2
    assert big["simulate"].batch_jobs >= 2
    # without batch mode: no job column; a cap under the planned dollars is reported
    run, parts = validate(compose([*base, "budget.max_usd=0.0001"]))
    text = format_estimate(run, parts)
    assert "batch jobs" not in text and "EXCEEDS budget.max_usd=$0.0001" in text
    run, parts = validate(compose([*base, "budget.max_usd=1000"]))
    assert "fits budget.max_usd=$1,000.0000" in format_estimate(run, parts)


# ---------------------------------------------------------------------------------------------------
# End to end through the CLI
# ---------------------------------------------------------------------------------------------------
def test_cli_stops_at_the_cap_keeps_finished_units_and_a_rerun_pays_nothing_twice(
    subject: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    with FakeLLMServer(api_key=KEY) as server:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
        args = ["run", "--no-progress", "explainer=openai", "simulator=openai_all_at_once_logprobs"]
        for role in ("explainer", "simulator"):
            args += [
                f"{role}.llm.base_url={server.base_url}",
                f"{role}.llm.api_key_env=NB_TEST_KEY",
                f"{role}.llm.prices={{input:{PRICES['input']},output:{PRICES['output']}}}",
            ]
        args += [
            *tiny_run(subject, corpus),
            "units.count=4",
            "engine.units_in_flight=1",  # units finish one after another, so the cap falls between them
            "tracking=none",
            f"output_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
        # the 4 units cost ~$20 at these prices; $9 pays the explanations and about one unit's simulations
        assert main([*args, "budget.max_usd=9"]) == 2
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if "budget.max_usd reached" in x]
        assert line.startswith("neuronbench: ") and "spent $" in line and "of $9.0000" in line
        assert "remaining" in line and "raise budget.max_usd" in line
        assert "Traceback" not in err
        [run_dir] = list((tmp_path / "runs").iterdir())
        first = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
        assert 1 <= len(first) < 4 and all(r["status"] == "ok" for r in first)
        paid = {json.dumps(e["body"], sort_keys=True) for e in server.log if e["method"] == "POST"}
        n_first = len(server.log)

        assert main([*args, "budget.max_usd=100"]) == 0  # same run folder: the cap is not part of the config hash
        assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
        results = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
        assert len(results) == 4 and len({json.dumps(r["unit"], sort_keys=True) for r in results}) == 4
        assert all(r["status"] == "ok" for r in results)
        again = [json.dumps(e["body"], sort_keys=True) for e in server.log[n_first:] if e["method"] == "POST"]
        assert again and not (set(again) & paid)  # nothing answered before was requested again
