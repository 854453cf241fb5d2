"""Tiny randomly initialised models and a tiny tokenizer, built in-process (no download).

Import the helpers in tests: ``from conftest_models import tiny_model, tiny_tokenizer``
(pytest puts tests/ on sys.path).
A model has 2 layers, hidden size 32, MLP width 64 and the tokenizer's vocabulary (~300 tokens).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

FAMILIES = ("gpt2", "gpt_neox", "llama")
WIDTH = 64
N_LAYERS = 2

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.",
    "Fellow-Citizens of the Senate and House of Representatives: the state of the Union is strong.",
    "In the beginning God created the heaven and the earth. And the earth was without form.",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (~300 tokens) trained in-process; deterministic."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _TRAINING_TEXT, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def tiny_config(family: str, vocab_size: int | None = None) -> Any:
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    vocab = vocab_size or len(tiny_tokenizer())
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=128,
            n_embd=32,
            n_layer=N_LAYERS,
            n_head=2,
            n_inner=WIDTH,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=2,
            intermediate_size=WIDTH,
            max_position_embeddings=128,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=WIDTH,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    raise ValueError(f"unknown family {family!r}")


def tiny_model(family: str, vocab_size: int | None = None, seed: int = 0) -> Any:
    """A randomly initialised causal LM of ``family`` in eval mode (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size))
    return model.eval()


def save_tiny_subject(family: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny model and the tiny tokenizer as a ``from_pretrained`` directory; return it."""
    path.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def random_token_ids(n: int, length: int, seed: int = 0, vocab_size: int | None = None) -> Any:
    import numpy as np

    vocab = vocab_size or len(tiny_tokenizer())
    return np.random.default_rng(seed).integers(0, vocab - 1, size=(n, length), dtype=np.int64)


def tiny_run(subject: Path, corpus: Path) -> list[str]:
    """Overrides for a seconds-long run on a tiny saved subject and a text corpus: 3 units of layer 1,
    2 examples per split, correlation only -- the shared base of the CLI / pipeline tests."""
    return [
        f"subject.model_id={subject}",
        "subject.progress=false",
        "dataset=text_files",
        f"dataset.paths=[{corpus}]",
        "dataset.n_excerpts=48",
        "dataset.excerpt_len=12",
        "units.layers=[1]",
        "units.count=3",
        "units.examples_per_split=2",
        "mining.top_k=8",
        "mining.random_k=6",
        "scorer=[correlation]",
    ]
