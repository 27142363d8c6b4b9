"""vocab: train a tokenizer on the clean corpus and measure it on held-out sentences.

WordPiece (Hugging Face ``tokenizers``) with BERT's special tokens at fixed ids. No
lowercasing and no accent stripping: accent stripping runs NFD, which decomposes every
Hangul syllable into jamo. The output directory loads with
``transformers.AutoTokenizer.from_pretrained`` as well as ``tokenizers.Tokenizer``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import time
import zlib
from collections.abc import Iterator

from korlm import storage
from korlm.errors import KorlmError, NotBuiltError
from korlm.text import count_eojeol

_LOG = logging.getLogger(__name__)

ALGORITHMS = ("wordpiece", "sentencepiece-unigram", "sentencepiece-bpe")
PRE_TOKENIZERS = ("none", "morpheme")
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
SPECIAL_TOKEN_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
STATS_FILE = "vocab_stats.json"
MODEL_MAX_LENGTH = 512


def corpus_files(corpus_dir: str) -> list[str]:
    """The clean corpus's part files (``part-*.txt`` or ``part-*.txt.gz``), sorted."""
    files = storage.glob(storage.join(corpus_dir, "part-*.txt")) + storage.glob(
        storage.join(corpus_dir, "part-*.txt.gz"))
    return sorted(files)


def iter_sentences(corpus_dir: str) -> Iterator[str]:
    """Every sentence of the corpus in file order (blank document separators skipped)."""
    for path in corpus_files(corpus_dir):
        with storage.open_file(path, "rb") as raw:
            stream = gzip.open(raw) if path.endswith(".gz") else raw
            for line in io.TextIOWrapper(stream, encoding="utf-8"):
                line = line.strip()
                if line:
                    yield line


def _check_args(algorithm: str, pre_tokenizer: str, vocab_size: int, min_frequency: int,
                max_sentences: int | None, heldout_every: int) -> None:
    if algorithm not in ALGORITHMS:
        raise KorlmError(f"algorithm {algorithm!r} is unknown; choose one of {', '.join(ALGORITHMS)}")
    if pre_tokenizer not in PRE_TOKENIZERS:
        raise KorlmError(f"pre_tokenizer {pre_tokenizer!r} is unknown; choose one of {', '.join(PRE_TOKENIZERS)}")
    if algorithm != "wordpiece":
        raise NotBuiltError(f"{algorithm} vocab", 4)
    if pre_tokenizer == "morpheme":
        raise NotBuiltError("morpheme pre-tokenization", 4)
    if vocab_size <= len(SPECIAL_TOKENS):
        raise KorlmError(
            f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens; use e.g. 8000")
    if min_frequency < 1:
        raise KorlmError(f"min_frequency must be at least 1, got {min_frequency}")
    if max_sentences is not None and max_sentences < 1:
        raise KorlmError(f"max_sentences must be at least 1 (or None for all), got {max_sentences}")
    if heldout_every != 0 and heldout_every < 2:
        raise KorlmError(f"heldout_every must be 0 (no held-out set) or at least 2, got {heldout_every}")


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##",
                                           max_input_chars_per_word=100))
    # NFC composes Hangul typed as jamo; BertNormalizer without lowercase/strip_accents
    # only cleans control characters and spaces out CJK ideographs (hanja).
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                   lowercase=False),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _set_post_processor(tokenizer) -> None:
    from tokenizers import processors

    cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, SPECIAL_TOKEN_IDS[cls]), (sep, SPECIAL_TOKEN_IDS[sep])],
    )


def _heldout_metrics(tokenizer, sentences: list[str]) -> tuple[float | None, float | None]:
    if not sentences:
        return None, None
    unk_id = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["unk"]]
    tokens = unks = 0
    for encoding in tokenizer.encode_batch(sentences, add_special_tokens=False):
        tokens += len(encoding.ids)
        unks += sum(1 for i in encoding.ids if i == unk_id)
    eojeol = sum(count_eojeol(s) for s in sentences)
    return (unks / tokens if tokens else 0.0), (tokens / eojeol if eojeol else 0.0)


def _transformers_files(staging: str) -> None:
    special = {f"{name}_token": token for name, token in SPECIAL_TOKENS.items()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        **special,
    }
    storage.write_text(storage.join(staging, "tokenizer_config.json"), json.dumps(config, indent=2) + "\n")
    storage.write_text(storage.join(staging, "special_tokens_map.json"), json.dumps(special, indent=2) + "\n")


def build_vocab(
    corpus_dir: str,
    output_dir: str,
    *,
    algorithm: str = "wordpiece",
    pre_tokenizer: str = "none",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    max_sentences: int | None = None,
    heldout_every: int = 20,
) -> dict:
    """Train a tokenizer on ``corpus_dir`` (clean's output) into ``output_dir``; return vocab_stats.

    One sentence in ``heldout_every`` (chosen by a hash of its text, so the split does
    not depend on corpus order and a repeated sentence is never on both sides) is held
    out of training and used to measure
    ``unk_rate`` and ``tokens_per_eojeol`` (0 disables the held-out set). ``max_sentences``
    caps the training sentences. Writes tokenizer.json, vocab.txt, tokenizer_config.json,
    special_tokens_map.json and vocab_stats.json atomically.
    """
    _check_args(algorithm, pre_tokenizer, vocab_size, min_frequency, max_sentences, heldout_every)
    if not storage.isdir(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} is not a directory; pass the output directory of `korlm clean`")
    if not corpus_files(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} has no part-*.txt files; run `korlm clean` into it first")
    started = time.monotonic()

    train: list[str] = []
    heldout: list[str] = []
    for sentence in iter_sentences(corpus_dir):
        if heldout_every and zlib.crc32(sentence.encode("utf-8")) % heldout_every == 0:
            heldout.append(sentence)
        elif max_sentences is None or len(train) < max_sentences:
            train.append(sentence)
    # Note: the HF WordPiece trainer breaks count ties in hash-map order
    # (huggingface/tokenizers#1794), so two trainings on the same sentences can differ
    # in a few tokens at the cutoff and in token ids; the vocab artifact, not a
    # re-training, is what downstream steps must share.
    if not train:
        raise KorlmError(f"corpus {corpus_dir!r} has no sentences to train on; check clean's stats.json")

    from tokenizers import trainers

    tokenizer = _wordpiece_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(train, trainer=trainer, length=len(train))
    for token, expected in SPECIAL_TOKEN_IDS.items():
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected}")
    _set_post_processor(tokenizer)

    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise RuntimeError("trained vocabulary ids are not contiguous")
    unk_rate, tokens_per_eojeol = _heldout_metrics(tokenizer, heldout)

    stats = {
        "algorithm": algorithm,
        "pre_tokenizer": pre_tokenizer,
        "vocab_size": len(by_id),
        "requested_vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "num_training_sentences": len(train),
        "num_heldout_sentences": len(heldout),
        "unk_rate": unk_rate,
        "tokens_per_eojeol": tokens_per_eojeol,
        "build_seconds": round(time.monotonic() - started, 3),
        "special_tokens": {name: SPECIAL_TOKEN_IDS[token] for name, token in SPECIAL_TOKENS.items()},
    }
    vocab_txt = "".join(f"{token}\n" for token, _ in by_id)
    stats["vocab_hash"] = hashlib.sha256(vocab_txt.encode("utf-8")).hexdigest()
    with storage.atomic_output_dir(output_dir) as staging:
        storage.write_text(storage.join(staging, TOKENIZER_FILE), tokenizer.to_str(pretty=True))
        storage.write_text(storage.join(staging, VOCAB_FILE), vocab_txt)
        _transformers_files(staging)
        storage.write_text(storage.join(staging, STATS_FILE), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    _LOG.info("vocab: %d tokens from %d sentences, held-out unk_rate %s, %.1f s", len(by_id), len(train),
              unk_rate, stats["build_seconds"])
    return stats


def load_tokenizer(tokenizer_dir: str):
    """The ``tokenizers.Tokenizer`` saved by :func:`build_vocab` in ``tokenizer_dir``."""
    from tokenizers import Tokenizer

    path = storage.join(tokenizer_dir, TOKENIZER_FILE)
    if not storage.exists(path):
        raise KorlmError(f"no {TOKENIZER_FILE} in {tokenizer_dir!r}; pass the output directory of `korlm vocab`")
    try:
        return Tokenizer.from_str(storage.read_text(path))
    except Exception as exc:
        raise KorlmError(f"{path} is not a valid tokenizer file ({exc}); rebuild it with `korlm vocab`") from None


def vocab_hash(tokenizer_dir: str) -> str:
    """sha256 of vocab.txt: ties examples and checkpoints to the vocabulary they were made with."""
    path = storage.join(tokenizer_dir, VOCAB_FILE)
    if not storage.exists(path):
        raise KorlmError(f"no {VOCAB_FILE} in {tokenizer_dir!r}; pass the output directory of `korlm vocab`")
    with storage.open_file(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
