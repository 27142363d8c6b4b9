"""PII scrubbing for Korean text: e-mail, URL, phone, resident registration, card, IP.

Each kind is one compiled pattern plus, where digits alone are ambiguous, a validity
check (a resident registration number must start with a real birth date and sex digit,
a card number must pass the Luhn check, an IPv4 octet must be <= 255). The patterns are
anchored on "no digit/letter right before or after", so a price (``1,234,567원``), a date
(``2020-01-15``, ``2020.01.15.``), a version (``v1.2.3``) or a bill number
(``법률 제12345호``) is left alone: tests in ``tests/test_pii.py`` pin each of those.

Detection runs on a width-folded view of the text: every character whose NFKC form is
one ASCII character becomes that character (full-width ``＠``, ``．``, ``０１０``,
superscript and circled digits...), so ``ｈｏｎｇ＠ｎａｖｅｒ．ｃｏｍ`` is caught in a
corpus kept in NFC. The view has exactly the text's length, so a match's offsets are
the original text's, and the replacement is made there: the rest of the text keeps its
original characters.

Order matters: URLs go before e-mails (a URL may carry ``user@host``), e-mails before
phones, resident numbers and cards before phones (both are longer digit runs that a
phone pattern could otherwise bite into).
"""

from __future__ import annotations

import datetime
import functools
import re
import sys
import unicodedata
from collections.abc import Callable

PII_KINDS = ("url", "email", "rrn", "card", "phone", "ip")
PII_MODES = ("replace", "drop_sentence", "off")
DEFAULT_PLACEHOLDER = "<{kind}>"

_URL = re.compile(
    r"(?i)\b(?:(?:https?|ftp)://|www\.)"
    r"[^\s<>\"'()\[\]{}가-힣]+"
    r"(?<![.,;:!?])"  # a sentence's final period is not part of the URL
)
_EMAIL = re.compile(
    r"(?i)(?<![0-9a-z._%+-])[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?![a-z0-9-])"
)
# Resident registration number: YYMMDD-GNNNNNN, G the sex digit (1/2 born 1900-1999,
# 3/4 born 2000-, 5-8 the same for foreigners), with or without the hyphen; masked tails
# (900101-1******) are personal data too. Numbers issued since October 2020 end in six
# random digits (no check digit), so the birth date and sex digit are what is checked.
_RRN = re.compile(r"(?<![0-9A-Za-z.,-])(\d{2})(\d{2})(\d{2})(\s?[-–]?\s?)([1-8])(\d{6}|\*{6})(?![0-9A-Za-z]|[.,-]\d)")
# 13-19 digit card numbers in 4-digit groups (Amex 4-6-5 too), separators optional.
_CARD = re.compile(
    r"(?<![0-9A-Za-z.-])(?:\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -]?)\d{6}\2\d{5})(?![0-9A-Za-z]|[.-]\d)"
)
# Korean phones. Mobile 01[016789], area codes 02, 0[3-6][1-5], 070 (VoIP), 050x (safe
# numbers); after +82 the leading 0 is dropped (sometimes kept as "(0)").
_PHONE = re.compile(
    r"(?<![0-9A-Za-z.+-])"
    r"(?:"
    r"(?:\+|00)82[ -]?(?:\(0\))?[ -]?(?:1[016789]|2|[3-6][1-5]|70|50[2-8])[ .-]?\d{3,4}[ .-]?\d{4}"
    r"|\(0(?:1[016789]|2|[3-6][1-5]|70|50[2-8])\)\s?\d{3,4}[ .-]?\d{4}"
    r"|0(?:1[016789]|2|[3-6][1-5]|70|50[2-8])\)\s?\d{3,4}[ .-]?\d{4}"  # 031)123-4567
    r"|0(?:1[016789]|2|[3-6][1-5]|70|50[2-8])[ .-]?\d{3,4}[ .-]?\d{4}"
    r")"
    r"(?![0-9A-Za-z]|[.-]\d)"
)
_IPV4 = re.compile(
    r"(?<![0-9A-Za-z.])(?<!v)(?<!ver)(?<!version)(?<!버전)(?<!버전 )"
    r"((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})"
    r"(?![0-9A-Za-z]|\.\d)"
)
_IPV6 = re.compile(
    r"(?i)(?<![0-9a-z:])(?:(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}"
    r"|(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4})(?![0-9a-z:])"
)


_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}


def rrn_birth_date(yymmdd: str, sex: str) -> datetime.date | None:
    """The birth date a resident registration number's first seven digits name: a real
    calendar date (month lengths, leap years) in the century of the sex digit, not in
    the future; else None."""
    try:
        born = datetime.date(_CENTURY[sex] + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:6]))
    except (KeyError, ValueError):
        return None
    return born if born <= datetime.date.today() else None


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def rrn_checksum_ok(digits: str) -> bool:
    """The check digit of a resident registration number (numbers issued before
    October 2020; later ones have a random tail and no check digit)."""
    total = sum(int(d) * w for d, w in zip(digits[:12], (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5), strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def _rrn_ok(m: re.Match) -> bool:
    if rrn_birth_date(m.group(1) + m.group(2) + m.group(3), m.group(5)) is None:
        return False
    if m.group(4) or "*" in m.group(6):
        return True  # written with a separator or masked: the shape says what it is
    # Thirteen bare digits: with a valid date and sex digit they are a resident number
    # whether or not the check digit holds (none since 2020), unless they are as
    # patterned as 1010101010110 (a real number's serial digits are not two symbols).
    return len(set(m.group(0))) > 2


def _card_ok(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv6_ok(m: re.Match) -> bool:
    # "2::8 3::7" is a score; a real IPv6 address has a 3+ digit group and 5+ hex digits
    groups = [g for g in m.group(0).split(":") if g]
    return sum(len(g) for g in groups) >= 5 and any(len(g) >= 3 for g in groups)


def _ip_ok(m: re.Match) -> bool:
    # "람보 1.2.3.4", "0.0.0.0", 8.8.8.8: enumerations, placeholders and public resolvers,
    # not a person's address. An address worth scrubbing has five digits or more.
    return sum(c.isdigit() for c in m.group(0)) >= 5


def _phone_ok(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 9 <= len(digits) <= 14


_PATTERNS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match], bool] | None], ...] = (
    ("url", _URL, None),
    ("email", _EMAIL, None),
    ("rrn", _RRN, _rrn_ok),
    ("card", _CARD, _card_ok),
    ("phone", _PHONE, _phone_ok),
    ("ip", _IPV4, _ip_ok),
    ("ip", _IPV6, _ipv6_ok),
)


@functools.cache
def _fold_table() -> tuple[dict[int, str], re.Pattern[str]]:
    """Every character whose NFKC form is a single ASCII character, mapped to it (from
    the running Python's Unicode tables), and a pattern finding any of them."""
    table = {}
    for code in range(0x80, sys.maxunicode + 1):
        folded = unicodedata.normalize("NFKC", chr(code))
        if len(folded) == 1 and folded < "\x80":
            table[code] = folded
    return table, re.compile("[" + "".join(re.escape(chr(c)) for c in table) + "]")


def fold_width(text: str) -> str:
    """The detection view: ``text`` with each character whose NFKC form is one ASCII
    character replaced by it (``０１０－１２３４`` -> ``010-1234``, ``＠`` -> ``@``).
    Same length as ``text``, so offsets carry over."""
    table, foldable = _fold_table()
    return text.translate(table) if foldable.search(text) else text


def find_pii(text: str) -> list[tuple[str, str]]:
    """Every ``(kind, matched text)`` in ``text`` (after earlier kinds were masked out)."""
    found: list[tuple[str, str]] = []
    scrub_pii(text, found=found)
    return found


def scrub_pii(text: str, placeholder: str = DEFAULT_PLACEHOLDER,
              counts: dict[str, int] | None = None,
              found: list[tuple[str, str]] | None = None) -> str:
    """Replace every PII span with ``placeholder.format(kind=KIND)`` (``<EMAIL>``...).

    ``counts`` (kind -> n) and ``found`` (kind, original text of the span) are filled in
    when given. Matching runs on ``fold_width(text)``; each span is replaced in the
    original text at the same offsets (the view and the text stay aligned because both
    get the same placeholder). A cheap pre-check skips the regexes for text with no
    ``@``, ``:``/``www`` or digit.
    """
    view = fold_width(text)
    has_digit = any(c.isdigit() for c in view)
    if not has_digit and "@" not in view and "www" not in view.lower() and "://" not in view:
        return text
    for kind, pattern, check in _PATTERNS:
        if not has_digit and kind in ("rrn", "card", "phone", "ip"):
            continue
        spans = [m.span() for m in pattern.finditer(view) if check is None or check(m)]
        if not spans:
            continue
        mark = placeholder.format(kind=kind.upper())
        view_parts, text_parts, last = [], [], 0
        for start, end in spans:
            view_parts += [view[last:start], mark]
            text_parts += [text[last:start], mark]
            if counts is not None:
                counts[kind] = counts.get(kind, 0) + 1
            if found is not None:
                found.append((kind, text[start:end]))
            last = end
        view = "".join(view_parts) + view[last:]
        text = "".join(text_parts) + text[last:]
    return text


def placeholders(placeholder: str = DEFAULT_PLACEHOLDER) -> tuple[str, ...]:
    return tuple(dict.fromkeys(placeholder.format(kind=k.upper()) for k in PII_KINDS))
