"""Fuzz tier: mutated raw files through every reader, and through the whole clean step.

Hypothesis builds a valid file of each format from random Korean/ASCII text, then
mutates its bytes (random bytes, quote characters, CR/LF mixes, BOMs, NULs, bytes that
are not UTF-8, the whole text re-encoded as cp949/EUC-KR/UTF-16, cut, duplicated or
deleted ranges), optionally gzip/bzip2-wraps it and damages the compressed stream
(truncated, a flipped byte, trailing garbage). Every reader must then account for
what it read: no exception escapes, every record has a reason or valid UTF-8 text, and
``summary.records`` is what was yielded; the whole clean step (``clean_in_process``)
must keep ``input_records == kept_records + rejected_records``, or stop with one clear
KorlmError line (the field check before reading).

Bounded: derandomized (the same examples on every run, no example database), no
deadline, a fixed number of examples per test; about 20-40 s on a loaded 2-core machine.
``KORLM_FUZZ_SCALE=20`` runs twenty times as many fresh random examples (a bug hunt).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from korlm.clean.beam import clean_in_process
from korlm.clean.readers import (
    FORMATS,
    INVALID_UTF8,
    MALFORMED_RECORD,
    TRUNCATED_FILE,
    UNREADABLE_FILE,
    FileReadSummary,
    read_records,
)
from korlm.clean.text import has_invalid_utf8
from korlm.errors import KorlmError

# KORLM_FUZZ_SCALE=N: N times the examples, freshly random (a longer bug hunt, not CI)
SCALE = int(os.environ.get("KORLM_FUZZ_SCALE", "1"))
FUZZ = settings(derandomize=SCALE == 1, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=n * SCALE)

SUFFIX = {"txt": "txt", "paragraphs": "txt", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "xml": "xml",
          "modu": "json"}
FIELD = {"txt": None, "paragraphs": None, "jsonl": "text", "csv": "text", "tsv": "text", "xml": "text",
         "modu": None}

_ALPHABET = st.sampled_from(list("가나다라마바사아자차카타파하한국어문장영화리뷰ㅋㅎ") +
                            list("abcXYZ019 .,!?\"'\t\n\r<>&{}[]:\\@-") + ["\u200b", "\ufeff", "\x00", "＂"])
TEXTS = st.lists(st.text(_ALPHABET, min_size=0, max_size=40), min_size=1, max_size=8)

SPECIAL = [b'"', b'""', b'"""', b"\r", b"\n", b"\r\n", b"\n\n", b"\n\r", b"\t", b",", b"\x00",
           b"\xef\xbb\xbf", b"\xff", b"\xfe\xfe", b"\xed\xa0\x80", "한국어".encode("cp949"), b"{", b"}",
           b"[", b"]", b'{"text": "', b"<", b">", b"&", b"</text>", b"<text>", b"<!--", b"\\", b"\\ud800",
           b"\x1b", "\u2028".encode(), b"\xc0\x80", b'"document": [', b"\x1f\x8b", b"BZh9"]


def seed_file(fmt: str, texts: list[str]) -> bytes:
    """A well-formed file of ``fmt`` holding ``texts``."""
    if fmt in ("txt", "paragraphs"):
        sep = "\n\n" if fmt == "paragraphs" else "\n"
        return (sep.join(texts) + "\n").encode("utf-8", "surrogatepass")
    if fmt == "jsonl":
        return "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                       for i, t in enumerate(texts)).encode("utf-8", "surrogatepass")
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        # CRLF rows: the writer then quotes every field holding \r or \n
        writer = csv.writer(out, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\r\n")
        writer.writerow(["id", "text", "score"])
        writer.writerows([i, t, i % 10] for i, t in enumerate(texts))
        return out.getvalue().encode("utf-8", "surrogatepass")
    if fmt == "xml":
        from xml.sax.saxutils import escape

        clean = ["".join(c for c in t if c in "\t\n\r" or c >= " ") for t in texts]
        return ("<?xml version='1.0' encoding='UTF-8'?><corpus>"
                + "".join(f"<doc><text>{escape(t)}</text></doc>" for t in clean) + "</corpus>").encode()
    assert fmt == "modu"
    return json.dumps({"id": "X", "document": [{"id": str(i), "paragraph": [{"form": t}]}
                                               for i, t in enumerate(texts)]},
                      ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw, fmt: str) -> bytes:
    texts = draw(TEXTS)
    data = seed_file(fmt, texts)
    encoding = draw(st.sampled_from([None, None, None, "cp949", "euc-kr", "utf-16", "utf-8-sig"]))
    if encoding:
        data = data.decode("utf-8", "replace").encode(encoding, "replace")
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["special", "special", "bytes", "delete", "truncate", "duplicate", "flip"]))
        pos = draw(st.integers(0, len(data)))
        if op == "special":
            data[pos:pos] = draw(st.sampled_from(SPECIAL))
        elif op == "bytes":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos: pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            data[pos:pos] = data[pos: pos + draw(st.integers(1, 64))]
        elif data:
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def wrapped(draw, fmt: str) -> tuple[str, bytes, bool]:
    """(file name, stored bytes, known to be cut): plain, gzip or bzip2, the compressed
    stream maybe damaged."""
    data = draw(mutated(fmt))
    kind = draw(st.sampled_from(["", "", ".gz", ".bz2"]))
    name = f"fuzz.{SUFFIX[fmt]}{kind}"
    if not kind:
        return name, data, False
    blob = bytearray(gzip.compress(data) if kind == ".gz" else bz2.compress(data))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage", "concat"]))
    pos = draw(st.integers(0, max(0, len(blob) - 1)))
    if damage == "truncate":
        del blob[pos:]
        return name, bytes(blob), pos > 0  # cut to nothing is an empty file
    elif damage == "flip" and blob:
        blob[pos] ^= draw(st.integers(1, 255))
    elif damage == "garbage":
        blob += draw(st.binary(min_size=1, max_size=16))
    elif damage == "concat":
        blob += gzip.compress(data) if kind == ".gz" else bz2.compress(data)
    return name, bytes(blob), False


def read_all(name: str, blob: bytes, fmt: str):
    summary = FileReadSummary()
    records = list(read_records(name, fmt, FIELD[fmt], summary, open_fn=lambda p: io.BytesIO(blob)))
    return records, summary


def assert_accounted(records, summary) -> None:
    assert summary.records == len(records)
    for line, text, reason in records:
        assert isinstance(line, int) and line >= 0 and isinstance(text, str)
        assert reason in (None, MALFORMED_RECORD, INVALID_UTF8, UNREADABLE_FILE, TRUNCATED_FILE), reason
        if reason is None:
            assert not has_invalid_utf8(text)
    file_level = [i for i, r in enumerate(records) if r[2] in (UNREADABLE_FILE, TRUNCATED_FILE)]
    assert file_level in ([], [len(records) - 1]), "at most one file-level rejection, and it comes last"
    assert not (summary.unreadable and summary.truncated)
    assert summary.unreadable == (records[-1:] != [] and records[-1][2] == UNREADABLE_FILE)
    assert summary.truncated == (records[-1:] != [] and records[-1][2] == TRUNCATED_FILE)


@pytest.mark.parametrize("fmt", FORMATS)
@examples(200)
@given(data=st.data())
def test_every_reader_accounts_for_mutated_files(fmt, data):
    name, blob, cut = data.draw(wrapped(fmt))
    records, summary = read_all(name, blob, fmt)
    assert_accounted(records, summary)
    if cut:
        assert summary.truncated, "a cut gzip/bzip2 stream is never read as if it were whole"
    for reason in {r[2] for r in records}:
        event(f"reason: {reason}")
    if any(r[1].startswith("unclosed quote:") for r in records):
        event("unclosed quote")


def _expected(fmt: str, texts: list[str]) -> list[str] | None:
    """The texts a reader must give back for an unmutated file, where that is simple to
    say (None: only the accounting is checked)."""
    if fmt == "txt":
        lines = "\n".join(texts).split("\n")
        lines[0] = lines[0].removeprefix("\ufeff")
        return [line.rstrip("\r\n") for line in lines if line.rstrip("\r\n").strip()]
    if fmt in ("jsonl", "modu"):
        return texts
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        # a line of a multi-line text that itself looks like an (id, text, score) row
        # is the ambiguity the unbalanced-quote rules resolve by rejecting
        if any(line.count(delimiter) >= 2 for t in texts if "\n" in t for line in t.split("\n")):
            return None
        return texts
    return None


@pytest.mark.parametrize("fmt", FORMATS)
@examples(80)
@given(texts=TEXTS, kind=st.sampled_from(["", ".gz", ".bz2"]))
def test_unmutated_files_read_back_exactly(fmt, texts, kind):
    """Well-formed files (CSV/TSV fields with quotes, delimiters and line breaks
    included) come back as written, through every compression."""
    data = seed_file(fmt, texts)
    blob = data if not kind else gzip.compress(data) if kind == ".gz" else bz2.compress(data)
    records, summary = read_all(f"x.{SUFFIX[fmt]}{kind}", blob, fmt)
    assert_accounted(records, summary)
    assert not summary.truncated and not summary.unreadable
    want = _expected(fmt, texts)
    if want is not None:
        assert records == [(r[0], w, None) for r, w in zip(records, want, strict=False)]
        assert len(records) == len(want)


@pytest.mark.parametrize("fmt", FORMATS)
@examples(30)
@given(data=st.data())
def test_the_clean_step_accounts_for_mutated_files(tmp_path_factory, fmt, data):
    name, blob, _ = data.draw(wrapped(fmt))
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(blob)
    spec = {"path": str(path), "format": fmt, **({"field": FIELD[fmt]} if FIELD[fmt] else {})}
    try:
        # lenient filters, so that most fuzzed records survive into dedup and the output
        stats = clean_in_process([spec], sentence_splitter="regex", min_document_chars=1,
                                 min_hangul_ratio=0, min_sentence_chars=1)
    except KorlmError as exc:  # the field check before reading: one clear line
        assert "\n" not in str(exc) and ("no column" in str(exc) or "has the field" in str(exc)), exc
        event("stopped by the field check")
        return
    event("kept some" if stats["kept_records"] else "kept none")
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    assert sum(stats["rejected_by_reason"].values()) == stats["rejected_records"]
    assert stats["truncated_files"] + stats["unreadable_files"] <= 1


_PLAIN = st.text(st.sampled_from(list("가나다라마바사 영화리뷰ㅋ0123456789.!?abc")), min_size=0, max_size=20)


@pytest.mark.parametrize("delimiter", [",", "\t"])
@examples(100)
@given(rows=st.lists(st.tuples(_PLAIN, st.sampled_from(["", "", "open", "end"])), min_size=1, max_size=30))
def test_unbalanced_quotes_never_merge_rows(delimiter, rows):
    """A quote opening a text field and never closing makes that line a malformed_record;
    every other row comes back exactly, on its own line number (a quote at a field's
    end is literal, pandas-style)."""
    lines = ["id", "text", "score"]
    body = [delimiter.join(lines)]
    for i, (text, quote) in enumerate(rows):
        field = '"' + text if quote == "open" else text + '"' if quote == "end" else text
        body.append(delimiter.join([str(i), field, str(i % 5)]))
    blob = ("\n".join(body) + "\n").encode()
    records, summary = read_all("x.tsv" if delimiter == "\t" else "x.csv", blob,
                                "tsv" if delimiter == "\t" else "csv")
    assert_accounted(records, summary)
    expected = []
    for i, (text, quote) in enumerate(rows):
        if quote == "open" or (quote == "end" and not text):  # a lone '"' opens a field too
            expected.append((i + 2, "unclosed quote: " + body[i + 1], MALFORMED_RECORD))
        else:
            expected.append((i + 2, text + '"' * (quote == "end"), None))
    assert records == expected
