"""Streaming top-k mining of every unit of every requested source, in one pass (method.md section 1).

A *source* (:mod:`bench.subject.units`) reads one or more sites of one layer and encodes them into units
(MLP neurons: as they are; SAE latents: the SAE encoder, applied on the fly; attention heads: output
norms).  For each batch of excerpts the forward pass runs only up to the deepest captured site (the
capture hook stops it: no later layer, no LM head), and then, per source, for all its units at once:

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
from bench.subject import hooks
from bench.subject.hook_sites import HookSite

# Bump when a change here changes what mining returns for the same inputs (record cache key).
MINING_VERSION = 1


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
    start: int = 0  # the excerpts [start, stop) this pass saw (a shard of the corpus); stop None = all
    stop: int | None = None

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
    """Activations ``(batch, tokens, units)`` at the neuron hook site of ``layer`` for ``input_ids``.

    With ``stop`` the forward pass ends at the hooked module; without it the whole model runs (the
    reference the early stop is tested against).
    """
    point = (site.site, layer)
    with hooks.capture(model, [point], stop=stop) as captured:
        hooks.forward(model, input_ids)
    if point not in captured:
        raise RuntimeError(f"hook {site.module_name(layer)} did not fire")
    return captured[point]


# Units per chunk of the streaming update: the float64 moment temporaries of one chunk of a batch
# (32 x 64 tokens x 1,024 units x 8 bytes = 16 MiB) stay in cache.  A multiple of 64, so every chunk
# boundary falls on a boundary of the vectorised column groups of torch's reductions: the per-unit
# sums are the same, bit for bit, as over all units at once (tested).
CHUNK_UNITS = 1024


class _Stream:
    """The streaming state of one source: top-k winners, the shared random sample, shifted power sums.

    Why it is shaped this way (an SAE has 9,216+ units, and the plain ``cat``-then-``gather`` of all
    ``(k + batch, units, excerpt_len)`` activations per batch cost more than the encoder):

    * the winners' activations live in fixed **slots** ``top_acts[slot, unit]``; per batch only the
      excerpts that enter a unit's top-k are copied, into the slots of those they push out, and the
      slots are put in rank order once, in :meth:`finish`.  The *choice* of winners is the plain
      stable sort of ``(k + batch)`` maxima per unit, so ties and NaNs resolve exactly as before;
    * maxima and moments run over column chunks of :data:`CHUNK_UNITS` units, so their float64
      temporaries stay in cache instead of being ``batch x tokens x units`` arrays.
    """

    def __init__(self, k: int, length: int, random_slot: dict[int, int], n_random: int, device: Any) -> None:
        import torch

        self.k, self.length, self.random_slot, self.n_random = k, length, random_slot, n_random
        self.device = device
        self.stats_device = device if device.type != "mps" else torch.device("cpu")  # no float64 on MPS
        # torch tensors once the first batch arrives (torch is imported lazily: Any)
        self.top_vals: Any = None
        self.top_idx: Any = None
        self.top_acts: Any = None
        self.rand_acts: Any = None
        self.slot: Any = None  # (k, units): rank j of unit u is in top_acts[slot[j, u], u]; None: in rank order
        self.shift: Any = None
        self.s1: Any = None
        self.s2: Any = None
        self.s3: Any = None
        self.s4: Any = None
        self.seen = 0

    def update(self, acts: Any, start: int) -> None:
        """Merge a batch ``(B, L, U)`` (float32) of excerpts ``start ..`` into the state."""
        import torch

        b, _, units = acts.shape
        device = acts.device
        maxes = torch.empty((b, units), dtype=acts.dtype, device=device)
        first = self.shift is None
        if first:
            self.shift = torch.empty(units, dtype=torch.float64, device=self.stats_device)
            self.s1, self.s2, self.s3, self.s4 = (torch.zeros_like(self.shift) for _ in range(4))
        for c0 in range(0, units, CHUNK_UNITS):
            c1 = min(c0 + CHUNK_UNITS, units)
            chunk = acts[:, :, c0:c1]
            torch.amax(chunk, dim=1, out=maxes[:, c0:c1])
            # shifted power sums in float64 (float32 - float64 promotes without a float64 copy of the batch)
            flat = chunk.to(self.stats_device)  # (B, L, C): a view on the same device, no copy
            if first:
                self.shift[c0:c1] = flat.mean(dim=(0, 1), dtype=torch.float64)
            d = flat - self.shift[c0:c1]
            d2 = d * d
            self.s1[c0:c1] += d.sum(dim=(0, 1))
            self.s2[c0:c1] += d2.sum(dim=(0, 1))
            self.s3[c0:c1] += (d2 * d).sum(dim=(0, 1))
            self.s4[c0:c1] += (d2 * d2).sum(dim=(0, 1))
        maxes = torch.nan_to_num(maxes, nan=-math.inf)

        # top-k by excerpt maximum; stable sort keeps the lower excerpt index first on ties
        idx = torch.arange(start, start + b, device=device).unsqueeze(1).expand(b, units)
        if self.top_vals is None or self.top_vals.shape[0] < self.k:
            self._fill(acts, maxes, idx)
        else:
            self._replace(acts, maxes, idx)

        # shared random sample
        if self.rand_acts is None:
            self.rand_acts = torch.zeros((self.n_random, units, self.length), dtype=torch.float32, device=device)
        hits = [(i, self.random_slot[start + i]) for i in range(b) if start + i in self.random_slot]
        if hits:
            rows = torch.tensor([i for i, _ in hits], device=device)
            slots = torch.tensor([s for _, s in hits], device=device)
            self.rand_acts[slots] = acts[rows].permute(0, 2, 1)
        self.seen += b

    def _fill(self, acts: Any, maxes: Any, idx: Any) -> None:
        """Fewer than k winners so far (the first batches): merge everything, in rank order."""
        import torch

        per_unit = acts.permute(0, 2, 1)  # (B, U, L)
        if self.top_vals is None:
            cand_vals, cand_idx, cand_acts = maxes, idx, per_unit
        else:
            cand_vals = torch.cat([self.top_vals, maxes])
            cand_idx = torch.cat([self.top_idx, idx])
            cand_acts = torch.cat([self.top_acts, per_unit])
        order = torch.sort(cand_vals, dim=0, descending=True, stable=True).indices[: self.k]
        self.top_vals = torch.gather(cand_vals, 0, order)
        self.top_idx = torch.gather(cand_idx, 0, order)
        self.top_acts = torch.gather(cand_acts, 0, order.unsqueeze(-1).expand(-1, -1, self.length)).contiguous()
        if self.top_vals.shape[0] == self.k:
            self.slot = torch.arange(self.k, device=acts.device).unsqueeze(1).expand_as(self.top_vals).contiguous()

    def _replace(self, acts: Any, maxes: Any, idx: Any) -> None:
        """k winners kept: the same stable sort picks the new winners; only entering excerpts are copied."""
        import torch

        k = self.k
        cand_vals = torch.cat([self.top_vals, maxes])
        # the same stable sort along each unit's candidates, on a transposed copy (twice as fast as along dim 0)
        order = torch.sort(cand_vals.t().contiguous(), dim=1, descending=True, stable=True).indices.t()
        keep, drop = order[:k], order[k:]
        self.top_vals = torch.gather(cand_vals, 0, keep)
        self.top_idx = torch.gather(torch.cat([self.top_idx, idx]), 0, keep)
        # per unit, as many excerpts enter (kept, from the batch) as old winners leave: pair them in order
        entering = (keep >= k).t().nonzero()  # (n, 2): unit, rank
        leaving = (drop < k).t().nonzero()  # (n, 2): unit, position in drop
        units = entering[:, 0]
        freed = self.slot[drop[leaving[:, 1], units], units]
        new_slot = torch.gather(self.slot, 0, keep.clamp_max(k - 1))
        new_slot[entering[:, 1], units] = freed
        self.slot = new_slot
        if units.numel():
            rows = acts[keep[entering[:, 1], units] - k, :, units]  # (n, L)
            self.top_acts.view(-1, self.length).index_copy_(0, freed * acts.shape[2] + units, rows)

    def finish(self, layer: int, random_indices: np.ndarray, start: int, stop: int | None) -> MinedLayer:
        import torch

        count = self.seen * self.length
        m1 = self.s1 / count
        e2, e3, e4 = self.s2 / count, self.s3 / count, self.s4 / count
        mu2 = (e2 - m1**2).clamp_min(0.0)
        mu3 = e3 - 3 * m1 * e2 + 2 * m1**3
        mu4 = e4 - 4 * m1 * e3 + 6 * m1**2 * e2 - 3 * m1**4
        positive = mu2 > 0
        nan = torch.full_like(mu2, math.nan)
        skew = torch.where(positive, mu3 / mu2.clamp_min(1e-300) ** 1.5, nan)
        kurt = torch.where(positive, mu4 / mu2.clamp_min(1e-300) ** 2 - 3.0, nan)

        def cpu(t: Any) -> np.ndarray:
            return t.detach().to("cpu").numpy()

        top_acts = self.top_acts
        if self.slot is not None:  # slots -> rank order
            top_acts = torch.gather(top_acts, 0, self.slot.unsqueeze(-1).expand(-1, -1, self.length))

        return MinedLayer(
            layer=layer,
            top_indices=cpu(self.top_idx).astype(np.int64),
            top_max=cpu(self.top_vals).astype(np.float32),
            top_acts=cpu(top_acts).astype(np.float32),
            random_indices=random_indices,
            random_acts=cpu(self.rand_acts).astype(np.float32),
            count=count,
            mean=cpu(self.shift + m1).astype(np.float64),
            variance=cpu(mu2).astype(np.float64),
            skewness=cpu(skew).astype(np.float64),
            kurtosis=cpu(kurt).astype(np.float64),
            start=start,
            stop=stop,
        )


def random_sample(n: int, random_k: int, seed: int) -> np.ndarray:
    """The shared random sample of excerpt indices: one seeded choice over the whole corpus (all shards)."""
    return np.random.default_rng(seed).choice(n, size=min(random_k, n), replace=False).astype(np.int64)


def mine_sources(
    model: Any,
    sources: Sequence[Any],
    token_ids: np.ndarray,
    top_k: int,
    random_k: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> list[MinedLayer]:
    """One streaming pass over excerpts ``[start, stop)`` of ``token_ids`` for every source at once.

    All sources' points are captured in the same forward pass, which ends right after the deepest one;
    each source encodes its captures (an SAE on the fly) and updates its own streaming state.  Indices
    are global (``start`` offsets them) and the random sample is drawn over the whole corpus, so shards
    mined separately merge exactly (:func:`merge_mined`).
    """
    import torch
    from tqdm.auto import tqdm

    from bench.subject.units import iter_points

    token_ids = np.asarray(token_ids, dtype=np.int64)
    if token_ids.ndim != 2 or token_ids.shape[0] == 0:
        raise ValueError(f"token_ids must be a non-empty (n_excerpts, excerpt_len) array, got {token_ids.shape}")
    if top_k < 1 or random_k < 0 or batch_size < 1:
        raise ValueError(f"need top_k >= 1, random_k >= 0, batch_size >= 1 (got {top_k}, {random_k}, {batch_size})")
    if not sources:
        raise ValueError("no sources to mine")
    n, length = token_ids.shape
    end = n if stop is None else min(stop, n)
    if not 0 <= start < end:
        raise ValueError(f"empty shard [{start}, {end}) of {n} excerpts")
    k = min(top_k, n)
    random_indices = random_sample(n, random_k, seed)
    random_slot = {int(i): s for s, i in enumerate(random_indices)}
    device = next(model.parameters()).device
    streams = [_Stream(k, length, random_slot, len(random_indices), device) for _ in sources]
    points = list(dict.fromkeys(iter_points(sources)))
    layers = sorted({s.layer for s in sources})
    desc = f"mining layer{'s' if len(layers) > 1 else ''} {','.join(map(str, layers))}"
    bar = tqdm(total=end - start, desc=desc, unit="excerpt", disable=not progress, leave=False)
    try:
        with hooks.capture(model, points, stop=True) as captured:
            for first in range(start, end, batch_size):
                batch = torch.from_numpy(token_ids[first : min(first + batch_size, end)]).to(device)
                captured.clear()
                hooks.forward(model, batch)
                missing = [p for p in points if p not in captured]
                if missing:
                    raise RuntimeError(f"hooks {[p[0].module_name(p[1]) for p in missing]} did not fire")
                for source, stream in zip(sources, streams, strict=True):
                    stream.update(source.encode(captured).float(), first)
                bar.update(batch.shape[0])
                if on_batch is not None:
                    on_batch(batch.shape[0])
    finally:
        bar.close()
    return [
        stream.finish(source.layer, random_indices, start, None if stop is None and start == 0 else end)
        for source, stream in zip(sources, streams, strict=True)
    ]


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
    """One streaming pass over ``token_ids`` for the neurons of one layer (see :func:`mine_sources`)."""
    from bench.subject.units.mlp_neuron import NeuronSource

    source = NeuronSource("mlp.post", site.site, layer)
    return mine_sources(model, [source], token_ids, top_k, random_k, seed, batch_size, progress, on_batch)[0]


def _central_sums(m: MinedLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, var = m.count, m.variance
    ok = var > 0
    m2 = var * n
    m3 = np.where(ok, np.nan_to_num(m.skewness) * np.power(np.where(ok, var, 1.0), 1.5) * n, 0.0)
    m4 = np.where(ok, (np.nan_to_num(m.kurtosis) + 3.0) * np.where(ok, var, 1.0) ** 2 * n, 0.0)
    return m2, m3, m4


def merge_mined(a: MinedLayer, b: MinedLayer) -> MinedLayer:
    """Two passes over disjoint shards of one corpus -> the pass over both (exact for top-k and samples).

    Top-k: the union of both winners sorted by maximum (descending), ties by lower excerpt index --
    the order a single pass produces.  Random sample: each shard filled the slots of the shared sample
    whose excerpts it saw.  Moments: the pairwise update of central moments (Pebay 2008).
    """
    if a.layer != b.layer or not np.array_equal(a.random_indices, b.random_indices):
        raise ValueError("merge_mined needs shards of the same layer, corpus and seed")
    k = a.top_indices.shape[0] if a.stop is None else max(a.top_indices.shape[0], b.top_indices.shape[0])
    vals = np.concatenate([a.top_max, b.top_max])
    idx = np.concatenate([a.top_indices, b.top_indices])
    acts = np.concatenate([a.top_acts, b.top_acts])
    sort_vals = np.nan_to_num(vals.astype(np.float64), nan=-np.inf)
    order = np.lexsort((idx, -sort_vals), axis=0)[:k]
    top_max = np.take_along_axis(vals, order, 0)
    top_idx = np.take_along_axis(idx, order, 0)
    top_acts = np.take_along_axis(acts, order[..., None], 0)
    b_stop = b.stop if b.stop is not None else np.iinfo(np.int64).max
    in_b = (a.random_indices >= b.start) & (a.random_indices < b_stop)
    random_acts = np.where(in_b[:, None, None], b.random_acts, a.random_acts)

    na, nb = float(a.count), float(b.count)
    n = na + nb
    delta = b.mean - a.mean
    a2, a3, a4 = _central_sums(a)
    b2, b3, b4 = _central_sums(b)
    m2 = a2 + b2 + delta**2 * na * nb / n
    m3 = a3 + b3 + delta**3 * na * nb * (na - nb) / n**2 + 3 * delta * (na * b2 - nb * a2) / n
    m4 = (a4 + b4 + delta**4 * na * nb * (na**2 - na * nb + nb**2) / n**3
          + 6 * delta**2 * (na**2 * b2 + nb**2 * a2) / n**2 + 4 * delta * (na * b3 - nb * a3) / n)  # fmt: skip
    var = m2 / n
    ok = var > 0
    safe = np.where(ok, var, 1.0)
    start, stop = min(a.start, b.start), None if a.stop is None or b.stop is None else max(a.stop, b.stop)
    return MinedLayer(
        layer=a.layer,
        top_indices=top_idx,
        top_max=top_max,
        top_acts=top_acts,
        random_indices=a.random_indices,
        random_acts=random_acts,
        count=int(n),
        mean=a.mean + delta * nb / n,
        variance=var,
        skewness=np.where(ok, (m3 / n) / safe**1.5, np.nan),
        kurtosis=np.where(ok, (m4 / n) / safe**2 - 3.0, np.nan),
        start=start,
        stop=stop,
    )
