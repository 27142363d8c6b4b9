"""The clean corpus as the later stages read it: ``part-*.txt`` (or ``.txt.gz``) files,
one sentence a line, a blank line after every document, UTF-8."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator

from korlm import storage
from korlm.errors import KorlmError


def corpus_files(corpus_dir: str) -> list[str]:
    """The clean corpus's part files (``part-*.txt`` or ``part-*.txt.gz``), sorted."""
    files = storage.glob(storage.join(corpus_dir, "part-*.txt")) + storage.glob(
        storage.join(corpus_dir, "part-*.txt.gz"))
    return sorted(files)


def iter_sentences(corpus_dir: str) -> Iterator[str]:
    """Every sentence of the corpus in file order (blank document separators skipped), streamed.
    A part that is not UTF-8 (or a damaged ``.gz``) is a KorlmError naming the file and line."""
    for path in corpus_files(corpus_dir):
        number = 0
        try:
            with storage.open_file(path, "rb") as raw:
                stream = gzip.open(raw) if path.endswith(".gz") else raw
                for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), start=1):  # noqa: B007 (read in except)
                    line = line.strip()
                    if line:
                        yield line
        except UnicodeDecodeError:
            raise KorlmError(f"corpus file {path}, line {first_non_utf8_line(path) or number + 1}: "
                             "not UTF-8 text; korlm clean writes UTF-8 (re-clean the raw files)") from None
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise KorlmError(f"corpus file {path} cannot be read after line {number} "
                             f"({type(exc).__name__}: {exc})") from None


def first_non_utf8_line(path: str) -> int | None:
    """The 1-based number of the first line of corpus part ``path`` that is not UTF-8,
    or None when it all decodes (a whole-buffer decode first: the common case is fast)."""
    with storage.open_file(path, "rb") as raw:
        stream = gzip.open(raw) if path.endswith(".gz") else raw
        data = stream.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data[: exc.start].count(b"\n") + 1
    return None
