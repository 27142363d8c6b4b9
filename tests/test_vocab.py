"""vocab: WordPiece on a small real Korean corpus, loaded back three ways."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os

import pytest

from korlm.clean.corpus import iter_sentences
from korlm.errors import KorlmError
from korlm.tokenizer.files import load_tokenizer, vocab_hash
from korlm.tokenizer.vocab import build_vocab

SAMPLE_REVIEWS = os.path.join(os.path.dirname(__file__), "..", "data", "sample", "raw", "movie_reviews.tsv")
EXTRA = ["KOREA와 Korea는 대소문자가 다릅니다.", "서울특별시 강남구에서 만났습니다."]


def _write_corpus(directory, documents, shards=2):
    """A clean-format corpus: one sentence a line, a blank line after every document."""
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        part = documents[shard::shards]
        text = "".join("\n".join(doc) + "\n\n" for doc in part)
        (directory / f"part-{shard:05d}-of-{shards:05d}.txt").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    with open(SAMPLE_REVIEWS, encoding="utf-8", newline="") as f:
        reviews = [row["review"].strip() for row in csv.DictReader(f, delimiter="\t")][:3000]
    documents = [[r] for r in reviews if r] + [EXTRA] * 5
    path = tmp_path_factory.mktemp("vocab") / "corpus"
    _write_corpus(path, documents)
    return path


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "tokenizer"
    stats = build_vocab(str(corpus), str(out), vocab_size=4000, min_frequency=2, heldout_every=10)
    return out, stats


def test_outputs_and_stats(built, corpus):
    out, stats = built
    assert sorted(os.listdir(out)) == ["_SUCCESS", "korlm_artifact.json", "special_tokens_map.json",
                                       "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                       "vocab_stats.json"]
    assert json.loads((out / "vocab_stats.json").read_text(encoding="utf-8")) == stats
    sentences = list(iter_sentences(str(corpus)))
    total = len(sentences)
    # the held-out split is by hash: about one in ten, and never a sentence that was trained on
    assert 0.05 * total < stats["num_heldout_sentences"] < 0.15 * total
    assert stats["num_training_sentences"] + stats["num_heldout_sentences"] == total
    assert stats["algorithm"] == "wordpiece" and stats["pre_tokenizer"] == "none"
    assert stats["requested_vocab_size"] == 4000
    assert stats["vocab_size"] == len((out / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert 0 <= stats["unk_rate"] < 0.05
    assert 1.0 <= stats["tokens_per_eojeol"] < 5
    assert stats["special_tokens"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert stats["build_seconds"] >= 0


def test_vocab_txt_lists_ids_in_order(built):
    out, _ = built
    tokens = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = load_tokenizer(str(out))
    assert all(tokenizer.token_to_id(token) == i for i, token in enumerate(tokens))
    assert len(set(tokens)) == len(tokens)


def test_no_lowercasing_and_hangul_kept_whole(built):
    tokenizer = load_tokenizer(str(built[0]))
    encoding = tokenizer.encode("KOREA와 Korea는 대소문자가 다릅니다.", add_special_tokens=False)
    pieces = "".join(t.removeprefix("##") for t in encoding.tokens)
    assert "KOREA" in pieces and "Korea" in pieces
    vocab = tokenizer.get_vocab()
    # accent stripping would have decomposed syllables into conjoining jamo (U+1100..U+11FF);
    # jamo appear only as the single-character coverage alphabet
    assert all(len(token.removeprefix("##")) == 1 for token in vocab
               if any("\u1100" <= ch <= "\u11ff" for ch in token))
    assert "영화" in vocab


def test_post_processor_adds_cls_and_sep(built):
    tokenizer = load_tokenizer(str(built[0]))
    single = tokenizer.encode("정말 재미있는 영화")
    assert single.ids[0] == 2 and single.ids[-1] == 3
    pair = tokenizer.encode("정말 재미있는 영화", "다시 보고 싶다")
    assert pair.ids[0] == 2 and pair.ids.count(3) == 2 and pair.ids[-1] == 3
    assert pair.type_ids[-1] == 1 and pair.type_ids[0] == 0


def test_loads_with_transformers(built):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out = str(built[0])
    text = "이 영화 정말 최고예요 KOREA"
    expected = load_tokenizer(out).encode(text).ids
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"))
    assert fast(text)["input_ids"] == expected
    auto = AutoTokenizer.from_pretrained(out)
    assert auto(text)["input_ids"] == expected
    assert (auto.pad_token_id, auto.unk_token_id, auto.cls_token_id, auto.sep_token_id, auto.mask_token_id) == (
        0, 1, 2, 3, 4)
    assert auto.decode(expected, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_vocab_hash(built):
    out, _ = built
    digest = hashlib.sha256((out / "vocab.txt").read_bytes()).hexdigest()
    assert vocab_hash(str(out)) == digest == built[1]["vocab_hash"]


def test_gzipped_part_files_read_the_same(corpus, tmp_path):
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for part in sorted(corpus.glob("part-*.txt")):
        (zipped / (part.name + ".gz")).write_bytes(gzip.compress(part.read_bytes()))
    assert list(iter_sentences(str(zipped))) == list(iter_sentences(str(corpus)))


def test_max_sentences_caps_training(corpus, tmp_path):
    stats = build_vocab(str(corpus), str(tmp_path / "tok"), vocab_size=3000, max_sentences=200, heldout_every=0)
    assert stats["num_training_sentences"] == 200
    assert stats["num_heldout_sentences"] == 0 and stats["unk_rate"] is None


def test_errors(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KorlmError, match="no part-"):
        build_vocab(str(empty), str(tmp_path / "t1"))
    _write_corpus(tmp_path / "blank", [], shards=1)
    (tmp_path / "blank" / "part-00000-of-00001.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(KorlmError, match="no sentences"):
        build_vocab(str(tmp_path / "blank"), str(tmp_path / "t2"))
    with pytest.raises(KorlmError, match="not a directory"):
        build_vocab(str(tmp_path / "missing"), str(tmp_path / "t3"))
    with pytest.raises(KorlmError, match="special tokens"):
        build_vocab(str(corpus), str(tmp_path / "t4"), vocab_size=5)
    with pytest.raises(KorlmError, match="unknown"):
        build_vocab(str(corpus), str(tmp_path / "t5"), algorithm="bpe")
    with pytest.raises(KorlmError, match="heldout_every"):
        build_vocab(str(corpus), str(tmp_path / "t6"), heldout_every=1)
    with pytest.raises(KorlmError, match="too small for wordpiece"):
        build_vocab(str(corpus), str(tmp_path / "t7"), vocab_size=300)
    with pytest.raises(KorlmError, match="too small for vocab_size 200000"):
        build_vocab(str(corpus), str(tmp_path / "t8"), vocab_size=200_000)
    with pytest.raises(KorlmError, match="special_tokens 'gpt' is unknown"):
        build_vocab(str(corpus), str(tmp_path / "t9"), special_tokens="gpt")
    with pytest.raises(KorlmError, match="coverage"):
        build_vocab(str(corpus), str(tmp_path / "t9"), coverage="some")
    with pytest.raises(KorlmError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(KorlmError, match="no vocab.txt"):
        vocab_hash(str(tmp_path))
    assert not any((tmp_path / f"t{i}").exists() for i in range(1, 10))

