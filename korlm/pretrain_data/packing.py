"""Tokenize-and-pack for pretraining data: packing modes, per-token features, static masking.

Plain functions over numpy arrays, so the Beam step (``korlm.pretrain_data.beam``), the tests and
the benchmark run the same code. The record format is the pretrain-data contract
(``docs/pretrain_data.md``): one example = ``input_ids`` starting with the ``cls`` role id
and ending with the ``sep`` role id, plus same-length ``word_starts``, ``sentence_starts``,
optionally ``morpheme_starts`` and ``segment_ids``, ``next_sentence_label`` with NSP, and
``masked_lm_positions``/``masked_lm_ids`` with static masking.

Packing modes (``max_seq_length`` counts the special tokens):

``full-sentences`` (RoBERTa FULL-SENTENCES)
    Sentences packed greedily in order into ``cls s1 s2 ... sep``; an example may cross a
    document boundary, with an extra ``sep`` between the documents. Documents are read in
    Beam batches (up to 256 documents of one part file), so crossing happens within a
    batch only: the last example of a batch is not continued by the next batch.
``doc-sentences``
    The same, but an example never crosses a document boundary.
``segment-pair`` (BERT ``create_pretraining_data``)
    Per document: a target length (``max_seq_length - 3``, or with probability
    ``short_seq_prob`` a random length in ``[2, max_seq_length - 3]``), sentences
    collected until the target, a random split point into A and B, then
    ``truncate_seq_pair`` (the longer side loses a token from its front or back at random
    until the pair fits) and ``cls A sep B sep``. With NSP, B is replaced by sentences
    of another document of the same batch with probability 0.5 (``next_sentence_label``
    1), and the chunk's unused sentences go back to the document, as in BERT.
``span`` (BART)
    Consecutive whole sentences of one document up to ``max_seq_length`` (the packing
    of ``doc-sentences``; ``sentence_starts`` marks each sentence for sentence
    permutation).

Truncation: a sentence longer than what fits in one example is cut to fit (its end is
dropped); in ``segment-pair`` ``truncate_seq_pair`` cuts A and B. Every cut token of the
corpus is counted, so for every mode ``tokens written - tokens copied into random-next B
+ tokens cut == corpus tokens x dupe_factor``.

Two deliberate differences from BERT's script, both so the statistics hold on short
documents (a movie review is one or two sentences): the NSP coin is flipped first and a
chunk of one sentence whose coin says "is next" is split into A and B at a random
eojeol boundary (a random token when it is one eojeol), where BERT always draws a
random B for a one-sentence chunk, which would make most of the sample's labels
"random"; and static masking picks ``floor(n * mask_rate + u)``
tokens (``u`` uniform, ``n`` the maskable tokens), an unbiased count, where BERT's
``round(len(tokens) * mask_rate)`` counts ``[CLS]``/``[SEP]`` and over-masks short
examples, and in whole-word mode takes the first unit that would overflow the count
with probability room/size (BERT skips it, masking about a point too little).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from korlm.errors import KorlmError

PACKINGS = ("full-sentences", "doc-sentences", "segment-pair", "span")
MASKINGS = ("dynamic", "static")
WHOLE_WORD = ("none", "eojeol", "morpheme")
OBJECTIVES = ("mlm", "bart")
DEFAULT_PACKING = {"mlm": "full-sentences", "bart": "span"}
DEFAULT_SHORT_SEQ_PROB = 0.1  # BERT's default
DEFAULT_DUPE_FACTOR = 10  # BERT's default
DEFAULT_MASK_RATE = 0.15
# Characters str.split() treats as whitespace (all below U+3001).
_SPACES = [*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
           0x202F, 0x205F, 0x3000]
_SPACE_TABLE = None
MORPHEME_BOUNDARY = "\ue001"  # korlm.tokenizer.morpheme.BOUNDARY (SentencePiece morpheme vocabs)


def _is_space(chars):
    """Bool array: which code points (uint32 array) are whitespace, as ``str.isspace``."""
    import numpy as np

    global _SPACE_TABLE
    if _SPACE_TABLE is None:
        table = np.zeros(0x3001, dtype=bool)
        table[_SPACES] = True
        _SPACE_TABLE = table
    inside = chars < _SPACE_TABLE.size
    out = np.zeros(chars.size, dtype=bool)
    out[inside] = _SPACE_TABLE[chars[inside]]
    return out


@dataclass(frozen=True)
class PackSettings:
    """Validated packing/masking settings (see :func:`resolve_settings`)."""

    objective: str
    packing: str
    max_seq_length: int
    nsp: bool = False
    short_seq_prob: float = DEFAULT_SHORT_SEQ_PROB
    masking: str = "dynamic"
    dupe_factor: int = 1
    mask_rate: float | None = None
    whole_word: str = "none"

    @property
    def max_predictions(self) -> int:
        """BERT's ``max_predictions_per_seq`` for static masking."""
        return math.ceil(self.max_seq_length * self.mask_rate) if self.mask_rate else 0


def resolve_settings(*, objective: str = "mlm", packing: str | None = None, max_seq_length: int = 128,
                     nsp: bool = False, short_seq_prob: float | None = None, masking: str = "dynamic",
                     dupe_factor: int | None = None, mask_rate: float | None = None,
                     whole_word: str | None = None) -> PackSettings:
    """Check a combination of settings and fill the defaults; KorlmError (one line) if invalid."""
    if objective not in OBJECTIVES:
        raise KorlmError(f"objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    packing = packing or DEFAULT_PACKING[objective]
    if packing not in PACKINGS:
        raise KorlmError(f"packing {packing!r} is unknown; choose one of {', '.join(PACKINGS)}")
    if masking not in MASKINGS:
        raise KorlmError(f"masking {masking!r} is unknown; choose dynamic or static")
    specials = 3 if packing == "segment-pair" else 2
    if max_seq_length < specials + 2:
        raise KorlmError(f"max_seq_length {max_seq_length} leaves no room beside the {specials} special "
                         f"tokens of {packing} packing; use e.g. 128")
    if nsp and packing != "segment-pair":
        raise KorlmError(f"nsp needs packing segment-pair (got {packing}): next-sentence labels need A/B pairs")
    if short_seq_prob is not None and packing != "segment-pair":
        raise KorlmError(f"short_seq_prob only applies to packing segment-pair (got {packing})")
    if short_seq_prob is not None and not 0 <= short_seq_prob <= 1:
        raise KorlmError(f"short_seq_prob {short_seq_prob} must be between 0 and 1")
    if objective == "bart" and packing == "segment-pair":
        raise KorlmError("objective bart takes span, doc-sentences or full-sentences packing, not segment-pair")
    if objective == "bart" and masking == "static":
        raise KorlmError("objective bart has no static masking: BART noising runs at training time (masking: dynamic)")
    if masking == "dynamic":
        given = [name for name, value in (("dupe_factor", dupe_factor), ("mask_rate", mask_rate),
                                          ("whole_word", whole_word)) if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise KorlmError(f"{', '.join(given)} only {verb} to masking: static (dynamic masking is "
                             "configured in the pretrain section)")
        return PackSettings(objective, packing, max_seq_length, nsp,
                            DEFAULT_SHORT_SEQ_PROB if short_seq_prob is None else short_seq_prob)
    dupe_factor = DEFAULT_DUPE_FACTOR if dupe_factor is None else dupe_factor
    mask_rate = DEFAULT_MASK_RATE if mask_rate is None else mask_rate
    whole_word = whole_word or "none"
    if dupe_factor < 1:
        raise KorlmError(f"dupe_factor must be at least 1, got {dupe_factor}")
    if not 0 < mask_rate < 1:
        raise KorlmError(f"mask_rate {mask_rate} must be between 0 and 1")
    if whole_word not in WHOLE_WORD:
        raise KorlmError(f"whole_word {whole_word!r} is unknown; choose none, eojeol or morpheme")
    return PackSettings(objective, packing, max_seq_length, nsp,
                        DEFAULT_SHORT_SEQ_PROB if short_seq_prob is None else short_seq_prob,
                        "static", dupe_factor, mask_rate, whole_word)


def feature_names(settings: PackSettings, morpheme_vocab: bool) -> list[str]:
    """The features every example of these settings carries, in contract order."""
    names = ["input_ids", "word_starts"]
    if morpheme_vocab:
        names.append("morpheme_starts")
    names.append("sentence_starts")
    if settings.packing == "segment-pair":
        names.append("segment_ids")
    if settings.nsp:
        names.append("next_sentence_label")
    if settings.masking == "static":
        names += ["masked_lm_positions", "masked_lm_ids"]
    return names


# ------------------------------------------------------------------ tokenizing

@dataclass
class TokenizedBatch:
    """The tokens of a batch of documents, flat: sentence ``s`` is ``ids[bounds[s]:bounds[s+1]]``."""

    ids: object  # np.ndarray int64
    word_starts: object  # np.ndarray int64, 1 where a token begins an eojeol
    morpheme_starts: object | None  # np.ndarray int64 (morpheme vocab only)
    bounds: object  # np.ndarray int64 [num_sentences + 1]
    documents: list[list[tuple[int, int]]]  # per document: (start, end) of its non-empty sentences

    @property
    def num_tokens(self) -> int:
        return int(self.bounds[-1])


def tokenize_documents(tokenizer, documents: Sequence[Sequence[str]]) -> TokenizedBatch:
    """Encode every sentence of ``documents`` (lists of sentences) with a ``KorlmTokenizer``.

    Word starts come from the encoding's character offsets: a token starts an eojeol when
    the whitespace-separated word holding its first character differs from the previous
    token's. For a morpheme vocab the offsets are into the prepared text: WordPiece form
    ``나 ##는`` (whitespace-separated morphemes; an eojeol starts at one not marked
    ``##``) or SentencePiece form ``나<B>는`` (morphemes of an eojeol joined by
    ``korlm.tokenizer.morpheme.BOUNDARY``; an eojeol starts after whitespace).
    """
    import numpy as np

    flat = [s for doc in documents for s in doc]
    prepared = tokenizer.prepare(flat)
    encodings = tokenizer.hf.encode_batch(prepared, add_special_tokens=False)
    morpheme = tokenizer.pre_tokenizer == "morpheme"
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    bounds = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    total = int(bounds[-1])
    chain = itertools.chain.from_iterable
    ids = np.fromiter(chain(e.ids for e in encodings), dtype=np.int64, count=total)
    # All sentences on one character axis, joined by "\n": sentence k starts at base[k].
    text = "\n".join(prepared)
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    base = np.zeros(len(prepared), dtype=np.int64)
    np.cumsum(np.fromiter((len(t) + 1 for t in prepared[:-1]), dtype=np.int64, count=max(len(prepared) - 1, 0)),
              out=base[1:])
    offsets = np.fromiter(chain(chain(e.offsets for e in encodings)), dtype=np.int64, count=2 * total)
    token_pos = offsets[0::2] + np.repeat(base, lengths)
    space = _is_space(chars)
    if morpheme:
        # SentencePiece morpheme vocabs join an eojeol's morphemes with BOUNDARY
        inner = chars == np.uint32(ord(MORPHEME_BOUNDARY))
        space = space | inner
    begins = ~space
    begins[1:] &= space[:-1]
    word_pos = np.flatnonzero(begins)
    word_index = np.searchsorted(word_pos, token_pos, side="right") - 1
    # a token starting on whitespace (SentencePiece's lone "▁") belongs to the next word
    on_space = space[np.minimum(token_pos, max(chars.size - 1, 0))] if chars.size else np.zeros(total, bool)
    word_index[on_space] = np.searchsorted(word_pos, token_pos[on_space], side="left")
    new_word = np.ones(total, dtype=bool)
    new_word[1:] = word_index[1:] != word_index[:-1]
    sentence_first = bounds[:-1][lengths > 0]
    new_word[sentence_first] = True
    if morpheme:
        # a morpheme written "##..." (WordPiece form) or after BOUNDARY continues its eojeol
        hash_ = np.uint32(ord("#"))
        marked = np.zeros(word_pos.size, dtype=bool)
        inside = word_pos + 1 < chars.size
        marked[inside] = (chars[word_pos[inside]] == hash_) & (chars[word_pos[inside] + 1] == hash_)
        after = word_pos > 0
        marked[after] |= inner[word_pos[after] - 1]
        morpheme_starts = new_word.astype(np.int64)
        word_starts = (new_word & ~marked[np.maximum(word_index, 0)]).astype(np.int64)
        word_starts[sentence_first] = 1
    else:
        morpheme_starts = None
        word_starts = new_word.astype(np.int64)
    docs, s = [], 0
    for doc in documents:
        docs.append([(int(bounds[k]), int(bounds[k + 1])) for k in range(s, s + len(doc)) if lengths[k]])
        s += len(doc)
    return TokenizedBatch(ids, word_starts, morpheme_starts, bounds, docs)


# --------------------------------------------------------------------- packing

# An example under construction is a list of pieces: a role name ("cls" / "sep") or a
# slice (start, end, sentence_start) of the batch's flat token arrays.


@dataclass
class PackedExample:
    pieces: list
    document: int  # the document it comes from (index in the batch); -1 for full-sentences
    index: int  # its index among the examples of that document (of the batch, full-sentences)
    next_sentence_label: int | None = None


@dataclass
class PackCounts:
    truncated_tokens: int = 0
    random_next_tokens: int = 0
    nsp_without_other_document: int = 0


def _greedy(docs: list[list[tuple[int, int]]], max_seq_length: int, cross_documents: bool,
            counts: PackCounts) -> Iterator[PackedExample]:
    """full-sentences (``cross_documents``) or doc-sentences / span packing of a batch."""
    budget = max_seq_length - 2
    current: list = []
    used = index = 0
    owner = -1  # the document of the example being built; -1 for full-sentences (the batch)

    def flush():
        nonlocal current, used, index
        example = PackedExample(["cls", *current, "sep"], owner, index)
        current, used, index = [], 0, index + 1
        return example

    for d, sentences in enumerate(docs):
        if not cross_documents:
            if current:
                yield flush()
            owner, index = d, 0
        for n, (start, end) in enumerate(sentences):
            length = end - start
            if length > budget:
                counts.truncated_tokens += length - budget
                end, length = start + budget, budget
            separator = 1 if (n == 0 and current) else 0  # RoBERTa: an extra sep between documents
            if current and used + separator + length > budget:
                yield flush()
                separator = 0
            if separator:
                current.append("sep")
                used += 1
            current.append((start, end, True))
            used += length
    if current:
        yield flush()


def _truncated_lengths(a: int, b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after BERT's ``truncate_seq_pair`` (the longer side, B on ties, loses a token)."""
    excess = a + b - max_tokens
    if excess <= 0:
        return a, b
    if a > b:
        k = min(excess, a - b)
        a, excess = a - k, excess - k
    elif b > a:
        k = min(excess, b - a)
        b, excess = b - k, excess - k
    return a - excess // 2, b - (excess + 1) // 2


def _trim(pieces: list, front: int, back: int) -> list:
    """Drop ``front`` tokens from the start and ``back`` from the end of slice pieces."""
    out = list(pieces)
    while front:
        start, end, _ = out[0]
        take = min(front, end - start)
        front -= take
        out[0] = (start + take, end, False)  # no longer the sentence's first token
        if out[0][0] == end:
            out.pop(0)
    while back:
        start, end, first = out[-1]
        take = min(back, end - start)
        back -= take
        out[-1] = (start, end - take, first)
        if out[-1][1] == start:
            out.pop()
    return out


def _length(pieces: list) -> int:
    return sum(end - start for start, end, _ in pieces)


def _coin_bits(rng: random.Random, n: int) -> int:
    """Binomial(n, 1/2): how many of ``n`` fair coins say "front"."""
    return bin(rng.getrandbits(n)).count("1") if n else 0


def _segment_pairs(docs: list[list[tuple[int, int]]], d: int, settings: PackSettings, rng: random.Random,
                   counts: PackCounts, nonempty: list[int], word_starts) -> Iterator[PackedExample]:
    """BERT's ``create_instances_from_document`` for document ``d``; ``nonempty``: the
    batch's documents with tokens (ascending), where a random B may come from."""
    document = docs[d]
    others = len(nonempty) - 1
    max_tokens = settings.max_seq_length - 3
    target = max_tokens
    if rng.random() < settings.short_seq_prob:
        target = rng.randint(2, max_tokens)
    chunk: list[tuple[int, int]] = []
    length = i = index = 0
    while i < len(document):
        chunk.append(document[i])
        length += document[i][1] - document[i][0]
        if i == len(document) - 1 or length >= target:
            is_random = settings.nsp and rng.random() < 0.5
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [(s, e, True) for s, e in chunk[:a_end]]
            b: list = []
            if is_random and not others:
                counts.nsp_without_other_document += 1
                is_random = False
            if not is_random and len(chunk) == 1:
                start, end = chunk[0]
                if end - start >= 2:
                    # at an eojeol boundary when the sentence has two or more eojeol
                    words = [k for k in range(start + 1, end) if word_starts[k]]
                    cut = words[rng.randrange(len(words))] if words else rng.randint(start + 1, end - 1)
                    a, b = [(start, cut, True)], [(cut, end, False)]
                elif settings.nsp and others:
                    is_random = True  # a one-token document cannot be split (as BERT: random B)
            if is_random:
                other = rng.randrange(others)
                other = nonempty[other + (other >= bisect.bisect_left(nonempty, d))]
                target_b = target - _length(a)
                sentences = docs[other]
                for s, e in sentences[rng.randrange(len(sentences)):]:
                    b.append((s, e, True))
                    if _length(b) >= target_b:
                        break
                i -= len(chunk) - a_end  # the chunk's unused sentences go back to the document
            elif not b:
                b = [(s, e, True) for s, e in chunk[a_end:]]
            la, lb = _length(a), _length(b)
            new_a, new_b = _truncated_lengths(la, lb, max_tokens)
            front_a, front_b = _coin_bits(rng, la - new_a), _coin_bits(rng, lb - new_b)
            a = _trim(a, front_a, la - new_a - front_a)
            b = _trim(b, front_b, lb - new_b - front_b)
            counts.truncated_tokens += la - new_a
            if is_random:
                counts.random_next_tokens += new_b
            else:
                counts.truncated_tokens += lb - new_b
            pieces = ["cls", *a, "sep", *b, "sep"] if b else ["cls", *a, "sep"]
            yield PackedExample(pieces, d, index, int(is_random) if settings.nsp else None)
            index += 1
            chunk, length = [], 0
        i += 1


def document_rng(seed: int, file_name: str, document: int, dupe: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\t{file_name}\t{document}\t{dupe}\tpack".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def pack_batch(batch: TokenizedBatch, settings: PackSettings, *, seed: int = 0, file_name: str = "",
               first_document: int = 0, dupe: int = 0, counts: PackCounts | None = None) -> Iterator[PackedExample]:
    """Pack a tokenized batch of documents by ``settings.packing``; cut tokens are added to ``counts``."""
    counts = counts if counts is not None else PackCounts()
    if settings.packing == "segment-pair":
        nonempty = [d for d, sentences in enumerate(batch.documents) if sentences]
        for d in nonempty:
            rng = document_rng(seed, file_name, first_document + d, dupe)
            yield from _segment_pairs(batch.documents, d, settings, rng, counts, nonempty, batch.word_starts)
        return
    cross = settings.packing == "full-sentences"
    yield from _greedy(batch.documents, settings.max_seq_length, cross, counts)


def materialize(batch: TokenizedBatch, example: PackedExample, special_ids: dict[str, int],
                pair: bool = False) -> dict:
    """Feature arrays (numpy int64) of one packed example; see :func:`materialize_many`."""
    return materialize_many(batch, [example], special_ids, pair)[0]


def materialize_many(batch: TokenizedBatch, examples: Sequence[PackedExample], special_ids: dict[str, int],
                     pair: bool = False) -> list[dict]:
    """Feature arrays (numpy int64) of packed examples, as in the contract; ``segment_ids``
    when ``pair`` (segment-pair packing), ``next_sentence_label`` when an example has one.

    One gather over the batch's flat arrays for all examples. Every piece's first token is
    a word (and morpheme) start: a piece begins after a special token, at a sentence
    start, or where truncation or an A/B split cut a word.
    """
    import numpy as np

    if not examples:
        return []
    starts, lengths, first, special_at, special_value, second_segment = [], [], [], [], [], []
    example_sizes = []
    for example in examples:
        size = 0
        seen_sep = False
        for piece in example.pieces:
            if isinstance(piece, str):
                special_at.append(len(starts))
                special_value.append(special_ids[piece])
                starts.append(0)
                lengths.append(1)
                first.append(False)
                size += 1
                if piece == "sep" and not seen_sep:
                    seen_sep = True
                    second_segment.append((len(starts), len(example_sizes)))  # segment 1 starts after A's sep
            else:
                start, end, is_first = piece
                starts.append(start)
                lengths.append(end - start)
                first.append(is_first)
                size += end - start
        example_sizes.append(size)
    starts_a = np.asarray(starts, np.int64)
    lengths_a = np.asarray(lengths, np.int64)
    offsets = np.zeros(len(starts), np.int64)
    np.cumsum(lengths_a[:-1], out=offsets[1:])
    total = int(offsets[-1] + lengths_a[-1])
    index = np.repeat(starts_a - offsets, lengths_a) + np.arange(total)
    special_pos = offsets[special_at]
    ids = batch.ids[index]
    ids[special_pos] = special_value
    words = batch.word_starts[index]
    words[offsets] = 1
    sentences = np.zeros(total, np.int64)
    sentences[offsets[np.asarray(first, bool)]] = 1
    columns = {"input_ids": ids, "word_starts": words, "sentence_starts": sentences}
    if batch.morpheme_starts is not None:
        morphemes = batch.morpheme_starts[index]
        morphemes[offsets] = 1
        columns["morpheme_starts"] = morphemes
    ends = np.cumsum(example_sizes)
    if pair:
        # +1 after A's sep, -1 at the example's end (they cancel for an example without B)
        change = np.zeros(total + 1, np.int64)
        piece, owner = np.asarray(second_segment, np.int64).reshape(-1, 2).T
        np.add.at(change, np.append(offsets, total)[piece], 1)
        np.add.at(change, ends[owner], -1)
        columns["segment_ids"] = np.cumsum(change[:-1])
    split = ends[:-1]
    parts = {name: np.split(values, split) for name, values in columns.items()}
    out = []
    for k, example in enumerate(examples):
        features = {name: parts[name][k] for name in columns}
        if example.next_sentence_label is not None:
            features["next_sentence_label"] = np.full(1, example.next_sentence_label, np.int64)
        out.append(features)
    return out


# --------------------------------------------------------------- static masking

_GOLDEN = 0x9E3779B97F4A7C15
_STREAM_COUNT, _STREAM_UNIT, _STREAM_OVERFLOW, _STREAM_REPLACE, _STREAM_RANDOM_ID = range(5)
_STREAM_SALT = (0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1, 0x510E527FADE682D1, 0x9B05688C2B3E6C1F,
                0x1F83D9ABFB41BD6B)  # (SHA-512 IV words: arbitrary distinct constants)


def _hash64(seeds, positions, stream: int):
    """splitmix64 of (example seed, position, stream): uint64 arrays, one value per element.

    Counter-based randomness: what a token draws depends only on its example's key and
    its position, so masking a whole batch at once or one example alone gives the same
    mask, and nothing depends on the order examples are processed in."""
    import numpy as np

    def mix(z):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        # a stream key per (seed, stream) first: counters of one seed in different streams
        # would be correlated (the chosen units' low priorities leaked into the 80/10/10 draw)
        key = mix(np.asarray(seeds, np.uint64) ^ np.uint64(_STREAM_SALT[stream]))
        return mix(key + (np.asarray(positions).astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN))


def _uniform(seeds, positions, stream: int):
    import numpy as np

    return (_hash64(seeds, positions, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def example_seed(key: bytes) -> int:
    """The 64-bit masking seed of an example key."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"korlm-mask").digest(), "big")


def static_mask_many(input_ids, sizes, special, *, seeds, mask_rate: float, max_predictions: int, mask_id: int,
                     random_ids, starts=None):
    """BERT's ``create_masked_lm_predictions`` over a batch of examples at once, in numpy.

    ``input_ids``: the examples concatenated; ``sizes``: their lengths; ``special``: bool,
    True on tokens never masked; ``seeds``: one :func:`example_seed` per example;
    ``starts``: 1 where a whole-word unit (eojeol or morpheme) begins, or None to mask
    single tokens; ``random_ids``: what a "random" replacement draws from (non-special ids).

    Per example: ``num = min(max_predictions, floor(n * mask_rate + u))`` of its ``n``
    maskable tokens (``u`` uniform: the expected count is exactly ``n * mask_rate``);
    its units in random order are taken while they fit, and the first unit that does
    not fit is taken with probability room/size (so whole-word masking keeps the
    expected count; never beyond ``max_predictions``); then each chosen token becomes
    ``mask_id`` (80%), stays (10%) or becomes a random id (10%). Returns (masked ids,
    positions within each example ascending, original ids there, masks per example).
    """
    import numpy as np

    sizes = np.asarray(sizes, np.int64)
    seeds = np.asarray(seeds, np.uint64)
    n_examples = sizes.size
    example_start = np.zeros(n_examples, np.int64)
    np.cumsum(sizes[:-1], out=example_start[1:])
    example_of = np.repeat(np.arange(n_examples), sizes)
    position = np.arange(example_of.size) - example_start[example_of]
    masked = input_ids.copy()
    candidates = np.flatnonzero(~special)
    if candidates.size == 0:
        empty = np.zeros(0, np.int64)
        return masked, empty, empty, np.zeros(n_examples, np.int64)
    owner = example_of[candidates]
    maskable = np.bincount(owner, minlength=n_examples)
    u = _uniform(seeds, np.zeros(n_examples, np.int64), _STREAM_COUNT)
    num = np.minimum(max_predictions, np.floor(maskable * mask_rate + u)).astype(np.int64)
    begins = np.ones(candidates.size, bool) if starts is None else starts[candidates].astype(bool)
    begins[0] = True
    begins[1:] |= owner[1:] != owner[:-1]  # a unit never spans two examples
    unit = np.cumsum(begins) - 1
    unit_size = np.bincount(unit)
    unit_first = candidates[begins]
    unit_owner = example_of[unit_first]
    priority = _uniform(seeds[unit_owner], position[unit_first], _STREAM_UNIT)
    order = np.lexsort((priority, unit_owner))
    size_sorted, owner_sorted = unit_size[order], unit_owner[order]
    through = np.cumsum(size_sorted)
    group = np.flatnonzero(np.r_[True, owner_sorted[1:] != owner_sorted[:-1]])
    base = np.repeat(through[group] - size_sorted[group], np.diff(np.r_[group, order.size]))
    through -= base  # tokens taken up to and including this unit, within its example
    before = through - size_sorted
    target = num[owner_sorted]
    take = through <= target
    overflow = (before < target) & (through > target) & (through <= max_predictions)
    draw = _uniform(seeds[owner_sorted], position[unit_first[order]], _STREAM_OVERFLOW)
    take |= overflow & (draw * size_sorted < target - before)
    picked = np.zeros(unit_size.size, bool)
    picked[order[take]] = True
    positions = candidates[picked[unit]]
    labels = input_ids[positions]
    where = example_of[positions]
    replace = _uniform(seeds[where], position[positions], _STREAM_REPLACE)
    masked[positions[replace < 0.8]] = mask_id
    randomized = positions[replace >= 0.9]
    pick = _hash64(seeds[example_of[randomized]], position[randomized], _STREAM_RANDOM_ID) % np.uint64(random_ids.size)
    masked[randomized] = random_ids[pick.astype(np.int64)]
    return masked, position[positions], labels.astype(np.int64), np.bincount(where, minlength=n_examples)


def static_mask(input_ids, special, *, seed: int, mask_rate: float, max_predictions: int, mask_id: int,
                random_ids, starts=None):
    """:func:`static_mask_many` for one example: (masked ids, positions, original ids)."""
    masked, positions, labels, _ = static_mask_many(
        input_ids, [input_ids.size], special, seeds=[seed], mask_rate=mask_rate, max_predictions=max_predictions,
        mask_id=mask_id, random_ids=random_ids, starts=starts)
    return masked, positions, labels


# ---------------------------------------------------------------- serialization

def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [_varint(n) for n in range(1 << 14)]


def _len_prefix(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < (1 << 14) else _varint(n)


def serialize_examples(examples: Sequence[dict]) -> list[bytes]:
    """``tf.train.Example`` wire bytes of int64-list feature dicts, encoded in one numpy pass.

    The protobuf encoding of ``Example(features=Features(feature={name:
    Feature(int64_list=Int64List(value=...))}))``, map entries in the dicts' order (packed
    varints; negative values as 10-byte two's complement); ``tests/test_packing.py``
    parses them back with TensorFlow and compares with the proto TF builds. Building one proto per example cost more than
    tokenizing it (about 250 µs an example), so the whole batch is varint-encoded at once
    and each record is assembled from slices.
    """
    import numpy as np

    if not examples:
        return []
    names = list(examples[0])
    arrays = [np.asarray(f[name], np.int64) for f in examples for name in names]
    values = np.concatenate(arrays).view(np.uint64)
    nbytes = np.ones(values.size, np.int64)
    for k in range(1, 10):
        nbytes += values >= np.uint64(1 << (7 * k))
    byte_end = np.cumsum(nbytes)
    byte_start = byte_end - nbytes
    out = np.zeros(int(byte_end[-1]) if values.size else 0, np.uint8)
    for k in range(int(nbytes.max()) if values.size else 0):
        sel = np.flatnonzero(nbytes > k)
        chunk = ((values[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        chunk[nbytes[sel] > k + 1] |= 0x80
        out[byte_start[sel] + k] = chunk
    buffer = out.tobytes()
    bounds = np.zeros(values.size + 1, np.int64)
    bounds[1:] = byte_end
    value_bounds = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum([a.size for a in arrays], out=value_bounds[1:])
    segment = bounds[value_bounds].tolist()
    keys = [b"\x0a" + _len_prefix(len(name.encode())) + name.encode() + b"\x12" for name in names]
    records = []
    j = 0
    for _ in examples:
        parts = []
        for key in keys:
            payload = buffer[segment[j]:segment[j + 1]]
            j += 1
            int64_list = b"\x0a" + _len_prefix(len(payload)) + payload if payload else b""
            feature = b"\x1a" + _len_prefix(len(int64_list)) + int64_list
            entry = key + _len_prefix(len(feature)) + feature
            parts.append(b"\x0a" + _len_prefix(len(entry)) + entry)
        body = b"".join(parts)
        records.append(b"\x0a" + _len_prefix(len(body)) + body)
    return records
