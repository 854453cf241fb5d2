"""Llama and SmolLM2 (a Llama): SwiGLU, neurons are the input of ``mlp.down_proj``."""

from bench.subject.architectures import gated

ARCHITECTURES = {"llama": gated("llama")}
