"""Streaming top-k mining of every MLP neuron of one layer, in one pass (method.md section 1).

For each batch of excerpts the forward pass runs only up to the hooked module of the layer (a private
exception raised from the hook stops it: no later layer, no LM head), and then, for all units at once:

* **top-k**: each excerpt's maximum per unit is merged with the running winners by a stable sort of
  ``(k + batch) × units`` values; the ``(k, units, excerpt_len)`` activations of the winners are kept.
  Ties keep the lower excerpt index, so the result does not depend on the batch size.  Memory is
  bounded by ``units × k × excerpt_len``: activations of other excerpts are never stored.
* **random sample**: one seeded choice of ``random_k`` excerpt indices (without replacement),
  **shared by all units of the layer**, whose activations are kept for every unit.
* **moments**: float64 sums of ``d, d², d³, d⁴`` with ``d = a - c`` (``c`` the first batch's mean
  per unit, a shift that avoids cancellation) give mean, variance, skewness and excess kurtosis over
  every token seen (population formulas, as ``scipy.stats.skew`` / ``kurtosis`` with their defaults).

Tensors live on the model's device (GPU when present); results are moved to the CPU as numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats
from bench.subject.hook_sites import HookSite, resolve_module

# Bump when a change here changes what mining returns for the same inputs (record cache key).
MINING_VERSION = 1


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass right after the hooked module."""


@dataclass(frozen=True)
class MinedLayer:
    """What one mining pass keeps for a layer, as arrays (CPU numpy).

    ``top_indices[j, u]`` is the excerpt index of unit ``u``'s ``j``-th best excerpt (by maximum
    activation, descending), ``top_acts[j, u]`` its activations; ``random_indices[i]`` is the
    ``i``-th excerpt of the shared random sample and ``random_acts[i, u]`` unit ``u``'s activations.
    """

    layer: int
    top_indices: np.ndarray  # (k, units) int64
    top_max: np.ndarray  # (k, units) float32
    top_acts: np.ndarray  # (k, units, excerpt_len) float32
    random_indices: np.ndarray  # (r,) int64
    random_acts: np.ndarray  # (r, units, excerpt_len) float32
    count: int  # tokens seen per unit
    mean: np.ndarray  # (units,) float64
    variance: np.ndarray
    skewness: np.ndarray
    kurtosis: np.ndarray  # excess kurtosis (0 for a normal distribution)

    @property
    def n_units(self) -> int:
        return int(self.top_indices.shape[1])

    def unit_records(
        self,
        token_ids: np.ndarray,
        token_strings: dict[int, str],
        units: Sequence[int] | None = None,
        kind: str = "mlp_neuron",
    ) -> list[UnitRecord]:
        """:class:`UnitRecord` s of ``units`` (default: all, in index order), built now.

        ``token_ids`` are the excerpts the indices refer to; ``token_strings`` maps every token id that
        occurs in kept excerpts to its string (see :func:`token_strings`).
        """
        chosen = list(range(self.n_units)) if units is None else [int(u) for u in units]
        for u in chosen:
            if not 0 <= u < self.n_units:
                raise IndexError(f"unit {u} out of range: layer {self.layer} has {self.n_units} units")
        needed = np.unique(np.concatenate([self.top_indices[:, chosen].ravel(), self.random_indices]))
        strings = {int(i): [token_strings[int(t)] for t in token_ids[i]] for i in needed}
        top_acts = self.top_acts[:, chosen, :].transpose(1, 0, 2).tolist()  # (units, k, len)
        random_acts = self.random_acts[:, chosen, :].transpose(1, 0, 2).tolist()
        random_tokens = [strings[int(i)] for i in self.random_indices]
        records = []
        for pos, u in enumerate(chosen):
            top = [
                ActivationRecord(tokens=list(strings[int(i)]), activations=acts, token_ids=token_ids[int(i)].tolist())
                for i, acts in zip(self.top_indices[:, u], top_acts[pos], strict=True)
            ]
            rand = [
                ActivationRecord(tokens=list(toks), activations=acts, token_ids=token_ids[int(i)].tolist())
                for i, toks, acts in zip(self.random_indices, random_tokens, random_acts[pos], strict=True)
            ]
            stats = UnitStats(
                count=int(self.count),
                mean=float(self.mean[u]),
                variance=float(self.variance[u]),
                skewness=float(self.skewness[u]),
                kurtosis=float(self.kurtosis[u]),
            )
            records.append(UnitRecord(unit=UnitId(self.layer, u, kind), top=top, random=rand, stats=stats))
        return records

    def lazy_records(
        self, token_ids: np.ndarray, token_strings: dict[int, str], kind: str = "mlp_neuron"
    ) -> LazyUnitRecords:
        """All units as a :class:`LazyUnitRecords` (each record built on first access)."""
        return LazyUnitRecords(self, token_ids, token_strings, kind)


class LazyUnitRecords(Sequence[UnitRecord]):
    """All units of a mined layer as a read-only sequence that builds each :class:`UnitRecord` on first
    access (building all 1,536 of a SmolLM2 layer takes ~2 s; a run usually needs a handful).

    ``records[i]`` is unit ``i``; ``len``, iteration and slicing work as on a list; ``list(records)``
    builds them all.
    """

    def __init__(self, mined: MinedLayer, token_ids: np.ndarray, token_strings: dict[int, str], kind: str):
        self._mined, self._token_ids, self._strings, self._kind = mined, token_ids, token_strings, kind
        self._built: dict[int, UnitRecord] = {}

    def __len__(self) -> int:
        return self._mined.n_units

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"unit {index} out of range: layer {self._mined.layer} has {len(self)} units")
        if i not in self._built:
            self._built[i] = self._mined.unit_records(self._token_ids, self._strings, [i], self._kind)[0]
        return self._built[i]

    def __repr__(self) -> str:
        return f"LazyUnitRecords(layer={self._mined.layer}, units={len(self)}, built={len(self._built)})"


def token_strings(tokenizer: Any, ids: np.ndarray | Sequence[int]) -> dict[int, str]:
    """Each distinct id decoded on its own, leading spaces kept (no clean-up of tokenization spaces)."""
    out: dict[int, str] = {}
    for t in np.unique(np.asarray(ids, dtype=np.int64)):
        out[int(t)] = tokenizer.decode([int(t)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return out


def capture_activations(model: Any, site: HookSite, layer: int, input_ids: Any, stop: bool = True) -> Any:
    """Activations ``(batch, tokens, units)`` at the hook site of ``layer`` for ``input_ids``.

    With ``stop`` the forward pass ends at the hooked module; without it the whole model runs (the
    reference the early stop is tested against).
    """
    import torch

    module = resolve_module(model, site, layer)
    captured: list[Any] = []

    if site.io == "input":

        def pre_hook(_module: Any, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())
            if stop:
                raise _StopForward

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(_module: Any, _args: tuple[Any, ...], output: Any) -> None:
            captured.append(output.detach())
            if stop:
                raise _StopForward

        handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"hook {site.module_name(layer)} fired {len(captured)} times, expected once")
    return captured[0]


def mine_layer(
    model: Any,
    site: HookSite,
    layer: int,
    token_ids: np.ndarray,
    top_k: int,
    random_k: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> MinedLayer:
    """One streaming pass over ``token_ids`` (``(n_excerpts, excerpt_len)``); see the module docstring."""
    import torch
    from tqdm.auto import tqdm

    token_ids = np.asarray(token_ids, dtype=np.int64)
    if token_ids.ndim != 2 or token_ids.shape[0] == 0:
        raise ValueError(f"token_ids must be a non-empty (n_excerpts, excerpt_len) array, got {token_ids.shape}")
    if top_k < 1 or random_k < 0 or batch_size < 1:
        raise ValueError(f"need top_k >= 1, random_k >= 0, batch_size >= 1 (got {top_k}, {random_k}, {batch_size})")
    n, length = token_ids.shape
    k = min(top_k, n)
    random_indices = np.random.default_rng(seed).choice(n, size=min(random_k, n), replace=False).astype(np.int64)
    random_slot = {int(i): s for s, i in enumerate(random_indices)}

    device = next(model.parameters()).device
    stats_device = device if device.type != "mps" else torch.device("cpu")  # no float64 on MPS
    top_vals = top_idx = top_acts = None
    rand_acts = None
    shift = s1 = s2 = s3 = s4 = None

    bar = tqdm(total=n, desc=f"mining layer {layer}", unit="excerpt", disable=not progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            batch = torch.from_numpy(token_ids[start : start + batch_size]).to(device)
            acts = capture_activations(model, site, layer, batch).float()  # (B, L, U)
            b, _, units = acts.shape

            # top-k by excerpt maximum; stable sort keeps the lower excerpt index first on ties
            maxes = torch.nan_to_num(acts.amax(dim=1), nan=-math.inf)  # (B, U)
            idx = torch.arange(start, start + b, device=device).unsqueeze(1).expand(b, units)
            per_unit = acts.permute(0, 2, 1)  # (B, U, L)
            if top_vals is None:
                cand_vals, cand_idx, cand_acts = maxes, idx, per_unit
            else:
                cand_vals = torch.cat([top_vals, maxes])
                cand_idx = torch.cat([top_idx, idx])
                cand_acts = torch.cat([top_acts, per_unit])
            order = torch.sort(cand_vals, dim=0, descending=True, stable=True).indices[:k]
            top_vals = torch.gather(cand_vals, 0, order)
            top_idx = torch.gather(cand_idx, 0, order)
            top_acts = torch.gather(cand_acts, 0, order.unsqueeze(-1).expand(-1, -1, length)).contiguous()

            # shared random sample
            hits = [(i, random_slot[start + i]) for i in range(b) if start + i in random_slot]
            if rand_acts is None:
                rand_acts = torch.zeros((len(random_indices), units, length), dtype=torch.float32, device=device)
            if hits:
                rows = torch.tensor([i for i, _ in hits], device=device)
                slots = torch.tensor([s for _, s in hits], device=device)
                rand_acts[slots] = per_unit[rows]

            # shifted power sums in float64
            flat = acts.reshape(-1, units).to(stats_device, torch.float64)
            if shift is None:
                shift = flat.mean(dim=0)
                s1, s2, s3, s4 = (torch.zeros(units, dtype=torch.float64, device=stats_device) for _ in range(4))
            d = flat - shift
            d2 = d * d
            s1 += d.sum(dim=0)
            s2 += d2.sum(dim=0)
            s3 += (d2 * d).sum(dim=0)
            s4 += (d2 * d2).sum(dim=0)

            bar.update(b)
            if on_batch is not None:
                on_batch(b)
    finally:
        bar.close()

    count = n * length
    m1 = s1 / count
    e2, e3, e4 = s2 / count, s3 / count, s4 / count
    mu2 = (e2 - m1**2).clamp_min(0.0)
    mu3 = e3 - 3 * m1 * e2 + 2 * m1**3
    mu4 = e4 - 4 * m1 * e3 + 6 * m1**2 * e2 - 3 * m1**4
    positive = mu2 > 0
    nan = torch.full_like(mu2, math.nan)
    skew = torch.where(positive, mu3 / mu2.clamp_min(1e-300) ** 1.5, nan)
    kurt = torch.where(positive, mu4 / mu2.clamp_min(1e-300) ** 2 - 3.0, nan)

    def cpu(t: Any) -> np.ndarray:
        return t.detach().to("cpu").numpy()

    return MinedLayer(
        layer=layer,
        top_indices=cpu(top_idx).astype(np.int64),
        top_max=cpu(top_vals).astype(np.float32),
        top_acts=cpu(top_acts).astype(np.float32),
        random_indices=random_indices,
        random_acts=cpu(rand_acts).astype(np.float32),
        count=count,
        mean=cpu(shift + m1).astype(np.float64),
        variance=cpu(mu2).astype(np.float64),
        skewness=cpu(skew).astype(np.float64),
        kurtosis=cpu(kurt).astype(np.float64),
    )
