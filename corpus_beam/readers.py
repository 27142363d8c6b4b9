"""Raw-corpus readers: resolve inputs to files, and turn each file into records.

A record is one document: a line of a ``.txt`` file (or, with format ``paragraphs``, a
block of lines between blank lines), a JSON object of a ``.jsonl`` file, a row of a
``.csv``/``.tsv`` file (header required), an element of an ``.xml`` file (``field`` is
the element path, e.g. ``text`` or ``doc/body``), or a document of a Modu-corpus
(국립국어원 모두의 말뭉치) ``.json`` file (its ``paragraph`` or ``utterance`` forms
joined by line breaks). ``.gz``/``.bz2`` are read transparently. Reading never raises on bad content: every record comes out either as
text or as a rejection with a reason, and an unreadable file becomes one
``unreadable_file`` rejection, so the clean step can account for every record.

Files are opened with Beam's ``FileSystems.open``, so the same reader works on local
paths and on ``gs://`` inside Dataflow workers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from korlm import storage
from korlm.errors import KorlmError
from korlm.text import has_invalid_utf8, printable

_LOG = logging.getLogger(__name__)

FORMATS = ("txt", "paragraphs", "jsonl", "csv", "tsv", "xml", "modu")
DEFAULT_FIELD = {"txt": None, "paragraphs": None, "jsonl": "text", "csv": "text", "tsv": "text",
                 "xml": "text", "modu": None}
_EXTENSION_FORMAT = {"txt": "txt", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "xml": "xml",
                     "json": "modu"}
COMPRESSED_SUFFIXES = (".gz", ".bz2")

# Rejection reasons decided while reading (the clean step adds its own).
MALFORMED_RECORD = "malformed_record"
INVALID_UTF8 = "invalid_utf8"
UNREADABLE_FILE = "unreadable_file"

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
    return files


class _FileError(Exception):
    """An I/O or decompression error while reading a file's bytes."""


def _lines(handle: IO[bytes], summary: FileReadSummary) -> Iterator[str]:
    """Decoded lines (terminators kept). Bytes that are not UTF-8 survive as surrogate
    escapes, so one bad line becomes one ``invalid_utf8`` record, not a dead file."""
    first = True
    while True:
        try:
            raw = handle.readline()
        except Exception as exc:  # gzip/bz2/zlib/IO errors all mean the rest is unreadable
            raise _FileError(f"{type(exc).__name__}: {exc}") from exc
        if not raw:
            return
        summary.bytes_read += len(raw)
        line = raw.decode("utf-8", "surrogateescape")
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        yield line


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


def _csv_records(
    lines: Iterable[str], field: str, delimiter: str, summary: FileReadSummary
) -> Iterator[Record]:
    # pandas-compatible quoting (NSMC-style files rely on it); the csv module counts
    # physical lines, so a quoted multi-line field still gets its first line number.
    # The default 128 KiB field limit would reject long documents as malformed.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    column: int | None = None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"csv error: {exc}", MALFORMED_RECORD
            start = reader.line_num + 1
            continue
        number, start = start, reader.line_num + 1
        if not row:
            summary.blank_lines += 1
            continue
        if header is None:
            header = [name.strip() for name in row]
            column = header.index(field) if field in header else None
            if column is None:
                _LOG.warning("column %r missing from header %s; every row is a malformed_record", field, header)
            continue
        if column is None or len(row) != len(header):
            yield number, delimiter.join(row), MALFORMED_RECORD
            continue
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
    """A binary file wrapper that counts the bytes read and turns read errors into _FileError."""

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
            raise _FileError(f"{type(exc).__name__}: {exc}") from exc
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
    open_fn: Callable[[str], IO[bytes]] = FileSystems.open,
) -> Iterator[Record]:
    """Every record of one file as ``(line, text, reason)``; reason None means a good record.

    Never raises for bad content. An unreadable file (cannot open, bad compression)
    yields one ``(0, error message, "unreadable_file")`` after the records read so far.
    """
    try:
        handle = open_fn(path)
    except Exception as exc:
        summary.unreadable = True
        summary.records += 1
        yield 0, f"{type(exc).__name__}: {exc}", UNREADABLE_FILE
        return
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
    except _FileError as exc:
        summary.unreadable = True
        summary.records += 1
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
            },
        )
