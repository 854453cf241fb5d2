"""Output-centric scores (Gur-Arieh et al. 2025; method.md section 7): does the explanation describe
what the unit *promotes in the output*, beside what it reads in the input?

Two views of the unit's effect on the next token, each a list of ``top_k`` promoted tokens:

* **projection** ("vocabulary projection"): the unit's output direction -- for a neuron its column of
  the MLP down projection (``down_proj`` / GPT-2's ``c_proj`` / GPT-NeoX's ``dense_4h_to_h``, found from
  the subject's hook site), for an SAE latent its decoder row -- multiplied by the unembedding matrix,
  norm-free (the final layer norm is skipped); the tokens with the largest logits.
* **boost** ("token change"): the subject runs on up to ``max_excerpts`` scoring excerpts twice,
  unchanged and with ``boost_multiple`` times the unit's maximum activation added to the unit at every
  token; the tokens whose next-token log-probability rises most on average over all positions.

Each list is compared with the explanation: ``lexical`` is the fraction of the promoted tokens that
the explanation names (a quoted string, or a content word with the same crude stem, as the lexical
proxy simulator reads explanations); ``embedding`` is the MiniLM cosine similarity between the
explanation and the promoted tokens written as a comma-separated list.  Scores:
``output_centric/{projection,boost}/{lexical,embedding}``; the promoted tokens are kept in the unit's
``extras["scorers"]["output_centric"]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.embeddings import MODEL_NAME, get_encoder
from bench.model_lock import model_lock
from bench.protocols import ScoringContext
from bench.records import ActivationRecord, Score
from bench.scorers.ablation import logprobs, neuron_source, parse_hook_site, source_for
from bench.simulators.proxy import parse_explanation, word_forms

SIMILARITIES = ("both", "lexical", "embedding")
# Names of the down projection inside an MLP whose activation module is the hook site (":output").
DOWN_PROJECTIONS = ("c_proj", "dense_4h_to_h", "down_proj", "fc2", "fc_out")


def down_projection(model: Any, hook_site: str, layer: int) -> Any:
    """The module whose input is the unit's layer of neurons (the MLP's down projection)."""
    path, where = parse_hook_site(hook_site, layer)
    module = model.get_submodule(path)
    if where == "input":
        return module
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    for name in DOWN_PROJECTIONS:
        if hasattr(parent, name):
            return getattr(parent, name)
    raise ValueError(f"no down projection ({', '.join(DOWN_PROJECTIONS)}) next to {path}")


def output_direction(projection: Any, index: int) -> Any:
    """The unit's write direction in the residual stream (a 1-D tensor of the model width)."""
    import torch

    weight = projection.weight.detach()
    if isinstance(projection, torch.nn.Linear):  # weight (out, in)
        return weight[:, index].float()
    if hasattr(projection, "nf"):  # transformers' Conv1D (GPT-2): weight (in, out)
        return weight[index, :].float()
    raise ValueError(f"unsupported down projection {type(projection).__name__}")


def projection_logits(model: Any, hook_site: str, layer: int, index: int, source: Any = None) -> Any:
    """Norm-free vocabulary projection of the unit's output direction: ``W_U @ w_out`` (vocab,).

    ``source`` (:mod:`bench.subject.units`) gives the direction of any kind (an SAE latent: its decoder
    row); None when the kind has none.  Without it the unit is an MLP neuron at ``hook_site``.
    """
    if source is not None:
        direction = source.output_direction(model, index)
        if direction is None:
            return None
    else:
        direction = output_direction(down_projection(model, hook_site, layer), index)
    unembed = model.get_output_embeddings().weight.detach().float()
    return unembed @ direction.to(unembed.device)


def boost_logprob_change(
    model: Any,
    hook_site: str,
    layer: int,
    index: int,
    records: Sequence[ActivationRecord],
    delta: float,
    source: Any = None,
) -> Any:
    """Mean over all positions of ``log p_boosted - log p_unchanged`` per vocabulary token (vocab,)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([r.token_ids for r in records], dtype=torch.long, device=device)
    source = source if source is not None else neuron_source(hook_site, layer)
    with model_lock(model):  # no other thread's hook may touch these passes (units in flight)
        base = logprobs(model, ids)
        boosted = logprobs(model, ids, source.boosted(model, index, delta))
    return (boosted - base).mean(dim=(0, 1))


def top_tokens(values: Any, tokenizer: Any, k: int) -> list[tuple[str, float]]:
    """The ``k`` highest-valued tokens whose text is not blank (decoded, with their value)."""
    import torch

    order = torch.argsort(values, descending=True).tolist()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in order:
        if i in special:
            continue
        text = tokenizer.decode([i])
        if text.strip() and "\ufffd" not in text:
            out.append((text, float(values[i])))
            if len(out) == k:
                break
    return out


def named_fraction(explanation: str, tokens: Sequence[str]) -> float:
    """Fraction of ``tokens`` the explanation names: a quoted string, or a word with a shared crude stem."""
    terms = parse_explanation(explanation)
    hits = 0
    for token in tokens:
        key = token.strip().casefold()
        if key in terms.quoted or (key.isalnum() and word_forms(key) & terms.forms):
            hits += 1
    return hits / len(tokens) if tokens else math.nan


@dataclass(frozen=True)
class OutputCentricScorer:
    """Compare the explanation with the tokens the unit promotes (vocabulary projection, boosting)."""

    top_k: int = 10
    boost_multiple: float = 1.0  # added to the unit at every token: this times its maximum activation
    max_excerpts: int = 10  # scoring excerpts (top, then random) run with and without the boost
    similarity: str = "both"  # both | lexical | embedding
    device: str = "cpu"  # of the MiniLM encoder
    cache_dir: str | None = None  # where the MiniLM wheel is unpacked when the package is not installed
    name: str = "output_centric"
    version: int = 1
    needs_calibration: bool = False

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {self.top_k}")
        if not self.boost_multiple > 0:
            raise ValueError(f"boost_multiple: must be > 0, got {self.boost_multiple}")
        if self.max_excerpts < 1:
            raise ValueError(f"max_excerpts: must be >= 1, got {self.max_excerpts}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")

    def _compare(self, view: str, explanation: str, tokens: list[str] | None, why: str | None) -> dict[str, Score]:
        out = {}
        kinds = ("lexical", "embedding") if self.similarity == "both" else (self.similarity,)
        for kind in kinds:
            key = f"{self.name}/{view}/{kind}"
            if tokens is None:
                out[key] = Score(key, math.nan, why)
            elif not explanation:
                out[key] = Score(key, math.nan, "the explanation is empty")
            elif not tokens:
                out[key] = Score(key, math.nan, "no readable promoted tokens")
            elif kind == "lexical":
                out[key] = Score(key, named_fraction(explanation, tokens))
            else:
                encoder = get_encoder(self.device, 64, 128, self.cache_dir)
                vectors = encoder.encode([explanation, ", ".join(t.strip() for t in tokens)])
                out[key] = Score(key, round(float(vectors[0] @ vectors[1]), 6))
        return out

    def score(self, ctx: ScoringContext) -> dict[str, Score]:
        explanation = " ".join(ctx.explanation.text.split())
        unit = ctx.unit.unit
        if ctx.subject is None:
            why = "no subject model given to the scorer"
            return {
                **self._compare("projection", explanation, None, why),
                **self._compare("boost", explanation, None, why),
            }
        model, tokenizer = ctx.subject.model, ctx.subject.tokenizer
        site = ctx.subject.info.hook_site
        source = source_for(ctx.subject, unit)
        details: dict[str, Any] = {}

        logits = projection_logits(model, site, unit.layer, unit.index, source)
        if logits is None:
            why = f"a {unit.kind} has no single output direction in the residual stream"
            out = self._compare("projection", explanation, None, why)
        else:
            projection = top_tokens(logits, tokenizer, self.top_k)
            details["projection"] = projection
            out = self._compare("projection", explanation, [t for t, _ in projection], None)

        records = [r for r in ctx.scoring_records if r.token_ids is not None][: self.max_excerpts]
        unit_max = ctx.unit.top[0].max_activation if ctx.unit.top else math.nan
        boost_tokens, why = None, None
        if not records:
            why = "no scoring excerpt carries token ids; re-mine the records"
        elif not (unit_max > 0):
            why = f"the unit's maximum activation is {unit_max:.4g}: nothing to boost by"
        else:
            delta = self.boost_multiple * unit_max
            change = boost_logprob_change(model, site, unit.layer, unit.index, records, delta, source)
            boosted = top_tokens(change, tokenizer, self.top_k)
            details["boost"] = boosted
            details["boost_delta"] = delta
            details["boost_excerpts"] = len(records)
            boost_tokens = [t for t, _ in boosted]
        out.update(self._compare("boost", explanation, boost_tokens, why))
        if self.similarity != "lexical":
            details["encoder"] = MODEL_NAME
        ctx.details[self.name] = details
        return out
