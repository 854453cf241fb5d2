"""A proxy simulator that needs no language model: lexical matching of tokens against the explanation.

It predicts each token's activation (0-10 scale) from what the explanation *says literally*:

* **quoted strings** (``"..."``, ``'...'``, curly quotes, backticks) -- the token-list baseline writes
  explanations like ``tokens such as " the", "of", "and"``.  A token whose whitespace-stripped,
  case-folded text equals a quoted string scores ``quoted_score`` (10); a run of consecutive tokens
  that spells a quoted string (``" New", " York"`` for ``"New York"``) scores it on every token.
  A quoted string that is only whitespace (``" "``, ``"\\n"``) matches tokens with exactly that text.
* **content words** of the explanation (case-folded, stop words and generic explanation vocabulary
  such as "tokens" or "related" dropped): a token word with the same crude stem scores ``word_score``;
  one that shares a prefix of at least ``min_prefix`` characters with an explanation word scores
  ``prefix_score``.
* **fuzzy**: otherwise a token scores ``fuzzy_score`` (1) times its best character-trigram Dice
  similarity with a quoted string or content word -- a weak graded signal for spelling variants and
  sub-word pieces, which also keeps a simulation from being constant (an undefined correlation) just
  because nothing in the excerpts matches exactly.
* **neighbours**: every token also gets ``neighbour_weight`` times the strongest match within
  ``neighbour_window`` positions (added, capped at 10), since units often fire next to their trigger.

It is a *proxy*: the estimator is ``proxy/lexical`` in every result, no LLM is called, and the usage
is zero.  Deterministic, pure Python: ~4,000 (cold caches) to ~25,000 64-token excerpts per second.
"""

from __future__ import annotations

import functools
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.records import ActivationRecord, SequenceSimulation, Simulation, Usage

MAX_VALUE = 10.0

# Double quotes (with backslash escapes), curly quotes, backticks; single quotes only when they are
# not apostrophes (no word character outside them: 'cat' yes, it's / dogs' no).
_QUOTED = re.compile(
    r'"((?:[^"\\]|\\.)*)"'
    r"|“([^”]*)”"
    r"|‘([^’]*)’"
    r"|`([^`]*)`"
    r"|(?<!\w)'([^'\n]+?)'(?!\w)"
)
_WORD = re.compile(r"[^\W_]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either etc few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves s t d ll m re ve e g eg ie i.e e.g via
    """.split()
)

# Words explanations use about themselves rather than about the text: they must not match tokens.
EXPLANATION_WORDS = frozenset(
    """
    token tokens word words phrase phrases text texts term terms mention mentions mentioning mentioned
    reference references referring refers related relating relates like including include includes
    especially particularly often usually mostly mainly typically various different certain several
    many main thing things find finds finding detect detects detecting activate activates activating
    activation fire fires firing appear appears appearing occurrence occurrences instance instances
    example examples context contexts sequence sequences pattern patterns part parts form forms
    follow following followed precede preceding preceded unit neuron looking look looks kind kinds type
    types use used using uses string strings character characters letter letters symbol symbols
    """.split()
)

_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "ers", "er", "est", "es", "ed", "ly", "s")


def stem(word: str) -> str:
    """A crude suffix-stripping stem (good enough to meet ``cats``/``cat``, ``running``/``run``)."""
    for suffix in _SUFFIXES:
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            base = word[: -len(suffix)]
            if suffix in ("ies", "ied"):
                return base + "y"
            if len(base) >= 4 and base[-1] == base[-2] and base[-1] not in "aeiouls":
                base = base[:-1]  # running -> runn -> run
            return base
    return word


def word_forms(word: str) -> frozenset[str]:
    """The word, its crude stem and (for a plural-looking word) the word without its final ``s``."""
    forms = {word, stem(word)}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    return frozenset(forms)


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of a (stripped, case-folded) text with boundary marks: ``cat`` -> <ca cat at>."""
    marked = f"<{text}>"
    return frozenset(marked[i : i + 3] for i in range(len(marked) - 2))


def _unescape(text: str) -> str:
    """Backslash escapes inside a double-quoted string (``\\n``, ``\\"``, ``\\u00e9`` ...), as the
    explainers' prompt format writes tokens."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        width = {"u": 4, "U": 8}.get(text[i + 1]) if ch == "\\" and i + 1 < len(text) else None
        digits = text[i + 2 : i + 2 + width] if width else ""
        if width and len(digits) == width and all(c in string.hexdigits for c in digits):
            code = int(digits, 16)
            if code <= sys.maxunicode:
                out.append(chr(code))
                i += 2 + width
                continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass(frozen=True, eq=False)
class ExplanationTerms:
    """What an explanation names: quoted strings (exact, multi-token, whitespace-only) and words.

    Compared and hashed by identity: :func:`parse_explanation` returns one object per text.
    """

    quoted: frozenset[str]  # stripped, case-folded quoted strings (one token, or a run of tokens)
    whitespace: frozenset[str]  # quoted strings that are only whitespace, kept raw
    forms: frozenset[str]  # content words (in and outside quotes) and their stems
    words: tuple[str, ...]  # content words, for prefix matching
    gram_index: dict[str, tuple[int, ...]]  # trigram -> the terms (quoted strings, words) that have it
    gram_sizes: tuple[int, ...]  # number of distinct trigrams of each term
    max_quoted_len: int


@functools.lru_cache(maxsize=4096)
def parse_explanation(explanation: str) -> ExplanationTerms:
    """Quoted strings and content words of an explanation (cached: the same text is parsed once)."""
    quoted: set[str] = set()
    whitespace: set[str] = set()
    pieces_outside: list[str] = []
    last = 0
    for match in _QUOTED.finditer(explanation):
        pieces_outside.append(explanation[last : match.start()])
        last = match.end()
        raw = next(g for g in match.groups() if g is not None)
        if match.group(1) is not None:
            raw = _unescape(raw)
        if not raw:
            continue
        key = raw.strip().casefold()
        if not key:
            whitespace.add(raw)
            continue
        quoted.add(key)
        pieces_outside.append(" " + key + " ")
    pieces_outside.append(explanation[last:])
    words: dict[str, None] = {}
    for word in _WORD.findall(" ".join(pieces_outside).casefold()):
        if word in STOP_WORDS or word in EXPLANATION_WORDS or (len(word) < 2 and not word.isdigit()):
            continue
        words.setdefault(word, None)
    term_grams = list(dict.fromkeys(trigrams(t) for t in [*sorted(quoted), *words]))
    index: dict[str, list[int]] = {}
    for i, grams in enumerate(term_grams):
        for gram in grams:
            index.setdefault(gram, []).append(i)
    return ExplanationTerms(
        quoted=frozenset(quoted),
        whitespace=frozenset(whitespace),
        forms=frozenset(f for w in words for f in word_forms(w)),
        words=tuple(words),
        gram_index={g: tuple(ids) for g, ids in sorted(index.items())},
        gram_sizes=tuple(len(g) for g in term_grams),
        max_quoted_len=max((len(q) for q in quoted), default=0),
    )


@functools.lru_cache(maxsize=256)
def _prefixes(terms: ExplanationTerms, length: int) -> frozenset[str]:
    return frozenset(w[:length] for w in terms.words if len(w) >= length)


@functools.lru_cache(maxsize=64)
def _score_cache(simulator: LexicalProxySimulator, explanation: str) -> dict[str, float]:
    """Per (simulator settings, explanation): token string -> its own score (a pure function of both)."""
    return {}


@dataclass(frozen=True)
class LexicalProxySimulator:
    """Proxy simulator (no LLM): a token's activation from lexical matches with the explanation.

    Scores, on the simulator's 0-10 scale: ``quoted_score`` for a token that is a quoted string of the
    explanation, ``word_score`` for a token word with the stem of an explanation word, ``prefix_score``
    for a shared prefix of ``min_prefix`` characters, up to ``fuzzy_score`` for shared character
    trigrams, plus ``neighbour_weight`` times the best match within ``neighbour_window`` tokens.
    The estimator ``proxy/lexical`` marks every result as a proxy.
    """

    name: str = "proxy_lexical"
    version: int = 1
    quoted_score: float = 10.0
    word_score: float = 6.0
    prefix_score: float = 3.0
    min_prefix: int = 4
    fuzzy_score: float = 1.0
    neighbour_weight: float = 0.2
    neighbour_window: int = 1

    # Not dataclass fields: a proxy needs no LLM backend and no capability of one.
    required_capabilities: ClassVar[frozenset[Any]] = frozenset()
    llm: ClassVar[None] = None
    top_k: ClassVar[None] = None  # reads no logprobs
    recorded_taper: ClassVar[None] = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must be a non-empty string")
        for field_name in ("quoted_score", "word_score", "prefix_score", "fuzzy_score"):
            value = getattr(self, field_name)
            if not 0 <= value <= MAX_VALUE:
                raise ValueError(f"{field_name}: must be between 0 and 10, got {value}")
        if not 0 <= self.neighbour_weight <= 1:
            raise ValueError(f"neighbour_weight: must be between 0 and 1, got {self.neighbour_weight}")
        if self.neighbour_window < 0:
            raise ValueError(f"neighbour_window: must be >= 0, got {self.neighbour_window}")
        if self.min_prefix < 1:
            raise ValueError(f"min_prefix: must be >= 1, got {self.min_prefix}")

    @property
    def estimator(self) -> str:
        return "proxy/lexical"

    @property
    def recorded_estimator(self) -> str:
        return self.estimator

    # -- matching ------------------------------------------------------------------------------------
    def token_score(self, token: str, terms: ExplanationTerms) -> float:
        """The match score of one token on its own (no neighbours, no multi-token phrases)."""
        if token in terms.whitespace:
            return self.quoted_score
        key = token.strip().casefold()
        if not key:
            return 0.0
        if key in terms.quoted:
            return self.quoted_score
        best = 0.0
        if self.fuzzy_score > 0 and terms.gram_index:
            mine = trigrams(key)
            shared: dict[int, int] = {}
            for gram in mine:
                for i in terms.gram_index.get(gram, ()):
                    shared[i] = shared.get(i, 0) + 1
            if shared:
                dice = max(2 * n / (len(mine) + terms.gram_sizes[i]) for i, n in shared.items())
                best = self.fuzzy_score * dice
        prefixes = _prefixes(terms, self.min_prefix)
        for word in _WORD.findall(key):
            if word in STOP_WORDS:
                continue
            if not word_forms(word).isdisjoint(terms.forms):
                best = max(best, self.word_score)
            elif len(word) >= self.min_prefix and word[: self.min_prefix] in prefixes:
                best = max(best, self.prefix_score)
        return best

    def _phrase_spans(self, tokens: Sequence[str], terms: ExplanationTerms, base: list[float]) -> None:
        """Mark runs of two or more consecutive tokens that spell a quoted string."""
        n = len(tokens)
        for start in range(n - 1):
            if not tokens[start].strip():
                continue
            text = tokens[start]
            for end in range(start + 1, n):
                text += tokens[end]
                key = text.strip().casefold()
                if len(key) > terms.max_quoted_len:
                    break
                if key in terms.quoted and tokens[end].strip():
                    for i in range(start, end + 1):
                        base[i] = self.quoted_score

    def predict(self, tokens: Sequence[str], terms: ExplanationTerms, cache: dict[str, float]) -> list[float]:
        """Predicted 0-10 values of one excerpt; ``cache`` maps token strings to their own scores."""
        base = []
        for token in tokens:
            score = cache.get(token)
            if score is None:
                score = cache[token] = self.token_score(token, terms)
            base.append(score)
        if terms.quoted:
            self._phrase_spans(tokens, terms, base)
        if self.neighbour_weight == 0 or self.neighbour_window == 0 or len(base) < 2:
            return base
        near = [0.0] * len(base)
        for d in range(1, min(self.neighbour_window, len(base) - 1) + 1):
            before = [0.0] * d + base[:-d]
            after = base[d:] + [0.0] * d
            near = [max(a, b, c) for a, b, c in zip(near, before, after, strict=True)]
        w = self.neighbour_weight
        return [min(MAX_VALUE, b + w * m) if m else b for b, m in zip(base, near, strict=True)]

    # -- the Simulator contract ----------------------------------------------------------------------
    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> Simulation:
        terms = parse_explanation(explanation)
        cache = _score_cache(self, explanation)
        sequences = [
            SequenceSimulation(
                tokens=list(r.tokens),
                expected=self.predict(r.tokens, terms, cache),
                true_activations=list(r.activations),
                unparsed=0,
                distributions=None,
            )
            for r in records
        ]
        return Simulation(
            sequences=sequences,
            simulator=self.name,
            estimator=self.estimator,
            usage=Usage(),
            meta={
                "proxy": True,
                "method": "lexical match of tokens (and neighbours) against quoted strings and content "
                "words of the explanation (exact, stem, prefix, character trigrams); no language model",
                "version": self.version,
                "quoted_strings": len(terms.quoted) + len(terms.whitespace),
                "content_words": len(terms.words),
            },
        )
