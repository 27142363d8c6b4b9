"""Compressed raw corpora (``.gz``/``.bz2``) decompressed by korlm itself, not by Beam,
so that a stream cut short or corrupt is noticed (and what decoded before the damage
kept) instead of ending quietly. Files are opened with Beam's ``FileSystems.open``:
local paths and ``gs://`` alike."""

from __future__ import annotations

import bz2
import zlib
from typing import IO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

COMPRESSED_SUFFIXES = (".gz", ".bz2")


class FileError(Exception):
    """An I/O or decompression error while reading a file's bytes. ``truncated``: the
    compressed stream was cut short or corrupt after its start (not merely unreadable)."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


class DamagedStream(Exception):
    """A compressed stream that ends before its end marker or holds corrupt data.
    ``truncated``: cut short, or corrupt after some data decoded; False for a file
    whose very first bytes do not decode (not gzip/bzip2 at all: unreadable)."""

    def __init__(self, message: str, truncated: bool):
        super().__init__(message)
        self.truncated = truncated


def file_error(exc: Exception) -> FileError:
    if isinstance(exc, FileError):
        return exc
    if isinstance(exc, DamagedStream):
        return FileError(str(exc), truncated=exc.truncated)
    return FileError(f"{type(exc).__name__}: {exc}")


CHUNK = 1 << 16  # compressed bytes read at a time
_MAX_OUT = 1 << 20  # decompressed bytes produced per step (a 64 KiB zip bomb chunk stays bounded)


class Decompressed:
    """A read-only binary stream over a ``.gz`` or ``.bz2`` file's raw bytes.

    Unlike Beam's ``CompressedFile`` (which ends quietly where a truncated gzip or bzip2
    stream ends), the end of the raw bytes before the stream's end marker, and corrupt
    data, raise :class:`DamagedStream`, but only once every byte decoded before the
    damage has been returned. Concatenated members/streams (``cat a.gz b.gz``, pbzip2)
    are read one after another; zero bytes after the last gzip member (tape padding)
    are ignored.
    """

    def __init__(self, raw: IO[bytes], kind: str):
        self.raw = raw
        self.kind = kind
        self._dec = self._new()
        self._out = bytearray()
        self._pending = b""  # compressed input not yet consumed
        self._done = False
        self._seen_input = False
        self.decoded = 0
        self.damage: str | None = None
        self.cut = False

    def _new(self):
        return zlib.decompressobj(16 + zlib.MAX_WBITS) if self.kind == "gz" else bz2.BZ2Decompressor()

    def _more(self) -> bool:
        """Decode one more piece into the output buffer; False at the end (clean or damaged)."""
        while not self._done:
            if self._dec is None or self._dec.eof:
                if self._dec is not None:  # a member ended: what follows may be another one
                    self._pending = self._dec.unused_data + self._pending
                    self._dec = None
                if not self._pending:
                    self._pending = self.raw.read(CHUNK)
                    if not self._pending:
                        self._done = True
                        return False
                if self.kind == "gz":
                    self._pending = self._pending.lstrip(b"\0")
                    if not self._pending:
                        continue  # padding so far: read on
                self._dec = self._new()
            elif self.kind == "bz2" and not self._dec.needs_input:
                pass  # output is waiting inside the decompressor
            elif not self._pending:
                self._pending = self.raw.read(CHUNK)
                if not self._pending:
                    if self.kind == "gz" and self._seen_input and self._flush_gz():
                        return True
                    if self._dec.eof:
                        continue
                    self._done = True
                    if self._seen_input:
                        self.damage = "the compressed stream ends before its end marker"
                        self.cut = True
                    return False
            self._seen_input = True
            data, self._pending = self._pending, b""
            before = self._dec.copy() if self.kind == "gz" else None
            try:
                out = self._dec.decompress(data, _MAX_OUT)
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                self._done = True
                self.damage = f"corrupt compressed data ({type(exc).__name__}: {exc})"
                salvaged = _salvage(before, data) if before is not None else b""
                self._out += salvaged
                self.decoded += len(salvaged)
                return bool(salvaged)
            if self.kind == "gz":
                self._pending = self._dec.unconsumed_tail
            if out:
                self._out += out
                self.decoded += len(out)
                return True
        return False

    def _flush_gz(self) -> bool:
        """At the end of the raw bytes: output zlib may still hold back (a stopped
        max_length), which also lets it reach the end marker."""
        try:
            out = self._dec.decompress(b"", _MAX_OUT)
        except zlib.error:
            return False
        self._pending = self._dec.unconsumed_tail
        if out:
            self._out += out
            self.decoded += len(out)
        return bool(out)

    def _raise_damage(self) -> None:
        if self.damage is not None:
            raise DamagedStream(f"{self.kind} stream damaged after {self.decoded:,} decompressed bytes: "
                                 f"{self.damage}", truncated=self.cut or self.decoded > 0)

    def read(self, size: int = -1) -> bytes:
        while (size is None or size < 0 or len(self._out) < size) and self._more():
            pass
        if not self._out:
            self._raise_damage()
        n = len(self._out) if size is None or size < 0 else min(size, len(self._out))
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def readline(self) -> bytes:
        searched = 0
        while (i := self._out.find(b"\n", searched)) < 0:
            searched = len(self._out)
            if not self._more():
                break
        if i < 0:
            if not self._out:
                self._raise_damage()
            i = len(self._out) - 1
        line = bytes(self._out[: i + 1])
        del self._out[: i + 1]
        return line

    def close(self) -> None:
        self.raw.close()


def _salvage(dec, data: bytes) -> bytes:
    """What a zlib decompressor (in its state before ``data``) outputs from ``data`` up to
    the byte where the data turns corrupt: a failed ``decompress`` call returns nothing,
    so the good part of the chunk is found by halving (at most ~16 retries, and only
    once per damaged file)."""
    out = []
    while len(data) > 1:
        half, rest = data[: len(data) // 2], data[len(data) // 2:]
        trial = dec.copy()
        try:
            piece = trial.decompress(half)
        except zlib.error:
            data = half
            continue
        out.append(piece)
        dec, data = trial, rest
    return b"".join(out)


def compression_of(path: str) -> str | None:
    name = str(path).lower()
    return next((suffix[1:] for suffix in COMPRESSED_SUFFIXES if name.endswith(suffix)), None)


def open_raw(path: str) -> IO[bytes]:
    """The file's bytes as stored: ``.gz``/``.bz2`` are decompressed by the reader itself."""
    if compression_of(path):
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return FileSystems.open(path)
