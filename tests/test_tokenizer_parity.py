"""Graph tokenizer (tf-text inside tf.data) vs the HF tokenizer: identical ids on held-out text.

Vocabs are trained on movie reviews (the bundled sample); the held-out text is news
comments from korean-hate-speech (another domain) plus hand-written edge cases.
"""

from __future__ import annotations

import csv
import os

import pytest

from korlm.tokenizer import tokenization
from korlm.tokenizer.vocab import build_vocab
from tests.conftest import write_review_corpus

# The Korean data kit sits beside the checkout (../shared/data), for developers and CI.
HATE_SPEECH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                           "korean-hate-speech", "train.tsv")
NUM_HELDOUT = 1200
EDGE_CASES = [
    "ＫＯＲＥＡ　전각　문자와\u00a0NBSP, 탭\t줄바꿈\n끝",
    "漢字와 한글이 섞인 文章입니다.",
    "제어\u200b문자\ufeff와 \u0007벨",
    "뷁쭭 똠방각하 ㅋㅋㅋㅋ ㅠㅠ ㄱㄴㄷ",
    "조합형 \u1112\u1161\u11ab\u1100\u1173\u11af 자모",
    "이모지😀👍🏽와 기호 ★☆ → ※",
    "https://example.com/a?b=c&d=e #해시태그 ##두개 @user",
    "ㅋ" * 150,
    "3.14159 1,000,000원 (괄호) [대괄호] {중괄호} <꺾쇠> \"따옴표\" '작은'",
    "",
    "   ",
]


def _heldout():
    if not os.path.exists(HATE_SPEECH):
        pytest.skip("shared data kit not present")
    with open(HATE_SPEECH, encoding="utf-8", newline="") as f:
        comments = [row["comments"] for row in csv.DictReader(f, delimiter="\t")]
    return comments[:NUM_HELDOUT] + EDGE_CASES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_review_corpus(tmp_path_factory.mktemp("parity") / "corpus", 4000)


def _graph_ids(tokenizer_dir, texts):
    import tensorflow as tf

    tokenize = tokenization.graph_tokenizer(tokenizer_dir)
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(128).map(tokenize)
    return [row for batch in ds for row in batch.to_list()]


# Every mode: plain and morpheme vocabs of each algorithm, and the BART/RoBERTa special
# tokens on one WordPiece and one SentencePiece vocab. Morpheme SentencePiece vocabs are
# smaller: segmented text has fewer distinct pieces.
MODES = [
    ("wordpiece", "none", "bert", 6000),
    ("wordpiece", "morpheme", "bert", 6000),
    ("sentencepiece-unigram", "none", "bert", 6000),
    ("sentencepiece-bpe", "none", "bert", 6000),
    ("sentencepiece-unigram", "morpheme", "bert", 3000),
    ("sentencepiece-bpe", "morpheme", "bert", 3000),
    ("wordpiece", "none", "bart", 6000),
    ("sentencepiece-unigram", "none", "bart", 6000),
]


@pytest.mark.parametrize("algorithm,pre_tokenizer,special_tokens,vocab_size", MODES)
def test_graph_and_hf_ids_match(corpus, tmp_path, algorithm, pre_tokenizer, special_tokens, vocab_size):
    texts = _heldout()
    out = str(tmp_path / "tok")
    build_vocab(str(corpus), out, algorithm=algorithm, pre_tokenizer=pre_tokenizer, vocab_size=vocab_size,
                special_tokens=special_tokens)
    tok = tokenization.load(out)
    expected = tok.encode_ids(texts)
    got = _graph_ids(out, texts)
    assert len(got) == len(expected) == NUM_HELDOUT + len(EDGE_CASES)
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert not mismatched, [(texts[i], got[i], expected[i]) for i in mismatched[:3]]
    unk_id = tok.special_token_ids()["unk"]
    assert unk_id == (1 if special_tokens == "bert" else 3)
    unk = sum(ids.count(unk_id) for ids in expected) / sum(len(ids) for ids in expected)
    assert unk < 0.01
