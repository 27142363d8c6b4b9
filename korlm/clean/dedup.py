"""Corpus-wide deduplication: exact documents, exact sentences, near-duplicate documents.

Every surviving document gives *bucket entries* ``(hash, order, index)``:

* ``hash``: 64 bits of blake2b over the normalized text (``index == DOCUMENT``), over
  one MinHash LSH band (``index == NEAR``; one entry per band) or over one sentence
  (``index`` = the sentence's position). Each kind hashes under its own blake2b
  personalization, so a sentence never shares a bucket with a document.
* ``order``: the document's place in the corpus, ``record_order(file_rank, line)`` where
  ``file_rank`` is the position of its path among the sorted input paths; so comparing
  orders compares ``(path, line)``.

In every bucket (entries of one hash) the smallest ``(order, index)`` survives and every
other holder is a duplicate: the result depends only on the set of documents, never on
the runner, the sharding or the order in which workers see them. For near duplicates
this drops every document that shares a band with a smaller document (not only the
members of a connected component other than its smallest); candidates are not
re-verified by Jaccard, so the band/row split (chosen to minimise false positives +
negatives around the threshold, as datasketch does) is what controls precision.

Entries are fixed-size numpy records (20 bytes), so the only thing the clean step
shuffles for dedup is ``ENTRY`` arrays, a shard (``hash % shards``) at a time; the
documents themselves wait in temporary files (see ``korlm.clean.beam``). A loss is
``(order, index)``: ``index >= 0`` drops that sentence, ``DOCUMENT``/``NEAR`` drops the
document. ``DedupIndex`` is the same logic in one process (plain loop, dry run).
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

DUPLICATE_DOCUMENT = "duplicate_document"
NEAR_DUPLICATE_DOCUMENT = "near_duplicate_document"
DUPLICATE_SENTENCES = "duplicate_sentences"  # every sentence of the document already seen
DUPLICATE_SENTENCE = "duplicate_sentence"  # sentences dropped (not a document rejection)

DOCUMENT = -1  # entry index of the exact-document key
NEAR = -2  # entry index of a MinHash LSH band key
ENTRY = np.dtype([("hash", "<u8"), ("order", "<u8"), ("index", "<i4")])
LOSS = np.dtype([("order", "<u8"), ("index", "<i4")])
LINE_BITS = 40  # a file may hold 2**40 records; 2**24 files are allowed
MAX_FILES = 1 << (64 - LINE_BITS)

_MASK32 = np.uint64(0xFFFFFFFF)


def record_order(file_rank: int, line: int) -> int:
    """A document's place in the corpus: sorts like ``(path, line)``."""
    if line >> LINE_BITS:
        raise ValueError(f"record number {line} is beyond the {LINE_BITS}-bit limit of dedup ordering")
    return (file_rank << LINE_BITS) | line


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


@functools.cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the false-positive +
    false-negative probability mass around ``threshold`` (datasketch's rule)."""
    xs = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs ** r) ** b
            fp = np.trapezoid(np.where(xs < threshold, p, 0.0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1.0 - p, 0.0), xs)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class MinHasher:
    """MinHash signatures of eojeol n-gram shingles, numpy-vectorised.

    Shingles are hashed with crc32 (deterministic across processes, unlike ``hash``)
    and permuted by multiply-shift hashing ``(a*x + b) >> 32`` in uint64 arithmetic,
    whose wrap-around is the intended mod 2**64. Seeded, so every worker agrees.
    """

    def __init__(self, num_perm: int = 128, shingle_size: int = 3, threshold: float = 0.8,
                 seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.shingle_size = shingle_size
        self.bands, self.rows = lsh_params(threshold, num_perm)

    def shingles(self, words: Sequence[str]) -> set[str]:
        n = self.shingle_size
        if len(words) <= n:
            return {" ".join(words)}
        return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}

    def signature(self, words: Sequence[str]) -> np.ndarray:
        hashes = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in self.shingles(words)),
                             dtype=np.uint64)
        permuted = (hashes[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return permuted.min(axis=0) & _MASK32

    def band_hashes(self, words: Sequence[str]) -> list[int]:
        """One 64-bit hash per LSH band (the band's number is part of what is hashed)."""
        sig = self.signature(words).astype(np.uint32)
        r = self.rows
        return [_hash64(i.to_bytes(4, "little") + sig[i * r:(i + 1) * r].tobytes(), b"korlm-band")
                for i in range(self.bands)]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


class DedupKeys:
    """Computes a document's bucket entries from its settings (picklable, for DoFns)."""

    def __init__(self, *, documents: bool = True, sentences: bool = True,
                 sentence_min_chars: int = 10, near: bool = True, near_threshold: float = 0.8,
                 near_num_perm: int = 128, near_shingle_size: int = 3, near_min_words: int = 20):
        self.documents = documents
        self.sentences = sentences
        self.sentence_min_chars = sentence_min_chars
        self.near = near
        self.near_min_words = near_min_words
        self.minhasher = MinHasher(near_num_perm, near_shingle_size, near_threshold) if near else None

    @property
    def enabled(self) -> bool:
        return self.documents or self.sentences or self.near

    def keys(self, normalized: str, sentences: Sequence[str]) -> list[tuple[int, int]]:
        """``(bucket hash, entry index)`` for one document: ``DOCUMENT``, ``NEAR`` per band,
        or the sentence's position."""
        out: list[tuple[int, int]] = []
        if self.documents:
            out.append((_hash64(normalized.encode("utf-8", "surrogatepass"), b"korlm-doc"), DOCUMENT))
        if self.minhasher is not None:
            words = normalized.split()
            if len(words) >= self.near_min_words:
                out += [(h, NEAR) for h in self.minhasher.band_hashes(words)]
        if self.sentences:
            out += [(_hash64(s.encode("utf-8", "surrogatepass"), b"korlm-sent"), i)
                    for i, s in enumerate(sentences) if len(s) >= self.sentence_min_chars]
        return out

    def entries(self, documents: Iterable[tuple[int, str, Sequence[str]]]) -> np.ndarray:
        """``ENTRY`` records for ``(order, normalized text, sentences)`` documents."""
        rows = [(h, order, index) for order, normalized, sentences in documents
                for h, index in self.keys(normalized, sentences)]
        return np.array(rows, dtype=ENTRY) if rows else np.empty(0, ENTRY)


def shard_entries(entries: np.ndarray, num_shards: int) -> list[tuple[int, np.ndarray]]:
    """Split entries by ``hash % num_shards``: ``[(shard, entries of that shard)]``."""
    if not len(entries):
        return []
    shards = (entries["hash"] % np.uint64(num_shards)).astype(np.int64)
    order = np.argsort(shards, kind="stable")
    shards, entries = shards[order], entries[order]
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
    ends = np.r_[starts[1:], len(shards)]
    return [(int(shards[s]), entries[s:e]) for s, e in zip(starts, ends, strict=True)]


def find_losers(entries: np.ndarray) -> np.ndarray:
    """Positions (into ``entries``) of the entries that lose their bucket.

    A bucket's smallest ``(order, index)`` wins. A sentence entry loses whenever it is not
    the smallest (a later copy inside the winner's own document too); a document or band
    entry loses when its document is not the winner's.
    """
    n = len(entries)
    if n < 2:
        return np.empty(0, np.int64)
    perm = np.lexsort((entries["index"], entries["order"], entries["hash"]))
    h, o, i = entries["hash"][perm], entries["order"][perm], entries["index"][perm]
    first = np.ones(n, dtype=bool)
    first[1:] = h[1:] != h[:-1]
    winner = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    lose = ~first & ((i >= 0) | (o != o[winner]))
    return perm[lose]


def losses_of(entries: np.ndarray) -> np.ndarray:
    """The ``LOSS`` records ``(order, index)`` of ``entries`` (one per losing entry)."""
    lost = entries[find_losers(entries)]
    out = np.empty(len(lost), LOSS)
    out["order"], out["index"] = lost["order"], lost["index"]
    return out


class Losses:
    """Looks up what dedup took from each document of a batch."""

    def __init__(self, losses: np.ndarray):
        losses = np.sort(losses, order=("order", "index"))
        self.orders = losses["order"]
        self.indexes = losses["index"]

    def __len__(self) -> int:
        return len(self.orders)

    def lookup(self, orders: Sequence[int]) -> list[dict | None]:
        """Per document: None (untouched) or ``{"reason": str|None, "sentences": set[int]}``."""
        out: list[dict | None] = [None] * len(orders)
        if not len(self.orders) or not len(orders):
            return out
        wanted = np.asarray(orders, dtype=np.uint64)
        left = np.searchsorted(self.orders, wanted, "left")
        right = np.searchsorted(self.orders, wanted, "right")
        for k in np.flatnonzero(right > left):
            codes = self.indexes[left[k]:right[k]].tolist()
            reason = None
            if DOCUMENT in codes:
                reason = DUPLICATE_DOCUMENT
            elif NEAR in codes:
                reason = NEAR_DUPLICATE_DOCUMENT
            out[k] = {"reason": reason, "sentences": {c for c in codes if c >= 0}}
        return out


class DedupIndex:
    """In-memory dedup for the plain loop and the dry run: add every document's entries,
    then ``resolve()`` once; the answer equals the Beam pipeline's for the same documents.
    Holds 20 bytes per entry, never the documents."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def add(self, entries: np.ndarray) -> None:
        if len(entries):
            self._parts.append(entries)

    def resolve(self) -> Losses:
        entries = np.concatenate(self._parts) if self._parts else np.empty(0, ENTRY)
        self._parts = []
        return Losses(losses_of(entries))
