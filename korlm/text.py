"""Pure text functions shared by the cleaning pipeline and the tokenizer steps.

Nothing here imports Beam or Kiwi, so each function is cheap to test and to call on a
worker. Normalized text keeps paragraph breaks as single ``\\n`` (a line break is the
strongest sentence-boundary hint raw web text has) and a single space everywhere else.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata
from collections.abc import Iterable

NORMALIZATION_FORMS = ("NFC", "NFKC", "none")


@functools.cache
def _invisible_chars() -> re.Pattern[str]:
    # Format characters (zero-width space/joiners, BOM, soft hyphen, bidi marks) and
    # control characters that are not whitespace. Whitespace controls (\t, \n, \r, ...)
    # are left for collapse_whitespace so that they still separate words and lines.
    # Built from the running Python's Unicode tables rather than a hand-kept list.
    chars = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if (cat := unicodedata.category(chr(c))) == "Cf" or (cat == "Cc" and not chr(c).isspace())
    ]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]+")


def strip_invisible(text: str) -> str:
    """Remove zero-width, format and non-whitespace control characters."""
    return _invisible_chars().sub("", text)


def collapse_whitespace(text: str) -> str:
    """One space between words, one ``\\n`` between non-empty lines, nothing at the ends.

    Every Unicode whitespace counts (NBSP, ideographic space U+3000, ...), and every
    Unicode line boundary (``\\r\\n``, U+2028, U+2029, ...) counts as a line break.
    """
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def normalize_text(text: str, form: str = "NFC") -> str:
    """Unicode-normalize, drop invisible characters and collapse whitespace.

    Invisible characters go first: a zero-width joiner between a leading consonant and a
    vowel jamo would otherwise block their NFC composition into one Hangul syllable.
    """
    if form not in NORMALIZATION_FORMS:
        raise ValueError(f"unknown normalization {form!r}; choose one of {', '.join(NORMALIZATION_FORMS)}")
    text = strip_invisible(text)
    if form != "none":
        text = unicodedata.normalize(form, text)
    return collapse_whitespace(text)


# Sentence-final punctuation (plus closing quotes/brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’」』)\]]*(?=\s)")


def split_sentences_regex(paragraph: str) -> list[str]:
    """Fast, dependency-free sentence split at terminal punctuation followed by a space.

    Cruder than Kiwi (it splits "2010. 11. 12." and misses sentences that end in a
    verb ending without a period) but needs no model.
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        sentence = paragraph[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def filter_sentences(
    sentences: Iterable[str], min_chars: int, max_chars: int
) -> tuple[list[str], int]:
    """Keep sentences whose length is within [min_chars, max_chars]; also return how many were dropped."""
    kept: list[str] = []
    dropped = 0
    for sentence in sentences:
        if min_chars <= len(sentence) <= max_chars:
            kept.append(sentence)
        else:
            dropped += 1
    return kept, dropped


def document_hash(normalized_text: str) -> str:
    """Stable key for exact deduplication of normalized documents."""
    return hashlib.blake2b(normalized_text.encode("utf-8"), digest_size=16).hexdigest()


def has_invalid_utf8(text: str) -> bool:
    """True for text decoded with ``errors="surrogateescape"`` from bytes that were not UTF-8
    (or carrying lone surrogates from JSON escapes): such text cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str, limit: int = 1000) -> str:
    """Text made safe to write as UTF-8 (bad bytes become U+FFFD) and cut to ``limit`` chars."""
    if has_invalid_utf8(text):
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # lone surrogates that did not come from bad bytes
            raw = text.encode("utf-8", "replace")
        text = raw.decode("utf-8", "replace")
    return text[:limit]


def count_eojeol(text: str) -> int:
    """Korean eojeol (space-separated word units) in a sentence."""
    return len(text.split())
