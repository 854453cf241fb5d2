"""Where models run: ``auto`` picks a GPU when one is present, so the same config runs on CPU or GPU."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if available, else ``mps`` (Apple), else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
