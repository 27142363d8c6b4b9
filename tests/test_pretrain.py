"""Unit tests of korlm.pretrain on a tiny WordPiece vocab and a few hundred examples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from korlm import models, pretrain
from korlm.errors import KorlmError, NotBuiltError

REPO = Path(__file__).resolve().parents[1]
REVIEWS = REPO / "data" / "sample" / "raw" / "movie_reviews.tsv"
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def build_tokenizer(out_dir: Path, num_sentences: int = 600, vocab_size: int = 1200,
                    post_processor: bool = True) -> Path:
    """A small cased WordPiece tokenizer dir (tokenizer.json + vocab.txt) that adds
    ``[CLS] ... [SEP]`` (a freshly trained BertWordPieceTokenizer does not)."""
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing

    texts = sample_reviews(num_sentences)
    tokenizer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tokenizer.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=1, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    if post_processor:
        tokenizer.post_processor = BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer.save_model(str(out_dir))
    return out_dir


def sample_reviews(n: int) -> list[str]:
    frame = pd.read_csv(REVIEWS, sep="\t", nrows=n * 2)
    return [str(t) for t in frame["review"].dropna() if str(t).strip()][:n]


def write_pretraining_data(out_dir: Path, tokenizer_dir: Path, *, num_examples: int = 300,
                           max_seq_length: int = 32, num_shards: int = 2,
                           metadata: dict | None = None) -> Path:
    """Shards in the pretrain-data contract: unpadded `[CLS] ... [SEP]` input_ids."""
    import tensorflow as tf
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_seq_length)
    encodings = tokenizer.encode_batch(sample_reviews(num_examples))
    assert all(e.ids[0] == SPECIAL["cls"] and e.ids[-1] == SPECIAL["sep"] for e in encodings)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(out_dir / f"train-{i:05d}-of-{num_shards:05d}.tfrecord"))
               for i in range(num_shards)]
    for i, encoding in enumerate(encodings):
        feature = tf.train.Feature(int64_list=tf.train.Int64List(value=encoding.ids))
        example = tf.train.Example(features=tf.train.Features(feature={"input_ids": feature}))
        writers[i % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    meta = {
        "num_examples": len(encodings), "max_seq_length": max_seq_length,
        "vocab_size": tokenizer.get_vocab_size(),
        "vocab_hash": pretrain.tokenizer_vocab_hash(str(tokenizer_dir)),
        "special_token_ids": SPECIAL,
    }
    meta.update(metadata or {})
    (out_dir / "metadata.json").write_text(json.dumps(meta))
    return out_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir)
    return tokenizer_dir, data_dir


def _read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_dataset_masks_only_real_tokens_and_pads(corpus):
    tokenizer_dir, data_dir = corpus
    meta, files = pretrain.inspect_data(str(data_dir), str(tokenizer_dir))
    ds = pretrain.make_dataset(files, batch_size=16, max_seq_length=24,
                               vocab_size=meta["vocab_size"], special_ids=SPECIAL,
                               mask_rate=0.15, seed=1, data_max_seq_length=32)
    inputs, mask_ids, mask_weights = (
        {k: v.numpy() for k, v in part.items()} if isinstance(part, dict) else part.numpy()
        for part in next(iter(ds)))
    assert inputs["token_ids"].shape == (16, 24)
    assert inputs["mask_positions"].shape == mask_ids.shape == mask_weights.shape == (16, 4)
    assert (inputs["segment_ids"] == 0).all()
    lengths = inputs["padding_mask"].sum(axis=1)
    for row in range(16):
        n = lengths[row]
        ids = inputs["token_ids"][row]
        assert ids[0] == SPECIAL["cls"]
        assert ids[n - 1] == SPECIAL["sep"]  # also where a long example was cut
        assert (ids[n:] == SPECIAL["pad"]).all()
        real = mask_weights[row] > 0
        positions = inputs["mask_positions"][row][real]
        # Never [CLS], the closing [SEP] or padding.
        assert ((positions > 0) & (positions < n - 1)).all()
        assert not np.isin(mask_ids[row][real], [SPECIAL[k] for k in ("pad", "cls", "sep")]).any()
    assert mask_weights.sum() > 0
    replaced = inputs["token_ids"][np.arange(16)[:, None], inputs["mask_positions"]][mask_weights > 0]
    assert (replaced == SPECIAL["mask"]).mean() > 0.5  # 80% [MASK], 10% random, 10% kept


def test_pretrain_checkpoints_resumes_after_a_kill_and_finishes(corpus, tmp_path, monkeypatch,
                                                                capsys):
    tokenizer_dir, data_dir = corpus
    out = tmp_path / "run"
    args = dict(steps=20, checkpoint_every=10, batch_size=8, learning_rate=1e-3, warmup_steps=4,
                log_every=5, seed=3)
    first = pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out), **args)
    assert [c["step"] for c in first] == [10, 20]
    assert json.loads((out / "checkpoints.json").read_text()) == first
    assert first[1]["uri"] == str(out / "checkpoints" / "step-000020")
    info = models.checkpoint_info(first[1]["uri"])
    assert info["step"] == 20 and info["model"] == "bert" and info["size"] == "tiny"
    assert info["max_seq_length"] == 32 and np.isfinite(info["train_loss"])
    task = models.load_masked_lm(first[1]["uri"])
    assert task.backbone.vocabulary_size == info["vocab_size"]
    log = _read_log(out)
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    for record in log:
        assert {"loss", "mlm_accuracy", "learning_rate", "tokens_per_second"} <= set(record)
        assert 0 <= record["mlm_accuracy"] <= 1 and record["tokens_per_second"] > 0
    assert "step 20/20 loss" in capsys.readouterr().out

    # Extend to 40 steps, killed after step 30's log line but before its checkpoint.
    real_save = models.save_checkpoint

    def killed_at_30(task, checkpoint_dir, info):
        if info["step"] == 30:
            raise KeyboardInterrupt("preempted")
        real_save(task, checkpoint_dir, info)

    monkeypatch.setattr(models, "save_checkpoint", killed_at_30)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out), **{**args, "steps": 40})
    monkeypatch.setattr(models, "save_checkpoint", real_save)
    assert [r["step"] for r in _read_log(out)][-1] == 30
    assert not (out / "checkpoints" / "step-000030").exists()

    capsys.readouterr()
    final = pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out),
                                  **{**args, "steps": 40})
    printed = capsys.readouterr().out
    assert "resuming" in printed and "from step 20" in printed
    assert "steps 21..40" in printed
    assert [c["step"] for c in final] == [10, 20, 30, 40]
    log = _read_log(out)
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30, 35, 40]  # killed lines dropped
    # The step-20 weights and optimizer went on: loss keeps its level, not a fresh start.
    assert log[4]["loss"] < log[0]["loss"]
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 40

    mtime = (out / "checkpoints.json").stat().st_mtime_ns
    again = pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out),
                                  **{**args, "steps": 40})
    assert again == final
    assert (out / "checkpoints.json").stat().st_mtime_ns == mtime
    assert "nothing to do" in capsys.readouterr().out


def test_errors_before_training(corpus, tmp_path):
    tokenizer_dir, data_dir = corpus
    run = lambda data, **kw: pretrain.run_pretrain(  # noqa: E731
        str(data), str(tokenizer_dir), str(tmp_path / "out"), **{"steps": 4, **kw})

    with pytest.raises(KorlmError, match="not found"):
        run(tmp_path / "missing")
    with pytest.raises(KorlmError, match="steps must be greater than 0"):
        run(data_dir, steps=0)
    with pytest.raises(KorlmError, match="checkpoint_every must be greater than 0"):
        run(data_dir, checkpoint_every=0)
    with pytest.raises(NotBuiltError, match="issue #6"):
        run(data_dir, model="roberta")
    with pytest.raises(NotBuiltError):
        run(data_dir, model="bart")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.json").write_text(json.dumps({"num_examples": 3}))
    with pytest.raises(KorlmError, match=r"no \*\.tfrecord shards"):
        run(empty)

    wrong_size = tmp_path / "wrong-size"
    _copy_data(data_dir, wrong_size, vocab_size=99)
    with pytest.raises(KorlmError, match="vocab size mismatch"):
        run(wrong_size)
    wrong_hash = tmp_path / "wrong-hash"
    _copy_data(data_dir, wrong_hash, vocab_hash="0123456789abcdef")
    with pytest.raises(KorlmError, match="vocab hash mismatch"):
        run(wrong_hash)
    assert not (tmp_path / "out").exists()


def test_resume_with_other_architecture_is_refused(corpus, tmp_path):
    tokenizer_dir, data_dir = corpus
    out = tmp_path / "run"
    pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=2,
                          checkpoint_every=2, batch_size=4, max_seq_length=16)
    with pytest.raises(KorlmError, match="max_seq_length=16"):
        pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=4,
                              checkpoint_every=2, batch_size=4)


def _copy_data(src: Path, dst: Path, **metadata) -> None:
    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name) if f.suffix == ".tfrecord" else None
    meta = json.loads((src / "metadata.json").read_text())
    meta.update(metadata)
    (dst / "metadata.json").write_text(json.dumps(meta))
