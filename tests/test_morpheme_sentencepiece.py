"""SentencePiece over Kiwi morphemes: pieces stay inside morphemes, decoding restores spacing."""

from __future__ import annotations

import json

import pytest

from korlm.clean.corpus import iter_sentences
from korlm.tokenizer import morpheme, tokenization
from korlm.tokenizer.vocab import build_vocab
from tests.conftest import write_review_corpus

TEXTS = ["나는 학교에 갔다.", "이 영화 정말 재미있었어요. 배우들이 최고!", "빨라졌어요ㅋㅋ KOREA와  뷁쭭",
         "3.14 1,000원 (괄호) ##두개 \ue001경계"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_review_corpus(tmp_path_factory.mktemp("morph-spm") / "corpus", 1500)


@pytest.fixture(scope="module", params=["sentencepiece-unigram", "sentencepiece-bpe"])
def built(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    stats = build_vocab(str(corpus), str(out), algorithm=request.param, pre_tokenizer="morpheme",
                        vocab_size=1500, heldout_every=10)
    return out, stats


def test_boundary_segmentation_restores_text():
    segmented = morpheme.segment("나는 학교에 갔다.  빨라졌어요", boundary=morpheme.BOUNDARY)
    assert segmented.startswith(f"나{morpheme.BOUNDARY}는 학교{morpheme.BOUNDARY}에 갔{morpheme.BOUNDARY}다")
    assert morpheme.restore(segmented) == "나는 학교에 갔다. 빨라졌어요"
    # a boundary character in the input is dropped, never taken for a morpheme boundary
    assert morpheme.segment(f"학{morpheme.BOUNDARY}교", boundary=morpheme.BOUNDARY) == "학교"


def test_files_and_stats(built):
    out, stats = built
    assert stats["pre_tokenizer"] == "morpheme" and stats["vocab_size"] == 1500
    assert stats["unk_rate"] == 0.0 and 1 < stats["tokens_per_eojeol"] < 5
    assert json.loads((out / "tokenizer_config.json").read_text())["korlm_pre_tokenizer"] == "morpheme"
    tok = tokenization.load(str(out))
    assert tok.pre_tokenizer == "morpheme"
    vocab = tok.hf.get_vocab()
    assert not any(morpheme.BOUNDARY in piece for piece in vocab)
    # continuation morphemes are learned as word-internal pieces (no "▁")
    assert "는" in vocab and "다" in vocab


def test_pieces_never_cross_morpheme_boundaries(built, corpus):
    out, _ = built
    tok = tokenization.load(str(out))
    texts = TEXTS + list(iter_sentences(str(corpus)))[:300]
    for text, ids in zip(texts, tok.encode_ids(texts), strict=True):
        # encode every morpheme on its own ("▁" before an eojeol's first one): the
        # sentence's ids are exactly their concatenation
        expected = []
        for eojeol in morpheme.segment(text, boundary=morpheme.BOUNDARY).split(" "):
            for k, piece in enumerate(eojeol.split(morpheme.BOUNDARY)):
                expected += [t.id for t in tok.hf.model.tokenize(("▁" if k == 0 else "") + piece)]
        assert ids == expected, text
        assert tok.decode(ids) == " ".join(text.replace(morpheme.BOUNDARY, "").split()), text


def test_transformers_loads_it(built):
    from transformers import AutoTokenizer

    out, _ = built
    tok = tokenization.load(str(out))
    auto = AutoTokenizer.from_pretrained(str(out))
    prepared = tok.prepare(TEXTS)
    for text, ready, ids in zip(TEXTS, prepared, tok.encode_ids(TEXTS), strict=True):
        assert auto(ready)["input_ids"] == [2, *ids, 3]
        assert auto.decode(ids) == " ".join(text.replace(morpheme.BOUNDARY, "").split())
