"""One tokenizer for every step: the vocab's ``tokenizer.json`` plus its pre-tokenizer.

``KorlmTokenizer`` is what pretraining data (``korlm.pretrain_data.beam``), fine-tuning
(``korlm.evaluation.evaluate``) and the vocab statistics use, so a morpheme vocab is applied the same
way everywhere: raw text -> ``korlm.tokenizer.morpheme.segment_batch`` (morpheme vocab only; the
``##`` form for WordPiece, the boundary form for SentencePiece) -> ``tokenizers.Tokenizer``.
Plain vocabs go straight to ``tokenizers``. It also knows the vocab's special-token
family (``bert`` or ``bart``) and maps roles to ids (:meth:`KorlmTokenizer.special_token_ids`).

:func:`graph_tokenizer` is the TensorFlow-graph twin (tf-text, usable inside ``tf.data``
on TPU hosts): WordPiece vocabs are re-implemented from ``vocab.txt`` step by step
(NFC, BERT text cleaning, CJK spacing, the jamo fallback map, BERT punctuation split,
``tensorflow_text.WordpieceTokenizer``), SentencePiece vocabs run
``tensorflow_text.SentencepieceTokenizer`` over ``spm.model``, word by word (morpheme
vocabs: morpheme by morpheme) as ``tokenizers`` does, with the word-initial ``▁``
written explicitly and the model's dummy prefix off.
``tests/test_tokenizer_parity.py`` checks both give identical ids. Morpheme segmentation
has no TF op (Kiwi is C++ behind Python), so in the graph it runs in a
``tf.py_function``, or offline before the graph.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from korlm import storage
from korlm.errors import KorlmError
from korlm.tokenizer.files import (
    CONFIG_FILE,
    CONTINUATION,
    SPECIAL_TOKEN_FAMILIES,
    SPECIAL_TOKEN_IDS,
    SPECIAL_TOKENS,
    SPM_FILE,
    STATS_FILE,
    VOCAB_FILE,
    jamo_fallback_map,
    load_tokenizer,
)
from korlm.tokenizer.spm_model import spm_without_dummy_prefix

UNK_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["unk"]]
MAX_INPUT_CHARS_PER_WORD = 100  # as models.WordPiece in korlm.tokenizer.vocab


def special_tokens_family_of(hf) -> str:
    """The special-token family (``bert`` or ``bart``) of ``hf``: the one whose tokens sit at
    ids 0-4, else the one whose tokens it holds at all, else ``bert`` (so that
    :meth:`KorlmTokenizer.special_token_ids` names the BERT tokens it lacks)."""
    for family, roles in SPECIAL_TOKEN_FAMILIES.items():
        if all(hf.token_to_id(token) == i for i, token in enumerate(roles.values())):
            return family
    for family, roles in SPECIAL_TOKEN_FAMILIES.items():
        if all(hf.token_to_id(token) is not None for token in roles.values()):
            return family
    return "bert"


class KorlmTokenizer:
    """A ``tokenizers.Tokenizer`` (``.hf``) behind the vocab's pre-tokenizer (``none``|``morpheme``).

    ``special_tokens``: the family (``bert``|``bart``); found from the vocab when not given.
    """

    def __init__(self, hf, pre_tokenizer: str = "none", special_tokens: str | None = None):
        if pre_tokenizer not in ("none", "morpheme"):
            raise KorlmError(f"pre_tokenizer {pre_tokenizer!r} is unknown; choose none or morpheme")
        if special_tokens is not None and special_tokens not in SPECIAL_TOKEN_FAMILIES:
            raise KorlmError(f"special_tokens {special_tokens!r} is unknown; "
                             f"choose one of {', '.join(SPECIAL_TOKEN_FAMILIES)}")
        self.hf = hf
        self.pre_tokenizer = pre_tokenizer
        self.special_tokens = special_tokens
        # SentencePiece vocabs take the boundary form of the segmentation, WordPiece the ## form.
        self._wordpiece = type(hf.model).__name__ == "WordPiece"

    # serialisable form, for Beam DoFns
    def to_json(self) -> str:
        return json.dumps({"pre_tokenizer": self.pre_tokenizer, "special_tokens": self.special_tokens,
                           "tokenizer": self.hf.to_str()})

    @classmethod
    def from_json(cls, text: str) -> KorlmTokenizer:
        from tokenizers import Tokenizer

        spec = json.loads(text)
        return cls(Tokenizer.from_str(spec["tokenizer"]), spec["pre_tokenizer"], spec.get("special_tokens"))

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The text ``tokenizer.json`` expects: morpheme-segmented for a morpheme vocab."""
        if self.pre_tokenizer == "morpheme":
            from korlm.tokenizer import morpheme

            if self._wordpiece:
                return morpheme.segment_batch(texts)
            return morpheme.segment_batch(texts, boundary=morpheme.BOUNDARY)
        return list(texts)

    def encode_batch(self, texts: Sequence, add_special_tokens: bool = True):
        """``tokenizers`` encodings of texts or of (text_a, text_b) pairs."""
        texts = list(texts)
        if texts and isinstance(texts[0], tuple | list):
            a = self.prepare([t[0] for t in texts])
            b = self.prepare([t[1] for t in texts])
            return self.hf.encode_batch(list(zip(a, b, strict=True)), add_special_tokens=add_special_tokens)
        return self.hf.encode_batch(self.prepare(texts), add_special_tokens=add_special_tokens)

    def encode_ids(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; NFC recomposes syllables that the jamo fallback decomposed."""
        import unicodedata

        return unicodedata.normalize("NFC", self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def get_vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def special_token_ids(self) -> dict[str, int]:
        """Role -> id of the special tokens: ``pad``, ``unk``, ``cls``, ``sep``, ``mask``.

        Roles, not token strings, are what packing, masking and export use, so a vocab whose
        special tokens are spelled differently (a BART/RoBERTa family vocab: ``<s>`` plays
        ``cls``, ``</s>`` plays ``sep``) works unchanged. Raises KorlmError naming any
        role the vocab lacks.
        """
        roles = SPECIAL_TOKEN_FAMILIES[self.special_tokens or special_tokens_family_of(self.hf)]
        ids = {role: self.hf.token_to_id(token) for role, token in roles.items()}
        missing = [roles[role] for role, i in ids.items() if i is None]
        if missing:
            raise KorlmError(f"tokenizer lacks the special tokens {', '.join(missing)}; build it with `korlm vocab`")
        return {role: ids[role] for role in SPECIAL_TOKENS}  # pad, unk, cls, sep, mask


def _setting(tokenizer_dir: str, config_key: str, stats_key: str):
    for name, key in ((CONFIG_FILE, config_key), (STATS_FILE, stats_key)):
        path = storage.join(tokenizer_dir, name)
        if storage.exists(path):
            value = json.loads(storage.read_text(path)).get(key)
            if value:
                return value
    return None


def pre_tokenizer_of(tokenizer_dir: str) -> str:
    """The pre-tokenizer a tokenizer dir was built with (tokenizer_config.json, then vocab_stats.json)."""
    return _setting(tokenizer_dir, "korlm_pre_tokenizer", "pre_tokenizer") or "none"


def special_tokens_of(tokenizer_dir: str) -> str | None:
    """The special-token family a tokenizer dir was built with (``bert``|``bart``), or None
    when its files do not say (built before the setting existed: found from the vocab)."""
    return _setting(tokenizer_dir, "korlm_special_tokens", "special_tokens_family")


def load(tokenizer_dir: str) -> KorlmTokenizer:
    """The :class:`KorlmTokenizer` of a ``korlm vocab`` output directory."""
    return KorlmTokenizer(load_tokenizer(tokenizer_dir), pre_tokenizer_of(tokenizer_dir),
                          special_tokens_of(tokenizer_dir))


# --------------------------------------------------------------------------- graph

# Rust char::is_whitespace minus the controls BertNormalizer drops first (VT, FF, NEL).
_UNICODE_SPACES = r"[\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
# BertNormalizer's is_chinese_char ranges.
_CJK = (r"[\x{4e00}-\x{9fff}\x{3400}-\x{4dbf}\x{20000}-\x{2a6df}\x{2a700}-\x{2b73f}\x{2b740}-\x{2b81f}"
        r"\x{2b920}-\x{2ceaf}\x{f900}-\x{faff}\x{2f800}-\x{2fa1f}]")
# BertPreTokenizer's is_bert_punc: ASCII punctuation or Unicode category P.
_PUNCT = r"[!-/:-@\[-`{-~]|\p{P}"


def _vocab_tokens(tokenizer_dir: str) -> list[str]:
    path = storage.join(tokenizer_dir, VOCAB_FILE)
    if not storage.exists(path):
        raise KorlmError(f"no {VOCAB_FILE} in {tokenizer_dir!r}; pass the output directory of `korlm vocab`")
    return storage.read_text(path).split("\n")[:-1]


def graph_tokenizer(tokenizer_dir: str):
    """A function ``tf.string [batch] -> tf.RaggedTensor int64 [batch, (tokens)]`` giving the
    ids of ``KorlmTokenizer.encode_ids`` (no [CLS]/[SEP]) in a TensorFlow graph."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    pre_tokenizer = pre_tokenizer_of(tokenizer_dir)
    spm_path = storage.join(tokenizer_dir, SPM_FILE)
    is_spm = storage.exists(spm_path)
    segment = None
    if pre_tokenizer == "morpheme":
        from korlm.tokenizer import morpheme

        # The same segmentation as KorlmTokenizer.prepare.
        boundary = morpheme.BOUNDARY if is_spm else None

        def _segment(texts):
            out = morpheme.segment_batch([t.decode("utf-8") for t in texts.numpy()], boundary=boundary)
            return tf.constant(out, dtype=tf.string) if out else tf.zeros([0], tf.string)

        def segment(texts):
            result = tf.py_function(_segment, [texts], Tout=tf.string)
            result.set_shape(texts.shape)
            return result

    if is_spm:
        with storage.open_file(spm_path, "rb") as f:
            blob = f.read()
        # tokenizer.json encodes word by word (Metaspace split) and, for morpheme vocabs,
        # morpheme by morpheme. Here too: each word is encoded on its own with an
        # explicit "▁" and the model's dummy prefix off (continuation morphemes without
        # "▁"). Besides the morpheme split, this keeps unigram score sums per word, so
        # they stay exact in sentencepiece's float32 however long the text (see
        # korlm.tokenizer.spm_model.quantize_unigram_scores).
        sp = tf_text.SentencepieceTokenizer(model=spm_without_dummy_prefix(blob), out_type=tf.int32)

        # No tensor-dependent Python control flow: nothing for AutoGraph to convert (it
        # would warn about the closure when tf.data.Dataset.map traces this).
        @tf.autograph.experimental.do_not_convert
        def tokenize_spm(texts):
            if segment is not None:
                texts = segment(texts)
            x = tf_text.normalize_utf8(texts, "NFC")
            words = tf.strings.split(x, " ")  # the normalizer's space collapsing and strip
            words = tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)
            words = words.with_flat_values(tf.strings.join(["\u2581", words.flat_values]))
            if segment is not None:
                words = tf.strings.split(words, morpheme.BOUNDARY).merge_dims(1, 2)
            ids = sp.tokenize(words.flat_values)
            return tf.cast(words.with_flat_values(ids).merge_dims(1, 2), tf.int64)

        return tokenize_spm

    tokens = _vocab_tokens(tokenizer_dir)
    unk = SPECIAL_TOKEN_FAMILIES[special_tokens_of(tokenizer_dir) or _family_of_vocab(tokens)]["unk"]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tokens, tf.range(len(tokens), dtype=tf.int64)), default_value=-1)
    wordpiece = tf_text.WordpieceTokenizer(
        table, suffix_indicator=CONTINUATION, max_bytes_per_word=1 << 20, token_out_type=tf.int64,
        unknown_token=unk)
    fallback = jamo_fallback_map(set(tokens)) if _has_fallback(tokenizer_dir) else {}
    jamo_table = None
    if fallback:
        keys = sorted(fallback)
        jamo_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, [fallback[k] for k in keys]), default_value="")

    def tokenize(texts):
        if segment is not None:
            texts = segment(texts)
        x = tf_text.normalize_utf8(texts, "NFC")
        # BertNormalizer(clean_text): \t\n\r are spaces, other controls are dropped,
        # Unicode spaces become ' '; then hanja are spaced out.
        x = tf.strings.regex_replace(x, r"[\t\n\r]", " ")
        x = tf.strings.regex_replace(x, r"[\x{fffd}\p{Cc}\p{Cf}\p{Co}\p{Cs}]", "")
        x = tf.strings.regex_replace(x, _UNICODE_SPACES, " ")
        x = tf.strings.regex_replace(x, "(" + _CJK + ")", r" \1 ")
        if jamo_table is not None:
            chars = tf.strings.unicode_split(x, "UTF-8")
            mapped = jamo_table.lookup(chars.flat_values)
            chars = chars.with_flat_values(tf.where(mapped == "", chars.flat_values, mapped))
            x = tf.strings.reduce_join(chars, axis=-1)
        if pre_tokenizer == "morpheme":
            words = tf_text.regex_split(x, r"\s")
        else:
            words = tf_text.regex_split(x, r"\s|" + _PUNCT, "(" + _PUNCT + ")")
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > MAX_INPUT_CHARS_PER_WORD
        words = words.with_flat_values(tf.where(too_long, unk, words.flat_values))
        return wordpiece.tokenize(words).merge_dims(1, 2)

    return tokenize


def _family_of_vocab(tokens: list[str]) -> str:
    for family, roles in SPECIAL_TOKEN_FAMILIES.items():
        if tokens[:len(roles)] == list(roles.values()):
            return family
    raise KorlmError("vocab.txt has neither BERT's nor BART's special tokens at ids 0-4; build it with `korlm vocab`")


def _has_fallback(tokenizer_dir: str) -> bool:
    hf = json.loads(storage.read_text(storage.join(tokenizer_dir, "tokenizer.json")))
    normalizer = hf.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer])
    return any(step.get("type") == "Precompiled" for step in steps)
