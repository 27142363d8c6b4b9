"""Corpus-wide deduplication: exact documents, exact sentences, near-duplicate documents.

Every document is given *bucket keys*:

* ``d:<hash>``: its normalized text (exact document duplicates share it);
* ``m:<band>:<hash>``: one per MinHash LSH band (near duplicates share at least one);
* ``s:<hash>``: one per sentence (exact sentence duplicates share it).

Holders of one bucket are ``(doc_key, sentence index)``; ``doc_key`` is
``path \\0 zero-padded line \\0 batch``, so sorting keys sorts documents by source. In every
bucket the smallest holder survives and every other holder is a duplicate: the
result depends only on the set of documents, never on the runner, the sharding or the
order in which workers see them. For near duplicates this drops every document that
shares a band with a smaller document (not only the members of a connected
component other than its smallest); candidates are not re-verified by Jaccard, so the
band/row split (chosen to minimise false positives + negatives around the threshold,
as datasketch does) is what controls precision.

In Beam the keys travel in batches: ``bucket_batches`` spreads a batch of documents'
keys over ``num_shards`` shards, one element per (batch, shard) — never one per
sentence — and ``find_duplicates`` resolves one shard; losers go back to their record
batch (``batch_of``), where the documents wait as one element per batch. ``DedupIndex`` is the same logic
in memory for the plain loop and the dry run.
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

_MASK32 = np.uint64(0xFFFFFFFF)


def doc_key(path: str, line: int, batch: int = 0) -> str:
    """Sorts by (path, line); ``batch`` (the first line of the record batch the document
    came in) only lets a loser be routed back to its batch."""
    return f"{path}\0{line:012d}\0{batch:012d}"


def batch_of(key: str) -> str:
    path, _, batch = key.rsplit("\0", 2)
    return f"{path}\0{batch}"


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


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

    def band_keys(self, words: Sequence[str]) -> list[str]:
        sig = self.signature(words).astype(np.uint32)
        r = self.rows
        return [f"m:{i}:{hashlib.blake2b(sig[i * r:(i + 1) * r].tobytes(), digest_size=8).hexdigest()}"
                for i in range(self.bands)]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


class DedupKeys:
    """Computes a document's bucket keys from its settings (picklable, for DoFns)."""

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

    def keys(self, normalized: str, sentences: Sequence[str]) -> list[tuple[str, int]]:
        """``(bucket key, sentence index or -1)`` for one document."""
        out: list[tuple[str, int]] = []
        if self.documents:
            out.append((f"d:{_hash64(normalized):016x}", -1))
        if self.minhasher is not None:
            words = normalized.split()
            if len(words) >= self.near_min_words:
                out += [(k, -1) for k in self.minhasher.band_keys(words)]
        if self.sentences:
            out += [(f"s:{_hash64(s):016x}", i) for i, s in enumerate(sentences)
                    if len(s) >= self.sentence_min_chars]
        return out


def shard_of(bucket: str, num_shards: int) -> int:
    return zlib.crc32(bucket.encode("utf-8")) % num_shards


def bucket_batches(docs: Iterable[tuple[str, list[tuple[str, int]]]], num_shards: int):
    """``(shard, [(bucket, doc_key, index), ...])`` for a batch of ``(doc_key, keys)``."""
    shards: dict[int, list[tuple[str, str, int]]] = {}
    for key, buckets in docs:
        for bucket, index in buckets:
            shards.setdefault(shard_of(bucket, num_shards), []).append((bucket, key, index))
    return sorted(shards.items())


def find_duplicates(entries: Iterable[tuple[str, str, int]]) -> dict[str, dict]:
    """Resolve buckets: ``doc_key -> {"reason": str|None, "sentences": set[int]}`` for every
    document that loses in some bucket. The smallest ``(doc_key, index)`` of a bucket wins."""
    holders: dict[str, list[tuple[str, int]]] = {}
    for bucket, key, index in entries:
        holders.setdefault(bucket, []).append((key, index))
    losers: dict[str, dict] = {}
    for bucket, held in holders.items():
        if len(held) < 2:
            continue
        held.sort()
        winner_key = held[0][0]
        kind = bucket[0]
        for key, index in held[1:]:
            if kind == "s":
                # a later copy inside the winner's own document is dropped as well
                losers.setdefault(key, {"reason": None, "sentences": set()})["sentences"].add(index)
            elif key != winner_key:
                entry = losers.setdefault(key, {"reason": None, "sentences": set()})
                reason = DUPLICATE_DOCUMENT if kind == "d" else NEAR_DUPLICATE_DOCUMENT
                entry["reason"] = merge_reason(entry["reason"], reason)
    return losers


def merge_reason(a: str | None, b: str | None) -> str | None:
    """An exact duplicate outranks a near duplicate (it is the more specific reason)."""
    if DUPLICATE_DOCUMENT in (a, b):
        return DUPLICATE_DOCUMENT
    return a or b


def merge_losers(parts: Iterable[dict]) -> dict:
    merged = {"reason": None, "sentences": set()}
    for part in parts:
        merged["reason"] = merge_reason(merged["reason"], part["reason"])
        merged["sentences"] |= set(part["sentences"])
    return merged


class DedupIndex:
    """In-memory dedup for the plain loop and the dry run: add every document, then
    ``resolve()`` once; the answer equals the Beam pipeline's for the same documents."""

    def __init__(self):
        self.entries: list[tuple[str, str, int]] = []

    def add(self, key: str, buckets: list[tuple[str, int]]) -> None:
        self.entries += [(bucket, key, index) for bucket, index in buckets]

    def resolve(self) -> dict[str, dict]:
        return find_duplicates(self.entries)
