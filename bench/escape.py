"""Escaping of text from models and corpora for every page and table we write.

Explanations, tokens and excerpts come from language models and web text: any of them may contain
``|``, newlines, ``<script>``, a spreadsheet formula or a LaTeX command.  Every writer (leaderboard
markdown/CSV/HTML/LaTeX, the viewer) goes through these functions, so one place decides what is
inert.  Jinja2 templates use autoescape on top of :func:`html`.
"""

from __future__ import annotations

import html as _html

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
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


def html(text: object) -> str:
    """Text as inert HTML (``<``, ``>``, ``&`` and both quotes escaped; safe inside attributes)."""
    return _html.escape(str(text), quote=True)


def markdown_cell(text: object) -> str:
    """Text as one markdown table cell: pipes and backslashes escaped, newlines as spaces, HTML inert.

    GitHub renders inline HTML in markdown, so ``<`` and ``>`` are escaped as entities too.
    """
    s = " ".join(str(text).replace("\r", "\n").split("\n"))
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def csv_cell(text: object) -> str:
    """Text for a CSV cell a spreadsheet will not execute: a leading ``= + - @`` gets a ``'`` prefix.

    Numbers are written as numbers by the caller; only text goes through here (so ``-0.5`` stays a number).
    """
    s = str(text)
    return "'" + s if s.startswith(_FORMULA_START) else s


def latex_cell(text: object) -> str:
    """Text as literal LaTeX (every special character escaped; newlines as spaces)."""
    s = " ".join(str(text).split("\n"))
    return "".join(_LATEX.get(ch, ch) for ch in s)
