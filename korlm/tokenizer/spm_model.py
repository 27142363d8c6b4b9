"""SentencePiece ``spm.model`` files (a serialized ModelProto) read and rewritten without
sentencepiece's generated protobuf module (whose protobuf runtime pin conflicts with
TensorFlow's): unigram scores on a dyadic grid, the dummy prefix turned off, and a
character map compiled to a precompiled charsmap."""

from __future__ import annotations

import io
import os
import tempfile


def protobuf_spans(buf: bytes):
    """(field number, wire type, start, payload start, end) of each field of a serialized
    protobuf message: enough to read and rewrite sentencepiece's ModelProto without its
    generated module (whose protobuf runtime pin conflicts with TensorFlow's)."""
    i = 0

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(buf):
        start = i
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            payload = i
            varint()
        elif wire == 2:
            n = varint()
            payload = i
            i += n
        elif wire in (1, 5):
            payload = i
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, start, payload, i


def protobuf_fields(buf: bytes):
    """(field number, bytes of a length-delimited field or None) of a serialized message."""
    for number, wire, _, payload, end in protobuf_spans(buf):
        yield number, (buf[payload:end] if wire == 2 else None)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# Unigram piece scores are rounded to this grid (see quantize_unigram_scores).
SCORE_GRID = 2.0 ** -8


def quantize_unigram_scores(blob: bytes, grid: float = SCORE_GRID) -> bytes:
    """The SentencePiece model ``blob`` with every piece score rounded to a multiple of ``grid``.

    Why: the Viterbi search of sentencepiece (C++, tf-text) adds float32 scores along the
    whole string it is given, ``tokenizers`` (Rust) adds float64 scores word by word.
    Float addition is not associative, so two segmentations with the same pieces in
    another order (runs like ``ㅋㅋㅋㅋㅋ`` = ``ㅋㅋㅋ``+``ㅋㅋ`` or ``ㅋㅋ``+``ㅋㅋㅋ``)
    compare as unequal, in a different direction in each library: 1.4% of news comments
    got different ids before. On a dyadic grid with scores of small magnitude every
    partial sum is exact in float32 (while |sum| < 2**24 * grid = 65,536, thousands of
    pieces) and in float64, so both compare the same numbers, and both break exact ties
    by the same rule (strict ``>`` while the start position grows: of equal-scoring
    paths to a position, the one whose last piece starts earliest wins; sentencepiece's
    ``unigram_model.cc`` and ``tokenizers``' ``encode_optimized``). The graph tokenizer
    feeds sentencepiece one word at a time, so the bound is per word, not per text (a
    whole 89,532-character text, 58,578 pieces, diverged after a running sum of
    -279,549 when fed at once). The rounding moves a score by at most 0.002 nats.
    """
    import struct

    out = bytearray()
    for number, _, start, payload, end in protobuf_spans(blob):
        if number != 1:  # ModelProto.pieces
            out += blob[start:end]
            continue
        piece = blob[payload:end]
        fields = bytearray()
        for pnumber, pwire, pstart, ppayload, pend in protobuf_spans(piece):
            if pnumber == 2 and pwire == 5:  # SentencePiece.score (float)
                (score,) = struct.unpack("<f", piece[ppayload:pend])
                fields += piece[pstart:ppayload] + struct.pack("<f", round(score / grid) * grid)
            else:
                fields += piece[pstart:pend]
        out += length_delimited(1, bytes(fields))
    return bytes(out)


def spm_without_dummy_prefix(blob: bytes) -> bytes:
    """The SentencePiece model ``blob`` with ``normalizer_spec.add_dummy_prefix = false``:
    encodes a continuation morpheme without the word-initial ``▁``."""
    out = bytearray()
    for number, _, start, payload, end in protobuf_spans(blob):
        if number != 3:  # ModelProto.normalizer_spec
            out += blob[start:end]
            continue
        spec = blob[payload:end]
        fields = b"".join(spec[s:e] for n, _, s, _, e in protobuf_spans(spec) if n != 3)
        out += length_delimited(3, fields + varint(3 << 3 | 0) + varint(0))  # add_dummy_prefix = false
    return bytes(out)


def compile_charsmap(mapping: dict[str, str]) -> bytes:
    """``mapping`` compiled to a SentencePiece precompiled charsmap (the input of
    ``tokenizers.normalizers.Precompiled``), by sentencepiece's own rule compiler."""
    import sentencepiece as spm

    rules = "".join(" ".join(f"{ord(c):X}" for c in k) + "\t" + " ".join(f"{ord(c):X}" for c in v) + "\n"
                    for k, v in sorted(mapping.items()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rules.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.write(rules)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["가 a"] * 4), model_writer=model, vocab_size=8, model_type="char",
            normalization_rule_tsv=path, add_dummy_prefix=False, remove_extra_whitespaces=False,
            hard_vocab_limit=False, minloglevel=2)
    normalizer = next(v for n, v in protobuf_fields(model.getvalue()) if n == 3)
    return next(v for n, v in protobuf_fields(normalizer) if n == 2)
