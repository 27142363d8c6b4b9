"""Raw-corpus readers: resolve inputs to files, and turn each file into records.

A record is one document: a line of a ``.txt`` file (or, with format ``paragraphs``, a
block of lines between blank lines), a JSON object of a ``.jsonl`` file, a row of a
``.csv``/``.tsv`` file (header required), an element of an ``.xml`` file (``field`` is
the element path, e.g. ``text`` or ``doc/body``), or a document of a Modu-corpus
(국립국어원 모두의 말뭉치) ``.json`` file (its ``paragraph`` or ``utterance`` forms
joined by line breaks). ``.gz``/``.bz2`` are decompressed here (not by Beam), so a
stream that is cut short or corrupt is noticed instead of ending quietly.

Reading never raises on bad content: every record comes out either as text or as a
rejection with a reason, so the clean step can account for every record. A file that
cannot be opened or whose first bytes are not what its name says becomes one
``unreadable_file`` rejection; a file that breaks off after some data (a truncated or
corrupt ``.gz``/``.bz2``, an I/O error mid-way) keeps the records read before the
damage and ends with one ``truncated_file`` rejection (and a warning naming the file).

CSV/TSV use pandas-compatible quoting (NSMC's tripled-quote fields read as everyone reads
them), except that a quote which does not close on its line may only run on over later
lines when that looks like a real multi-line field (see ``_csv_records``): an unbalanced
quote becomes one ``malformed_record`` for its line and reading resumes on the next line,
instead of swallowing the rows after it.

Files are opened with Beam's ``FileSystems.open``, so the same reader works on local
paths and on ``gs://`` inside Dataflow workers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import apache_beam as beam

from korlm import storage
from korlm.clean.compressed import (
    CHUNK,
    COMPRESSED_SUFFIXES,
    Decompressed,
    FileError,
    compression_of,
    file_error,
    open_raw,
)
from korlm.clean.text import has_invalid_utf8, printable
from korlm.errors import KorlmError

_LOG = logging.getLogger(__name__)

FORMATS = ("txt", "paragraphs", "jsonl", "csv", "tsv", "xml", "modu")
DEFAULT_FIELD = {"txt": None, "paragraphs": None, "jsonl": "text", "csv": "text", "tsv": "text",
                 "xml": "text", "modu": None}
_EXTENSION_FORMAT = {"txt": "txt", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "xml": "xml",
                     "json": "modu"}

# Rejection reasons decided while reading (the clean step adds its own).
MALFORMED_RECORD = "malformed_record"
INVALID_UTF8 = "invalid_utf8"
UNREADABLE_FILE = "unreadable_file"
TRUNCATED_FILE = "truncated_file"

REJECTED_TAG = "rejected"
FILE_STATS_TAG = "file_stats"

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One file to read. ``input`` is the input as the user gave it (stats group by it)."""

    input: str
    path: str
    format: str
    field: str | None


@dataclass
class FileReadSummary:
    bytes_read: int = 0
    records: int = 0
    blank_lines: int = 0
    unreadable: bool = False
    truncated: bool = False


def infer_format(path: str) -> str | None:
    """The format a file name implies (compression suffix ignored), else None:
    ``.txt .jsonl .csv .tsv .xml``, and ``.json`` as a Modu-corpus document file."""
    name = os.path.basename(str(path)).lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    ext = os.path.splitext(name)[1].lstrip(".")
    return _EXTENSION_FORMAT.get(ext)


def _match(pattern: str) -> list[str]:
    if set(pattern) & _GLOB_CHARS:
        matches = storage.glob(pattern)
    elif storage.isdir(pattern):
        raise KorlmError(
            f"input {pattern!r} is a directory; pass a glob such as {storage.join(pattern, '*.txt')!r}"
        )
    else:
        matches = [pattern] if storage.exists(pattern) else []
    if storage.is_remote(pattern):
        return matches
    return [m for m in matches if not storage.isdir(m)]


def resolve_inputs(inputs: Iterable[str | dict[str, Any]]) -> list[InputFile]:
    """Expand inputs to files, checking every one before any pipeline starts.

    Raises KorlmError for an input matching no file, an unknown format, or a bad input dict.
    """
    if isinstance(inputs, str | dict):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise KorlmError("no inputs given; pass at least one file, glob or {'path': ...} input")
    files: list[InputFile] = []
    seen: set[str] = set()
    for item in inputs:
        if isinstance(item, dict):
            unknown = set(item) - {"path", "format", "field"}
            if unknown or "path" not in item:
                raise KorlmError(
                    f"input {item!r}: an input dict takes 'path' and optional 'format' and 'field'"
                    + (f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else "")
                )
            pattern, fmt, field = str(item["path"]), item.get("format"), item.get("field")
        elif isinstance(item, str | os.PathLike):
            pattern, fmt, field = str(item), None, None
        else:
            raise KorlmError(f"input {item!r} is neither a path/glob string nor a {{'path': ...}} dict")
        if fmt is not None and fmt not in FORMATS:
            raise KorlmError(f"input {pattern!r}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if fmt in ("txt", "paragraphs") and field is not None:
            raise KorlmError(f"input {pattern!r}: a {fmt} input has no field; drop 'field' or pick another format")
        matches = _match(pattern)
        if not matches:
            raise KorlmError(f"input {pattern!r} matches no file; check the path or glob")
        for path in matches:
            file_fmt = fmt or infer_format(path)
            if file_fmt is None:
                raise KorlmError(
                    f"cannot tell the format of {path!r} from its name; name it .txt/.jsonl/.csv/.tsv/.xml/.json"
                    " (optionally .gz/.bz2) or pass {'path': ..., 'format': ...}"
                )
            if path in seen:
                _LOG.warning("%s is matched by more than one input; reading it once", path)
                continue
            seen.add(path)
            files.append(InputFile(pattern, path, file_fmt,
                                   field or DEFAULT_FIELD[file_fmt]))
    check_fields(files)
    return files


_PEEK_RECORDS = 50


def _peek_lines(path: str, n: int, open_fn: Callable[[str], IO[bytes]]) -> list[str]:
    """Up to ``n`` non-blank lines from the start of a file; [] when it cannot be read
    (the reader then reports it as unreadable or truncated, with its reason)."""
    out: list[str] = []
    try:
        handle = open_fn(path)
    except Exception:
        return out
    kind = compression_of(path)
    if kind:
        handle = Decompressed(handle, kind)
    try:
        for line in _lines(handle, FileReadSummary()):
            if line.strip():
                out.append(line)
                if len(out) >= n:
                    break
    except FileError:
        pass
    finally:
        handle.close()
    return out


def check_fields(files: list[InputFile], open_fn: Callable[[str], IO[bytes]] | None = None) -> None:
    """Fail early when an input's ``field`` is clearly not in its data: a CSV/TSV header
    without that column, or JSONL whose first objects all lack that key. The first file
    of every input is looked at (the rest are read as they are, a row or object without
    the field being a ``malformed_record``). Raises a one-line KorlmError naming the
    columns or keys that are there."""
    open_fn = open_fn or open_raw
    seen: set[tuple[str, str]] = set()
    hint = "name the text field (--field on the command line, field: in the config's clean.inputs)"
    for spec in files:
        if spec.format not in ("csv", "tsv", "jsonl") or (spec.input, spec.format) in seen:
            continue
        seen.add((spec.input, spec.format))
        if spec.format == "jsonl":
            objects = []
            for line in _peek_lines(spec.path, _PEEK_RECORDS, open_fn):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    objects.append(obj)
            if objects and not any(spec.field in obj for obj in objects):
                keys = list(dict.fromkeys(k for obj in objects for k in obj))
                raise KorlmError(
                    f"input {spec.input!r}: none of the first {len(objects)} JSON objects of {spec.path} has "
                    f"the field {spec.field!r} (keys: {_listing(keys)}); {hint}")
            continue
        lines = _peek_lines(spec.path, 1, open_fn)
        row = _parse_row(lines, "\t" if spec.format == "tsv" else ",") if lines else None
        if not row:
            continue
        header = [name.strip() for name in row]
        if spec.field not in header:
            raise KorlmError(
                f"input {spec.input!r}: the header of {spec.path} has no column {spec.field!r} "
                f"(columns: {_listing(header)}); {hint}")


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(printable(str(n), 60) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _lines(handle: IO[bytes], summary: FileReadSummary) -> Iterator[str]:
    """Decoded lines (terminators kept). Bytes that are not UTF-8 survive as surrogate
    escapes, so one bad line becomes one ``invalid_utf8`` record, not a dead file.

    A line is handed on only once the next read succeeded: when the stream breaks, a
    last line without its terminator is the piece the damage cut off, and is not a
    record (it is named in the error instead)."""
    first = True
    held: bytes | None = None
    while True:
        try:
            raw = handle.readline()
        except Exception as exc:  # gzip/bz2/zlib/IO errors all mean the rest is unreadable
            error = file_error(exc)
            if held is not None and not held.endswith(b"\n"):
                error = FileError(f"{error}; the {len(held):,}-byte line it cut off was dropped",
                                   error.truncated)
                held = None
            if held is not None:
                yield _decode_line(held, first)
            raise error from exc
        if held is not None:
            yield _decode_line(held, first)
            first = False
        if not raw:
            return
        summary.bytes_read += len(raw)
        held = raw


def _decode_line(raw: bytes, first: bool) -> str:
    line = raw.decode("utf-8", "surrogateescape")
    return line.removeprefix("\ufeff") if first else line


Record = tuple[int, str, str | None]  # (line number, text, rejection reason or None)


def _txt_records(lines: Iterable[str], summary: FileReadSummary) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            summary.blank_lines += 1
            continue
        yield number, text, INVALID_UTF8 if has_invalid_utf8(text) else None


def _jsonl_records(lines: Iterable[str], field: str, summary: FileReadSummary) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        raw = line.rstrip("\r\n")
        if not raw.strip():
            summary.blank_lines += 1
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            yield number, raw, MALFORMED_RECORD
            continue
        value = obj.get(field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            yield number, raw, MALFORMED_RECORD
        else:
            yield number, value, INVALID_UTF8 if has_invalid_utf8(value) else None


# How far a quoted CSV/TSV field may run on over line breaks before its opening line
# is taken for an unbalanced quote. Real multi-line fields (a review or petition with
# paragraphs) are far shorter; the cap bounds what one bad quote can hold back.
MAX_QUOTED_LINES = 500

_START, _IN_FIELD, _IN_QUOTED, _QUOTE_IN_QUOTED = range(4)


def _scan_quotes(text: str, delimiter: str, quoted: bool) -> tuple[bool, bool]:
    """The csv module's quote state machine (pandas-compatible: doubled quotes, no
    strict mode) over one physical line without its terminator, starting inside a
    quoted field when ``quoted``. Returns ``(open at the end, bad close)``: the line
    ends inside a quoted field; the field carried in from the line before closed with a
    quote followed by something other than the delimiter or the line's end (a real
    multi-line field closes like ``...끝."`` or ``...끝.",다음 칸``; an unbalanced quote
    meets the next row's opening quote, ``"좋은 영화"``, mid-field)."""
    if '"' not in text:
        return quoted, False
    state = _IN_QUOTED if quoted else _START
    carried = quoted
    for c in text:
        if state == _START:
            if c == '"':
                state = _IN_QUOTED
            elif c != delimiter:
                state = _IN_FIELD
        elif state == _IN_FIELD:
            if c == delimiter:
                state = _START
        elif state == _IN_QUOTED:
            if c == '"':
                state = _QUOTE_IN_QUOTED
        elif c == '"':
            state = _IN_QUOTED  # a doubled quote inside quotes
        elif c == delimiter:
            state, carried = _START, False
        elif carried:
            return False, True
        else:
            state = _IN_FIELD  # "좋아요"ㅋㅋ on one line: pandas reads 좋아요ㅋㅋ
    return state == _IN_QUOTED, False


def _parse_row(lines: list[str], delimiter: str) -> list[str] | None:
    """One record's physical lines -> its fields ([] for a blank line), None when the csv
    module does not read them as exactly one row."""
    if len(lines) == 1:
        text = lines[0].rstrip("\r\n")
        if '"' not in text and "\r" not in text and "\n" not in text:
            return text.split(delimiter) if text else []
    try:
        rows = list(csv.reader(lines, delimiter=delimiter))
    except csv.Error:
        return None
    if not rows:
        return []
    return rows[0] if len(rows) == 1 else None


_NUMBER = re.compile(r"\s*[-+]?\d+(?:[.,]\d+)*\s*")


class _RowShape:
    """What the rows read so far look like: the header's width, and per column whether
    every value was a number (an id, a rating). A line that on its own has that width,
    and a number in each such column, looks like the next row, not like the middle of
    a quoted field."""

    def __init__(self, width: int, text_column: int | None):
        self.width = width
        self.text_column = text_column
        self.numeric: list[bool] | None = None  # unknown until a row was read

    def add(self, row: list[str]) -> None:
        if len(row) != self.width:
            return
        if self.numeric is None:
            self.numeric = [True] * self.width
            if self.text_column is not None:
                self.numeric[self.text_column] = False
        for i, value in enumerate(row):
            if self.numeric[i] and not _NUMBER.fullmatch(value):
                self.numeric[i] = False

    def matches(self, text: str, delimiter: str, opening: list[str]) -> bool:
        """``text`` (one physical line) looks like a row of its own: the header's number
        of fields with a number wherever the rows so far had one; or the start of a row
        whose own quote opens and does not close on the line (fields before that quote
        include a number column, and all fit). Before any row was read, the fields
        ``opening`` (those before the open quote on the line that opened it) stand in
        for the rows."""
        numeric = self.numeric
        if numeric is None:
            numeric = [i != self.text_column and bool(_NUMBER.fullmatch(v)) for i, v in enumerate(opening)]
        if '"' not in text:
            if text.count(delimiter) + 1 != self.width:
                return False
            row, opens = text.split(delimiter), False
        else:
            opens = _scan_quotes(text, delimiter, False)[0]
            row = _parse_row([text], delimiter)
            if row is None:
                return False
            if opens:
                row = row[:-1]  # the fields before its own open quote
        if opens:
            checked = [i for i in range(min(len(row), len(numeric))) if numeric[i]]
            return 0 < len(row) < self.width and bool(checked) and all(
                _NUMBER.fullmatch(row[i]) for i in checked)
        return len(row) == self.width and all(
            not n or _NUMBER.fullmatch(value) for n, value in zip(numeric, row, strict=False))


def _csv_records(
    lines: Iterable[str], field: str, delimiter: str, summary: FileReadSummary
) -> Iterator[Record]:
    """Rows of a CSV/TSV file with a header, pandas-compatible quoting.

    A quoted field that does not close on its line is read on over the next lines (a
    legitimate multi-line field) only if all of these hold:

    - it closes within ``MAX_QUOTED_LINES`` lines, and its closing quote is followed by
      the delimiter or the end of the line (an unbalanced quote usually meets the
      opening quote of a later field, ``"좋은 영화"``, and closes mid-field);
    - with two or more columns, none of the lines it runs over looks like a row of its
      own (``_RowShape``: the header's number of columns, and a number in every column
      that held only numbers so far; or such a row's start with a quote of its own that
      stays open; the line where a field of the first column closes is not asked, as it
      always has the full number of columns);
    - the record it makes has exactly the header's number of columns.

    Otherwise the line that opened the quote is one ``malformed_record`` (its line
    number, text prefixed ``unclosed quote:``) and reading resumes on the next line,
    which is read again as a row of its own. A record's line number is its first
    physical line.
    """
    # The default 128 KiB field limit would reject long documents as malformed.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    header: list[str] | None = None
    shape: _RowShape | None = None
    column: int | None = None
    again: deque[tuple[int, str]] = deque()  # lines to read again after a rejected span
    numbered = enumerate(lines, start=1)

    def next_line() -> tuple[int, str] | None:
        return again.popleft() if again else next(numbered, None)

    while (item := next_line()) is not None:
        number, line = item
        span = [item]
        first = line.rstrip("\r\n")
        row: list[str] | None = None
        if _scan_quotes(first, delimiter, False)[0]:
            # the fields before the open quote (none when the quoted field is the first column)
            opening = (_parse_row([first], delimiter) or [""])[:-1]
            closed = False
            while len(span) < MAX_QUOTED_LINES and (nxt := next_line()) is not None:
                span.append(nxt)
                text = nxt[1].rstrip("\r\n")
                still_open, bad_close = _scan_quotes(text, delimiter, True)
                if bad_close:
                    break
                if (shape is not None and shape.width > 1 and (still_open or opening)
                        and shape.matches(text, delimiter, opening)):
                    break
                if not still_open:
                    closed = True
                    break
            if closed:
                row = _parse_row([text for _, text in span], delimiter)
                if row is not None and header is not None and len(row) != len(header):
                    row = None
            if row is None:
                yield number, "unclosed quote: " + first, MALFORMED_RECORD
                again.extendleft(reversed(span[1:]))
                continue
        else:
            row = _parse_row([line], delimiter)
            if row is None:
                yield number, "csv error: " + first, MALFORMED_RECORD
                continue
        if not row:
            summary.blank_lines += 1
            continue
        if header is None:
            header = [name.strip() for name in row]
            column = header.index(field) if field in header else None
            shape = _RowShape(len(header), column)
            if column is None:
                _LOG.warning("column %r missing from header %s; every row is a malformed_record", field, header)
            continue
        if column is None or len(row) != len(header):
            yield number, delimiter.join(row), MALFORMED_RECORD
            continue
        shape.add(row)
        text = row[column]
        yield number, text, INVALID_UTF8 if has_invalid_utf8(text) else None


def _paragraph_records(lines: Iterable[str], summary: FileReadSummary) -> Iterator[Record]:
    """Documents separated by blank lines; a document's lines joined by ``\\n``."""
    block: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            if not block:
                start = number
            block.append(text)
            continue
        summary.blank_lines += 1
        if block:
            joined = "\n".join(block)
            yield start, joined, INVALID_UTF8 if has_invalid_utf8(joined) else None
            block = []
    if block:
        joined = "\n".join(block)
        yield start, joined, INVALID_UTF8 if has_invalid_utf8(joined) else None


class _CountingReader:
    """A binary file wrapper that counts the bytes read and turns read errors into FileError."""

    def __init__(self, handle: IO[bytes], summary: FileReadSummary):
        self.handle = handle
        self.summary = summary

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # Beam's CompressedFile has no read-all
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        try:
            data = self.handle.read(size)
        except Exception as exc:
            raise file_error(exc) from exc
        self.summary.bytes_read += len(data)
        return data


# Elements that sit inside a line of text; any other child element is a block (a
# paragraph, a sentence, a title) whose text is kept apart by a line break.
_XML_INLINE_TAGS = frozenset({
    "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "del", "dfn", "em", "font", "i", "ins",
    "kbd", "mark", "q", "rb", "rp", "rt", "ruby", "s", "samp", "small", "span", "strike", "strong",
    "sub", "sup", "tt", "u", "var", "wbr",
})


def _xml_text(elem) -> str:
    """The text of ``elem`` and its descendants, block children separated by line breaks:
    ``<text><p>첫 문단.</p><p>둘째 문단.</p></text>`` -> ``첫 문단.\n둘째 문단.``, while
    ``<p>아주 <b>중요한</b> 말</p>`` stays ``아주 중요한 말``."""
    parts: list[str] = []

    def walk(node) -> None:
        if node.text:
            parts.append(node.text)
        for child in node:
            block = child.tag.rsplit("}", 1)[-1].lower() not in _XML_INLINE_TAGS
            if block:
                parts.append("\n")
            walk(child)
            if block:
                parts.append("\n")
            if child.tail:
                parts.append(child.tail)

    walk(elem)
    return "\n".join(line for line in "".join(parts).split("\n") if line.strip())


def _xml_records(handle: IO[bytes], field: str, summary: FileReadSummary) -> Iterator[Record]:
    """The text of every element whose path ends with ``field`` (``text``, ``doc/body``);
    ``line`` is the element's ordinal. A parse error ends the file with one
    ``malformed_record`` carrying the parser's message (records before it are kept)."""
    import xml.etree.ElementTree as ET

    want = [part for part in field.strip("/").split("/") if part]
    stack: list[str] = []
    open_matches = 0  # matched elements still being parsed: their children must not be cleared
    number = 0
    parser = ET.iterparse(_CountingReader(handle, summary), events=("start", "end"))
    try:
        for event, elem in parser:
            if event == "start":
                stack.append(elem.tag.rsplit("}", 1)[-1])
                open_matches += stack[-len(want):] == want
                continue
            if stack[-len(want):] == want:
                open_matches -= 1
                number += 1
                text = _xml_text(elem)
                yield number, text, INVALID_UTF8 if has_invalid_utf8(text) else None
                elem.clear()
            elif not open_matches:
                elem.clear()  # keeps memory flat on large files
            stack.pop()
    except ET.ParseError as exc:
        yield number + 1, f"xml error: {exc}", MALFORMED_RECORD


def _modu_document_text(doc: Any, field: str | None) -> str | None:
    """A Modu document's forms joined by line breaks, or None when it has none."""
    units = None
    if isinstance(doc, dict):
        for name in ([field] if field else ["paragraph", "utterance", "sentence"]):
            if isinstance(doc.get(name), list):
                units = doc[name]
                break
    forms = [u.get("form") for u in units if isinstance(u, dict)] if units is not None else None
    if not forms or not all(isinstance(f, str) for f in forms):
        return None
    return "\n".join(forms)


def _modu_records(handle: IO[bytes], field: str | None, summary: FileReadSummary) -> Iterator[Record]:
    """Modu-corpus JSON: ``{"document": [{"id", "paragraph"|"utterance": [{"form"}]}]}``.

    One record per document (``line`` is its 1-based position), its forms joined by line
    breaks; ``field`` picks the list (default: ``paragraph``, else ``utterance``,
    ``sentence``). The file is streamed document by document (ijson), so a file of
    hundreds of megabytes costs the memory of one document. A parse error ends the file
    with one ``malformed_record`` carrying the parser's message; documents before it are kept.
    """
    import ijson

    has_document_list = False

    def events():
        nonlocal has_document_list
        for prefix, event, value in ijson.parse(_CountingReader(handle, summary)):
            if prefix == "document" and event == "start_array":
                has_document_list = True
            yield prefix, event, value

    number = 0
    try:
        for number, doc in enumerate(ijson.items(events(), "document.item", use_float=True), start=1):
            text = _modu_document_text(doc, field)
            if text is None:
                yield number, json.dumps(doc, ensure_ascii=False)[:1000], MALFORMED_RECORD
                continue
            yield number, text, INVALID_UTF8 if has_invalid_utf8(text) else None
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        message = " ".join(str(exc).split())[:200]
        yield number + 1, f"json error: {message}", MALFORMED_RECORD
        return
    if not has_document_list:
        yield 0, "no 'document' list at the top level", MALFORMED_RECORD


def read_records(
    path: str,
    fmt: str,
    field: str | None,
    summary: FileReadSummary,
    open_fn: Callable[[str], IO[bytes]] = open_raw,
) -> Iterator[Record]:
    """Every record of one file as ``(line, text, reason)``; reason None means a good record.

    ``open_fn`` gives the file's stored bytes; ``.gz``/``.bz2`` (by name) are decompressed
    here. Never raises for bad content. A file that cannot be opened, or whose first
    bytes cannot be decoded, yields one ``(0, error message, "unreadable_file")``; one
    that breaks off after some data (truncated or corrupt compressed stream, I/O error)
    yields the records before the damage, then one ``(0, message, "truncated_file")``.
    """
    try:
        handle = open_fn(path)
    except Exception as exc:
        summary.unreadable = True
        summary.records += 1
        yield 0, f"{type(exc).__name__}: {exc}", UNREADABLE_FILE
        return
    kind = compression_of(path)
    if kind:
        handle = Decompressed(handle, kind)
    try:
        lines = _lines(handle, summary)
        if fmt == "txt":
            records = _txt_records(lines, summary)
        elif fmt == "paragraphs":
            records = _paragraph_records(lines, summary)
        elif fmt == "xml":
            records = _xml_records(handle, field or "text", summary)
        elif fmt == "modu":
            records = _modu_records(handle, field, summary)
        elif fmt == "jsonl":
            records = _jsonl_records(lines, field or "text", summary)
        else:
            records = _csv_records(lines, field or "text", "\t" if fmt == "tsv" else ",", summary)
        for record in records:
            summary.records += 1
            yield record
        if fmt in ("xml", "modu"):
            # a parse error ends these early: read on, so that a truncated or corrupt
            # stream behind it is still noticed (and counted) instead of hidden
            rest = _CountingReader(handle, summary)
            while rest.read(CHUNK):
                pass
    except FileError as exc:
        summary.records += 1
        if exc.truncated or summary.bytes_read > 0:
            summary.truncated = True
            _LOG.warning("%s is truncated or corrupt; its %d records before the damage are read, "
                         "the rest is counted as truncated_file (%s)", path, summary.records - 1, exc)
            yield 0, str(exc), TRUNCATED_FILE
        else:
            summary.unreadable = True
            yield 0, str(exc), UNREADABLE_FILE
    finally:
        handle.close()


def source_of(path: str, line: int) -> str:
    return f"{path}:{line}" if line else path


def rejection(reason: str, source: str, text: str, input_name: str, dropped_sentences: int = 0) -> dict:
    return {
        "reason": reason,
        "source": source,
        "text": printable(text, 1000),
        "input": input_name,
        "dropped_sentences": dropped_sentences,
    }


class ReadRecordBatches(beam.DoFn):
    """InputFile -> batches of good records ``{"input", "path", "records": [(line, text)]}``.

    Batches (not single records) keep Beam's per-element overhead off the hot path.
    Side outputs: ``rejected`` (read-time rejections) and ``file_stats`` (one per file:
    records, bytes, blank lines) from which the clean step counts its input independently
    of what comes out at the end.
    """

    def __init__(self, max_records: int = 256, max_chars: int = 200_000):
        self.max_records = max_records
        self.max_chars = max_chars

    def process(self, spec: InputFile):
        summary = FileReadSummary()
        batch: list[tuple[int, str]] = []
        chars = 0
        for line, text, reason in read_records(spec.path, spec.format, spec.field, summary):
            if reason is not None:
                beam.metrics.Metrics.counter("korlm.clean", reason).inc()
                yield beam.pvalue.TaggedOutput(
                    REJECTED_TAG, rejection(reason, source_of(spec.path, line), text, spec.input)
                )
                continue
            batch.append((line, text))
            chars += len(text)
            if len(batch) >= self.max_records or chars >= self.max_chars:
                yield {"input": spec.input, "path": spec.path, "records": batch}
                batch, chars = [], 0
        if batch:
            yield {"input": spec.input, "path": spec.path, "records": batch}
        beam.metrics.Metrics.counter("korlm.clean", "input_records").inc(summary.records)
        yield beam.pvalue.TaggedOutput(
            FILE_STATS_TAG,
            {
                "input": spec.input,
                "path": spec.path,
                "records": summary.records,
                "bytes": summary.bytes_read,
                "blank_lines": summary.blank_lines,
                "unreadable": summary.unreadable,
                "truncated": summary.truncated,
            },
        )
