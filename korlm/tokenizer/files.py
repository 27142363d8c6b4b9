"""The tokenizer directory (the vocab step's output) as every later step reads it: its
file names, the special-token families at ids 0-4, the vocabulary hash that ties data,
checkpoints and models to it, and the ``tokenizers.Tokenizer`` it holds.

No training here (``korlm.tokenizer.vocab``) and no text processing beyond loading
(``korlm.tokenizer.tokenization``), so every stage may import it cheaply.
"""

from __future__ import annotations

import hashlib
import unicodedata

from korlm import storage
from korlm.errors import KorlmError

# Special tokens by model family, role -> token in id order (ids 0-4): BERT's, and
# fairseq / Hugging Face RoBERTa and BART's (<s> plays cls, </s> plays sep).
SPECIAL_TOKEN_FAMILIES = {
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bart": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
}
# The BERT family (the default); family-aware code uses special_tokens(family).
SPECIAL_TOKENS = SPECIAL_TOKEN_FAMILIES["bert"]
SPECIAL_TOKEN_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}


TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
SPM_FILE = "spm.model"
STATS_FILE = "vocab_stats.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
# The files of a tokenizer directory (``build_vocab``'s output): what travels with a
# checkpoint or a fine-tuned model so that it is self-contained.
TOKENIZER_DIR_FILES = (TOKENIZER_FILE, VOCAB_FILE, SPM_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE,
                       STATS_FILE)


CONTINUATION = "##"

HANGUL_SYLLABLES = [chr(c) for c in range(0xAC00, 0xD7A4)]


def special_tokens(family: str) -> dict[str, str]:
    """Role (pad, unk, cls, sep, mask) -> token of a special-token family, in id order."""
    if family not in SPECIAL_TOKEN_FAMILIES:
        raise KorlmError(f"special_tokens {family!r} is unknown; choose one of {', '.join(SPECIAL_TOKEN_FAMILIES)}")
    return SPECIAL_TOKEN_FAMILIES[family]


def special_token_ids(family: str) -> dict[str, int]:
    """Role -> id of a special-token family (its tokens sit at ids 0-4 in every variant)."""
    return {role: i for i, role in enumerate(special_tokens(family))}


def jamo_fallback_map(vocab) -> dict[str, str]:
    """Syllable -> conjoining jamo for each syllable the vocab lacks in either form."""
    return {s: unicodedata.normalize("NFD", s) for s in HANGUL_SYLLABLES
            if s not in vocab or CONTINUATION + s not in vocab}


def load_tokenizer(tokenizer_dir: str):
    """The ``tokenizers.Tokenizer`` saved by :func:`build_vocab` in ``tokenizer_dir``.

    It expects morpheme-segmented input for a morpheme vocab; use
    ``korlm.tokenizer.tokenization.load`` to tokenize raw text.
    """
    from tokenizers import Tokenizer

    path = storage.join(tokenizer_dir, TOKENIZER_FILE)
    if not storage.exists(path):
        raise KorlmError(f"no {TOKENIZER_FILE} in {tokenizer_dir!r}; pass the output directory of `korlm vocab`")
    try:
        return Tokenizer.from_str(storage.read_text(path))
    except Exception as exc:
        raise KorlmError(f"{path} is not a valid tokenizer file ({exc}); rebuild it with `korlm vocab`") from None


def vocab_hash(tokenizer_dir: str) -> str:
    """sha256 of the vocabulary (vocab.txt, or the tokens of tokenizer.json in id order):
    ties examples and checkpoints to the vocabulary they were made with."""
    path = storage.join(tokenizer_dir, VOCAB_FILE)
    if storage.exists(path):
        with storage.open_file(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    if storage.exists(storage.join(tokenizer_dir, TOKENIZER_FILE)):
        vocab = load_tokenizer(tokenizer_dir).get_vocab()
        text = "".join(f"{t}\n" for t in sorted(vocab, key=vocab.get))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    raise KorlmError(f"no {VOCAB_FILE} in {tokenizer_dir!r}; pass the output directory of `korlm vocab`")


def normalize_hash(value: str) -> str:
    """A vocab hash as lower-case hex, without an ``algorithm:`` prefix."""
    value = str(value).strip().lower()
    return value.split(":", 1)[1] if ":" in value else value


def hashes_match(a: str, b: str) -> bool:
    """Whether two vocab hashes name the same vocabulary. One side may store a shortened
    hash; 8 hex digits still tell vocabularies apart."""
    a, b = normalize_hash(a), normalize_hash(b)
    short = min(len(a), len(b))
    return short >= 8 and a[:short] == b[:short]


def short_hash(value: str) -> str:
    """The short form of a vocab hash shown in messages (12 hex digits)."""
    return normalize_hash(value)[:12]
