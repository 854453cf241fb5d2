"""A Hugging Face ``datasets`` corpus (hub id or local folder/files), streamed by default.

Needs the optional extra: ``pip install 'neuronbench[hf]'``.  Reading a whole hub corpus is rarely
possible, so documents are read (after a seeded shuffle buffer) only until ``pool_factor ×
n_excerpts`` windows are collected, and ``n_excerpts`` of those are drawn.  Pin ``revision`` for a
hub dataset: without it the cache key cannot tell that the data behind the name changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.data.windows import check_positive, make_excerpt_set
from bench.errors import UserError
from bench.protocols import ExcerptSet

INSTALL_HINT = "pip install 'neuronbench[hf]'"


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise UserError(f"dataset=hf needs the 'datasets' package: {INSTALL_HINT}") from err
    return datasets


@dataclass(frozen=True)
class HFDataset:
    """``datasets.load_dataset(path, config_name, split=..., data_files=..., streaming=...)``."""

    path: str = ""
    config_name: str | None = None
    split: str = "train"
    text_field: str = "text"
    n_excerpts: int = 4000
    excerpt_len: int = 64
    streaming: bool = True
    revision: str | None = None
    data_files: tuple[str, ...] | None = None
    shuffle_buffer: int = 10_000  # 0: read documents in the dataset's order
    pool_factor: int = 4  # windows read before drawing: pool_factor × n_excerpts
    max_windows_per_document: int | None = 100
    cache_dir: str | None = None
    name: str = "hf"
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(
                "path: name a dataset: a hub id (e.g. 'stas/openwebtext-10k'), a loader such as 'json', "
                "or a local folder"
            )
        if not self.split:
            raise ValueError("split: must be a non-empty string, e.g. 'train'")
        if not self.text_field:
            raise ValueError("text_field: must be a non-empty string")
        check_positive("n_excerpts", self.n_excerpts)
        check_positive("excerpt_len", self.excerpt_len, 2)
        check_positive("pool_factor", self.pool_factor)
        check_positive("shuffle_buffer", self.shuffle_buffer, 0)
        if self.max_windows_per_document is not None:
            check_positive("max_windows_per_document", self.max_windows_per_document)
        files = self.data_files
        if files is not None:
            files = (files,) if isinstance(files, str) else tuple(str(f) for f in files)
            object.__setattr__(self, "data_files", files)
            for f in files:
                if "://" not in f and not any(c in f for c in "*?[") and not os.path.exists(os.path.expanduser(f)):
                    raise ValueError(f"data_files: no such file {f!r}")

    def dataset_key(self) -> dict[str, Any]:
        local = os.path.exists(os.path.expanduser(self.path))
        files = None
        if self.data_files is not None:
            paths = [os.path.abspath(os.path.expanduser(f)) if "://" not in f else f for f in self.data_files]
            files = [_with_stat(f) for f in paths]
        return {
            "kind": "hf_datasets",
            "path": os.path.abspath(os.path.expanduser(self.path)) if local else self.path,
            "local_stat": _with_stat(os.path.abspath(os.path.expanduser(self.path))) if local else None,
            "config_name": self.config_name,
            "split": self.split,
            "revision": self.revision,
            "data_files": files,
            "text_field": self.text_field,
            "shuffle_buffer": self.shuffle_buffer,
            "streaming": bool(self.streaming),
        }

    def documents(self, seed: int) -> Iterator[tuple[str, str]]:
        datasets = _datasets_module()
        kwargs: dict[str, Any] = {"split": self.split, "streaming": bool(self.streaming)}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.data_files is not None:
            kwargs["data_files"] = list(self.data_files)
        try:
            ds = datasets.load_dataset(self.path, self.config_name, **kwargs)
        except Exception as err:  # datasets raises many types; all are user-fixable here
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load dataset.path={self.path!r} (split {self.split!r}): {first}") from err
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer) if self.streaming else ds.shuffle(seed=seed)
        for i, row in enumerate(ds):
            if self.text_field not in row:
                raise UserError(
                    f"dataset.text_field={self.text_field!r} is not a column of {self.path!r}; columns: {sorted(row)}"
                )
            text = row[self.text_field]
            if isinstance(text, str) and text:
                yield f"hf/{i}", text

    def excerpts(self, tokenizer: Any, seed: int) -> ExcerptSet:
        return make_excerpt_set(
            name=self.name,
            documents=lambda: self.documents(seed),
            dataset_key=self.dataset_key(),
            tokenizer=tokenizer,
            n_excerpts=self.n_excerpts,
            excerpt_len=self.excerpt_len,
            seed=seed,
            max_windows_per_document=self.max_windows_per_document,
            cache_dir=self.cache_dir,
            stop_after_windows=self.pool_factor * self.n_excerpts,
        )


def _with_stat(path: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
        return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": path}
