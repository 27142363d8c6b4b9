"""Statistical and structural tests of MLM masking in tf.data (korlm.pretrain.masking through
korlm.pretrain.dataset.make_dataset), over 10k examples written as real TFRecords in the
pretrain-data contract (input_ids, word_starts, morpheme_starts, sentence_starts,
optionally segment_ids; static masking: masked_lm_positions / masked_lm_ids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.pretrain.dataset import check_data_settings, data_features, make_dataset

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
SPECIAL_IDS = sorted(SPECIAL.values())
VOCAB = 1200
MAX_LEN = 128
NUM = 10_000
BATCH = 1000


def synthetic_examples(num: int, seed: int = 0, max_len: int = MAX_LEN) -> list[dict[str, np.ndarray]]:
    """Packed examples in the contract: mostly full, a fifth crossing a document boundary
    (an inner [SEP], RoBERTa full-sentences), eojeol of 1-4 tokens, morphemes within them."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(num):
        length = max_len if rng.random() < 0.8 else int(rng.integers(8, max_len))
        inner = length - 2
        ids = rng.integers(len(SPECIAL_IDS), VOCAB, inner)
        word = rng.random(inner) < 0.4
        word[0] = True
        morpheme = word | (rng.random(inner) < 0.3)
        sentence = word & (rng.random(inner) < 0.12)
        sentence[0] = True
        if rng.random() < 0.2 and inner > 6:  # a document boundary inside the example
            cut = int(rng.integers(2, inner - 2))
            ids[cut] = SPECIAL["sep"]
            word[cut] = morpheme[cut] = True
            sentence[cut] = False
            word[cut + 1] = morpheme[cut + 1] = sentence[cut + 1] = True
        examples.append({
            "input_ids": np.concatenate([[SPECIAL["cls"]], ids, [SPECIAL["sep"]]]),
            "word_starts": np.concatenate([[1], word, [1]]).astype(np.int64),
            "morpheme_starts": np.concatenate([[1], morpheme, [1]]).astype(np.int64),
            "sentence_starts": np.concatenate([[0], sentence, [0]]).astype(np.int64),
        })
    return examples


def write_shards(out_dir: Path, examples: list[dict], *, num_shards: int = 1,
                 metadata: dict | None = None, vocab_size: int = VOCAB) -> Path:
    """Real TFRecord shards + metadata.json as `korlm pretrain-data` writes them."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(out_dir / f"train-{i:05d}-of-{num_shards:05d}.tfrecord"))
               for i in range(num_shards)]
    for i, example in enumerate(examples):
        feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(v).tolist()))
                   for name, v in example.items()}
        writers[i % num_shards].write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    for writer in writers:
        writer.close()
    meta = {"num_examples": len(examples), "max_seq_length": MAX_LEN, "vocab_size": vocab_size,
            "special_token_ids": SPECIAL, "objective": "mlm", "packing": "full-sentences",
            "masking": "dynamic", "nsp": False, "features": sorted(examples[0])}
    meta.update(metadata or {})
    (out_dir / "metadata.json").write_text(json.dumps(meta))
    return out_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    examples = synthetic_examples(NUM)
    return examples, write_shards(tmp_path_factory.mktemp("masking") / "examples", examples)


def run_batches(data_dir: Path, examples: list[dict], batch: int = BATCH, **settings):
    """All examples through make_dataset, in file order (one shard, no shuffle), as numpy."""
    files = [str(p) for p in sorted(data_dir.glob("*.tfrecord"))]
    meta = json.loads((data_dir / "metadata.json").read_text())
    ds = make_dataset(
        files, batch_size=batch, max_seq_length=settings.pop("max_seq_length", MAX_LEN),
        vocab_size=VOCAB, special_ids=SPECIAL, seed=1, data_max_seq_length=MAX_LEN,
        shuffle_buffer=1, features=meta["features"], masking=meta["masking"], **settings)
    parts = list(ds.take(len(examples) // batch))
    x = {k: np.concatenate([p[0][k].numpy() for p in parts]) for k in parts[0][0]}
    return x, np.concatenate([p[1].numpy() for p in parts]), np.concatenate([p[2].numpy() for p in parts])


def padded(examples: list[dict], name: str, length: int = MAX_LEN) -> np.ndarray:
    out = np.zeros((len(examples), length), np.int64)
    for i, e in enumerate(examples):
        out[i, :len(e[name])] = e[name][:length]
    return out


def predicted(x, weights) -> np.ndarray:
    """[examples, positions] bool: which positions carry a label."""
    out = np.zeros(x["token_ids"].shape, bool)
    rows, slots = np.nonzero(weights > 0)
    out[rows, x["mask_positions"][rows, slots]] = True
    return out


def check_masked_batch(examples, x, labels, weights, *, rate=0.15, mask_token_rate=0.8,
                       random_token_rate=0.1):
    original = padded(examples, "input_ids")
    lengths = np.array([len(e["input_ids"]) for e in examples])
    assert (x["padding_mask"].sum(1) == lengths).all()
    special = np.isin(original, SPECIAL_IDS) | ~x["padding_mask"]
    chosen = predicted(x, weights)
    # Labels aligned with the inputs: the label at each position is the original token;
    # every other position is untouched.
    rows, slots = np.nonzero(weights > 0)
    positions = x["mask_positions"][rows, slots]
    assert (labels[rows, slots] == original[rows, positions]).all()
    assert (x["token_ids"][~chosen] == np.where(x["padding_mask"], original, 0)[~chosen]).all()
    assert (np.diff(np.where(weights > 0, x["mask_positions"], 10**6), axis=1)[:, :-1] >= 0).all()
    # No special token selected, none brought in as a random replacement.
    assert not (chosen & special).any()
    assert not np.isin(x["token_ids"][chosen & (x["token_ids"] != SPECIAL["mask"])], SPECIAL_IDS).any()
    # Mask rate within 1 point of the target, over maskable tokens.
    maskable = (~special).sum()
    assert abs(chosen.sum() / maskable - rate) < 0.01, chosen.sum() / maskable
    # 80/10/10 within 2 points.
    shown = x["token_ids"][chosen]
    truth = original[chosen]
    as_mask = (shown == SPECIAL["mask"]).mean()
    as_random = ((shown != SPECIAL["mask"]) & (shown != truth)).mean()
    as_kept = (shown == truth).mean()
    assert abs(as_mask - mask_token_rate) < 0.02, as_mask
    assert abs(as_random - random_token_rate) < 0.02, as_random
    assert abs(as_kept - (1 - mask_token_rate - random_token_rate)) < 0.02, as_kept
    return chosen


def test_token_level_masking_statistics(data):
    examples, data_dir = data
    x, labels, weights = run_batches(data_dir, examples, mask_rate=0.15)
    assert x["token_ids"].shape == (NUM, MAX_LEN) and weights.shape == (NUM, 20)  # ceil(128 * .15)
    assert (x["segment_ids"] == 0).all()
    check_masked_batch(examples, x, labels, weights)


def test_rates_are_configurable(data):
    examples, data_dir = data
    x, labels, weights = run_batches(data_dir, examples[:4000], mask_rate=0.3, mask_token_rate=0.5,
                                     random_token_rate=0.3)
    check_masked_batch(examples[:4000], x, labels, weights, rate=0.3, mask_token_rate=0.5,
                       random_token_rate=0.3)


def words_of(starts_row: np.ndarray, ids_row: np.ndarray) -> np.ndarray:
    """Word index of every token: a new word at each start, special token and after one."""
    special = np.isin(ids_row, SPECIAL_IDS)
    after = np.concatenate([[True], special[:-1]])
    return np.cumsum(starts_row.astype(bool) | special | after) - 1


@pytest.mark.parametrize("level,feature", [("eojeol", "word_starts"), ("morpheme", "morpheme_starts")])
def test_whole_word_masking_masks_whole_words(data, level, feature):
    examples, data_dir = data
    if level == "morpheme":  # the 10k-example statistics run on eojeol; morphemes on 3k
        examples = examples[:3000]
    x, labels, weights = run_batches(data_dir, examples, whole_word=level)
    chosen = check_masked_batch(examples, x, labels, weights)
    partial = 0
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        word = words_of(example[feature], example["input_ids"])
        hit = np.bincount(word, weights=chosen[i, :n], minlength=word[-1] + 1)
        size = np.bincount(word, minlength=word[-1] + 1)
        partial += ((hit > 0) & (hit < size)).sum()
    assert partial == 0
    # Multi-token words do get picked (this is not token-level masking in disguise).
    multi = [np.bincount(words_of(e[feature], e["input_ids"])) for e in examples[:200]]
    assert max(m.max() for m in multi) > 1


def test_max_predictions_caps_whole_word_masking(data):
    examples, data_dir = data
    x, labels, weights = run_batches(data_dir, examples[:1000], whole_word="eojeol", max_predictions=6)
    assert weights.shape == (1000, 6)
    chosen = predicted(x, weights)
    assert chosen.sum(1).max() <= 6 and chosen.sum(1).mean() > 5
    original = padded(examples[:1000], "input_ids")
    rows, slots = np.nonzero(weights > 0)
    assert (labels[rows, slots] == original[rows, x["mask_positions"][rows, slots]]).all()


def test_dense_batches_and_graph_mode():
    import tensorflow as tf

    from korlm.pretrain.masking import MaskedLMMasker

    examples = synthetic_examples(64, seed=5)
    ids = padded(examples, "input_ids")
    starts = padded(examples, "word_starts")
    lengths = np.array([len(e["input_ids"]) for e in examples])
    masker = MaskedLMMasker(VOCAB, SPECIAL, whole_word=True, max_predictions=20)
    out = tf.function(lambda i, s, n: masker(i, s, lengths=n))(ids, starts, lengths)
    token_ids = out["token_ids"].to_tensor(shape=[64, MAX_LEN]).numpy()
    x = {"token_ids": token_ids, "mask_positions": out["mask_positions"].numpy(),
         "padding_mask": np.arange(MAX_LEN)[None] < lengths[:, None]}
    chosen = predicted(x, out["mask_weights"].numpy())
    assert chosen.sum() > 0 and not (chosen & np.isin(ids, SPECIAL_IDS)).any()
    assert (token_ids[~chosen] == ids[~chosen]).all()


def test_truncation_keeps_closing_sep_and_word_boundaries(data):
    examples, data_dir = data
    x, labels, weights = run_batches(data_dir, examples[:1000], whole_word="eojeol", max_seq_length=32)
    assert x["token_ids"].shape == (1000, 32)
    n = x["padding_mask"].sum(1)
    assert n.max() == 32
    last = x["token_ids"][np.arange(1000), n - 1]
    chosen = predicted(x, weights)
    assert not chosen[np.arange(1000), n - 1].any()
    original = padded(examples[:1000], "input_ids", 32)
    original[np.arange(1000), n - 1] = SPECIAL["sep"]
    assert (last == SPECIAL["sep"]).all()
    rows, slots = np.nonzero(weights > 0)
    assert (labels[rows, slots] == original[rows, x["mask_positions"][rows, slots]]).all()


def static_examples(num: int, seed: int = 3):
    """Statically masked examples (BERT create_pretraining_data): masked input_ids, sorted
    positions and the original ids there; segment-pair layout with segment_ids."""
    rng = np.random.default_rng(seed)
    out, originals = [], []
    for example in synthetic_examples(num, seed=seed):
        ids = example["input_ids"].copy()
        n = len(ids)
        split = n // 2
        ids[split] = SPECIAL["sep"]
        segments = np.r_[np.zeros(split + 1, np.int64), np.ones(n - split - 1, np.int64)]
        maskable = np.flatnonzero(~np.isin(ids, SPECIAL_IDS))
        positions = np.sort(rng.choice(maskable, min(len(maskable), max(1, round(n * 0.15))),
                                       replace=False))
        masked = ids.copy()
        masked[positions] = SPECIAL["mask"]
        originals.append(ids)
        out.append({"input_ids": masked, "segment_ids": segments,
                    "masked_lm_positions": positions, "masked_lm_ids": ids[positions]})
    return out, originals


def test_static_masking_reads_the_data_masks_and_segments(tmp_path):
    examples, originals = static_examples(2000)
    data_dir = write_shards(tmp_path / "static", examples,
                            metadata={"masking": "static", "dupe_factor": 2, "mask_rate": 0.15,
                                      "packing": "segment-pair"})
    x, labels, weights = run_batches(data_dir, examples, batch=500)
    assert weights.shape == (2000, 20)
    for i, example in enumerate(examples):
        k = len(example["masked_lm_positions"])
        assert (x["mask_positions"][i, :k] == example["masked_lm_positions"]).all()
        assert (labels[i, :k] == originals[i][example["masked_lm_positions"]]).all()
        assert weights[i, :k].all() and not weights[i, k:].any()
        n = len(example["input_ids"])
        assert (x["token_ids"][i, :n] == example["input_ids"]).all()
        assert (x["segment_ids"][i, :n] == example["segment_ids"]).all()
    # Cut to 32 tokens: masks beyond the cut (or on the new closing [SEP]) are dropped.
    x, labels, weights = run_batches(data_dir, examples[:500], batch=500, max_seq_length=32)
    for i, example in enumerate(examples[:500]):
        n = int(x["padding_mask"][i].sum())
        keep = example["masked_lm_positions"] < n - 1
        k = int(keep.sum())
        assert (x["mask_positions"][i, :k] == example["masked_lm_positions"][keep]).all()
        assert int(weights[i].sum()) == k


def test_data_checks(tmp_path):
    meta = {"masking": "dynamic"}
    old = ["input_ids"]
    # Today's data (input_ids only) trains token-level.
    assert check_data_settings("d", meta, old) == "dynamic"
    with pytest.raises(KorlmError, match=r"whole_word=morpheme needs the morpheme_starts feature, "
                                         r"which data /data/x does not have"):
        check_data_settings("/data/x", meta, old + ["word_starts"], whole_word="morpheme")
    with pytest.raises(KorlmError, match="whole_word=eojeol needs the word_starts feature.*/data/old"):
        check_data_settings("/data/old", meta, old, whole_word="eojeol")
    with pytest.raises(KorlmError, match="permute_sentences needs the sentence_starts"):
        check_data_settings("d", meta, old, objective="bart", permute_sentences=True)
    with pytest.raises(KorlmError, match="lacks masked_lm_positions"):
        check_data_settings("d", {"masking": "static"}, old + ["masked_lm_ids"])
    assert check_data_settings("d", {"nsp": True}, old + ["next_sentence_label"]) == "dynamic"
    with pytest.raises(KorlmError, match="roberta has no next-sentence head"):
        check_data_settings("d", {"nsp": True}, old + ["next_sentence_label"], model="roberta")
    with pytest.raises(KorlmError, match="says nsp: true but the shards have no next_sentence_label"):
        check_data_settings("d", {"nsp": True}, old)


def test_old_data_features_are_probed(tmp_path):
    examples = [{"input_ids": e["input_ids"]} for e in synthetic_examples(50)]
    data_dir = write_shards(tmp_path / "old", examples, metadata={"features": None})
    files = [str(p) for p in data_dir.glob("*.tfrecord")]
    assert data_features({}, files) == ["input_ids"]
    assert data_features({"features": ["input_ids", "word_starts"]}, files) == [
        "input_ids", "word_starts"]


def test_rate_validation():
    from korlm import config
    from korlm.pretrain.masking import MaskedLMMasker

    with pytest.raises(KorlmError, match=r"mask_token_rate \+ random_token_rate must be <= 1"):
        MaskedLMMasker(VOCAB, SPECIAL, mask_token_rate=0.9, random_token_rate=0.2)
    with pytest.raises(config.ConfigError, match="mask_token_rate \\+ random_token_rate must be <= 1"):
        config.validate({"pretrain": {"mask_token_rate": 0.95, "random_token_rate": 0.1}})
    with pytest.raises(config.ConfigError, match="pretrain.whole_word"):
        config.validate({"pretrain": {"whole_word": "syllable"}})
    conf = config.validate({"pretrain": {"whole_word": "morpheme", "max_predictions": 20}})
    assert conf.pretrain.whole_word == "morpheme" and conf.pretrain.max_predictions == 20
