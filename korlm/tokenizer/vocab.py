"""vocab: train a tokenizer on the clean corpus and measure it on held-out sentences.

Algorithms: ``wordpiece`` (Hugging Face ``tokenizers`` trainer) and
``sentencepiece-unigram`` / ``sentencepiece-bpe`` (the ``sentencepiece`` trainer, mirrored
into an equivalent ``tokenizer.json``). Pre-tokenizers: ``none`` or ``morpheme`` (Kiwi,
see ``korlm.tokenizer.morpheme``), for every algorithm. Special tokens sit at fixed ids in every
variant: BERT's [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (``special_tokens="bert"``) or
BART/RoBERTa's <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4 (``"bart"``). No lowercasing and
no accent stripping: accent stripping runs NFD, which decomposes every Hangul syllable
into jamo.

SentencePiece unigram scores are rounded to a dyadic grid so that sentencepiece (float32)
and ``tokenizers`` (float64) add them exactly and pick the same segmentation
(:func:`quantize_unigram_scores`).

Character coverage (``coverage="full"``, the default): every Hangul syllable (all
11,172), the modern conjoining jamo, the compatibility jamo and printable ASCII encode
without [UNK] whatever the corpus held.

* WordPiece: jamo and ASCII are in the vocabulary in both forms (word-initial and
  ``##``), replacing the latest-learned (rarest) merges so the size stays as asked.
  A syllable the vocabulary holds in one form gets the other form the same way; a
  syllable it holds in neither form is decomposed into its conjoining jamo by a
  character map (``normalizers.Precompiled``, the SentencePiece charsmap format) at the
  end of the normalizer, so it encodes as 2-3 jamo tokens instead of [UNK] and NFC
  recomposes it after decoding. The graph tokenizer (``korlm.tokenizer.tokenization``) derives the
  same map from vocab.txt.
* SentencePiece: ``byte_fallback``: any character outside the pieces encodes as its
  UTF-8 bytes ``<0xNN>``.

``coverage="corpus"`` keeps only what the trainer saw (the behaviour before issue 4).

The output directory loads with ``transformers.AutoTokenizer.from_pretrained`` as well as
``tokenizers.Tokenizer``; ``korlm.tokenizer.tokenization.KorlmTokenizer`` applies the morpheme
pre-tokenizer where the vocab needs it.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import time
import unicodedata
import zlib
from collections import Counter

from korlm import storage
from korlm.clean.corpus import corpus_files, iter_sentences
from korlm.clean.text import count_eojeol
from korlm.errors import KorlmError
from korlm.tokenizer.files import (
    CONFIG_FILE,
    CONTINUATION,
    HANGUL_SYLLABLES,
    SPECIAL_TOKEN_FAMILIES,
    SPECIAL_TOKENS,
    SPECIAL_TOKENS_MAP_FILE,
    SPM_FILE,
    STATS_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    jamo_fallback_map,
    special_token_ids,
    special_tokens,
)
from korlm.tokenizer.spm_model import compile_charsmap, quantize_unigram_scores

_LOG = logging.getLogger(__name__)

ALGORITHMS = ("wordpiece", "sentencepiece-unigram", "sentencepiece-bpe")
PRE_TOKENIZERS = ("none", "morpheme")
COVERAGES = ("full", "corpus")
_ALL_SPECIAL = {t for family in SPECIAL_TOKEN_FAMILIES.values() for t in family.values()}
MODEL_MAX_LENGTH = 512
MAX_HELDOUT_SENTENCES = 20_000
# Modern conjoining jamo (choseong, jungseong, jongseong): what a syllable decomposes to.
CONJOINING_JAMO = [chr(c) for c in (*range(0x1100, 0x1113), *range(0x1161, 0x1176), *range(0x11A8, 0x11C3))]
COMPATIBILITY_JAMO = [chr(c) for c in range(0x3131, 0x318F)]
PRINTABLE_ASCII = [chr(c) for c in range(0x21, 0x7F)]
COVERAGE_ALPHABET = CONJOINING_JAMO + COMPATIBILITY_JAMO + PRINTABLE_ASCII


# --------------------------------------------------------------------------- corpus


_SAMPLE_HASH = hashlib.blake2b(digest_size=8, person=b"korlm-vocab")


def _sample_key(data: bytes) -> int:
    """The sampling key of a sentence's UTF-8 bytes: its keyed 64-bit blake2b, as an int."""
    h = _SAMPLE_HASH.copy()  # cheaper than a keyword-argument constructor per sentence
    h.update(data)
    return int.from_bytes(h.digest(), "big")


class _BottomK:
    """The sentences with the smallest hash keys, bounded by count and/or UTF-8 bytes.

    Deterministic and independent of corpus order and sharding; memory is the sample.
    Without bounds every sentence is kept (a plain list, sorted once at the end).
    """

    def __init__(self, max_count: int | None, max_bytes: int | None):
        self.max_count, self.max_bytes = max_count, max_bytes
        self.bounded = max_count is not None or max_bytes is not None
        self.heap: list[tuple[int, str, int]] = []  # max-heap through negated keys
        self.bytes = 0

    def add(self, sentence: str, key: int, size: int) -> None:
        """Offer ``sentence`` with its :func:`_sample_key` and its UTF-8 size (+1 for the newline)."""
        entry = (-key, sentence, size)
        if not self.bounded:
            self.heap.append(entry)
            self.bytes += size
            return
        if self.heap and ((self.max_count is not None and len(self.heap) >= self.max_count)
                          or (self.max_bytes is not None and self.bytes + size > self.max_bytes)):
            if entry[0] <= self.heap[0][0]:  # larger than the largest kept key: not in the sample
                return
        heapq.heappush(self.heap, entry)
        self.bytes += size
        while len(self.heap) > 1 and ((self.max_count is not None and len(self.heap) > self.max_count)
                                      or (self.max_bytes is not None and self.bytes > self.max_bytes)):
            self.bytes -= heapq.heappop(self.heap)[2]

    def sentences(self) -> list[str]:
        """The kept sentences, smallest key first."""
        return [s for _, s, _ in sorted(self.heap, reverse=True)]


def _sample(corpus_dir: str, max_sentences: int | None, max_bytes: int | None,
            heldout_every: int) -> tuple[_BottomK, _BottomK, dict]:
    train = _BottomK(max_sentences, max_bytes)
    heldout = _BottomK(MAX_HELDOUT_SENTENCES, None)
    n_sentences = n_bytes = 0
    crc32 = zlib.crc32
    train_add, heldout_add = train.add, heldout.add
    for sentence in iter_sentences(corpus_dir):
        data = sentence.encode("utf-8")
        size = len(data) + 1
        n_sentences += 1
        n_bytes += size
        key = _sample_key(data)
        if heldout_every and crc32(data) % heldout_every == 0:
            heldout_add(sentence, key, size)
        else:
            train_add(sentence, key, size)
    return train, heldout, {"corpus_sentences": n_sentences, "corpus_bytes": n_bytes}


def sample_sentences(corpus_dir: str, *, max_sentences: int | None = None, max_bytes: int | None = None,
                     heldout_every: int = 20) -> tuple[list[str], list[str], dict]:
    """(training sample, held-out sample, counts) in one streaming pass.

    One sentence in ``heldout_every`` (by a CRC of its text, so a repeated sentence is
    never on both sides) is held out; at most MAX_HELDOUT_SENTENCES of them are kept.
    The training sample is all other sentences, or the ``max_sentences`` / ``max_bytes``
    of them with the smallest keyed hash: a uniform, deterministic sample. Both come
    ordered by that hash.
    """
    train, heldout, counts = _sample(corpus_dir, max_sentences, max_bytes, heldout_every)
    return train.sentences(), heldout.sentences(), counts


# --------------------------------------------------------------------------- checks


def _check_args(algorithm: str, pre_tokenizer: str, vocab_size: int, min_frequency: int,
                max_sentences: int | None, max_bytes: int | None, heldout_every: int, coverage: str,
                family: str = "bert") -> None:
    special_tokens(family)
    if algorithm not in ALGORITHMS:
        raise KorlmError(f"algorithm {algorithm!r} is unknown; choose one of {', '.join(ALGORITHMS)}")
    if pre_tokenizer not in PRE_TOKENIZERS:
        raise KorlmError(f"pre_tokenizer {pre_tokenizer!r} is unknown; choose one of {', '.join(PRE_TOKENIZERS)}")
    if coverage not in COVERAGES:
        raise KorlmError(f"coverage {coverage!r} is unknown; choose one of {', '.join(COVERAGES)}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise KorlmError(
            f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens; use e.g. 8000")
    floor = min_vocab_size(algorithm, coverage)
    if vocab_size < floor:
        raise KorlmError(f"vocab_size {vocab_size} is too small for {algorithm} with coverage={coverage!r}: "
                         f"needs at least {floor}; use e.g. 8000")
    if min_frequency < 1:
        raise KorlmError(f"min_frequency must be at least 1, got {min_frequency}")
    if max_sentences is not None and max_sentences < 1:
        raise KorlmError(f"max_sentences must be at least 1 (or None for all), got {max_sentences}")
    if max_bytes is not None and max_bytes < 1:
        raise KorlmError(f"max_bytes must be at least 1 (or None for all), got {max_bytes}")
    if heldout_every != 0 and heldout_every < 2:
        raise KorlmError(f"heldout_every must be 0 (no held-out set) or at least 2, got {heldout_every}")


def min_vocab_size(algorithm: str, coverage: str) -> int:
    """Smallest vocab_size that holds the special tokens and the guaranteed alphabet."""
    if algorithm == "wordpiece":
        return len(SPECIAL_TOKENS) + (2 * len(COVERAGE_ALPHABET) if coverage == "full" else 1) + 100
    return len(SPECIAL_TOKENS) + 256 + 100  # sentencepiece: byte pieces always


# --------------------------------------------------------------------------- wordpiece


def _bert_normalizers():
    from tokenizers import normalizers

    # NFC composes Hangul typed as jamo; BertNormalizer without lowercase/strip_accents
    # only cleans control characters and spaces out CJK ideographs (hanja).
    return [normalizers.NFC(),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                       lowercase=False)]


def wordpiece_pre_tokenizer(pre_tokenizer: str):
    from tokenizers import pre_tokenizers

    # Morpheme mode: korlm.tokenizer.morpheme already split words and punctuation and marked
    # continuations with "##", which a punctuation split would break apart.
    return pre_tokenizers.WhitespaceSplit() if pre_tokenizer == "morpheme" else pre_tokenizers.BertPreTokenizer()


def _fit_vocab(tokens: list[str], required: list[str], size: int) -> list[str]:
    """``tokens`` (id order) plus the missing ``required`` ones, dropping the latest
    multi-character tokens (the rarest merges) so the result has at most ``size``."""
    present = set(tokens)
    missing = [t for t in dict.fromkeys(required) if t not in present]
    room = size - len(missing)
    if len(tokens) > room:
        drop = len(tokens) - room
        keep = []
        for token in reversed(tokens):
            if drop and len(token.removeprefix(CONTINUATION)) > 1 and token not in _ALL_SPECIAL:
                drop -= 1
                continue
            keep.append(token)
        if drop:
            alphabet = sum(1 for t in tokens if len(t.removeprefix(CONTINUATION)) == 1) + len(missing)
            raise KorlmError(f"vocab_size {size} cannot hold the character alphabet ({alphabet} single-character "
                             f"tokens: the corpus's plus the guaranteed ones); raise vocab_size or use coverage=corpus")
        tokens = keep[::-1]
    return tokens + missing


def _bound_alphabet(tokens: list[str], train: list[str], budget: int) -> tuple[list[str], set[str]]:
    """Drop the corpus's rarest single characters (not the guaranteed alphabet) until the
    single-character tokens, both forms of every kept syllable and the guaranteed
    alphabet fit in ``budget``; tokens containing a dropped character go too. Dropped
    syllables are then decomposed to jamo by the fallback map; other dropped
    characters become [UNK]."""
    def alphabet_size(chars):
        return 2 * len(chars | set(COVERAGE_ALPHABET))

    chars = {t.removeprefix(CONTINUATION) for t in tokens if len(t.removeprefix(CONTINUATION)) == 1
             and t not in _ALL_SPECIAL}
    if alphabet_size(chars) <= budget:
        return tokens, set()
    freq = Counter(c for sentence in train for c in sentence)
    evicted: set[str] = set()
    for c in sorted(chars - set(COVERAGE_ALPHABET), key=lambda c: (freq[c], c)):
        if alphabet_size(chars) <= budget:
            break
        chars.discard(c)
        evicted.add(c)
    return [t for t in tokens if t in _ALL_SPECIAL or not evicted.intersection(t)], evicted


def _train_wordpiece(train: list[str], *, pre_tokenizer: str, vocab_size: int, min_frequency: int,
                     coverage: str, family: str = "bert") -> tuple[object, dict]:
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    from korlm.tokenizer import morpheme

    specials = special_tokens(family)

    texts = train
    if pre_tokenizer == "morpheme":
        # The trainer sees continuation pieces as TRAINING_MARK + piece, so it learns
        # "<mark>는" (renamed "##는" below) from real continuation counts.
        mark = morpheme.TRAINING_MARK
        texts = morpheme.segment_batch([t.replace(mark, "") for t in train], mark=mark)

    def learn(size: int, texts: list[str], nfc: bool = True) -> list[str]:
        tokenizer = Tokenizer(models.WordPiece(unk_token=specials["unk"],
                                               continuing_subword_prefix=CONTINUATION, max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.Sequence(_bert_normalizers()[0 if nfc else 1:])
        tokenizer.pre_tokenizer = wordpiece_pre_tokenizer(pre_tokenizer)
        trainer = trainers.WordPieceTrainer(
            vocab_size=size, min_frequency=min_frequency, special_tokens=list(specials.values()),
            continuing_subword_prefix=CONTINUATION, show_progress=False,
            initial_alphabet=COVERAGE_ALPHABET if coverage == "full" else [])
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
        if pre_tokenizer == "morpheme":
            mark = morpheme.TRAINING_MARK
            renamed = [CONTINUATION + t[1:] if t.startswith(mark) else t for t in tokens if t != mark]
            tokens = [t for t in dict.fromkeys(renamed) if mark not in t]
        return tokens

    def fit(tokens: list[str]) -> tuple[list[str], list[str], set[str]]:
        required: list[str] = []
        evicted: set[str] = set()
        if coverage == "full":
            tokens, evicted = _bound_alphabet(tokens, train, vocab_size * 3 // 4)
            kept = set(tokens)
            syllables = [s for s in HANGUL_SYLLABLES if s in kept or CONTINUATION + s in kept]
            required = [f for c in COVERAGE_ALPHABET + syllables for f in (c, CONTINUATION + c)]
        return _fit_vocab(tokens, required, vocab_size), required, evicted

    size = vocab_size + (int(vocab_size * 0.05) if pre_tokenizer == "morpheme" else 0)
    learned = learn(size, texts)
    tokens, required, evicted = fit(learned)
    if len(tokens) < vocab_size and len(learned) >= vocab_size:
        # Rare characters were evicted to fit the alphabet (and the tokens holding them
        # with them). Learn again on text where evicted syllables are already
        # decomposed to jamo, as the fallback map will do, and other evicted characters
        # are dropped, so the freed room goes to merges that can occur.
        table = {ord(c): unicodedata.normalize("NFD", c) if "\uac00" <= c <= "\ud7a3" else None for c in evicted}
        # (NFC first, in Python: the trainer's own NFC would recompose the jamo.)
        learned = learn(size, [unicodedata.normalize("NFC", t).translate(table) for t in texts], nfc=False)
        tokens, required, more = fit(learned)
        evicted |= more
    if tokens[:len(specials)] != list(specials.values()):
        raise RuntimeError(f"special tokens are not at ids 0-4: {tokens[:5]}")

    vocab = {t: i for i, t in enumerate(tokens)}
    final = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk"], continuing_subword_prefix=CONTINUATION,
                                       max_input_chars_per_word=100))
    steps = _bert_normalizers()
    fallback = jamo_fallback_map(vocab) if coverage == "full" else {}
    if fallback:
        steps.append(normalizers.Precompiled(compile_charsmap(fallback)))
    final.normalizer = normalizers.Sequence(steps)
    final.pre_tokenizer = wordpiece_pre_tokenizer(pre_tokenizer)
    final.decoder = decoders.WordPiece(prefix=CONTINUATION)
    final.add_special_tokens(list(specials.values()))
    _set_post_processor(final, family)
    how = {
        "method": "corpus alphabet only" if coverage == "corpus" else
        "initial alphabet (jamo, compatibility jamo, printable ASCII in both word-initial and ## forms); "
        "syllables missing from the vocab are decomposed to conjoining jamo by a normalizer charsmap",
        "guaranteed": [] if coverage == "corpus" else
        ["hangul_syllables (11172)", "conjoining_jamo (67 modern)", "compatibility_jamo (94)", "printable_ascii (94)"],
        "syllables_in_vocab": sum(1 for s in HANGUL_SYLLABLES if s in vocab and CONTINUATION + s in vocab),
        "syllables_decomposed_to_jamo": len(fallback),
        "tokens_added_for_coverage": len(set(required) - set(learned)),
        "rare_characters_evicted": len(evicted),
    }
    return final, how


def _set_post_processor(tokenizer, family: str) -> None:
    """BERT: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` (B with type id 1); BART/RoBERTa:
    ``<s> A </s>`` / ``<s> A </s></s> B </s>`` (type ids all 0, as RobertaProcessing)."""
    from tokenizers import processors

    roles, ids = special_tokens(family), special_token_ids(family)
    cls, sep = roles["cls"], roles["sep"]
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if family == "bert" else f"{cls} $A {sep} {sep} $B {sep}"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, ids["cls"]), (sep, ids["sep"])])


# --------------------------------------------------------------------------- sentencepiece


def _spm_special_args(family: str) -> dict:
    """sentencepiece trainer arguments putting the family's special tokens at ids 0-4:
    pad and unk at their ids, the other three as user-defined symbols, which the trainer
    assigns to the free ids in order (and matches in text, as ``tokenizers`` does)."""
    roles, ids = special_tokens(family), special_token_ids(family)
    return {"pad_id": ids["pad"], "pad_piece": roles["pad"], "unk_id": ids["unk"], "unk_piece": roles["unk"],
            "bos_id": -1, "eos_id": -1,
            "user_defined_symbols": [t for role, t in roles.items() if role not in ("pad", "unk")]}


def _train_sentencepiece(train: list[str], *, algorithm: str, vocab_size: int, coverage: str,
                         pre_tokenizer: str = "none", family: str = "bert") -> tuple[bytes, object, dict]:
    import sentencepiece as spm

    from korlm.tokenizer import morpheme

    model = io.BytesIO()
    extra = {}
    if pre_tokenizer == "morpheme":
        # Morphemes of an eojeol joined by BOUNDARY: a hard boundary for the trainer,
        # removed from the pieces (see korlm.tokenizer.morpheme).
        texts = [unicodedata.normalize("NFC", t)
                 for t in morpheme.segment_batch(train, boundary=morpheme.BOUNDARY)]
        extra["pretokenization_delimiter"] = morpheme.BOUNDARY
    else:
        texts = [unicodedata.normalize("NFC", t) for t in train]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
            model_type="unigram" if algorithm == "sentencepiece-unigram" else "bpe",
            # identity: no NFKC (it would fold full-width forms and compatibility jamo);
            # NFC is applied before training and by the tokenizer's normalizer.
            normalization_rule_name="identity", character_coverage=0.9995,
            byte_fallback=coverage == "full", **_spm_special_args(family), **extra,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            max_sentence_length=1 << 16, train_extremely_large_corpus=False, minloglevel=2)
    except RuntimeError as exc:
        message = str(exc).splitlines()[0]
        if "Vocabulary size" in message or "vocab_size" in message:
            raise KorlmError(f"corpus is too small for {algorithm} vocab_size {vocab_size} ({message}); "
                             "lower vocab_size or add text") from None
        raise
    blob = model.getvalue()
    if algorithm == "sentencepiece-unigram":
        blob = quantize_unigram_scores(blob)
    return blob, sentencepiece_hf_tokenizer(blob, algorithm, family=family, pre_tokenizer=pre_tokenizer), {
        "method": "sentencepiece byte_fallback: characters outside the pieces encode as UTF-8 byte pieces"
        if coverage == "full" else "corpus alphabet only (character_coverage 0.9995)",
        "guaranteed": ["any unicode text (bytes)"] if coverage == "full" else [],
    }


def sentencepiece_hf_tokenizer(blob: bytes, algorithm: str, *, family: str = "bert", pre_tokenizer: str = "none"):
    """The ``tokenizers`` equivalent of a SentencePiece model trained by :func:`build_vocab`.

    Morpheme vocabs: after the ``▁`` split, words are split at ``morpheme.BOUNDARY`` (and
    it is dropped), so no piece crosses a morpheme boundary and a continuation morpheme
    is encoded without ``▁``.
    """
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    from korlm.tokenizer import morpheme

    specials = special_tokens(family)
    sp = spm.SentencePieceProcessor(model_proto=blob)
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    byte_fallback = any(sp.is_byte(i) for i in range(sp.get_piece_size()))
    if algorithm == "sentencepiece-unigram":
        model = models.Unigram(pieces, unk_id=special_token_ids(family)["unk"], byte_fallback=byte_fallback)
    else:
        vocab = {p: i for i, (p, _) in enumerate(pieces)}
        normal = {p: s for i, (p, s) in enumerate(pieces) if sp.is_unknown(i) is False and not sp.is_byte(i)
                  and not sp.is_control(i) and p not in _ALL_SPECIAL}
        merges = []
        for piece, score in normal.items():
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in normal and right in normal:
                    merges.append((score, vocab[left], vocab[right], left, right))
        merges.sort(key=lambda m: (-m[0], m[1], m[2]))
        model = models.BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=specials["unk"], fuse_unk=True,
                           byte_fallback=byte_fallback)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    if pre_tokenizer == "morpheme":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            tokenizer.pre_tokenizer, pre_tokenizers.Split(morpheme.BOUNDARY, behavior="removed")])
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(),
                                           decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tokenizer.add_special_tokens(list(specials.values()))
    _set_post_processor(tokenizer, family)
    return tokenizer


# --------------------------------------------------------------------------- stats


def heldout_metrics(tokenizer, sentences: list[str]) -> dict:
    """unk_rate, tokens_per_eojeol and character coverage of ``tokenizer`` (a
    ``korlm.tokenizer.tokenization.KorlmTokenizer``) on ``sentences``."""
    if not sentences:
        return {"unk_rate": None, "tokens_per_eojeol": None, "coverage": None}
    unk_id = tokenizer.special_token_ids()["unk"]
    tokens = unks = 0
    for ids in tokenizer.encode_ids(sentences):
        tokens += len(ids)
        unks += sum(1 for i in ids if i == unk_id)
    eojeol = sum(count_eojeol(s) for s in sentences)
    chars = Counter(c for s in sentences for c in s if not c.isspace())
    distinct = sorted(chars)
    ok = {c: unk_id not in ids for c, ids in zip(distinct, tokenizer.hf.encode_batch(
        distinct, add_special_tokens=False), strict=True) for ids in [ids.ids]}
    covered = sum(n for c, n in chars.items() if ok[c])
    return {"unk_rate": (unks / tokens if tokens else 0.0),
            "tokens_per_eojeol": (tokens / eojeol if eojeol else 0.0),
            "coverage": (covered / sum(chars.values()) if chars else 1.0)}


# --------------------------------------------------------------------------- files


def _transformers_files(staging: str, algorithm: str, pre_tokenizer: str, family: str = "bert") -> None:
    roles = special_tokens(family)
    special = {f"{name}_token": token for name, token in roles.items()}
    if family == "bart":
        special.update(bos_token=roles["cls"], eos_token=roles["sep"])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": False,
        "clean_up_tokenization_spaces": False,
        # RoBERTa/BART take no token type ids.
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"] if family == "bert"
        else ["input_ids", "attention_mask"],
        **special,
        # Read by korlm.tokenizer.tokenization: which role each special token plays.
        "korlm_special_tokens": family,
    }
    if pre_tokenizer != "none":
        # Read by korlm.tokenizer.tokenization: the text must be segmented before tokenizer.json sees it.
        config["korlm_pre_tokenizer"] = pre_tokenizer
    storage.write_text(storage.join(staging, CONFIG_FILE), json.dumps(config, indent=2) + "\n")
    storage.write_text(storage.join(staging, SPECIAL_TOKENS_MAP_FILE), json.dumps(special, indent=2) + "\n")


def build_vocab(
    corpus_dir: str,
    output_dir: str,
    *,
    algorithm: str = "wordpiece",
    pre_tokenizer: str = "none",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    max_sentences: int | None = None,
    max_bytes: int | None = None,
    heldout_every: int = 20,
    coverage: str = "full",
    special_tokens: str = "bert",
    overwrite: bool = False,
) -> dict:
    """Train a tokenizer on ``corpus_dir`` (clean's output) into ``output_dir``; return vocab_stats.

    Held-out sentences (one in ``heldout_every`` by a hash of the text; 0 disables) are
    never trained on and give ``unk_rate``, ``tokens_per_eojeol`` and ``coverage``.
    ``max_sentences`` / ``max_bytes`` bound the training sample (deterministic hash
    sample, see :func:`sample_sentences`). ``special_tokens``: ``bert`` ([PAD] [UNK] [CLS]
    [SEP] [MASK] at ids 0-4) or ``bart`` (<s> <pad> </s> <unk> <mask>, fairseq order). Writes tokenizer.json, vocab.txt (WordPiece)
    or spm.model (SentencePiece), tokenizer_config.json, special_tokens_map.json and
    vocab_stats.json atomically. ``output_dir`` must be new, empty or (with ``overwrite``)
    an earlier vocab output (:func:`korlm.storage.check_output`).
    """
    storage.check_output(output_dir, "vocab", inputs=[corpus_dir], overwrite=overwrite)
    family = special_tokens
    _check_args(algorithm, pre_tokenizer, vocab_size, min_frequency, max_sentences, max_bytes, heldout_every,
                coverage, family)
    if not storage.isdir(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} is not a directory; pass the output directory of `korlm clean`")
    if not corpus_files(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} has no part-*.txt files; run `korlm clean` into it first")
    started = time.monotonic()
    train_sample, heldout_sample, counts = _sample(corpus_dir, max_sentences, max_bytes, heldout_every)
    train, heldout, train_bytes = train_sample.sentences(), heldout_sample.sentences(), train_sample.bytes
    del train_sample, heldout_sample  # the sort keys: free them before training
    if not train:
        raise KorlmError(f"corpus {corpus_dir!r} has no sentences to train on; check clean's stats.json")
    if algorithm == "wordpiece":
        # Enough distinct words for the vocab? Stops as soon as there are (a few hundred
        # sentences on a real corpus) instead of building the corpus's word set.
        words: set[str] = set()
        for sentence in train:
            words.update(sentence.split())
            if len(words) >= vocab_size // 4:
                break
        else:
            raise KorlmError(f"corpus {corpus_dir!r} is too small for vocab_size {vocab_size}: "
                             f"{len(words)} distinct words in {len(train)} training sentences; "
                             f"lower vocab_size or add text")
    sampled_at = time.monotonic()

    # Note: the HF WordPiece trainer breaks count ties in hash-map order
    # (huggingface/tokenizers#1794), so two trainings on the same sentences can differ
    # in a few tokens at the cutoff and in token ids; the vocab artifact, not a
    # re-training, is what downstream steps must share.
    spm_blob = None
    if algorithm == "wordpiece":
        hf, how = _train_wordpiece(train, pre_tokenizer=pre_tokenizer, vocab_size=vocab_size,
                                   min_frequency=min_frequency, coverage=coverage, family=family)
    else:
        spm_blob, hf, how = _train_sentencepiece(train, algorithm=algorithm, vocab_size=vocab_size,
                                                 coverage=coverage, pre_tokenizer=pre_tokenizer, family=family)
    trained_at = time.monotonic()

    from korlm.tokenizer.tokenization import KorlmTokenizer

    tokenizer = KorlmTokenizer(hf, pre_tokenizer, special_tokens=family)
    by_id = sorted(hf.get_vocab().items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise RuntimeError("trained vocabulary ids are not contiguous")
    roles = SPECIAL_TOKEN_FAMILIES[family]
    for token, expected in ((roles[role], i) for role, i in special_token_ids(family).items()):
        if hf.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {hf.token_to_id(token)}, expected {expected}")
    metrics = heldout_metrics(tokenizer, heldout)

    vocab_txt = "".join(f"{token}\n" for token, _ in by_id)
    stats = {
        "algorithm": algorithm,
        "pre_tokenizer": pre_tokenizer,
        "vocab_size": len(by_id),
        "requested_vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "num_training_sentences": len(train),
        "num_training_bytes": train_bytes,
        "num_heldout_sentences": len(heldout),
        **counts,
        "sampling": {"max_sentences": max_sentences, "max_bytes": max_bytes,
                     "method": "smallest blake2b(text) keys among non-held-out sentences"
                     if max_sentences or max_bytes else "all non-held-out sentences"},
        **metrics,
        "character_coverage": {"mode": coverage, **how},
        "build_seconds": round(time.monotonic() - started, 3),
        "seconds": {"read_and_sample": round(sampled_at - started, 3), "train": round(trained_at - sampled_at, 3),
                    "measure": round(time.monotonic() - trained_at, 3)},
        "special_tokens_family": family,
        "special_tokens": special_token_ids(family),
        "vocab_hash": hashlib.sha256(vocab_txt.encode("utf-8")).hexdigest(),
    }
    if pre_tokenizer == "morpheme":
        from korlm.tokenizer import morpheme

        stats["kiwipiepy_version"] = morpheme.kiwi_version()
    with storage.atomic_output_dir(output_dir, "vocab", inputs=[corpus_dir],
                                   overwrite=overwrite) as staging:
        storage.write_text(storage.join(staging, TOKENIZER_FILE), hf.to_str(pretty=True))
        if spm_blob is None:
            storage.write_text(storage.join(staging, VOCAB_FILE), vocab_txt)
        else:
            with storage.open_file(storage.join(staging, SPM_FILE), "wb") as f:
                f.write(spm_blob)
        _transformers_files(staging, algorithm, pre_tokenizer, family)
        storage.write_text(storage.join(staging, STATS_FILE), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    _LOG.info("vocab: %d tokens from %d sentences, held-out unk_rate %s, %.1f s", len(by_id), len(train),
              metrics["unk_rate"], stats["build_seconds"])
    return stats


def comparison_table(stats: list[dict]) -> str:
    """Markdown table of vocab variants (``vocab_stats.json`` dicts) for the ablation report."""
    rows = ["| algorithm | pre-tokenizer | vocab size | held-out UNK rate | tokens / eojeol | char coverage "
            "| build s |", "|---|---|---|---|---|---|---|"]
    for s in stats:
        unk = "n/a" if s.get("unk_rate") is None else f"{100 * s['unk_rate']:.3f}%"
        fert = "n/a" if s.get("tokens_per_eojeol") is None else f"{s['tokens_per_eojeol']:.3f}"
        cov = "n/a" if s.get("coverage") is None else f"{100 * s['coverage']:.3f}%"
        rows.append(f"| {s['algorithm']} | {s['pre_tokenizer']} | {s['vocab_size']} | {unk} | {fert} | {cov} "
                    f"| {s['build_seconds']:.1f} |")
    return "\n".join(rows) + "\n"
