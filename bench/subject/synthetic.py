"""Synthetic units: a rule over the corpus's tokens with a known true explanation (method.md sections 1, 7).

A synthetic unit is one of

* ``tokens``: the token's text (whitespace stripped, case-folded) is one of the listed strings;
* ``regex``: ``re.search(regex, token)`` matches the token's text as decoded (leading space kept);
* ``positions`` / ``every`` (+ ``offset``): the token's position in its excerpt is listed (negative
  counts from the end) / is ``offset`` modulo ``every``;
* ``mixture``: a weighted sum of other rules of the same list, by name;

each firing with ``value`` (default 1.0) where it matches and 0 elsewhere.  Its ``explanation`` is the
ground truth a judge should reward.  No model runs: the activations need only the excerpts' token ids
and the subject tokenizer's token strings, so recording takes about a second for the offline corpus.

Records are built exactly like mined ones: the same selection rules as the streaming miner (top-k by
excerpt maximum, ties to the lower excerpt index; one seeded random sample shared by all units; moments
over every token) into a :class:`~bench.subject.mining.MinedLayer`, whose ``unit_records`` builds the
:class:`~bench.records.UnitRecord` s -- so splits, simulators and input-side scorers see no difference.
Scores that need the subject model (ablation, output-centric) are undefined for them and refused at
config time (:func:`check_scorers`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.records import UnitRecord

if TYPE_CHECKING:
    from bench.protocols import Scorer

KIND = "synthetic"
# Scorers that run the subject model on the unit; undefined for units the subject does not compute.
SUBJECT_SCORERS = ("ablation", "output_centric")
_RULE_KEYS = ("tokens", "regex", "positions", "every", "mixture")


@dataclass(frozen=True)
class SyntheticRule:
    """One synthetic unit: exactly one of ``tokens``, ``regex``, ``positions``/``every``, ``mixture``."""

    name: str
    explanation: str
    tokens: tuple[str, ...] | None = None
    regex: str | None = None
    positions: tuple[int, ...] | None = None
    every: int | None = None
    offset: int = 0
    mixture: tuple[tuple[str, float], ...] | None = None
    value: float = 1.0

    @property
    def kind(self) -> str:
        return next(k for k in _RULE_KEYS if getattr(self, k) is not None)


def parse_rules(items: Sequence[Mapping[str, Any]] | None) -> list[SyntheticRule]:
    """Rules from the ``units.rules`` list; a problem raises ``ValueError("rules: ...")`` (-> units.rules)."""
    if not items:
        raise ValueError("rules: give at least one synthetic rule (see conf/units/synthetic.yaml)")
    rules: list[SyntheticRule] = []
    for i, item in enumerate(items):
        where = f"rules: rule {i}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a mapping: name, explanation and one of {', '.join(_RULE_KEYS)}")
        unknown = set(item) - {"name", "explanation", "offset", "value", *_RULE_KEYS}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
        given = [k for k in _RULE_KEYS if item.get(k) is not None and k != "every"]
        if item.get("every") is not None and "positions" not in given:
            given.append("every")
        if len(given) != 1:
            raise ValueError(f"{where} needs exactly one of tokens, regex, positions, every, mixture (got {given})")
        name, explanation = str(item.get("name") or f"rule{i}"), item.get("explanation")
        if not isinstance(explanation, str) or not explanation.strip():
            raise ValueError(f"{where} ({name}) needs a non-empty 'explanation' (its known true explanation)")
        kind = given[0]
        kwargs: dict[str, Any] = {"name": name, "explanation": explanation, "value": float(item.get("value", 1.0))}
        if kind == "tokens":
            kwargs["tokens"] = tuple(str(t) for t in item["tokens"])
        elif kind == "regex":
            try:
                re.compile(str(item["regex"]))
            except re.error as err:
                raise ValueError(f"{where} ({name}): invalid regex {item['regex']!r}: {err}") from None
            kwargs["regex"] = str(item["regex"])
        elif kind == "positions":
            kwargs["positions"] = tuple(int(p) for p in item["positions"])
        elif kind == "every":
            kwargs["every"], kwargs["offset"] = int(item["every"]), int(item.get("offset", 0))
            if kwargs["every"] < 1:
                raise ValueError(f"{where} ({name}): every must be >= 1")
        else:
            mix = item["mixture"]
            if not isinstance(mix, Mapping) or not mix:
                raise ValueError(f"{where} ({name}): mixture maps rule names to weights, e.g. {{the: 1.0, comma: 0.5}}")
            kwargs["mixture"] = tuple((str(k), float(v)) for k, v in mix.items())
        rules.append(SyntheticRule(**kwargs))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"rules: names must be distinct, got {names}")
    plain = {r.name for r in rules if r.mixture is None}
    for r in rules:
        for part, _ in r.mixture or ():
            if part not in plain:
                raise ValueError(f"rules: mixture {r.name!r} names {part!r}, not a non-mixture rule of the list")
    return rules


def check_units(units: Any) -> None:
    """``units`` node checks for ``kind: synthetic`` (called from ``UnitsConfig.__post_init__``)."""
    width = len(parse_rules(units.rules))
    if units.indices is not None and max(units.indices) >= width:
        raise ValueError(f"indices: {list(units.indices)} out of range; there are {width} rules (0..{width - 1})")
    if units.indices is None and units.count > width:
        raise ValueError(f"count: {units.count} exceeds the {width} synthetic rules; lower units.count")
    if list(units.layers) != [0]:
        raise ValueError(f"layers: synthetic units have no layers; use units.layers=[0], got {list(units.layers)}")


def default_scorer_names() -> list[str]:
    """The scorer list ``conf/config.yaml`` selects when the user gives no ``scorer=``."""
    import yaml

    from bench.config import conf_dir

    defaults = yaml.safe_load((conf_dir() / "config.yaml").read_text()).get("defaults") or []
    chosen: Any = next((d["scorer"] for d in defaults if isinstance(d, dict) and "scorer" in d), [])
    return [chosen] if isinstance(chosen, str) else list(chosen)


def drop_default_subject_scorers(cfg: Any) -> list[str]:
    """``units=synthetic`` with the *default* scorer list: drop the scorers it cannot have (one logged line).

    The default list (correlation + ablation) is made for units of the subject; a rule over tokens has no
    ablation, and typing ``scorer=[correlation]`` for every synthetic run is noise.  Hydra cannot let
    ``conf/units/synthetic.yaml`` override the scorer group (an option file may only override groups that
    come after it in ``config.yaml``'s defaults list, and ``units`` comes before ``scorer``), so this is
    done on the composed config, before it is validated and hashed.  A list the user chose that differs
    from the default is left alone and refused by :func:`check_scorers` (an explicit ``scorer=`` equal to
    the default list is treated like the default).  Returns the dropped names.
    """
    import logging

    from omegaconf import open_dict

    units = cfg.get("units") or {}
    scorers = cfg.get("scorer") or {}
    if units.get("kind") != KIND or list(scorers) != default_scorer_names():
        return []
    drop = [name for name in scorers if name in SUBJECT_SCORERS]
    if drop and len(drop) < len(scorers):
        with open_dict(cfg):
            for name in drop:
                del cfg.scorer[name]
        logging.getLogger(__name__).info(
            "units=synthetic: scoring with scorer=[%s] (%s undefined for rules over tokens); choose with scorer=[...]",
            ",".join(cfg.scorer),
            ", ".join(drop),
        )
    return drop


def check_scorers(kind: str, scorers: Mapping[str, Scorer], why: str) -> None:
    """Refuse scorers that need the subject model to compute the unit (one line naming the fix)."""
    for name, scorer in scorers.items():
        if name in SUBJECT_SCORERS or scorer.needs_subject:
            keep = [n for n, s in scorers.items() if n not in SUBJECT_SCORERS and not s.needs_subject]
            keep = keep or ["correlation"]
            raise ConfigError(f"scorer.{name}", f"undefined for {kind}: {why}; use scorer=[{','.join(keep)}]")


# ---------------------------------------------------------------------------------------------------
# Activations and records
# ---------------------------------------------------------------------------------------------------
def activations(rules: Sequence[SyntheticRule], token_ids: Any, strings: Mapping[int, str]) -> Any:
    """``(units, n_excerpts, excerpt_len)`` float32 activations of every rule on ``token_ids``."""
    import numpy as np

    token_ids = np.asarray(token_ids, dtype=np.int64)
    n, length = token_ids.shape
    vocab = np.unique(token_ids)
    where = np.searchsorted(vocab, token_ids)  # token id -> position in vocab
    texts = [strings[int(t)] for t in vocab]
    plain: dict[str, Any] = {}
    for rule in rules:
        if rule.tokens is not None:
            wanted = {t.strip().casefold() for t in rule.tokens}
            hit = np.array([s.strip().casefold() in wanted for s in texts], dtype=bool)[where]
        elif rule.regex is not None:
            pattern = re.compile(rule.regex)
            hit = np.array([bool(pattern.search(s)) for s in texts], dtype=bool)[where]
        elif rule.positions is not None:
            mask = np.zeros(length, dtype=bool)
            mask[[p for p in rule.positions if -length <= p < length]] = True
            hit = np.broadcast_to(mask, (n, length))
        elif rule.every is not None:
            hit = np.broadcast_to(np.arange(length) % rule.every == rule.offset % rule.every, (n, length))
        else:
            continue
        plain[rule.name] = hit.astype(np.float32) * np.float32(rule.value)
    out = np.zeros((len(rules), n, length), dtype=np.float32)
    for u, rule in enumerate(rules):
        if rule.mixture is None:
            out[u] = plain[rule.name]
        else:
            for part, weight in rule.mixture:
                out[u] += np.float32(weight) * plain[part]
            out[u] *= np.float32(rule.value)
    return out


def select(acts: Any, layer: int, top_k: int, random_k: int, seed: int) -> Any:
    """A :class:`~bench.subject.mining.MinedLayer` from all activations at once, with the streaming
    miner's rules: top-k by excerpt maximum (stable: ties keep the lower excerpt index), one seeded
    random sample shared by all units (the same draw as the miner's), population moments over every token."""
    import numpy as np

    from bench.subject.mining import MinedLayer

    units, n, length = acts.shape
    k = min(top_k, n)
    random_indices = np.random.default_rng(seed).choice(n, size=min(random_k, n), replace=False).astype(np.int64)
    maxes = acts.max(axis=2)  # (units, n)
    top_indices = np.stack([np.argsort(-maxes[u], kind="stable")[:k] for u in range(units)], axis=1)  # (k, units)
    cols = np.arange(units)[None, :]
    flat = acts.reshape(units, -1).astype(np.float64)
    mean = flat.mean(axis=1)
    d = flat - mean[:, None]
    mu2, mu3, mu4 = (d**2).mean(axis=1), (d**3).mean(axis=1), (d**4).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(mu2 > 0, mu3 / np.where(mu2 > 0, mu2, 1.0) ** 1.5, math.nan)
        kurt = np.where(mu2 > 0, mu4 / np.where(mu2 > 0, mu2, 1.0) ** 2 - 3.0, math.nan)
    return MinedLayer(
        layer=layer,
        top_indices=top_indices.astype(np.int64),
        top_max=maxes.T[top_indices, cols].astype(np.float32),
        top_acts=acts.transpose(1, 0, 2)[top_indices, cols].astype(np.float32),  # (k, units, len)
        random_indices=random_indices,
        random_acts=acts[:, random_indices, :].transpose(1, 0, 2).astype(np.float32),  # (r, units, len)
        count=n * length,
        mean=mean,
        variance=mu2,
        skewness=skew,
        kurtosis=kurt,
    )


def load_synthetic_records(settings: Any, subject: Any, dataset: Any) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
    """The chosen synthetic units' records and their provenance (the rules, the excerpts, the tokenizer)."""
    import numpy as np

    from bench.pipeline import choose_units
    from bench.subject.mining import token_strings

    units = settings.units
    rules = parse_rules(units.rules)
    tokenizer = subject.tokenizer
    excerpts = dataset.excerpts(tokenizer, seed=settings.seed)
    strings = token_strings(tokenizer, np.unique(excerpts.token_ids))
    chosen = choose_units(0, len(rules), units.count, units.indices, units.seed)
    acts = activations(rules, excerpts.token_ids, strings)
    mined = select(acts, 0, settings.mining.top_k, settings.mining.random_k, settings.seed)
    records = mined.unit_records(excerpts.token_ids, strings, units=chosen, kind=KIND)
    provenance = {
        "subject": asdict(subject.info),  # only its tokenizer was used: no forward pass
        "excerpts": excerpts.fingerprint,
        "synthetic": {"rules": [asdict(r) for r in rules]},
    }
    return {r.unit.key: r for r in records}, provenance


def true_explanations(units: Any) -> dict[int, str]:
    """Unit index -> its rule's known explanation."""
    return {i: r.explanation for i, r in enumerate(parse_rules(units.rules))}
