"""Qwen2 and Qwen3: the Llama layout (Qwen3 adds q/k norms inside attention, not new sites)."""

from bench.subject.architectures import gated

ARCHITECTURES = {"qwen2": gated("qwen2"), "qwen3": gated("qwen3")}
