"""Escaping for every page and table we write: text from models, corpora and configs is hostile.

Explanations, excerpts, model ids and run names come from LLMs, corpora and users, so any of them may
hold ``|`` (an extra markdown table cell), backticks, newlines (a broken row), ``<script>`` (raw HTML in
a rendered page) or a leading ``=`` (a spreadsheet formula when a CSV is opened).  Writers pass every
cell through one of these helpers instead of each inventing its own rules:

* :func:`markdown_cell` -- one GitHub-flavoured-markdown table cell or inline text: HTML special
  characters become entities (GFM renders raw HTML), markdown punctuation is backslash-escaped so it
  stays literal, and line breaks become spaces (a table row is one line).
* :func:`csv_cell` -- a CSV field: a string that a spreadsheet would read as a formula (``= + - @``, tab,
  carriage return first; OWASP "CSV injection") gets a leading ``'``; numbers pass unchanged.
* :func:`html_text` -- text or an attribute value in HTML.
"""

from __future__ import annotations

import html
import re
from typing import Any

_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x0b\x0c\x85]")
# Characters with a meaning in markdown inline text or tables; "\\" first so escapes are not doubled.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|#~!])")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def markdown_cell(value: Any) -> str:
    """``value`` as literal text inside one markdown table cell (also safe as inline markdown text)."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = html.escape(text, quote=False)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def csv_cell(value: Any) -> Any:
    """``value`` for ``csv.writer``: strings that would start a spreadsheet formula get a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def html_text(value: Any) -> str:
    """``value`` as HTML text or a quoted attribute value."""
    return html.escape(str(value), quote=True)


# LaTeX (leaderboard.tex): every special character literal.  Added by the leaderboard (h10b).
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_cell(value: Any) -> str:
    """``value`` as literal LaTeX text (special characters escaped, line breaks as spaces)."""
    return "".join(_LATEX.get(ch, ch) for ch in _LINE_BREAKS.sub(" ", str(value)))
