"""Ablation score (method.md section 6): does the explanation carry what the unit does to the output?

Run the subject on the scoring excerpts three times -- unchanged, with the unit replaced at every
token by its *calibrated* simulation, and with the unit replaced by its mean activation -- and compare
next-token distributions with the unchanged run:

    score = 1 - D(simulated) / D(mean-ablated)

1 means the simulation reproduces everything the unit does to the output; 0 means it is no better
than the mean.  D is the mean over all token positions of KL(p_unchanged || p_ablated) (default),
Jensen-Shannon divergence, or the increase in next-token loss; all three are reported.

Numerics: the subject runs in its own dtype (float32 for the tiny test models), so two passes that differ
by less than its resolution give logits that differ only by rounding -- and rounding differs between CPUs.
The log-softmax and the divergences are therefore computed in float64, and a mean-ablation divergence
below ``NO_EFFECT`` is reported as "no effect" (NaN with that reason) instead of dividing by noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.model_lock import model_lock
from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Score, UnitId

DIVERGENCES = ("kl", "js", "loss")

# Below these (nats, mean over positions) mean-ablation counts as having no effect on the output.  float32
# logits carry rounding of about 1e-7 per logit, which makes KL/JS of about 1e-13 and a loss change of about
# 1e-7: the thresholds sit orders of magnitude above rounding and far below any effect worth scoring.
NO_EFFECT: dict[str, float] = {"kl": 1e-9, "js": 1e-9, "loss": 1e-5}


def parse_hook_site(hook_site: str, layer: int) -> tuple[str, str]:
    """``"model.layers.{layer}.mlp.down_proj:input"`` -> (module path, "input" | "output")."""
    path, _, where = hook_site.partition(":")
    if where not in ("input", "output"):
        raise ValueError(f"hook site {hook_site!r} must end in ':input' or ':output'")
    return path.format(layer=layer), where


def source_for(subject: Any, unit: UnitId) -> Any:
    """The unit's activation source: the subject's own (any kind), or an MLP neuron at ``info.hook_site``."""
    find = getattr(subject, "source_for", None)
    if callable(find):
        return find(unit)
    return neuron_source(subject.info.hook_site, unit.layer)


def neuron_source(hook_site: str, layer: int) -> Any:
    from bench.subject.architectures import Site
    from bench.subject.units.mlp_neuron import NeuronSource

    return NeuronSource("mlp.post", Site.parse(hook_site), layer)


def logprobs(model: Any, ids: Any, edit: AbstractContextManager[Any] | None = None) -> Any:
    """Log-probabilities of the next token at every position, inside ``edit`` (a source's hook) if given."""
    import torch

    from bench.subject import hooks

    with edit if edit is not None else nullcontext():
        logits = hooks.forward(model, ids, logits=True)
    # float64: differences between passes can be near the model dtype's resolution (module docstring)
    return torch.log_softmax(logits.double(), dim=-1)


def next_token_logprobs(model: Any, ids: Any, site: tuple[str, str] | None, index: int, values: Any) -> Any:
    """Log-probabilities of the next token, optionally with neuron ``index`` at ``site`` overridden."""
    if site is None:
        return logprobs(model, ids)
    from bench.subject import hooks
    from bench.subject.architectures import Site

    return logprobs(model, ids, hooks.override(model, (Site(site[0], site[1]), 0), index, values))


def divergences(base: Any, other: Any, ids: Any) -> dict[str, float]:
    """Mean over positions of KL(base || other), JS(base, other), and the next-token loss increase (float64)."""
    import torch

    base, other = base.double(), other.double()
    p = base.exp()
    kl = (p * (base - other)).sum(-1)
    q = other.exp()
    m_log = torch.log((p + q) / 2 + 1e-300)
    js = 0.5 * (p * (base - m_log)).sum(-1) + 0.5 * (q * (other - m_log)).sum(-1)
    target = ids[:, 1:].unsqueeze(-1)
    loss_base = -base[:, :-1].gather(-1, target).squeeze(-1)
    loss_other = -other[:, :-1].gather(-1, target).squeeze(-1)
    return {
        "kl": float(kl.mean().clamp_min(0)),
        "js": float(js.mean().clamp_min(0)),
        "loss": float((loss_other - loss_base).mean()),
    }


def ablation_scores(
    model: Any,
    hook_site: str,
    layer: int,
    index: int,
    records: Sequence[ActivationRecord],
    simulated: Sequence[Sequence[float]],
    mean_activation: float,
    source: Any = None,
) -> dict[str, float]:
    """Raw divergences and ``1 - D(sim)/D(mean)`` per divergence, for one unit, batched over excerpts.

    ``source`` (:mod:`bench.subject.units`) says how the unit is overridden; without it the unit is an
    MLP neuron at ``hook_site``.
    """
    import torch

    if any(r.token_ids is None for r in records):
        raise ValueError("records carry no token ids; re-mine them (the record cache key includes the code version)")
    device = next(model.parameters()).device
    ids = torch.tensor([r.token_ids for r in records], dtype=torch.long, device=device)
    sim = torch.tensor(np.asarray(simulated, dtype=np.float32), device=device)
    source = source if source is not None else neuron_source(hook_site, layer)
    with model_lock(model):  # no other thread's hook may touch these passes (units in flight)
        base = logprobs(model, ids)
        with_sim = divergences(base, logprobs(model, ids, source.replaced(model, index, sim)), ids)
        mean_values = torch.full_like(sim, float(mean_activation))
        with_mean = divergences(base, logprobs(model, ids, source.replaced(model, index, mean_values)), ids)
    out: dict[str, float] = {}
    for name in DIVERGENCES:
        out[f"{name}/simulated"] = with_sim[name]
        out[f"{name}/mean_ablated"] = with_mean[name]
        out[name] = 1.0 - with_sim[name] / with_mean[name] if with_mean[name] > NO_EFFECT[name] else math.nan
    return out


@dataclass(frozen=True)
class AblationScorer:
    """Replace the unit by its calibrated simulation inside the subject; compare with mean-ablation."""

    divergence: str = "kl"  # the headline: ablation = 1 - D_sim / D_mean with this D
    name: str = "ablation"
    version: int = 1
    needs_calibration: bool = True

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence: must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        sequences = [*ctx.scoring_top, *ctx.scoring_random]
        if ctx.calibrator is None:
            reason = f"no calibration: {ctx.calibration_problem or 'calibration split not simulated'}"
            return {"ablation": Score("ablation", math.nan, reason)}
        if ctx.subject is None:
            return {"ablation": Score("ablation", math.nan, "no subject model given to the scorer")}
        simulated = [list(ctx.calibrator(np.asarray(s.expected, dtype=np.float64))) for s in sequences]
        unit = ctx.unit.unit
        raw = ablation_scores(
            ctx.subject.model,
            ctx.subject.info.hook_site,
            unit.layer,
            unit.index,
            ctx.scoring_records,
            simulated,
            ctx.unit.stats.mean,
            source=source_for(ctx.subject, unit),
        )
        out = {}
        for key, value in raw.items():
            name = f"ablation/{key}"
            reason = None
            if math.isnan(value):
                divergence = key.split("/")[0]
                what = "raise the next-token loss" if divergence == "loss" else "change the output"
                reason = (
                    f"no effect: mean-ablation does not {what} on these excerpts "
                    f"(mean {divergence} {raw.get(f'{divergence}/mean_ablated', math.nan):.3g} <= "
                    f"tolerance {NO_EFFECT[divergence]:g} nats)"
                )
            out[name] = Score(name, value, reason)
        headline = out[f"ablation/{self.divergence}"]
        out["ablation"] = Score("ablation", headline.value, headline.reason)
        return out
