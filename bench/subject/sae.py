"""Sparse autoencoders and transcoders in the SAELens folder format, read without SAELens.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc (d_in, d_sae)``, ``b_enc``,
``W_dec (d_sae, d_out)``, ``b_dec``, and ``threshold`` for JumpReLU).  Encoding follows SAELens 6.x
exactly: cast, input normalisation (``normalize_activations``), ``- b_dec`` when
``apply_b_dec_to_input``, ``x @ W_enc + b_enc``, then the architecture's activation: ReLU
(``standard``), ``relu(h) * (h > threshold)`` (``jumprelu``), or the ``k`` largest of ``h`` kept and
ReLU'd (``topk``; pre-activations scaled by the decoder row norms when ``rescale_acts_by_decoder_norm``).
A ``transcoder`` / ``jumprelu_transcoder`` reads at ``hook_name`` and writes at ``hook_name_out``.

Why not ``sae_lens`` itself: ``sae-lens`` 6.54 installs beside our pins but pulls ~40 packages
(transformer-lens, wandb, datasets, plotly ...) for what is a 100-line format; it is the optional
``sae`` extra and used for hub releases (``release=`` / ``sae_id=``: its own loaders fetch and convert
any release, saved once into our cache as this format, see :func:`fetch_release`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.errors import UserError

ARCHITECTURES = ("standard", "jumprelu", "topk", "transcoder", "jumprelu_transcoder")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


@dataclass(frozen=True)
class SaeSpec:
    """What ``cfg.json`` says, validated: everything but the tensors."""

    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    hook_name: str
    hook_name_out: str | None
    apply_b_dec_to_input: bool
    normalize_activations: str
    k: int | None
    rescale_acts_by_decoder_norm: bool
    scaling_factor: float | None  # expected_average_only_in: x * factor in, / factor out
    weights_sha256: str
    path: str

    @property
    def is_transcoder(self) -> bool:
        return self.architecture.endswith("transcoder")

    @property
    def describe(self) -> dict[str, Any]:
        """Provenance and record-cache key part: every field that changes the latents."""
        return {k: v for k, v in self.__dict__.items() if k != "path"} | {"path": self.path}


def _cfg_value(cfg: dict[str, Any], name: str, default: Any = None) -> Any:
    meta = cfg.get("metadata") or {}
    return cfg.get(name, meta.get(name, default))


def read_spec(folder: str | Path) -> SaeSpec:
    """Validate ``cfg.json`` of a SAELens folder; one-line UserError naming ``units.sae.path`` otherwise."""
    from bench.assets import sha256_file

    path = Path(folder).expanduser()
    where = f"units.sae.path={str(folder)!r}"
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"config error at 'units.sae.path': {where} needs {CFG_FILE} and {WEIGHTS_FILE} (SAELens)")
    try:
        cfg = json.loads((path / CFG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"config error at 'units.sae.path': unreadable {CFG_FILE} in {path}: {err}") from None
    arch = str(cfg.get("architecture", "standard"))
    if arch not in ARCHITECTURES:
        raise UserError(
            f"config error at 'units.sae.path': SAE architecture {arch!r} is not supported; use one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    norm = str(cfg.get("normalize_activations") or "none")
    if norm not in NORMALIZATIONS:
        raise UserError(
            f"config error at 'units.sae.path': normalize_activations={norm!r} is not supported; use one of "
            f"{', '.join(NORMALIZATIONS)}"
        )
    hook = _cfg_value(cfg, "hook_name")
    if not hook:
        raise UserError(f"config error at 'units.sae.path': {CFG_FILE} in {path} names no hook_name")
    transcoder = arch.endswith("transcoder")
    hook_out = _cfg_value(cfg, "hook_name_out") if transcoder else None
    if transcoder and not hook_out:
        raise UserError(f"config error at 'units.sae.path': transcoder {CFG_FILE} in {path} names no hook_name_out")
    k = cfg.get("k")
    if arch == "topk" and not (isinstance(k, int | float) and k >= 1):
        raise UserError(f"config error at 'units.sae.path': a topk SAE needs k >= 1 in {CFG_FILE}, got {k!r}")
    factor = _cfg_value(cfg, "norm_scaling_factor", _cfg_value(cfg, "scaling_factor"))
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"config error at 'units.sae.path': {CFG_FILE} in {path} needs integer d_in, d_sae") from None
    return SaeSpec(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        d_out=int(cfg.get("d_out") or d_in),
        hook_name=str(hook),
        hook_name_out=str(hook_out) if hook_out else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", not transcoder)) and not transcoder,
        normalize_activations=norm,
        k=int(k) if arch == "topk" else None,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        scaling_factor=float(factor) if factor is not None else None,
        weights_sha256=sha256_file(path / WEIGHTS_FILE),
        path=str(path),
    )


class Sae:
    """An SAE or transcoder: :meth:`encode` (latents of an activation) and the latent-override delta.

    Tensors load on first use, on the device and in float32 (SAE weights are small next to the model,
    and float32 keeps latent rankings independent of the subject's dtype).
    """

    def __init__(self, spec: SaeSpec) -> None:
        self.spec = spec
        self._device: Any = None

    @cached_property
    def _weights(self) -> dict[str, Any]:
        import torch
        from safetensors.torch import load_file

        w = load_file(str(Path(self.spec.path) / WEIGHTS_FILE))
        s = self.spec
        shapes = {"W_enc": (s.d_in, s.d_sae), "b_enc": (s.d_sae,), "W_dec": (s.d_sae, s.d_out)}
        for name, shape in shapes.items():
            if name not in w or tuple(w[name].shape) != shape:
                got = tuple(w[name].shape) if name in w else "missing"
                raise UserError(
                    f"config error at 'units.sae.path': {WEIGHTS_FILE} tensor {name} is {got}, cfg.json implies {shape}"
                )
        if "jumprelu" in s.architecture and "threshold" not in w:
            raise UserError(f"config error at 'units.sae.path': a JumpReLU SAE needs a threshold in {WEIGHTS_FILE}")
        out = {k: v.float() for k, v in w.items()}
        out.setdefault("b_dec", torch.zeros(s.d_out))
        return out

    def to(self, device: Any) -> Sae:
        w = self._weights
        if self._device != device:
            for name in list(w):
                w[name] = w[name].to(device)
            self._device = device
        return self

    def _norm_in(self, x: Any) -> tuple[Any, Any]:
        """Normalised input and the per-token factor ``c`` with ``x_norm`` scaled by ``c`` (for outputs)."""
        s = self.spec
        if s.normalize_activations == "constant_norm_rescale":
            c = (s.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * c, c
        if s.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + 1e-5), 1.0 / std
        if s.normalize_activations == "expected_average_only_in" and s.scaling_factor is not None:
            return x * s.scaling_factor, s.scaling_factor
        return x, 1.0

    def encode(self, x: Any, out: Any = None) -> Any:
        """Latents ``(..., d_sae)`` of activations ``(..., d_in)`` (float32).

        With ``out`` (a float32 tensor of the result's shape, on ``x``'s device) the pre-activations
        are written into it and the activation is applied in place: the same operations, so the same
        values bit for bit, without allocating (and page-faulting in) a fresh ``tokens x d_sae`` array
        per batch -- for a 9,216-latent SAE that is 75 MB per batch of 32 x 64 tokens.  Mining passes
        one buffer for all batches (:meth:`~bench.subject.units.sae_latent.SaeSource.encode`).
        """
        import torch

        w = self.to(x.device)._weights
        s = self.spec
        x, _ = self._norm_in(x.float())
        if s.apply_b_dec_to_input:
            x = x - w["b_dec"]
        if out is None:
            h = x @ w["W_enc"] + w["b_enc"]
        else:  # not addmm: it rounds differently from matmul-then-add
            h = torch.matmul(x, w["W_enc"], out=out)
            h += w["b_enc"]
        if s.architecture == "topk":
            if s.rescale_acts_by_decoder_norm:
                h = h * w["W_dec"].norm(dim=-1)
            vals, idx = torch.topk(h, k=min(s.k or 1, s.d_sae), dim=-1)
            return torch.zeros_like(h).scatter_(-1, idx, vals.relu())
        if "jumprelu" in s.architecture:
            gate = h > w["threshold"]
            acts = h.relu_() if out is not None else h.relu()
            return acts.mul_(gate) if out is not None else acts * gate.to(acts.dtype)
        return h.relu_() if out is not None else h.relu()

    def direction(self, index: int) -> Any:
        """Latent ``index``'s decoder row (what one unit of it writes, in the normalised space)."""
        w = self._weights
        row = w["W_dec"][index]
        if self.spec.architecture == "topk" and self.spec.rescale_acts_by_decoder_norm:
            row = row / row.norm()
        return row

    def delta(self, x_in: Any, change: Any, index: int) -> Any:
        """What adding ``change`` (..., ) to latent ``index`` adds at the output site, in model space.

        The normalisation's output map is undone with the factor computed from the input activation
        (SAELens' ``run_time_activation_norm_fn_out``); ``x_in`` is the activation the SAE read.
        """
        _, c = self._norm_in(x_in.float())
        d = change.unsqueeze(-1).float() * self.to(x_in.device).direction(index)
        return d / c


def load_sae(path: str | None = None, release: str | None = None, sae_id: str | None = None,
             cache_dir: str | None = None) -> Sae:  # fmt: skip
    """An :class:`Sae` from a local folder, or from a hub release (via ``sae_lens``, cached as a folder)."""
    if path:
        return Sae(read_spec(path))
    if release and sae_id:
        return Sae(read_spec(fetch_release(release, sae_id, cache_dir)))
    raise UserError(
        "config error at 'units.sae': give units.sae.path=<SAELens folder> or units.sae.release= and units.sae.sae_id="
    )


def fetch_release(release: str, sae_id: str, cache_dir: str | None = None) -> Path:
    """Download ``release``/``sae_id`` with SAELens' own loaders once and save it as a SAELens folder.

    Needs the ``sae`` extra (``pip install 'neuronbench[sae]'``) and internet on the first call.
    """
    from bench.assets import cache_root, file_lock

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{release}__{sae_id}")
    folder = cache_root(cache_dir) / "saes" / safe
    if (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return folder
    try:
        from sae_lens import SAE
    except ImportError:
        raise UserError(
            "units.sae.release needs the sae-lens package: pip install 'neuronbench[sae]' (or give units.sae.path=)"
        ) from None
    with file_lock(folder):
        if not (folder / CFG_FILE).is_file():
            try:
                sae = SAE.from_pretrained(release, sae_id, device="cpu")
                sae = sae[0] if isinstance(sae, tuple) else sae
            except Exception as err:  # noqa: BLE001 - network, unknown release ... : one line
                first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
                raise UserError(f"could not load units.sae.release={release!r} sae_id={sae_id!r}: {first}") from None
            sae.save_model(str(folder))
    return folder
