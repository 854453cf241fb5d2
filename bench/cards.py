"""Benchmark cards: a frozen benchmark definition, so numbers from different runs mean the same thing.

``neuronbench card create NAME [overrides]`` composes the config, and writes what defines the
benchmark -- subject (model, revision, weights hash, hook site), units (the exact unit list), splits
and examples per split, mining, scoring, the excerpts (dataset and fingerprint), the judge (simulator
model and estimator) and the scorers, each with its version and a hash of its settings -- to
``results/cards/NAME.vN.yaml``.  A changed definition under the same name becomes version N+1; the
same definition is not written twice.

What a card leaves free is what a leaderboard compares: the explainer and its prompt variant.
``neuronbench run card=NAME [overrides]`` runs the card's overrides plus the user's, and refuses
(one line, naming the field) any override that changes the definition.  The run's config records
``card: {name, version, hash}``, and the leaderboard refuses to rank runs of different cards together.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UserError

if TYPE_CHECKING:
    from bench.protocols import RunParts

CARDS_DIR = Path("results/cards")
# Fields that never change results (where they run, how fast, where they cache): not part of a card.
NOT_DEFINING = (
    "cache_dir",
    "progress",
    "device",
    "batch_size",
    "timeout",
    "timeout_s",
    "max_retries",
    "retries",
    "max_concurrency",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "api_key",
    "api_key_env",
    "base_url",
    "batch",
)
FREE_GROUPS = ("explainer", "prompt")  # what runs of one card compare
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def card_label(config: dict[str, Any]) -> str | None:
    """``name.vN`` of the card a run was started from (``card=NAME``), or None for a free-form run."""
    card = config.get("card")
    if not isinstance(card, dict) or not card.get("name"):
        return None
    return f"{card['name']}.v{card.get('version', '?')}"


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in NOT_DEFINING}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def definition(cfg: Any, parts: RunParts | None = None) -> dict[str, Any]:
    """The benchmark definition of a composed config (no model loaded; the subject's config only)."""
    from bench.config import plain_dict, validate
    from bench.pipeline import choose_units

    built = validate(cfg)[1] if parts is None else parts
    c = plain_dict(cfg)
    info = built.subject.info
    units = c["units"]
    keys = [
        f"{units.get('kind', 'mlp_neuron')}/L{layer}/{i}"
        for layer in units["layers"]
        for i in choose_units(layer, info.width, units["count"], units.get("indices"), units["seed"])
    ]
    estimator = built.simulator.recorded_estimator
    judge = _strip(c["simulator"])
    scorers = {name: _strip(node) for name, node in (c.get("scorer") or {}).items()}
    return {
        "subject": {
            "model": info.model,
            "revision": info.revision,
            "weights_sha256": info.weights_sha256,
            "dtype": info.dtype,
            "hook_site": info.hook_site,
            "config": _strip(c["subject"]),
        },
        "dataset": _strip(c["dataset"]),
        "units": {"config": units, "keys": keys},
        "splits": {"examples_per_split": units["examples_per_split"], "scored": c["scoring"]["split"]},
        "mining": c["mining"],
        "scoring": c["scoring"],
        "control": c["control"],
        "seed": c["seed"],
        "judge": {
            "name": judge.get("name"),
            "version": judge.get("version"),
            "model": (judge.get("llm") or {}).get("model") if isinstance(judge.get("llm"), dict) else None,
            "estimator": str(estimator) if estimator is not None else None,
            "settings_sha256": _digest(judge),
        },
        "scorers": {
            name: {"version": node.get("version"), "settings_sha256": _digest(node)} for name, node in scorers.items()
        },
    }


def excerpt_fingerprint(cfg: Any, parts: RunParts) -> str:
    """The fingerprint of the excerpts the run will record (tokenizes the corpus; cached per tokenizer)."""
    return str(parts.dataset.excerpts(parts.subject.tokenizer, seed=cfg.seed).fingerprint)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flat(a), _flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted({*fa, *fb}) if fa.get(k) != fb.get(k)]


# ----------------------------------------------------------------------------------------- files
def card_files(name: str, cards_dir: Path = CARDS_DIR) -> list[Path]:
    """Versions of a card, oldest first."""
    found = [
        (int(m.group(1)), p) for p in cards_dir.glob(f"{name}.v*.yaml") if (m := re.search(r"\.v(\d+)\.yaml$", p.name))
    ]
    return [p for _, p in sorted(found)]


def load_card(ref: str, cards_dir: Path = CARDS_DIR) -> dict[str, Any]:
    """``NAME`` (latest version) or ``NAME.vN``."""
    import yaml

    m = re.fullmatch(r"([A-Za-z0-9_-]+)(?:\.v(\d+))?", ref)
    if not m:
        raise UserError(f"card={ref}: a card is NAME or NAME.vN (letters, digits, _ and -)")
    name, version = m.group(1), m.group(2)
    files = card_files(name, cards_dir)
    if version is not None:
        files = [p for p in files if p.name == f"{name}.v{version}.yaml"]
    if not files:
        known = sorted({p.name.split(".v")[0] for p in cards_dir.glob("*.v*.yaml")})
        raise UserError(
            f"card={ref}: no such card in {cards_dir}/ (known: {', '.join(known) or 'none'}); "
            "create one with `neuronbench card create NAME [overrides]`"
        )
    return yaml.safe_load(files[-1].read_text())


def create(name: str, overrides: list[str], cards_dir: Path = CARDS_DIR, fingerprint: bool = True) -> Path:
    """Write ``NAME.vN.yaml`` for this definition (a new version only when the definition changed)."""
    import yaml

    from bench.config import compose, validate

    if not _NAME.match(name):
        raise UserError(f"card create: name {name!r} must be letters, digits, _ or -")
    free = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] in FREE_GROUPS]
    if free:
        raise UserError(
            f"card create: {' '.join(free)} sets what a card leaves free ({', '.join(FREE_GROUPS)}: "
            "runs of one card compare them); drop it"
        )
    if any(o.lstrip("+~").startswith("card") for o in overrides):
        raise UserError("card create: a card cannot be made from another card; give plain overrides")
    cfg = compose(overrides)
    _settings, parts = validate(cfg)
    body = definition(cfg, parts)
    body["excerpt_fingerprint"] = excerpt_fingerprint(cfg, parts) if fingerprint else None
    digest = _digest(body)
    files = card_files(name, cards_dir)
    if files:
        latest = yaml.safe_load(files[-1].read_text())
        if latest.get("hash") == digest:
            return files[-1]
        version = int(latest["version"]) + 1
    else:
        version = 1
    card = {"name": name, "version": version, "hash": digest, "overrides": list(overrides), "definition": body}
    cards_dir.mkdir(parents=True, exist_ok=True)
    path = cards_dir / f"{name}.v{version}.yaml"
    header = (
        f"# Benchmark card {name} v{version}: run it with `neuronbench run card={name}` "
        f"(free: {', '.join(FREE_GROUPS)}).\n"
        "# Written by `neuronbench card create`; do not edit (the hash would not match).\n"
    )
    path.write_text(header + yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110))
    return path


def apply(overrides: list[str], cards_dir: Path = CARDS_DIR) -> list[str]:
    """Expand ``card=NAME`` in run overrides into the card's overrides plus the user's and the card's
    identity (``+card.name=...``), after checking that the user's overrides keep the definition.
    Overrides without ``card=`` come back unchanged."""
    refs = [o for o in overrides if o.startswith("card=")]
    if not refs:
        return overrides
    if len(refs) > 1 or "," in refs[0]:
        raise UserError("card=: give one card per run (a sweep over cards mixes benchmarks)")
    from bench.config import compose, expand_sweep, validate

    card = load_card(refs[0].removeprefix("card="), cards_dir)
    user = [o for o in overrides if o not in refs]
    combined = [*card["overrides"], *user]
    label = f"{card['name']}.v{card['version']}"
    fixed_fingerprint = card["definition"].get("excerpt_fingerprint")
    for i, combo in enumerate(expand_sweep(combined)):
        cfg = compose(combo)
        _settings, parts = validate(cfg)
        got = definition(cfg, parts)
        for key, fixed, new in differences(
            {k: v for k, v in card["definition"].items() if k != "excerpt_fingerprint"}, got
        ):
            raise UserError(
                f"card {label} fixes {key} = {json.dumps(fixed, default=str)}; these overrides make it "
                f"{json.dumps(new, default=str)}: drop the override (a card leaves only {', '.join(FREE_GROUPS)} free) "
                "or create a new card with `neuronbench card create`"
            )
        if i == 0 and fixed_fingerprint:  # the same corpus and tokenizer on this machine (one combo fixes both)
            here = excerpt_fingerprint(cfg, parts)
            if here != fixed_fingerprint:
                raise UserError(
                    f"card {label} was made on excerpts with fingerprint {fixed_fingerprint}, but this machine "
                    f"builds {here} (the corpus files or the tokenizer differ): fix the corpus cache "
                    "(NEURONBENCH_CACHE) or create a new card"
                )
    return [*combined, f"+card.name={card['name']}", f"+card.version={card['version']}", f"+card.hash={card['hash']}"]
