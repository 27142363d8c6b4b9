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


# ---------------------------------------------------------------- normalization extras
# Emoji: the emoji blocks of the SMP, the BMP dingbats that phones draw as emoji, the
# variation selectors that turn a symbol into an emoji, keycap and tag characters. The
# plain symbols Korean text uses as punctuation (♡ ♥ ★ ☆ ♪ ※ ☞) are kept.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u2604\u2614\u2615\u26a1\u26bd\u26be\u26c4\u26c5\u26d4"
    "\u26ea\u26f5\u26fa\u26fd\u2705\u2708-\u270d\u2728\u274c\u274e\u2753-\u2755\u2757"
    "\u2764\u2795-\u2797\u27a1\u27b0\u27bf\u2b50\u2b55\ufe0e\ufe0f\u20e3\U000e0020-\U000e007f]+"
)
_HANJA = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+")


def _is_korean_or_common(ch: str) -> bool:
    o = ord(ch)
    return (
        o < 0x250  # ASCII and Latin-1/Latin Extended letters
        or 0xAC00 <= o <= 0xD7A3  # Hangul syllables
        or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F  # jamo, compatibility jamo
        or 0xA960 <= o <= 0xA97F or 0xD7B0 <= o <= 0xD7FF
        or not ch.isalpha()  # punctuation, digits, symbols are script-neutral
    )


_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def remove_emoji(text: str) -> str:
    return _EMOJI.sub("", text)


def remove_hanja(text: str) -> str:
    return _HANJA.sub("", text)


def remove_foreign_scripts(text: str, keep_hanja: bool = True) -> str:
    """Drop letters of scripts other than Hangul and Latin (kana, Cyrillic, Thai, ...);
    hanja stays unless ``keep_hanja`` is False."""

    def strip(m: re.Match) -> str:
        return "".join(c for c in m.group(0)
                       if _is_korean_or_common(c) or (keep_hanja and _HANJA.match(c)))

    return _NON_ASCII_RUN.sub(strip, text)


def cap_repeats(text: str, cap: int) -> str:
    """Cap runs of one repeated character at ``cap`` (``ㅋㅋㅋㅋㅋ`` -> ``ㅋㅋ`` for 2).

    Digits and whitespace are never capped (``1000000`` is a number, not a laugh).
    ``cap`` 0 leaves the text alone.
    """
    if cap <= 0:
        return text
    return _repeat_pattern(cap).sub(lambda m: m.group(1) * cap, text)


@functools.cache
def _repeat_pattern(cap: int) -> re.Pattern[str]:
    return re.compile(r"([^\d\s])\1{" + str(cap) + ",}")


def normalize_extras(text: str, *, max_repeat: int = 0, emoji: bool = False, hanja: bool = False,
                     foreign_scripts: bool = False) -> str:
    """The optional normalizations, applied after PII scrubbing (capping ``www`` first
    would hide a URL from the scrubber); whitespace is collapsed again when any
    character was removed."""
    before = text
    if emoji:
        text = remove_emoji(text)
    if hanja:
        text = remove_hanja(text)
    if foreign_scripts:
        text = remove_foreign_scripts(text, keep_hanja=not hanja)
    text = cap_repeats(text, max_repeat)
    return collapse_whitespace(text) if text is not before else text
