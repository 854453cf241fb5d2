"""What the explainer's and simulators' prompts call a unit, per unit kind.

The prompts (conf/prompt/*.yaml, the simulators' system texts and headers) are written for MLP neurons,
as the reference's are.  An SAE latent or an attention head is not a neuron, and a judge told "neuron"
may read an explanation differently; so for other kinds the fixed prompt text is reworded -- every
"neuron"/"neurons" (any case, with "a" -> "an" where the new noun needs it) becomes the kind's noun.
For ``mlp_neuron`` (and kinds not listed) the text is returned unchanged, character for character: the
offline default's prompts, LLM cache keys and numbers do not move.  Explanations and excerpts are never
reworded, only a component's own fixed text.

Components opt in with a ``for_unit_kind(kind)`` method returning a reworded copy;
:func:`for_unit_kind` applies it where present (the run's config does, once, for its ``units.kind``).
"""

from __future__ import annotations

import re
from typing import Any

# kind -> (singular, plural)
NOUNS: dict[str, tuple[str, str]] = {
    "sae_latent": ("feature", "features"),
    "attention_head": ("attention head", "attention heads"),
    "synthetic": ("feature", "features"),
}
REFERENCE_KIND = "mlp_neuron"

_NEURON = re.compile(r"\b(?:(an?|An?) )?(neuron)(s?)\b", re.IGNORECASE)


def noun(kind: str, plural: bool = False) -> str:
    """The kind's unit noun (``neuron`` for MLP neurons and unknown kinds)."""
    singular, many = NOUNS.get(kind, ("neuron", "neurons"))
    return many if plural else singular


def reword(text: str, kind: str) -> str:
    """``text`` with its neurons called ``kind``'s units; unchanged for ``mlp_neuron`` and unlisted kinds."""
    if kind not in NOUNS or not text:
        return text

    def replace(m: re.Match[str]) -> str:
        article, word, plural = m.group(1), m.group(2), m.group(3)
        new = noun(kind, plural=bool(plural))
        if word[0].isupper():
            new = new[0].upper() + new[1:]
        if article is None:
            return new
        an = "an" if new[0].lower() in "aeiou" else "a"
        return f"{an.capitalize() if article[0].isupper() else an} {new}"

    return _NEURON.sub(replace, text)


def for_unit_kind(component: Any, kind: str) -> Any:
    """``component`` reworded for ``kind`` where it knows how (``for_unit_kind``); else itself."""
    if kind not in NOUNS:
        return component
    adapt = getattr(component, "for_unit_kind", None)
    return adapt(kind) if callable(adapt) else component
