"""vocab: character coverage, sampling, morpheme pre-tokenization and SentencePiece variants."""

from __future__ import annotations

import json
import os

import pytest

from korlm.clean.corpus import iter_sentences
from korlm.tokenizer import morpheme, tokenization
from korlm.tokenizer.files import HANGUL_SYLLABLES
from korlm.tokenizer.vocab import (
    COMPATIBILITY_JAMO,
    CONJOINING_JAMO,
    PRINTABLE_ASCII,
    build_vocab,
    sample_sentences,
)
from tests.conftest import write_review_corpus

UNK = 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_review_corpus(tmp_path_factory.mktemp("variants") / "corpus", 3000)


def _build(corpus, tmp_path_factory, **kwargs):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return out, build_vocab(str(corpus), str(out), vocab_size=4000, heldout_every=10, **kwargs)


@pytest.fixture(scope="module")
def wordpiece(corpus, tmp_path_factory):
    return _build(corpus, tmp_path_factory)


@pytest.fixture(scope="module")
def morph(corpus, tmp_path_factory):
    return _build(corpus, tmp_path_factory, pre_tokenizer="morpheme")


def _no_unk_anywhere(tok):
    chars = HANGUL_SYLLABLES + CONJOINING_JAMO + COMPATIBILITY_JAMO + PRINTABLE_ASCII
    # alone (word-initial) and after a letter (continuation position)
    texts = chars + ["가" + c for c in chars]
    bad = [t for t, ids in zip(texts, tok.encode_ids(texts), strict=True) if UNK in ids]
    assert not bad, bad[:10]


def test_full_coverage_wordpiece(wordpiece):
    out, stats = wordpiece
    tok = tokenization.load(str(out))
    _no_unk_anywhere(tok)
    how = stats["character_coverage"]
    assert how["mode"] == "full" and "jamo" in how["method"]
    assert how["syllables_in_vocab"] + how["syllables_decomposed_to_jamo"] == 11172
    assert stats["vocab_size"] == 4000
    assert stats["coverage"] > 0.999 and stats["unk_rate"] < 0.01
    # a decomposed syllable round-trips through decode (NFC recomposes it)
    assert tok.decode(tok.encode_ids(["뷁쭭 똠방각하"])[0]) == "뷁쭭 똠방각하"


def test_small_vocab_evicts_rare_characters_but_keeps_coverage(corpus, tmp_path):
    out = tmp_path / "small"
    stats = build_vocab(str(corpus), str(out), vocab_size=1500, heldout_every=10)
    assert stats["vocab_size"] == 1500 and stats["character_coverage"]["rare_characters_evicted"] > 0
    _no_unk_anywhere(tokenization.load(str(out)))


def test_corpus_coverage_leaves_unknown_syllables(corpus, tmp_path_factory):
    out, stats = _build(corpus, tmp_path_factory, coverage="corpus")
    tok = tokenization.load(str(out))
    assert stats["character_coverage"]["mode"] == "corpus"
    assert UNK in tok.encode_ids(["뷁"])[0]


def test_sampling_is_deterministic_and_bounded(corpus, tmp_path):
    train, heldout, counts = sample_sentences(str(corpus), max_sentences=500, heldout_every=10)
    assert len(train) == 500 and counts["corpus_sentences"] == len(list(iter_sentences(str(corpus))))
    assert not set(train) & set(heldout)
    # independent of file order and sharding
    lines = list(iter_sentences(str(corpus)))
    other = tmp_path / "shuffled"
    other.mkdir()
    (other / "part-00000-of-00002.txt").write_text("\n".join(lines[1::2][::-1]) + "\n", encoding="utf-8")
    (other / "part-00001-of-00002.txt").write_text("\n".join(lines[::2]) + "\n", encoding="utf-8")
    again, _, _ = sample_sentences(str(other), max_sentences=500, heldout_every=10)
    assert again == train
    by_bytes, _, _ = sample_sentences(str(corpus), max_bytes=20_000, heldout_every=10)
    size = sum(len(s.encode("utf-8")) + 1 for s in by_bytes)
    assert 19_000 < size <= 20_000
    assert set(by_bytes) <= set(sample_sentences(str(corpus), heldout_every=10)[0])


def _reference_sample(lines, max_sentences, heldout_every):
    """The documented definition: non-held-out sentences (CRC) with the smallest keyed
    blake2b, by key (the straightforward version of korlm.tokenizer.vocab's streaming sample)."""
    import hashlib
    import zlib

    def key(s):
        return hashlib.blake2b(s.encode("utf-8"), digest_size=8, person=b"korlm-vocab").digest()

    train = [s for s in lines if zlib.crc32(s.encode("utf-8")) % heldout_every]
    return sorted(train, key=lambda s: (key(s), s))[:max_sentences]


def test_sampling_matches_its_definition(corpus, tmp_path_factory):
    lines = list(iter_sentences(str(corpus)))
    for max_sentences in (None, 500):
        train, _, _ = sample_sentences(str(corpus), max_sentences=max_sentences, heldout_every=10)
        assert train == _reference_sample(lines, max_sentences, 10)
    # the stats' training-byte count is the sample's
    out, stats = _build(corpus, tmp_path_factory, max_sentences=500)
    expected = _reference_sample(lines, 500, 10)
    assert stats["num_training_bytes"] == sum(len(s.encode("utf-8")) + 1 for s in expected)
    assert stats["num_training_sentences"] == 500


def test_morpheme_segmentation_restores_spacing():
    text = "나는 학교에 갔다.  빨라졌어요ㅋㅋ KOREA와"
    segmented = morpheme.segment(text)
    assert segmented.startswith("나 ##는 학교 ##에 갔 ##다 ##.")
    assert morpheme.restore(segmented) == " ".join(text.split())


def test_morpheme_vocab(morph):
    out, stats = morph
    assert stats["pre_tokenizer"] == "morpheme" and stats["vocab_size"] == 4000
    assert json.loads((out / "tokenizer_config.json").read_text())["korlm_pre_tokenizer"] == "morpheme"
    tok = tokenization.load(str(out))
    assert tok.pre_tokenizer == "morpheme"
    _no_unk_anywhere(tok)
    text = "이 영화 정말 재미있었어요. 배우들이 최고!"
    ids = tok.encode_ids([text])[0]
    assert tok.decode(ids) == text
    tokens = [tok.hf.id_to_token(i) for i in ids]
    assert "##었" in tokens or "##었어요" in tokens or "##어요" in tokens
    assert stats["unk_rate"] < 0.01 and 1 < stats["tokens_per_eojeol"] < 5


@pytest.mark.parametrize("algorithm", ["sentencepiece-unigram", "sentencepiece-bpe"])
def test_sentencepiece(corpus, tmp_path_factory, algorithm):
    from transformers import AutoTokenizer

    out, stats = _build(corpus, tmp_path_factory, algorithm=algorithm)
    assert sorted(os.listdir(out)) == ["_SUCCESS", "korlm_artifact.json", "special_tokens_map.json",
                                       "spm.model", "tokenizer.json", "tokenizer_config.json",
                                       "vocab_stats.json"]
    assert stats["vocab_size"] == 4000 and stats["unk_rate"] == 0.0
    tok = tokenization.load(str(out))
    assert [tok.hf.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    _no_unk_anywhere(tok)
    text = "이 영화 정말 최고예요 KOREA 뷁"
    ids = tok.encode_ids([text])[0]
    assert tok.decode(ids) == text
    auto = AutoTokenizer.from_pretrained(str(out))
    assert auto(text)["input_ids"] == [2, *ids, 3]
