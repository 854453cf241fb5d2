"""Reading the files a run and its caches keep state in: damage ends in one line, never a traceback.

A run folder (``results.jsonl``, ``explanations.jsonl``, ``mlflow_run.json``), the MLflow database and
the caches can be truncated, emptied, edited by hand or written by another tool.  Two rules:

* **Caches are recomputed.**  A cache file that cannot be read (``NPZ_READ_ERRORS``) is treated as
  missing and rebuilt; nothing a user paid for is lost by that.
* **State is never guessed.**  A damaged line of a run's own records stops the run with one line
  (:class:`DamagedFile`, exit code 2) that names the file, the line and the fix.  Silently skipping the
  line would redo (and re-pay) a unit or drop it from the scores; the user decides.

A torn *last* line (a crash mid-write) is not damage: :func:`bench.run.folder.drop_torn_tail` cuts it
and that unit is redone.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.errors import UserError

# What ``np.load`` of a truncated, emptied or overwritten ``.npz`` raises (empty: EOFError; cut: BadZipFile).
NPZ_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


class DamagedFile(UserError):
    """``<path>[ line N] is damaged (<problem>); <fix>`` -- one line, exit code 2."""

    def __init__(self, path: Path, problem: str, fix: str, line: int | None = None) -> None:
        where = f"{path} line {line}" if line is not None else str(path)
        self.path = path
        super().__init__(f"{where} is damaged ({problem}); {fix}")


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:120]}" if text else type(err).__name__


def jsonl_objects(path: Path, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; :class:`DamagedFile` for a line that is not
    UTF-8, not JSON, or not a JSON object.  A last line without its newline is a write in progress or
    torn by a crash: it is left out, as :func:`bench.run.folder.drop_torn_tail` would cut it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedFile(path, _short(err), fix) from None
    yield from jsonl_objects_in(data, path, fix)


def jsonl_objects_in(data: bytes, path: Path, fix: str, first_line: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`jsonl_objects` of bytes read from ``path`` (e.g. what was appended since an offset, whose first
    line is line ``first_line``); a last line without its newline is left out."""
    data = data[: data.rfind(b"\n") + 1]
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DamagedFile(path, "not UTF-8 text", fix, number) from None
        except ValueError as err:
            raise DamagedFile(path, f"not JSON: {_short(err)}", fix, number) from None
        if not isinstance(item, dict):
            raise DamagedFile(path, f"a JSON {type(item).__name__}, not an object", fix, number)
        yield number, item


def parse_lines(path: Path, parse: Callable[[dict[str, Any]], Any], fix: str) -> list[Any]:
    """``parse`` applied to every object of a JSONL file; a shape it rejects is :class:`DamagedFile`."""
    return parse_objects(jsonl_objects(path, fix), parse, path, fix)


def parse_objects(
    objects: Iterator[tuple[int, dict[str, Any]]], parse: Callable[[dict[str, Any]], Any], path: Path, fix: str
) -> list[Any]:
    """``parse`` applied to ``(line number, object)`` pairs of ``path``; a rejected shape is :class:`DamagedFile`."""
    out = []
    for number, item in objects:
        try:
            out.append(parse(item))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DamagedFile(path, f"not the expected shape: {_short(err)}", fix, number) from None
    return out


def json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`DamagedFile` when it is unreadable or not an object."""
    try:
        item = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text", fix) from None
    except (OSError, ValueError) as err:
        raise DamagedFile(path, _short(err), fix) from None
    if not isinstance(item, dict):
        raise DamagedFile(path, f"a JSON {type(item).__name__}, not an object", fix)
    return item


def sqlite_problem(path: Path) -> str | None:
    """Why the sqlite database at ``path`` cannot be used (None: absent or readable)."""
    import sqlite3

    if not path.is_file():
        return None
    conn = None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as err:
        return _short(err)
    finally:
        if conn is not None:
            conn.close()
    return None


def sqlite_damage(err: BaseException) -> BaseException | None:
    """The ``sqlite3.DatabaseError`` behind ``err`` (an SQLAlchemy or MLflow wrapper), if there is one."""
    import sqlite3

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.DatabaseError) and not isinstance(current, sqlite3.OperationalError):
            return current
        current = current.__cause__ or current.__context__
    return None


def check_writable_dir(path: str | os.PathLike[str], key: str, fix: str) -> None:
    """Create ``path`` and write a probe file there; one line naming ``key`` when that fails."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".neuronbench-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{key}: cannot write {folder} ({err.strerror or _short(err)}); {fix}") from None
