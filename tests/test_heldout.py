"""Held-out MLM loss and the unigram floor (issue 21 item 3): pretrain-data holds out a fixed
slice training never reads, records the unigram entropy of the maskable tokens, and
pretraining scores the slice at every checkpoint (log, TensorBoard, checkpoint metadata).
Real Beam runs, real tiny KerasHub models."""

from __future__ import annotations

import collections
import glob
import json
import math

import pytest

from korlm.pretrain import heldout as ho
from korlm.pretrain.dataset import inspect_data
from korlm.pretrain.train import run_pretrain
from korlm.pretrain_data.beam import run_pretrain_data, unigram_entropy
from korlm.tokenizer.vocab import build_vocab
from tests.conftest import write_review_corpus

MAX_LEN = 32


def _read(path):
    import tensorflow as tf

    spec = {"input_ids": tf.io.VarLenFeature(tf.int64)}
    return [tuple(r["input_ids"].values.numpy().tolist()) for r in
            tf.data.TFRecordDataset([str(path)]).map(lambda r: tf.io.parse_single_example(r, spec))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    corpus = write_review_corpus(root / "corpus", 500)
    tokenizer = root / "tokenizer"
    build_vocab(str(corpus), str(tokenizer), vocab_size=700, heldout_every=0)
    made = {}
    for name, fraction in (("held", 0.15), ("again", 0.15), ("none", 0.0)):
        made[name] = run_pretrain_data(str(corpus), str(tokenizer), str(root / name),
                                       max_seq_length=MAX_LEN, num_shards=2, seed=5,
                                       heldout_fraction=fraction)
    return root, tokenizer, made


def test_unigram_entropy_of_a_hand_made_count_table():
    assert unigram_entropy([0, 2, 0, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert unigram_entropy([3, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert unigram_entropy([5]) == 0.0 and unigram_entropy([0, 0]) is None


def test_heldout_slice_is_deterministic_and_disjoint_from_training(data):
    root, tokenizer, made = data
    meta = made["held"]
    block = meta["heldout"]
    assert block["dir"] == "heldout" and block["unit"] == "example" and block["fraction"] == 0.15
    heldout = _read(root / "held" / "heldout" / block["shards"][0])
    train = [e for name in meta["shards"] for e in _read(root / "held" / name)]
    everything = [e for name in made["none"]["shards"] for e in _read(root / "none" / name)]
    assert len(heldout) == block["num_examples"] and len(train) == meta["num_examples"]
    assert 0 < len(heldout) < len(train)
    # a partition of the same examples: none in both, none lost
    assert collections.Counter(train) + collections.Counter(heldout) == collections.Counter(everything)
    assert not {e[1:-1] for e in heldout} & {e[1:-1] for e in train}
    assert meta["num_tokens"] + block["num_tokens"] == made["none"]["num_tokens"]
    # the same seed holds out the same examples, byte for byte
    again = root / "again" / "heldout" / block["shards"][0]
    assert again.read_bytes() == (root / "held" / "heldout" / block["shards"][0]).read_bytes()
    # training reads the training shards only; data without a slice has no heldout block
    _, files = inspect_data(str(root / "held"), str(tokenizer))
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == meta["shards"]
    assert "heldout" not in made["none"] and not (root / "none" / "heldout").exists()


def test_metadata_unigram_entropy_is_that_of_the_training_tokens(data):
    root, _, made = data
    meta = made["held"]
    special = set(meta["special_token_ids"].values())
    counts = collections.Counter(t for name in meta["shards"] for e in _read(root / "held" / name)
                                 for t in e if t not in special)
    assert meta["num_maskable_tokens"] == sum(counts.values())
    assert meta["unigram_entropy_nats"] == pytest.approx(unigram_entropy(list(counts.values())), abs=1e-9)
    assert 0 < meta["unigram_entropy_nats"] < math.log(meta["vocab_size"])


def test_evaluate_heldout_averages_over_weighted_slots():
    batches = [("x1", "y1", "w1"), ("x2", "y2", "w2")]
    sums = {"x1": (6.0, 2.0, 4.0), "x2": (2.0, 1.0, 1.0)}
    out = ho.evaluate_heldout(batches, lambda x, y, w: sums[x])
    assert out == {"heldout_loss": 1.6, "heldout_accuracy": 0.6, "heldout_predictions": 5}
    assert ho.evaluate_heldout([], None) is None
    # an objective's extra figures (ELECTRA's discriminator): means of their own counts
    extra = {"x1": (6.0, 2.0, 4.0, {"disc_loss": (3.0, 10.0)}),
             "x2": (2.0, 1.0, 1.0, {"disc_loss": (1.0, 30.0)})}
    assert ho.evaluate_heldout(batches, lambda x, y, w: extra[x])["heldout_disc_loss"] == 0.1
    assert ho.batch_size_for(87) == 43 and ho.batch_size_for(40) == 40 and ho.batch_size_for(128) == 64
    assert ho.batch_size_for(87, multiple=8) == 40 and ho.batch_size_for(5, multiple=8) == 0


def test_heldout_loss_is_logged_at_every_checkpoint_and_is_deterministic(data, tmp_path):
    import tensorflow as tf

    from korlm.modeling.checkpoints import load_pretraining_task

    root, tokenizer, made = data
    out = tmp_path / "run"
    run_pretrain(str(root / "held"), str(tokenizer), str(out), steps=4, checkpoint_every=2,
                 batch_size=8, log_every=3, heldout_examples=24, progress="lines")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in log}
    assert sorted(by_step) == [2, 3, 4]  # step 2 is logged for its checkpoint's held-out loss
    assert "heldout_loss" not in by_step[3]
    from korlm.pretrain.state import final_metrics

    closing = final_metrics(str(out))  # the pipeline component's metrics output
    assert closing["final_heldout_loss"] == by_step[4]["heldout_loss"]
    floor = made["held"]["unigram_entropy_nats"]
    for step in (2, 4):
        record = by_step[step]
        assert record["loss"] > 0 and 0 < record["heldout_loss"] < 2 * math.log(700)
        assert record["unigram_entropy"] == pytest.approx(floor, abs=1e-5)
        assert record["heldout_predictions"] > 0
        info = json.loads((out / "checkpoints" / f"step-{step:06d}" / "korlm_checkpoint.json").read_text())
        assert info["heldout_loss"] == record["heldout_loss"] and info["dropout"] == 0.0
    # the same checkpoint scored again, on the slice loaded again: the same figures
    task = load_pretraining_task(str(out / "checkpoints" / "step-000004"))
    meta, files = inspect_data(str(root / "held"), str(tokenizer))
    again = ho.prepare_heldout(str(root / "held"), meta, max_examples=24, objective="mlm",
                               model_seq_len=MAX_LEN, vocab_size=meta["vocab_size"],
                               special_ids=meta["special_token_ids"], features=meta["features"],
                               masking="dynamic")
    scored = again(task)
    assert scored["heldout_loss"] == pytest.approx(by_step[4]["heldout_loss"], abs=1e-4)
    assert scored["heldout_predictions"] == by_step[4]["heldout_predictions"]
    # evaluate copies the checkpoint's figures into metrics.json (the report's table)
    from korlm.evaluation.evaluate import fine_tune
    from tests.test_evaluate import write_nsmc_slice

    record = fine_tune(str(out / "checkpoints" / "step-000004"), None, "nsmc",
                       str(write_nsmc_slice(tmp_path / "nsmc", 40, 20)), max_train_examples=32,
                       max_eval_examples=20, epochs=1, batch_size=16, max_seq_length=MAX_LEN).record
    assert record["pretraining"]["heldout_loss"] == by_step[4]["heldout_loss"]
    assert record["pretraining"]["unigram_entropy"] == by_step[4]["unigram_entropy"]
    # TensorBoard has the held-out curve and the floor
    tags = set()
    for path in glob.glob(str(out / "tensorboard" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"heldout_loss", "heldout_accuracy", "unigram_entropy", "loss"} <= tags


def test_bart_gets_heldout_loss_and_old_data_trains_without(data, tmp_path, capsys):
    root, tokenizer, _ = data
    run_pretrain(str(root / "held"), str(tokenizer), str(tmp_path / "bart"), model="bart",
                 steps=2, checkpoint_every=2, batch_size=8, heldout_examples=16, progress="lines")
    last = json.loads((tmp_path / "bart" / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["heldout_loss"] > 0 and "unigram_entropy" not in last  # a floor for MLM only
    capsys.readouterr()
    run_pretrain(str(root / "none"), str(tokenizer), str(tmp_path / "old"), steps=2,
                 checkpoint_every=2, batch_size=8, progress="lines")
    assert "no held-out loss is computed" in capsys.readouterr().out
    last = json.loads((tmp_path / "old" / "train_log.jsonl").read_text().splitlines()[-1])
    assert "heldout_loss" not in last and last["step"] == 2


def test_electra_scores_generator_and_discriminator_and_leaves_training_alone(data, tmp_path):
    """ELECTRA's held-out figures (the generator's masked-LM loss against the floor, the
    discriminator's loss and accuracy with replacements drawn with a fixed seed) are logged
    at every checkpoint, are the same when the checkpoint is scored again, and scoring
    does not touch training's sampler: a deterministic run with held-out scoring logs
    the same training losses as one without."""
    from tensorflow.python.framework import config as tf_config  # the switch-off is not public

    from korlm.modeling.checkpoints import load_pretraining_task
    from korlm.pretrain.electra import heldout_loss

    root, tokenizer, made = data
    was_deterministic = tf_config.is_op_determinism_enabled()
    run = dict(model="electra", steps=2, checkpoint_every=1, batch_size=8, log_every=1,
               deterministic=True, progress="lines")
    try:
        for name, examples in (("scored", 24), ("unscored", 0)):
            run_pretrain(str(root / "held"), str(tokenizer), str(tmp_path / name),
                         heldout_examples=examples, **run)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()
    logs = {name: [json.loads(line) for line in
                   (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("scored", "unscored")}
    keys = ("loss", "mlm_loss", "disc_loss", "disc_accuracy", "replaced_rate")
    assert ([[r[k] for k in keys] for r in logs["scored"]]
            == [[r[k] for k in keys] for r in logs["unscored"]])
    assert all("heldout_loss" not in r for r in logs["unscored"])
    for record in logs["scored"]:
        assert 0 < record["heldout_loss"] < 2 * math.log(700)
        assert record["unigram_entropy"] == pytest.approx(made["held"]["unigram_entropy_nats"],
                                                          abs=1e-5)
        assert record["heldout_disc_loss"] > 0 and 0 <= record["heldout_disc_accuracy"] <= 1
        assert 0 < record["heldout_replaced_rate"] < 0.3
    last = logs["scored"][-1]
    info = json.loads((tmp_path / "scored" / "checkpoints" / "step-000002"
                       / "korlm_checkpoint.json").read_text())
    assert info["heldout_disc_loss"] == last["heldout_disc_loss"]
    task = load_pretraining_task(str(tmp_path / "scored" / "checkpoints" / "step-000002"))
    meta, _ = inspect_data(str(root / "held"), str(tokenizer))
    again = ho.prepare_heldout(str(root / "held"), meta, max_examples=24, objective="mlm",
                               model_seq_len=MAX_LEN, vocab_size=meta["vocab_size"],
                               special_ids=meta["special_token_ids"], features=meta["features"],
                               masking="dynamic", make_batch_loss=heldout_loss)(task)
    for key in ("heldout_loss", "heldout_disc_loss", "heldout_disc_accuracy"):
        assert again[key] == pytest.approx(last[key], abs=1e-4), key
