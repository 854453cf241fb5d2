"""Damaged state (issue 12 item 3): a damaged run file is one line naming it and the fix (exit 2), a
damaged cache is recomputed or skipped with one warning, and finished units are never lost."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_models import _TRAINING_TEXT, save_tiny_subject, tiny_tokenizer

from bench.cli import main, run_job
from bench.config import compose
from bench.data.text_files import TextFiles
from bench.errors import UserError
from bench.llm.cache import ResponseCache, answer_shape
from bench.pipeline import ExplanationStore
from bench.run.folder import JsonlSink
from bench.state_files import DamagedFile, check_writable_dir
from bench.tracking.mlflow_sink import check_tracking_db, stored_run_id

GOOD_LINE = json.dumps({"unit": {"layer": 1, "index": 2}, "status": "failed", "error": "x", "stage": "explain"})


# ---------------------------------------------------------------------------------------------------
# Run files: one line naming the file, the line and the fix
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,problem",
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"unit": {"layer": 1, "index": 3}, "status": "maybe"}', "status"),
        (b'{"unit": {"layer": "one", "index": 3}, "status": "ok"}', "integer layer"),
        (b'{"unit": {"layer": 1, "index": 3}, "status": "ok", "scores": {"s": {"name": "s", "value": "hi"}}}', "score"),
        (b'{"status": "ok"}', "KeyError"),
    ],
)
def test_damaged_results_line_is_one_line_naming_file_line_and_fix(tmp_path: Path, bad: bytes, problem: str) -> None:
    path = tmp_path / "results.jsonl"
    data = GOOD_LINE.encode() + b"\n" + bad + b"\n" + GOOD_LINE.encode() + b"\n"
    path.write_bytes(data)
    with pytest.raises(DamagedFile) as info:
        JsonlSink(path)
    message = str(info.value)
    assert f"{path} line 2 is damaged" in message and problem in message and "delete that line" in message
    assert "\n" not in message and isinstance(info.value, UserError) and info.value.exit_code == 2
    assert path.read_bytes() == data  # nothing finished was touched


def test_torn_last_line_is_still_just_redone(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(GOOD_LINE + "\n" + GOOD_LINE[:30])
    assert JsonlSink(path).finished_units() == {"mlp_neuron/L1/2"}  # the torn unit is redone, no error


@pytest.mark.parametrize(
    "bad,problem",
    [
        ("not json at all", "not JSON"),
        ('{"explanation": null, "error": "x"}', "'unit'"),
        ('{"unit": "L1/N2", "explanation": {"text": 5}}', "'text'"),
    ],
)
def test_damaged_explanations_line(tmp_path: Path, bad: str, problem: str) -> None:
    path = tmp_path / "explanations.jsonl"
    path.write_text(json.dumps({"unit": "L1/N1", "explanation": None, "error": "boom"}) + "\n" + bad + "\n")
    with pytest.raises(DamagedFile, match=rf"explanations.jsonl line 2 is damaged .*{problem}.*explained again"):
        ExplanationStore(path)


@pytest.mark.parametrize("content", ["garbage{", "[]", '{"tracking_uri": "x"}', '{"run_id": 5}'])
def test_damaged_mlflow_run_json(tmp_path: Path, content: str) -> None:
    path = tmp_path / "mlflow_run.json"
    path.write_text(content)
    with pytest.raises(DamagedFile, match=r"mlflow_run.json is damaged .*delete it and re-run"):
        stored_run_id(path)


@pytest.mark.parametrize("content", [b"this is not a database" * 50, b"SQLite format 3\x00" + b"\x00" * 50])
def test_damaged_tracking_database(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(content)
    with pytest.raises(UserError, match=r"tracking database .*mlflow.db is damaged .*tracking=none"):
        check_tracking_db(db)
    check_tracking_db(tmp_path / "absent.db")  # no database yet: MLflow creates it


def test_unwritable_folder_names_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")  # works as root too, unlike chmod
    with pytest.raises(UserError, match=r"^output_dir: cannot write .*a-file/runs .*set output_dir="):
        check_writable_dir(blocker / "runs", "output_dir", "set output_dir=<a writable folder>")
    check_writable_dir(tmp_path / "new" / "runs", "output_dir", "unused")
    assert (tmp_path / "new" / "runs").is_dir()


# Leaderboard: a damaged run folder is skipped with a warning naming it -- tested with the leaderboard
# (tests/test_leaderboard.py::test_a_damaged_run_folder_is_skipped_with_one_line_and_named_ones_are_refused).


# ---------------------------------------------------------------------------------------------------
# Caches: recomputed or skipped with one warning
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_excerpt_caches_are_rebuilt(tmp_path: Path, damage: str) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text(" ".join(_TRAINING_TEXT * 4))
    ds = TextFiles(paths=[str(corpus)], n_excerpts=6, excerpt_len=8, cache_dir=str(tmp_path / "c"))
    first = ds.excerpts(tiny_tokenizer(), seed=0)
    files = list((tmp_path / "c" / "excerpts").glob("*.npz"))
    assert len(files) == 2  # the tokenized corpus and the selection
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2] if damage == "truncated" else b"")
    again = ds.excerpts(tiny_tokenizer(), seed=0)
    assert again.fingerprint == first.fingerprint and np.array_equal(again.token_ids, first.token_ids)


def _filled_cache(directory: Path) -> None:
    cache = ResponseCache(directory, well_formed=answer_shape)
    for i in range(50):
        cache.set(f"k{i}", {"result": {"text": str(i)}, "usage": {}})
    cache.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_llm_cache_database_is_a_miss_with_one_warning(tmp_path: Path, damage: str, caplog) -> None:
    _filled_cache(tmp_path / "llm")
    db = tmp_path / "llm" / "cache.db"
    db.write_bytes(b"not sqlite " * 400 if damage == "garbage" else db.read_bytes()[: db.stat().st_size // 2])
    for extra in (tmp_path / "llm").glob("cache.db-*"):
        extra.unlink()
    cache = ResponseCache(tmp_path / "llm", well_formed=answer_shape)
    with caplog.at_level(logging.WARNING, logger="bench.llm.cache"):
        assert [cache.get(f"k{i}") for i in range(5)] == [None] * 5
        cache.set("new", {"result": {}, "usage": {}})  # does not raise either
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path / "llm") in warnings[0] and "delete that folder" in warnings[0]


def test_llm_cache_entries_of_the_wrong_shape_are_misses(tmp_path: Path, caplog) -> None:
    import diskcache

    _filled_cache(tmp_path / "llm")
    raw = diskcache.Cache(str(tmp_path / "llm"))
    for key, value in {"k1": "[1, 2]", "k2": "{not json", "k3": 17, "k4": '{"x": 1}'}.items():
        raw.set(key, value)
    raw.close()
    cache = ResponseCache(tmp_path / "llm", well_formed=answer_shape)
    with caplog.at_level(logging.WARNING, logger="bench.llm.cache"):
        got = [cache.get(f"k{i}") for i in range(6)]
    assert [g is not None for g in got] == [True, False, False, False, False, True]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


# ---------------------------------------------------------------------------------------------------
# Through a real run: each damage stops with one line (or recomputes), finished units are kept
# ---------------------------------------------------------------------------------------------------
def _overrides(tmp: Path, subject: Path, corpus: Path, store: dict[str, str], *extra: str) -> list[str]:
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=16",
        "units.layers=[1]",
        "units.count=2",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "explainer=token_list",
        "simulator=smollm2_all_at_once",
        "~simulator.llm",
        "+simulator.llm={_target_:bench.llm.fake.FakeLLM}",
        "scorer=[correlation]",
        "control.enabled=false",
        f"tracking.uri={store['uri']}",
        f"tracking.artifact_location={store['artifacts']}",
        f"output_dir={tmp / 'runs'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


def test_damage_in_a_real_run_folder(tmp_path: Path, mlflow_store: dict[str, str]) -> None:
    subject = save_tiny_subject("gpt2", tmp_path / "tiny")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_TRAINING_TEXT * 6))

    def run(*extra: str):
        return run_job(compose(_overrides(tmp_path, subject, corpus, mlflow_store, *extra)), progress=False)

    first = run()
    run_dir = next((tmp_path / "runs").iterdir())
    results = (run_dir / "results.jsonl").read_bytes()

    damages = {
        "results.jsonl": (b"\xff\xfe\n", r"results.jsonl line 3 is damaged \(not UTF-8 text\)"),
        "explanations.jsonl": (b"oops\n", r"explanations.jsonl line 3 is damaged \(not JSON"),
        "mlflow_run.json": (None, r"mlflow_run.json is damaged"),
    }
    for name, (appended, expected) in damages.items():
        path = run_dir / name
        saved = path.read_bytes()
        path.write_bytes(saved + appended if appended is not None else b"\x00garbage")
        with pytest.raises(DamagedFile, match=expected):
            run()
        path.write_bytes(saved)

    db = Path(mlflow_store["uri"].removeprefix("sqlite:///"))
    shutil.copyfile(db, tmp_path / "db-backup")
    db.write_bytes(b"garbage " * 100)
    with pytest.raises(UserError, match="tracking database .* is damaged"):
        run()
    shutil.copyfile(tmp_path / "db-backup", db)

    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(UserError, match="^output_dir: cannot write"):
        run(f"output_dir={tmp_path / 'blocker' / 'runs'}")
    with pytest.raises(UserError, match="^cache_dir: cannot write .*NEURONBENCH_CACHE"):
        run(f"cache_dir={tmp_path / 'blocker' / 'cache'}")

    for npz in (tmp_path / "cache").rglob("*.npz"):  # record and excerpt caches: recomputed
        npz.write_bytes(npz.read_bytes()[:100])
    again = run()
    assert (run_dir / "results.jsonl").read_bytes() == results  # finished units kept, nothing redone
    assert [r.unit.key for r in again.results] == [r.unit.key for r in first.results]


def test_compare_over_a_damaged_results_file_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    good, bad = tmp_path / "a", tmp_path / "b"
    for d in (good, bad):
        d.mkdir()
        (d / "results.jsonl").write_text(GOOD_LINE + "\n")
    (bad / "results.jsonl").write_bytes(b"\xff\n" + GOOD_LINE.encode() + b"\n")
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{bad / 'results.jsonl'} line 1 is damaged (not UTF-8 text)" in err


def test_readers_leave_out_a_torn_last_line_without_touching_the_file(tmp_path: Path) -> None:
    from bench.run.folder import read_results

    path = tmp_path / "results.jsonl"
    path.write_text(GOOD_LINE + "\n" + GOOD_LINE[:25])  # another process is mid-write
    assert set(read_results(path)) == {"mlp_neuron/L1/2"}
    assert path.read_text().endswith(GOOD_LINE[:25])  # a reader never rewrites the file


def test_cli_unwritable_output_dir_is_one_line_exit_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    subject = save_tiny_subject("gpt2", tmp_path / "tiny")
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    args = ["explainer=token_list", f"subject.model_id={subject}", "units.layers=[1]", "tracking=none"]
    args.append(f"cache_dir={tmp_path / 'c'}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "-q", *args, f"output_dir={tmp_path / 'blocker' / 'runs'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith("neuronbench: output_dir: cannot write")
        and "Traceback" not in proc.stderr
    )
