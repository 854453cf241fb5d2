"""Mistral: the Llama layout (sliding-window attention changes no module names)."""

from bench.subject.architectures import gated

ARCHITECTURES = {"mistral": gated("mistral")}
