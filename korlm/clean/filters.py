"""Quality filters for Korean documents and sentences: one small function each.

Document filters return a measured value (a ratio) that the caller compares with the
config threshold, so a dry run can show how far off a rejected document was. The
repetition rules follow Gopher (Rae et al. 2021, table A1) with eojeol as the word
unit; the boilerplate defaults are lines Korean news and web pages repeat on every page.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# Korean news/web boilerplate: copyright and redistribution notices, reporter bylines,
# "see the original article", ad and subscription prompts. Matched with re.search on
# each sentence; a match drops the sentence, not the whole document.
DEFAULT_BOILERPLATE_PATTERNS: tuple[str, ...] = (
    r"무단\s*전재\s*(?:및|&|,|·)?\s*(?:재\s*배포|재배포)\s*(?:금지|를?\s*금합니다)",
    r"(?:ⓒ|©|copyrights?\b)",
    r"저작권자\s*[ⓒ©]?",
    r"All\s+rights\s+reserved",
    r"^\s*[\[(]?\s*[가-힣]{2,4}\s*(?:기자|특파원|통신원)\s*[\])]?\s*(?:=|<EMAIL>|[\w.+-]+@[\w.-]+)?\s*$",
    r"[가-힣]{2,4}\s*기자\s*(?:<EMAIL>|[\w.+-]+@[\w.-]+)",
    r"^\s*[\[(【]\s*[가-힣A-Za-z]+\s*=\s*[가-힣A-Za-z]+\s*[\])】]\s*[가-힣]{2,4}\s*기자",
    r"기사\s*원문\s*(?:보기|바로가기)",
    r"(?:광고|AD)\s*(?:문의|상담)",
    r"(?:구독|좋아요|알림\s*설정)\s*(?:과|와|및|,|&)\s*(?:구독|좋아요|알림\s*설정)\s*(?:부탁|눌러)",
    r"클릭\s*하?시면\s*(?:자세히|더)\s*보실\s*수",
    r"^\s*(?:▶|☞|■)\s*(?:관련\s*기사|바로\s*가기|자세히\s*보기)",
)

# Counted with C-level regex scans (a Python loop over every character was a fifth of
# the step's CPU time on the bundled sample).
_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")
_SYMBOL = re.compile(r"[^\w\s]|_")


def _count(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


def hangul_ratio(text: str) -> float:
    """Hangul letters (syllables and jamo) over all letters (digits, punctuation and
    spaces do not count); 1.0 for text with no letters at all (a ratio of nothing is not
    evidence against it)."""
    letters = _count(_LETTER, text)
    return _count(_HANGUL, text) / letters if letters else 1.0


def symbol_ratio(text: str) -> float:
    """Characters that are neither letters, digits nor whitespace, over non-space characters."""
    chars = len(text) - _count(_SPACE, text)
    return _count(_SYMBOL, text) / chars if chars else 0.0


def digit_ratio(text: str) -> float:
    """Digits over non-space characters."""
    chars = len(text) - _count(_SPACE, text)
    return _count(_DIGIT, text) / chars if chars else 0.0


def duplicate_line_fraction(lines: Sequence[str]) -> tuple[float, float]:
    """Gopher: the fraction of lines that repeat an earlier line, and the fraction of
    characters in those repeated lines."""
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_lines = dup_chars = total_chars = 0
    for line in lines:
        total_chars += len(line)
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        else:
            seen.add(line)
    return dup_lines / len(lines), (dup_chars / total_chars if total_chars else 0.0)


def top_ngram_fraction(words: Sequence[str], n: int) -> float:
    """Gopher: characters covered by the most frequent word n-gram (if it occurs more
    than once) over all word characters."""
    if len(words) < n:
        return 0.0
    ngrams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = ngrams.most_common(1)[0]
    if count <= 1:
        return 0.0
    total = sum(len(w) for w in words)
    return sum(len(w) for w in gram) * count / total if total else 0.0


def duplicate_ngram_fraction(words: Sequence[str], n: int) -> float:
    """Gopher: characters of words inside any n-gram that occurs more than once, over all
    word characters (each word counted once)."""
    if len(words) < n:
        return 0.0
    positions: dict[tuple[str, ...], int] = {}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        first = positions.setdefault(gram, i)
        if first != i:
            for j in range(first, first + n):
                covered[j] = True
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words)
    dup = sum(len(w) for w, c in zip(words, covered, strict=True) if c)
    return dup / total if total else 0.0


# Gopher's thresholds (table A1): top n-gram for n=2..4, duplicated n-grams for n=5..10.
GOPHER_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
GOPHER_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def repetition_reason(text: str, *, max_duplicate_line_fraction: float = 0.3,
                      max_duplicate_line_char_fraction: float = 0.2,
                      min_words: int = 50) -> str | None:
    """``repeated_lines``, ``repeated_ngrams`` or None for ``text`` (paragraphs by ``\\n``).

    Documents under ``min_words`` eojeol are not judged by n-grams: in a ten-word movie
    review one repeated pair already exceeds Gopher's 20%, and that is emphasis, not spam.
    """
    if has_repeated_lines(text, max_duplicate_line_fraction=max_duplicate_line_fraction,
                          max_duplicate_line_char_fraction=max_duplicate_line_char_fraction):
        return "repeated_lines"
    if has_repeated_ngrams(text, min_words=min_words):
        return "repeated_ngrams"
    return None


def has_repeated_lines(text: str, *, max_duplicate_line_fraction: float = 0.3,
                       max_duplicate_line_char_fraction: float = 0.2) -> bool:
    """Gopher's duplicate-line rule over the paragraphs (``\\n``) of ``text``."""
    lines = text.split("\n")
    if len(lines) <= 1:
        return False
    line_frac, char_frac = duplicate_line_fraction(lines)
    return line_frac > max_duplicate_line_fraction or char_frac > max_duplicate_line_char_fraction


def has_repeated_ngrams(text: str, *, min_words: int = 50) -> bool:
    """Gopher's top and duplicated eojeol n-gram rules; documents under ``min_words``
    eojeol are not judged."""
    words = text.split()
    if len(words) < min_words:
        return False
    return (any(top_ngram_fraction(words, n) > limit for n, limit in GOPHER_TOP_NGRAM.items())
            or any(duplicate_ngram_fraction(words, n) > limit for n, limit in GOPHER_DUP_NGRAM.items()))


def compile_patterns(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive alternation of ``patterns`` (None when the list is empty)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.MULTILINE)


def is_boilerplate(sentence: str, pattern: re.Pattern[str] | None) -> bool:
    return pattern is not None and pattern.search(sentence) is not None


def count_eojeol(text: str) -> int:
    return len(text.split())
