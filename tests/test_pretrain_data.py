"""pretrain-data: clean -> vocab -> pack on a slice of the bundled sample; shards read back with tf.data."""

from __future__ import annotations

import collections
import glob
import gzip
import itertools
import os

import pytest

from corpus_beam.clean import run_clean
from corpus_beam.pack import pack_document, run_pretrain_data, split_documents
from korlm.errors import KorlmError, NotBuiltError
from korlm.vocab import build_vocab, iter_sentences, load_tokenizer, vocab_hash

SAMPLE_RAW = os.path.join(os.path.dirname(__file__), "..", "data", "sample", "raw")
MAX_LEN = 32
CLS, SEP = 2, 3


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    with open(os.path.join(SAMPLE_RAW, "movie_reviews.tsv"), encoding="utf-8") as f:
        (root / "reviews.tsv").write_text("".join(itertools.islice(f, 401)), encoding="utf-8")
    with gzip.open(os.path.join(SAMPLE_RAW, "petitions.jsonl.gz"), "rt", encoding="utf-8") as f:
        (root / "petitions.jsonl").write_text("".join(itertools.islice(f, 12)), encoding="utf-8")
    corpus, tokenizer, examples = root / "corpus", root / "tokenizer", root / "examples"
    run_clean([{"path": str(root / "reviews.tsv"), "field": "review"},
               {"path": str(root / "petitions.jsonl"), "field": "content"}], str(corpus))
    build_vocab(str(corpus), str(tokenizer), vocab_size=3000, heldout_every=0)
    metadata = run_pretrain_data(str(corpus), str(tokenizer), str(examples), max_seq_length=MAX_LEN,
                                 num_shards=2, seed=7)
    return root, corpus, tokenizer, examples, metadata


def _read_shard(path):
    import tensorflow as tf

    spec = {"input_ids": tf.io.VarLenFeature(tf.int64)}
    dataset = tf.data.TFRecordDataset([str(path)]).map(lambda r: tf.io.parse_single_example(r, spec))
    return [record["input_ids"].values.numpy().tolist() for record in dataset]


def _read_all(examples_dir):
    return {os.path.basename(p): _read_shard(p) for p in sorted(glob.glob(str(examples_dir / "*.tfrecord")))}


def test_pack_document_is_greedy_and_never_splits_a_sentence():
    sentences = [[10, 11], [12, 13, 14], [15], [16, 17, 18, 19, 20, 21, 22, 23, 24]]
    examples, truncated = pack_document(sentences, max_seq_length=7, cls_id=CLS, sep_id=SEP)
    assert examples == [[CLS, 10, 11, 12, 13, 14, SEP], [CLS, 15, SEP], [CLS, 16, 17, 18, 19, 20, SEP]]
    assert truncated == 4
    assert pack_document([[], [5]], 7, CLS, SEP) == ([[CLS, 5, SEP]], 0)
    assert pack_document([], 7, CLS, SEP) == ([], 0)


def test_split_documents():
    assert split_documents("a\nb\n\nc\n\n\n d \n") == [["a", "b"], ["c"], ["d"]]
    assert split_documents("\n\n") == []


def test_shards_hold_well_formed_examples(pipeline):
    _, _, _, examples_dir, metadata = pipeline
    shards = _read_all(examples_dir)
    assert list(shards) == metadata["shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert all(shards.values()), "both shards got examples"
    assert metadata["examples_per_shard"] == [len(shards[name]) for name in metadata["shards"]]
    specials = set(metadata["special_token_ids"].values())
    for example in itertools.chain.from_iterable(shards.values()):
        assert 3 <= len(example) <= MAX_LEN
        assert example[0] == metadata["special_token_ids"]["cls"] and example[-1] == metadata["special_token_ids"]["sep"]
        assert not specials & set(example[1:-1]) - {metadata["special_token_ids"]["unk"]}


def test_tokens_in_equal_tokens_out(pipeline):
    _, corpus, tokenizer_dir, examples_dir, metadata = pipeline
    tokenizer = load_tokenizer(str(tokenizer_dir))
    sentences = list(iter_sentences(str(corpus)))
    encoded = [e.ids for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    tokens_in = sum(len(ids) for ids in encoded)
    expected = collections.Counter(t for ids in encoded for t in ids[: MAX_LEN - 2])
    written = [ex[1:-1] for ex in itertools.chain.from_iterable(_read_all(examples_dir).values())]
    assert collections.Counter(t for ex in written for t in ex) == expected
    assert sum(map(len, written)) + metadata["num_truncated_tokens"] == tokens_in
    assert metadata["num_truncated_tokens"] > 0, "the petitions have sentences longer than 30 tokens"


def test_metadata_matches_what_was_written(pipeline):
    _, corpus, tokenizer_dir, examples_dir, metadata = pipeline
    examples = list(itertools.chain.from_iterable(_read_all(examples_dir).values()))
    assert metadata["num_examples"] == len(examples)
    assert metadata["num_tokens"] == sum(len(e) - 2 for e in examples)
    assert metadata["padding_fraction"] == pytest.approx(1 - sum(map(len, examples)) / (len(examples) * MAX_LEN))
    assert metadata["max_seq_length"] == MAX_LEN and metadata["objective"] == "mlm"
    assert metadata["vocab_hash"] == vocab_hash(str(tokenizer_dir))
    assert metadata["vocab_size"] == load_tokenizer(str(tokenizer_dir)).get_vocab_size()
    assert metadata["special_token_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    documents = sum(len(split_documents(open(p, encoding="utf-8").read()))
                    for p in glob.glob(str(corpus / "part-*.txt")))
    assert metadata["num_documents"] == documents
    assert sorted(os.listdir(examples_dir)) == sorted([*metadata["shards"], "metadata.json"])


def test_same_seed_same_bytes_other_seed_other_order(pipeline):
    root, corpus, tokenizer_dir, examples_dir, _ = pipeline
    again = root / "again"
    run_pretrain_data(str(corpus), str(tokenizer_dir), str(again), max_seq_length=MAX_LEN, num_shards=2, seed=7)
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"):
        assert (again / name).read_bytes() == (examples_dir / name).read_bytes()
    other = root / "other"
    run_pretrain_data(str(corpus), str(tokenizer_dir), str(other), max_seq_length=MAX_LEN, num_shards=1, seed=8)
    reordered = _read_shard(other / "train-00000-of-00001.tfrecord")
    original = list(itertools.chain.from_iterable(_read_all(examples_dir).values()))
    assert sorted(reordered) == sorted(original)
    assert reordered != original


def test_every_shard_exists_even_when_empty(pipeline, tmp_path):
    _, _, tokenizer_dir, _, _ = pipeline
    corpus = tmp_path / "one"
    corpus.mkdir()
    (corpus / "part-00000-of-00001.txt").write_text("영화가 재미있다.\n\n", encoding="utf-8")
    metadata = run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "ex"), num_shards=3)
    assert metadata["num_examples"] == 1 and sorted(metadata["examples_per_shard"]) == [0, 0, 1]
    shards = _read_all(tmp_path / "ex")
    assert list(shards) == metadata["shards"]
    assert [len(shards[name]) for name in metadata["shards"]] == metadata["examples_per_shard"]


def test_errors(pipeline, tmp_path):
    _, corpus, tokenizer_dir, _, _ = pipeline
    with pytest.raises(NotBuiltError, match="#5"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), objective="bart")
    with pytest.raises(KorlmError, match="objective"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), objective="clm")
    with pytest.raises(KorlmError, match="no tokenizer.json"):
        run_pretrain_data(str(corpus), str(tmp_path), str(tmp_path / "a"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(KorlmError, match="not a valid tokenizer"):
        run_pretrain_data(str(corpus), str(tmp_path / "broken"), str(tmp_path / "a"))
    with pytest.raises(KorlmError, match="max_seq_length"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), max_seq_length=2)
    with pytest.raises(KorlmError, match="no part-"):
        run_pretrain_data(str(tmp_path), str(tokenizer_dir), str(tmp_path / "a"))
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "part-00000-of-00001.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(KorlmError, match="no documents"):
        run_pretrain_data(str(blank), str(tokenizer_dir), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
