"""Your own corpus: plain-text files (one document per file) or JSONL (one document per line)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.windows import DocumentCorpus, check_positive, decode_bytes
from bench.errors import UserError

FORMATS = ("txt", "jsonl")


def _find(path: str) -> Path | None:
    """``path`` itself (absolute or relative to the working directory), else relative to the checkout."""
    p = Path(os.path.expanduser(path))
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, Path(__file__).resolve().parents[2] / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return None


@dataclass(frozen=True)
class TextFiles(DocumentCorpus):
    """Documents from local files.

    ``format: txt`` -- each file is one document.  ``format: jsonl`` -- each line is a JSON object and
    its ``text_field`` one document (blank lines skipped; a line without the field is an error).
    Documents shorter than ``excerpt_len`` tokens yield no excerpt.  Relative paths are looked up in the
    working directory, then in the neuronbench checkout.  The cache key includes each file's sha256, so
    editing a file gives new excerpts.
    """

    paths: tuple[str, ...] = ()
    format: str = "txt"
    text_field: str = "text"
    n_excerpts: int = 4000
    excerpt_len: int = 64
    max_windows_per_document: int | None = None
    cache_dir: str | None = None
    name: str = "text_files"
    version: int = 1

    def __post_init__(self) -> None:
        paths: Any = self.paths
        if isinstance(paths, str | os.PathLike):
            paths = (paths,)
        object.__setattr__(self, "paths", tuple(str(p) for p in (paths or ())))
        if not paths:
            raise ValueError("paths: list at least one file, e.g. dataset.paths=[my.txt]")
        for p in paths:
            if _find(p) is None:
                raise ValueError(f"paths: no such file {p!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format: must be one of {list(FORMATS)}, got {self.format!r}")
        if not self.text_field:
            raise ValueError("text_field: must be a non-empty string")
        check_positive("n_excerpts", self.n_excerpts)
        check_positive("excerpt_len", self.excerpt_len, 2)
        if self.max_windows_per_document is not None:
            check_positive("max_windows_per_document", self.max_windows_per_document)

    def _resolved(self) -> list[Path]:
        found = [_find(p) for p in self.paths]
        missing = [p for p, f in zip(self.paths, found, strict=True) if f is None]
        if missing:
            raise UserError(f"dataset.paths: no such file {missing[0]!r}")
        return [f for f in found if f is not None]

    def dataset_key(self) -> dict[str, Any]:
        files = []
        for path in self._resolved():
            files.append({"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        return {"kind": "text_files", "format": self.format, "text_field": self.text_field, "files": files}

    def documents(self) -> Iterator[tuple[str, str]]:
        for i, path in enumerate(self._resolved()):
            text = decode_bytes(path.read_bytes())
            source = f"file{i}"
            if self.format == "txt":
                yield f"{source}/{path.name}", text
                continue
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except ValueError as err:
                    raise UserError(
                        f"{where} is not valid JSON ({err}); dataset.format=jsonl needs one object a line"
                    ) from err
                if not isinstance(obj, dict) or self.text_field not in obj:
                    raise UserError(f"{where} has no field {self.text_field!r}: set dataset.text_field")
                value = obj[self.text_field]
                if isinstance(value, str) and value:
                    yield f"{source}/{path.name}:{lineno}", value
