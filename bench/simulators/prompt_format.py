"""The ``token<TAB>value`` line format shared by the explainer and simulator prompts.

One line per token: the token string, a tab, then a value (an integer 0-10, or ``unknown``).  Token
strings are escaped so that a token can never break the line format: backslash, tab, newline and
carriage return become ``\\\\``, ``\\t``, ``\\n``, ``\\r``, and any other non-printable character
(including Unicode line separators) becomes ``\\uXXXX``.  Printable non-ASCII text (``é``, ``中``) and
leading/trailing spaces are kept as they are: they carry meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

START = "<start>"
END = "<end>"
UNKNOWN = "unknown"

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_token(token: str) -> str:
    """A token string made safe for one ``token<TAB>value`` line (no tab, no line break)."""
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def unescape_token(text: str) -> str:
    """Inverse of :func:`escape_token` (used by tests and by fakes that read prompts back)."""
    out = []
    i = 0
    simple = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            width = {"u": 4, "U": 8}.get(nxt)
            if width is not None and i + 2 + width <= len(text):
                out.append(chr(int(text[i + 2 : i + 2 + width], 16)))
                i += 2 + width
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def format_lines(tokens: Sequence[str], values: Sequence[int | str]) -> str:
    """``token<TAB>value`` lines, newline-terminated."""
    return "".join(f"{escape_token(t)}\t{v}\n" for t, v in zip(tokens, values, strict=True))


def format_excerpt(tokens: Sequence[str], values: Sequence[int | str]) -> str:
    """One excerpt between start/end markers: ``<start>\\n`` lines ``<end>\\n``."""
    return f"{START}\n{format_lines(tokens, values)}{END}\n"


def format_unknown_excerpt(tokens: Sequence[str], first_prefix: str = "") -> tuple[str, list[int]]:
    """An excerpt whose every value is ``unknown``, and the character offset of each ``unknown``.

    Offsets are relative to the returned text plus ``len(first_prefix)`` (pass the text that will
    precede it in the same message), so they can be used directly as ``SlotRequest.slots``.
    """
    parts = [f"{START}\n"]
    pos = len(first_prefix) + len(parts[0])
    slots = []
    for token in tokens:
        head = f"{escape_token(token)}\t"
        slots.append(pos + len(head))
        line = f"{head}{UNKNOWN}\n"
        parts.append(line)
        pos += len(line)
    parts.append(f"{END}\n")
    return "".join(parts), slots
