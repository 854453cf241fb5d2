"""Benchmark cards (placeholder until the card module lands): a run's card label from its config."""

from __future__ import annotations

from typing import Any


def card_label(config: dict[str, Any]) -> str | None:
    """``name@vN`` of the card a run was started from (``card=NAME``), or None for a free-form run."""
    card = config.get("card")
    if not isinstance(card, dict) or not card.get("name"):
        return None
    return f"{card['name']}@v{card.get('version', '?')}"
