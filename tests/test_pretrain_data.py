"""pretrain-data: clean -> vocab -> pack (real Beam runs) on a slice of the bundled sample;
shards read back with tf.data; corrupt shards are named. (Most runs hold nothing out, so
every token is in the training shards; the held-out slice: tests/test_heldout.py.)"""

from __future__ import annotations

import collections
import glob
import gzip
import itertools
import json
import os
import shutil

import pytest

from korlm.clean.beam import run_clean
from korlm.errors import KorlmError
from korlm.pretrain_data.beam import (
    pack_document,
    run_pretrain_data,
    split_documents,
    verify_shards,
)
from korlm.pretrain_data.shards import CorruptShardError
from korlm.tokenizer import tokenization
from korlm.tokenizer.files import load_tokenizer, vocab_hash
from korlm.tokenizer.vocab import build_vocab

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
                                 num_shards=2, seed=7, heldout_fraction=0.0)
    return root, corpus, tokenizer, examples, metadata


def _read_shard(path, features=("input_ids",)):
    import tensorflow as tf

    spec = {name: tf.io.VarLenFeature(tf.int64) for name in features}
    dataset = tf.data.TFRecordDataset([str(path)]).map(lambda r: tf.io.parse_single_example(r, spec))
    if features == ("input_ids",):
        return [record["input_ids"].values.numpy().tolist() for record in dataset]
    return [{k: v.values.numpy().tolist() for k, v in record.items()} for record in dataset]


def _read_all(examples_dir, features=("input_ids",)):
    return {os.path.basename(p): _read_shard(p, features)
            for p in sorted(glob.glob(str(examples_dir / "*.tfrecord")))}


def _examples(examples_dir, features=("input_ids",)):
    return list(itertools.chain.from_iterable(_read_all(examples_dir, features).values()))


def _corpus_ids(corpus, tokenizer_dir):
    """Token ids of every sentence, per document, tokenized apart from the Beam step."""
    tokenizer = tokenization.load(str(tokenizer_dir))
    documents = [d for p in sorted(glob.glob(str(corpus / "part-*.txt")))
                 for d in split_documents(open(p, encoding="utf-8").read())]
    ids = iter(tokenizer.encode_ids([s for d in documents for s in d]))
    return [[next(ids) for _ in d] for d in documents]


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
    """Default mlm packing is full-sentences: cls ... sep, an extra sep between documents."""
    _, _, _, examples_dir, metadata = pipeline
    features = ("input_ids", "word_starts", "sentence_starts")
    assert metadata["packing"] == "full-sentences" and metadata["features"] == list(features)
    shards = _read_all(examples_dir, features)
    assert list(shards) == metadata["shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert all(shards.values()), "both shards got examples"
    assert metadata["examples_per_shard"] == [len(shards[name]) for name in metadata["shards"]]
    special = metadata["special_token_ids"]
    crossing = 0
    for example in itertools.chain.from_iterable(shards.values()):
        ids = example["input_ids"]
        assert 3 <= len(ids) <= MAX_LEN and len(example["word_starts"]) == len(example["sentence_starts"]) == len(ids)
        assert ids[0] == special["cls"] and ids[-1] == special["sep"]
        assert not set(special.values()) & set(ids[1:-1]) - {special["unk"], special["sep"]}
        inner = [i for i, t in enumerate(ids[1:-1], 1) if t == special["sep"]]
        crossing += bool(inner)
        for i in [0, len(ids) - 1, *inner]:
            assert example["word_starts"][i] == 1 and example["sentence_starts"][i] == 0
        for i in inner:
            assert example["sentence_starts"][i + 1] == 1, "a document's first sentence follows the extra sep"
        assert example["sentence_starts"][1] == 1
    assert crossing > 10, "full-sentences examples cross documents"


def test_tokens_in_equal_tokens_out(pipeline):
    _, corpus, tokenizer_dir, examples_dir, metadata = pipeline
    sep = metadata["special_token_ids"]["sep"]
    encoded = [ids for doc in _corpus_ids(corpus, tokenizer_dir) for ids in doc]
    tokens_in = sum(len(ids) for ids in encoded)
    expected = collections.Counter(t for ids in encoded for t in ids[: MAX_LEN - 2])
    written = [ex[1:-1] for ex in _examples(examples_dir)]
    separators = sum(t == sep for ex in written for t in ex)
    content = collections.Counter(t for ex in written for t in ex)
    content[sep] -= separators
    assert +content == expected
    assert sum(map(len, written)) - separators + metadata["num_truncated_tokens"] == tokens_in
    assert metadata["num_input_tokens"] == tokens_in
    assert metadata["num_truncated_tokens"] > 0, "the petitions have sentences longer than 30 tokens"


def test_metadata_matches_what_was_written(pipeline):
    _, corpus, tokenizer_dir, examples_dir, metadata = pipeline
    examples = _examples(examples_dir)
    sep = metadata["special_token_ids"]["sep"]
    assert metadata["num_examples"] == len(examples)
    assert metadata["num_tokens"] == sum(len(e) - 2 - e[1:-1].count(sep) for e in examples)
    assert metadata["padding_fraction"] == pytest.approx(1 - sum(map(len, examples)) / (len(examples) * MAX_LEN))
    assert metadata["max_seq_length"] == MAX_LEN and metadata["objective"] == "mlm"
    assert metadata["vocab_hash"] == vocab_hash(str(tokenizer_dir))
    assert metadata["vocab_size"] == load_tokenizer(str(tokenizer_dir)).get_vocab_size()
    assert metadata["special_token_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert (metadata["nsp"], metadata["masking"], metadata["dupe_factor"], metadata["pre_tokenizer"]) == \
        (False, "dynamic", 1, "none")
    assert "mask_rate" not in metadata
    documents = sum(len(split_documents(open(p, encoding="utf-8").read()))
                    for p in glob.glob(str(corpus / "part-*.txt")))
    assert metadata["num_documents"] == documents
    assert sorted(os.listdir(examples_dir)) == sorted([*metadata["shards"], "metadata.json",
                                                       "_SUCCESS", "korlm_artifact.json"])


def test_same_seed_same_bytes_other_seed_other_order(pipeline):
    root, corpus, tokenizer_dir, examples_dir, _ = pipeline
    again = root / "again"
    run_pretrain_data(str(corpus), str(tokenizer_dir), str(again), max_seq_length=MAX_LEN, num_shards=2, seed=7,
                      heldout_fraction=0.0)
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"):
        assert (again / name).read_bytes() == (examples_dir / name).read_bytes()
    other = root / "other"
    run_pretrain_data(str(corpus), str(tokenizer_dir), str(other), max_seq_length=MAX_LEN, num_shards=1, seed=8,
                      heldout_fraction=0.0)
    reordered = _read_shard(other / "train-00000-of-00001.tfrecord")
    original = list(itertools.chain.from_iterable(_read_all(examples_dir).values()))
    assert sorted(reordered) == sorted(original)
    assert reordered != original


def test_every_shard_exists_even_when_empty(pipeline, tmp_path):
    _, _, tokenizer_dir, _, _ = pipeline
    corpus = tmp_path / "one"
    corpus.mkdir()
    (corpus / "part-00000-of-00001.txt").write_text("영화가 재미있다.\n\n", encoding="utf-8")
    metadata = run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "ex"), num_shards=3,
                                 heldout_fraction=0.0)
    assert metadata["num_examples"] == 1 and sorted(metadata["examples_per_shard"]) == [0, 0, 1]
    shards = _read_all(tmp_path / "ex")
    assert list(shards) == metadata["shards"]
    assert [len(shards[name]) for name in metadata["shards"]] == metadata["examples_per_shard"]


@pytest.mark.slow  # one more Beam run; korlm.pretrain_data.packing tests cover the mode at 128 and 512
def test_doc_sentences_at_128_is_per_document_greedy_packing(pipeline):
    """doc-sentences (the old behaviour) at max_seq_length 128 writes exactly pack_document's examples."""
    root, corpus, tokenizer_dir, _, _ = pipeline
    metadata = run_pretrain_data(str(corpus), str(tokenizer_dir), str(root / "doc128"), packing="doc-sentences",
                                 max_seq_length=128, num_shards=1, seed=7, heldout_fraction=0.0)
    expected, truncated = [], 0
    for doc in _corpus_ids(corpus, tokenizer_dir):
        examples, cut = pack_document(doc, 128, metadata["special_token_ids"]["cls"],
                                      metadata["special_token_ids"]["sep"])
        expected += examples
        truncated += cut
    written = _examples(root / "doc128")
    assert sorted(written) == sorted(expected)
    assert metadata["num_truncated_tokens"] == truncated and metadata["packing"] == "doc-sentences"
    assert metadata["padding_fraction"] > 0.5


@pytest.mark.slow  # one more Beam run; korlm.pretrain_data.packing tests cover the mode at 128 and 512
def test_bart_span_at_512(pipeline):
    root, corpus, tokenizer_dir, _, _ = pipeline
    metadata = run_pretrain_data(str(corpus), str(tokenizer_dir), str(root / "bart"), objective="bart",
                                 max_seq_length=512, num_shards=2, seed=1, heldout_fraction=0.0)
    assert (metadata["packing"], metadata["objective"], metadata["max_seq_length"]) == ("span", "bart", 512)
    examples = _examples(root / "bart", ("input_ids", "sentence_starts"))
    documents = _corpus_ids(corpus, tokenizer_dir)
    assert max(len(e["input_ids"]) for e in examples) > 128
    sep = metadata["special_token_ids"]["sep"]
    assert all(e["input_ids"][1:-1].count(sep) == 0 for e in examples), "span never crosses a document"
    assert sum(sum(e["sentence_starts"]) for e in examples) == sum(1 for d in documents for s in d if s)
    tokens = sum(len(s) for d in documents for s in d)
    assert sum(len(e["input_ids"]) - 2 for e in examples) + metadata["num_truncated_tokens"] == tokens


def test_segment_pairs_with_nsp_and_static_masking(pipeline):
    """Static masking restores to exactly the dynamic run's examples (labels aligned with
    inputs); segment ids, NSP labels and masks follow the contract."""
    root, corpus, tokenizer_dir, _, _ = pipeline
    common = dict(packing="segment-pair", nsp=True, max_seq_length=MAX_LEN, num_shards=2, seed=5,
                  heldout_fraction=0.0)
    plain = run_pretrain_data(str(corpus), str(tokenizer_dir), str(root / "pairs"), **common)
    static = run_pretrain_data(str(corpus), str(tokenizer_dir), str(root / "pairs-static"), **common,
                               masking="static", dupe_factor=1, whole_word="eojeol")
    names = ("input_ids", "word_starts", "sentence_starts", "segment_ids", "next_sentence_label")
    assert plain["features"] == list(names)
    assert static["features"] == [*names, "masked_lm_positions", "masked_lm_ids"]
    assert (static["mask_rate"], static["whole_word"], static["max_predictions_per_seq"]) == (0.15, "eojeol", 5)
    special = plain["special_token_ids"]
    unmasked = _examples(root / "pairs", names)
    masked = _examples(root / "pairs-static", (*names, "masked_lm_positions", "masked_lm_ids"))
    restored = []
    for example in masked:
        ids = list(example["input_ids"])
        positions, labels = example["masked_lm_positions"], example["masked_lm_ids"]
        assert positions == sorted(set(positions)) and len(positions) <= 5
        assert not set(labels) & set(special.values()), "no special token is masked"
        for p, label in zip(positions, labels, strict=True):
            ids[p] = label
        restored.append({**{k: example[k] for k in names}, "input_ids": ids})
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, restored)) == sorted(map(key, unmasked))
    assert static["num_masked_tokens"] == sum(len(e["masked_lm_positions"]) for e in masked)
    labels = [e["next_sentence_label"][0] for e in unmasked]
    assert set(labels) == {0, 1} and 0.35 < sum(labels) / len(labels) < 0.65
    assert plain["next_sentence_random_fraction"] == pytest.approx(sum(labels) / len(labels))
    for example in unmasked:
        ids, segments = example["input_ids"], example["segment_ids"]
        seps = [i for i, t in enumerate(ids) if t == special["sep"]]
        assert ids[0] == special["cls"] and len(seps) == 2 and seps[1] == len(ids) - 1
        assert segments == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
    written = sum(len(e["input_ids"]) - 3 for e in unmasked)
    tokens = sum(len(s) for d in _corpus_ids(corpus, tokenizer_dir) for s in d)
    assert written - plain["num_random_next_tokens"] + plain["num_truncated_tokens"] == tokens


def test_corrupt_or_truncated_shards_are_named(pipeline, tmp_path):
    _, _, _, examples_dir, metadata = pipeline
    data = tmp_path / "data"
    shutil.copytree(examples_dir, data)
    assert verify_shards(str(data)) == dict(zip(metadata["shards"], metadata["examples_per_shard"], strict=True))
    first, second = (data / name for name in metadata["shards"])
    raw = first.read_bytes()
    first.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(CorruptShardError, match=f"shard {first.name} .*truncated record") as info:
        verify_shards(str(data))
    assert "\n" not in str(info.value)
    first.write_bytes(raw)
    flipped = bytearray(second.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    second.write_bytes(bytes(flipped))
    with pytest.raises(CorruptShardError, match=f"shard {second.name} .*corrupted record"):
        verify_shards(str(data))
    shutil.copy(examples_dir / second.name, second)
    # a shard cut at a record boundary reads cleanly: the count in metadata.json catches it
    import tensorflow as tf

    records = list(tf.data.TFRecordDataset([str(first)]).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(first)) as writer:
        for record in records[:-1]:
            writer.write(record)
    with pytest.raises(CorruptShardError, match=f"shard {first.name} holds {len(records) - 1} records"):
        verify_shards(str(data))
    first.unlink()
    with pytest.raises(CorruptShardError, match=f"shard {first.name} .* is missing"):
        verify_shards(str(data))


def test_training_refuses_a_corrupt_shard(pipeline, tmp_path):
    from korlm.pretrain.dataset import inspect_data

    _, _, tokenizer_dir, examples_dir, metadata = pipeline
    data = tmp_path / "data"
    shutil.copytree(examples_dir, data)
    shard = data / metadata["shards"][1]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(KorlmError, match=metadata["shards"][1]):
        inspect_data(str(data), str(tokenizer_dir))


def test_errors(pipeline, tmp_path):
    _, corpus, tokenizer_dir, _, _ = pipeline
    with pytest.raises(KorlmError, match="objective"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), objective="clm")
    with pytest.raises(KorlmError, match="nsp needs packing segment-pair"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), nsp=True)
    with pytest.raises(KorlmError, match="whole_word morpheme needs a morpheme vocab"):
        run_pretrain_data(str(corpus), str(tokenizer_dir), str(tmp_path / "a"), masking="static",
                          whole_word="morpheme")
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


def test_extra_seq_lengths_pack_each_phase_length_and_feed_a_two_phase_run(pipeline, tmp_path):
    """pretrain_data.extra_seq_lengths (what pretrain.phases needs) packs the corpus again
    at each length into seq<N>/, listed in the root metadata once written; a two-phase
    run then reads each phase's own data."""
    from korlm import config as cfg
    from korlm.pretrain.train import run_pretrain

    _, corpus, tokenizer, _, _ = pipeline
    conf = cfg.Config.model_validate({
        "pretrain_data": {"max_seq_length": 64},
        "pretrain": {"steps": 4, "checkpoint_every": 2, "log_every": 2,
                     "phases": [{"steps": 3, "max_seq_length": 16}, {"steps": 1, "max_seq_length": 64}]}})
    assert conf.pretrain_data.extra_seq_lengths == [16]
    # A phase length missing from an explicit list is added (e.g. after --set
    # pretrain_data.max_seq_length=... on a config whose list was filled for another).
    both = cfg.Config.model_validate({
        "pretrain_data": {"max_seq_length": 64, "extra_seq_lengths": [16]},
        "pretrain": {"steps": 2, "checkpoint_every": 1,
                     "phases": [{"steps": 1, "max_seq_length": 32}, {"steps": 1, "max_seq_length": 64}]}})
    assert both.pretrain_data.extra_seq_lengths == [16, 32]

    out = tmp_path / "examples"
    meta = run_pretrain_data(str(corpus), str(tokenizer), str(out), max_seq_length=64, num_shards=1,
                             extra_seq_lengths=conf.pretrain_data.extra_seq_lengths)
    assert meta["seq_length_variants"] == {"16": "seq16"}
    assert json.loads((out / "metadata.json").read_text())["seq_length_variants"] == {"16": "seq16"}
    short = json.loads((out / "seq16" / "metadata.json").read_text())
    assert short["max_seq_length"] == 16 and short["num_examples"] > meta["num_examples"]
    assert max(len(e) for e in _examples(out / "seq16")) == 16
    assert not list(out.glob(".seq16.tmp-*"))  # published by rename, no staging left

    checkpoints = run_pretrain(str(out), str(tokenizer), str(tmp_path / "run"), batch_size=4,
                               **{k: v for k, v in conf.pretrain.model_dump().items()
                                  if k not in ("batch_size",)})
    assert [c["step"] for c in checkpoints] == [2, 4]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["max_seq_length"] for r in log] == [16, 64]
