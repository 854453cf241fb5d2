"""What each config group offers: ``neuronbench list [GROUP]`` reads it straight from the option files.

Every option file starts with a comment line saying what it is (house style), so the listing needs
no second description to keep in step.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import conf_dir
from bench.errors import UserError


def first_comment(path: Path) -> str:
    """The option file's first comment line, without the ``#``."""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def groups(root: Path | None = None) -> list[str]:
    root = root or conf_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def options(group: str | None = None, root: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """Group -> [(option, first comment line)], for one group or all of them."""
    root = root or conf_dir()
    known = groups(root)
    if group is not None and group not in known:
        raise UserError(f"list: no config group {group!r}; groups: {', '.join(known)}")
    chosen = [group] if group is not None else known
    return {g: [(p.stem, first_comment(p)) for p in sorted((root / g).glob("*.yaml"))] for g in chosen}


def format_options(listing: dict[str, list[tuple[str, str]]]) -> str:
    lines = []
    for group, items in listing.items():
        lines.append(f"{group}:")
        width = max((len(name) for name, _ in items), default=0)
        lines.extend(f"  {name:<{width}}  {comment}".rstrip() for name, comment in items)
    return "\n".join(lines)
