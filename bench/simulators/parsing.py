"""Reading simulator answers back: ``token<TAB>value`` lines matched to the excerpt, values, logprobs.

* :func:`match_lines` re-matches a written-back excerpt to the excerpt's tokens, in order, one line
  per token.  Tokens are written escaped (:mod:`bench.simulators.prompt_format`); a line matches when
  its token text equals the escaped token, or its unescaped text equals the token, or both are equal
  after Unicode NFC normalisation and stripping whitespace (models drop leading spaces).  A line is
  split at its **last** tab, so a tab the model wrote unescaped stays in the token; lines without a
  tab are joined to the next line with a newline (a newline the model wrote unescaped).  Text before
  ``<start>`` and after ``<end>`` is ignored.  Without ``<start>``, text before the first line that
  matches the first token (a preamble such as "Here you go:") is skipped; :func:`preamble` returns it
  so the simulator can record that it was skipped (method.md 5 (c)).  Anything else -- a line for another
  token, a missing or an extra line -- raises :class:`SimulationParseError`, which carries the raw response.
* :func:`parse_value` reads one value (an integer 0..10; anything else is *unparsed*, never 0).
* :func:`value_logprobs` turns the top logprobs at a value's position into ``{value: logprob}`` for
  :func:`~bench.simulators.expected_value.expected_value_from_logprobs`.  A token that starts before
  the value (``"\\t3"``) is handled by keeping the alternatives that share that prefix; whitespace
  around a value (``" 3"``, ``"3\\n"``) is ignored.  A value split into two tokens (``"1","0"``) is
  chained with the next position's top logprobs when the model wrote ``"1"`` there:
  P(10) = P("1")·P("0" | "1") and P(1) = P("1")·(1 − P(a digit follows | "1")).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from bench.protocols import VALUE_STRINGS, TokenLogprobs
from bench.simulators.prompt_format import END, START, escape_token, unescape_token

MAX_RAW_IN_MESSAGE = 600  # characters of the raw response quoted in an error message (all of it in .raw_response)


class SimulationParseError(RuntimeError):
    """A response that does not match the excerpt; ``raw_response`` keeps exactly what the model wrote.

    The pipeline records the unit as failed at stage ``simulate`` with this message and keeps
    ``raw_response`` in the result's extras.
    """

    def __init__(self, message: str, raw_response: str | list[str]) -> None:
        raw = raw_response if isinstance(raw_response, str) else "\n---\n".join(raw_response)
        quoted = raw if len(raw) <= MAX_RAW_IN_MESSAGE else raw[:MAX_RAW_IN_MESSAGE] + "..."
        super().__init__(f"{message}; raw response: {quoted!r}")
        self.raw_response = raw_response


@dataclass(frozen=True)
class MatchedLine:
    """One excerpt token's line in a response: the value as written and where it starts in the text."""

    token: str
    written: str  # the token as the model wrote it
    value_text: str
    value_start: int  # character offset of the value (first non-space character) in the response


def _norm(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def token_matches(written: str, token: str) -> bool:
    """Whether a line's token text stands for ``token`` (see the module docstring)."""
    if written == escape_token(token):
        return True
    plain = unescape_token(written)
    if plain == token:
        return True
    return _norm(plain) == _norm(token) or _norm(written) == _norm(token)


def _body(text: str) -> tuple[int, int]:
    """The character range between ``<start>`` (and its newline) and ``<end>``."""
    start = text.find(START)
    begin = 0
    if start >= 0:
        begin = start + len(START)
        if text.startswith("\r\n", begin):
            begin += 2
        elif text.startswith("\n", begin):
            begin += 1
    end = text.find(END, begin)
    return begin, len(text) if end < 0 else end


def _preamble_end(text: str, tokens: Sequence[str]) -> int:
    """Where the lines start when ``<start>`` is missing: at the first line that matches the first token.

    0 when there is a ``<start>`` marker, no token, or no line matching the first token (then the usual
    mismatch error names the first line, which is more useful than "nothing matched").
    """
    if START in text or not tokens:
        return 0
    pos = 0
    for raw_line in text.split("\n"):
        line = raw_line.removesuffix("\r")
        if "\t" in line and token_matches(line.rsplit("\t", 1)[0], tokens[0]):
            return pos
        pos += len(raw_line) + 1
    return 0


def preamble(text: str, tokens: Sequence[str]) -> str:
    """The text :func:`match_lines` skips before the first token's line ("" when none)."""
    return text[: _preamble_end(text, tokens)]


def match_lines(text: str, tokens: Sequence[str], what: str = "response") -> list[MatchedLine]:
    """One :class:`MatchedLine` per token, in order; :class:`SimulationParseError` on any mismatch."""
    begin, end = _body(text)
    begin = max(begin, _preamble_end(text, tokens))
    matched: list[MatchedLine] = []
    pending: list[str] = []  # lines without a tab, waiting to be joined to the next line
    pos = begin
    for raw_line in text[begin:end].split("\n"):
        line_start = pos
        pos += len(raw_line) + 1
        line = raw_line.removesuffix("\r")
        if "\t" not in line:
            pending.append(line)
            continue
        head, value = line.rsplit("\t", 1)
        written = "\n".join([*pending, head]) if pending else head
        pending = []
        if len(matched) >= len(tokens):
            raise SimulationParseError(
                f"{what}: line {len(matched) + 1} ({line!r}) is extra: the excerpt has {len(tokens)} tokens",
                text,
            )
        token = tokens[len(matched)]
        if not token_matches(written, token):
            raise SimulationParseError(
                f"{what}: line {len(matched) + 1} does not match the excerpt: expected token "
                f"{escape_token(token)!r}, got {written!r}",
                text,
            )
        lead = len(value) - len(value.lstrip())
        matched.append(MatchedLine(token, written, value.strip(), line_start + len(head) + 1 + lead))
    leftover = "\n".join(pending)
    if len(matched) < len(tokens):
        raise SimulationParseError(
            f"{what}: only {len(matched)} of {len(tokens)} tokens were written back (next expected: "
            f"{escape_token(tokens[len(matched)])!r})",
            text,
        )
    if leftover.strip():
        raise SimulationParseError(f"{what}: unexpected text after the last token: {leftover.strip()[:80]!r}", text)
    return matched


_INTEGER = re.compile(r"^\d{1,2}$")
_FIRST_INTEGER = re.compile(r"\d+")


def parse_value(text: str) -> int | None:
    """An integer 0..10 written as a value; None (unparsed) for anything else."""
    text = text.strip()
    if not _INTEGER.match(text):
        return None
    value = int(text)
    return value if 0 <= value <= 10 else None


def parse_answer(text: str) -> int | None:
    """The first integer of a free-text answer when it is 0..10 (``"7"``, ``" 7\\n"``, ``"Answer: 7"``)."""
    m = _FIRST_INTEGER.search(text)
    if m is None:
        return None
    value = int(m.group(0))
    return value if 0 <= value <= 10 else None


# ---------------------------------------------------------------------------------------------------
# Logprobs at value positions
# ---------------------------------------------------------------------------------------------------
def token_starts(text: str, logprobs: Sequence[TokenLogprobs]) -> list[int | None]:
    """Where each logprob token starts in ``text`` (None where it cannot be placed).

    Token texts normally spell the response; when they do not (byte-level pieces of non-ASCII
    characters, a prefix cut by the backend), the two are aligned character by character.
    """
    joined = "".join(t.token for t in logprobs)
    starts: list[int] = []
    pos = 0
    for t in logprobs:
        starts.append(pos)
        pos += len(t.token)
    if joined == text or text.startswith(joined):
        return list(starts)
    blocks = SequenceMatcher(None, joined, text, autojunk=False).get_matching_blocks()
    out: list[int | None] = []
    for s in starts:
        out.append(next((b + (s - a) for a, b, size in blocks if a <= s < a + size), None))
    return out


def token_at(starts: Sequence[int | None], logprobs: Sequence[TokenLogprobs], offset: int) -> tuple[int, str] | None:
    """The index of the token holding character ``offset`` and the part of it before the offset."""
    best = None
    for k, s in enumerate(starts):
        if s is not None and s <= offset:
            best = k
        elif s is not None and s > offset:
            break
    if best is None:
        return None
    start = starts[best]
    assert start is not None
    inside = offset - start
    token = logprobs[best].token
    if inside > len(token):
        return None
    return best, token[:inside]


@dataclass(frozen=True)
class ValueLogprobs:
    logprobs: dict[str, float]  # value string -> log probability (only values with mass)
    chained: bool  # "1" was chained with the next token (value split into "1","0")
    unresolved: bool  # mass on a bare "1" that could be the start of "10" and could not be chained


def _complete(rest: str) -> str:
    return rest.strip()


def value_logprobs(logprobs: Sequence[TokenLogprobs], index: int, prefix: str = "") -> ValueLogprobs:
    """{value: logprob} at ``logprobs[index]`` for a value starting ``len(prefix)`` characters into it."""
    entry = logprobs[index]
    probs: dict[str, float] = {}
    bare_one = 0.0  # "1" with nothing after it: "1" or the first piece of "10"
    has_ten = False
    for tok, lp in entry.top.items():
        if lp is None or math.isnan(lp) or not tok.startswith(prefix):
            continue
        rest = tok[len(prefix) :]
        value = _complete(rest)
        if value not in VALUE_STRINGS:
            continue
        p = math.exp(lp)
        if value == "10":
            has_ten = True
        if rest.lstrip() == "1":  # nothing written after the "1" inside this token
            bare_one += p
        else:
            probs[value] = probs.get(value, 0.0) + p
    chosen = entry.token[len(prefix) :] if entry.token.startswith(prefix) else ""
    chained = unresolved = False
    if bare_one > 0:
        if chosen.lstrip() == "1" and index + 1 < len(logprobs):
            follow = logprobs[index + 1].top
            digit = sum(math.exp(lp) for t, lp in follow.items() if t[:1].isdigit())
            zero = sum(math.exp(lp) for t, lp in follow.items() if t[:1] == "0" and not t[1:2].isdigit())
            probs["10"] = probs.get("10", 0.0) + bare_one * min(zero, 1.0)
            probs["1"] = probs.get("1", 0.0) + bare_one * max(0.0, 1.0 - digit)
            chained = True
        else:
            probs["1"] = probs.get("1", 0.0) + bare_one
            unresolved = not has_ten
    return ValueLogprobs({v: math.log(p) for v, p in probs.items() if p > 0}, chained, unresolved)


def first_answer_token(logprobs: Sequence[TokenLogprobs]) -> int | None:
    """Index of the first generated token that is not only whitespace (one-at-a-time answers)."""
    return next((k for k, t in enumerate(logprobs) if t.token.strip()), None)
