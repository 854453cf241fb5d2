"""Phi-3: fused ``gate_up_proj`` and ``qkv_proj``, but the neurons still feed ``mlp.down_proj`` and heads ``o_proj``."""

from bench.subject.architectures import gated

ARCHITECTURES = {"phi3": gated("phi3")}
