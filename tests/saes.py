"""SAELens-format SAE folders written by tests (cfg.json + sae_weights.safetensors), seeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_sae(
    folder: Path,
    d_in: int,
    d_sae: int,
    hook_name: str,
    architecture: str = "standard",
    seed: int = 0,
    d_out: int | None = None,
    hook_name_out: str | None = None,
    **cfg: Any,
) -> Path:
    """A random SAE (or transcoder) in SAELens 6 layout; encoder biases set so that latents fire often."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out = d_out or d_in
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.full((d_sae,), 0.05),
        "W_dec": torch.randn(d_sae, out, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(out, generator=g) * 0.01,
    }
    if "jumprelu" in architecture:
        weights["threshold"] = torch.rand(d_sae, generator=g) * 0.2
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    transcoder = architecture.endswith("transcoder")
    config = {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": hook_name, "model_name": "tiny", **({"hook_name_out": hook_name_out} if
                                                                         hook_name_out else {})},
        **({"d_out": out} if transcoder else {}),
        **cfg,
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(config))
    return folder
