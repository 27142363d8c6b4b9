"""Unit tests of korlm.pretrain on a tiny WordPiece vocab and a few hundred examples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from korlm.errors import KorlmError
from korlm.modeling.checkpoints import (
    NSP_HEAD,
    checkpoint_info,
    load_masked_lm,
    load_pretraining_task,
    resolve_tokenizer,
    save_checkpoint,
)
from korlm.pretrain.dataset import (
    data_features,
    inspect_data,
    inspect_examples,
    make_dataset,
    tokenizer_vocab_hash,
)
from korlm.pretrain.state import STATE_WEIGHTS, choose_resume_state, find_state
from korlm.pretrain.train import run_pretrain

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
                           metadata: dict | None = None, contract: bool = False,
                           pairs: bool = False) -> Path:
    """Shards in the pretrain-data contract: unpadded `[CLS] ... [SEP]` input_ids; with
    `contract`, also word_starts (eojeol) and sentence_starts; with `pairs`, segment-pair
    examples `[CLS] A [SEP] B [SEP]` with segment_ids and next_sentence_label."""
    import tensorflow as tf
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_seq_length)
    texts = sample_reviews(num_examples + 1)
    if pairs:
        inputs = [(a, b) for a, b in zip(texts, texts[1:][::-1], strict=False)][:num_examples]
        encodings = tokenizer.encode_batch(inputs)
    else:
        inputs = texts[:num_examples]
        encodings = tokenizer.encode_batch(inputs)
    assert all(e.ids[0] == SPECIAL["cls"] and e.ids[-1] == SPECIAL["sep"] for e in encodings)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(out_dir / f"train-{i:05d}-of-{num_shards:05d}.tfrecord"))
               for i in range(num_shards)]
    for i, encoding in enumerate(encodings):
        values = {"input_ids": encoding.ids}
        if contract or pairs:
            values.update(contract_features(encoding, inputs[i]))
        if pairs:
            values["segment_ids"] = encoding.type_ids
            values["next_sentence_label"] = [i % 2]
        feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for k, v in values.items()}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    meta = {
        "num_examples": len(encodings), "max_seq_length": max_seq_length,
        "vocab_size": tokenizer.get_vocab_size(),
        "vocab_hash": tokenizer_vocab_hash(str(tokenizer_dir)),
        "special_token_ids": SPECIAL,
    }
    if contract or pairs:
        meta.update(features=sorted(values), masking="dynamic", nsp=pairs,
                    packing="segment-pair" if pairs else "full-sentences")
    meta.update(metadata or {})
    (out_dir / "metadata.json").write_text(json.dumps(meta))
    return out_dir


def contract_features(encoding, text) -> dict[str, list[int]]:
    """word_starts (1 on special tokens and where an eojeol begins) and sentence_starts
    (1 on the first token of each text) from a `tokenizers` encoding of `text` or of a
    (text_a, text_b) pair."""
    texts = text if isinstance(text, tuple) else (text,)
    word, sentence = [], []
    seen = set()
    for special, seq, (start, _) in zip(encoding.special_tokens_mask, encoding.sequence_ids,
                                        encoding.offsets, strict=True):
        if special:
            word.append(1)
            sentence.append(0)
            continue
        source = texts[seq]
        word.append(int(start == 0 or source[start - 1].isspace()))
        sentence.append(int(seq not in seen))
        seen.add(seq)
    return {"word_starts": word, "sentence_starts": sentence}


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
    meta, files = inspect_data(str(data_dir), str(tokenizer_dir))
    ds = make_dataset(files, batch_size=16, max_seq_length=24,
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
    first = run_pretrain(str(data_dir), str(tokenizer_dir), str(out), **args)
    assert [c["step"] for c in first] == [10, 20]
    assert json.loads((out / "checkpoints.json").read_text()) == first
    assert first[1]["uri"] == str(out / "checkpoints" / "step-000020")
    info = checkpoint_info(first[1]["uri"])
    assert info["step"] == 20 and info["model"] == "bert" and info["size"] == "tiny"
    # The checkpoint carries its tokenizer and the vocab hash of that copy.
    copy = Path(first[1]["uri"]) / "tokenizer"
    assert info["tokenizer"] == "tokenizer"
    assert sorted(p.name for p in copy.iterdir()) == ["tokenizer.json", "vocab.txt"]
    for name in ("tokenizer.json", "vocab.txt"):
        assert (copy / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    assert info["tokenizer_vocab_hash"] == tokenizer_vocab_hash(str(tokenizer_dir))
    assert resolve_tokenizer(first[1]["uri"]) == str(copy)
    assert info["max_seq_length"] == 32 and np.isfinite(info["train_loss"])
    task = load_masked_lm(first[1]["uri"])
    assert task.backbone.vocabulary_size == info["vocab_size"]
    log = _read_log(out)
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    for record in log:
        assert {"loss", "mlm_accuracy", "learning_rate", "tokens_per_second"} <= set(record)
        assert 0 <= record["mlm_accuracy"] <= 1 and record["tokens_per_second"] > 0
    assert "step 20/20 loss" in capsys.readouterr().out

    # Extend to 40 steps, killed after step 30's log line but before its checkpoint.
    real_save = save_checkpoint

    def killed_at_30(task, checkpoint_dir, info, **kwargs):
        if info["step"] == 30:
            raise KeyboardInterrupt("preempted")
        real_save(task, checkpoint_dir, info, **kwargs)

    monkeypatch.setattr("korlm.modeling.checkpoints.save_checkpoint", killed_at_30)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), **{**args, "steps": 40})
    monkeypatch.setattr("korlm.modeling.checkpoints.save_checkpoint", real_save)
    assert [r["step"] for r in _read_log(out)][-1] == 30
    assert not (out / "checkpoints" / "step-000030").exists()

    capsys.readouterr()
    final = run_pretrain(str(data_dir), str(tokenizer_dir), str(out),
                                  **{**args, "steps": 40})
    printed = capsys.readouterr().out
    assert "resuming" in printed and "from step 20" in printed
    assert "steps 21..40" in printed
    assert [c["step"] for c in final] == [10, 20, 30, 40]
    log = _read_log(out)
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30, 35, 40]  # killed lines dropped
    # The step-20 weights and optimizer went on: loss keeps its level, not a fresh start.
    assert log[4]["loss"] < log[0]["loss"]
    # One state is kept, the newest.
    assert [p.name for p in (out / "state").iterdir()] == ["step-000040"]
    assert json.loads((out / "state" / "step-000040" / "state.json").read_text())["step"] == 40

    mtime = (out / "checkpoints.json").stat().st_mtime_ns
    again = run_pretrain(str(data_dir), str(tokenizer_dir), str(out),
                                  **{**args, "steps": 40})
    assert again == final
    assert (out / "checkpoints.json").stat().st_mtime_ns == mtime
    assert "nothing to do" in capsys.readouterr().out


def test_errors_before_training(corpus, tmp_path):
    tokenizer_dir, data_dir = corpus
    run = lambda data, **kw: run_pretrain(  # noqa: E731
        str(data), str(tokenizer_dir), str(tmp_path / "out"), **{"steps": 4, **kw})

    with pytest.raises(KorlmError, match="not found"):
        run(tmp_path / "missing")
    with pytest.raises(KorlmError, match="steps must be greater than 0"):
        run(data_dir, steps=0)
    with pytest.raises(KorlmError, match="checkpoint_every must be greater than 0"):
        run(data_dir, checkpoint_every=0)
    with pytest.raises(KorlmError, match="unknown model 'gpt2'"):
        run(data_dir, model="gpt2")

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
    run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=2,
                          checkpoint_every=2, batch_size=4, max_seq_length=16)
    with pytest.raises(KorlmError, match="max_seq_length=16"):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=4,
                              checkpoint_every=2, batch_size=4)


RESUME_ARGS = dict(checkpoint_every=2, batch_size=4, max_seq_length=16, log_every=2, seed=5)


def _listed(run_dir: Path) -> list[int]:
    return [c["step"] for c in json.loads((run_dir / "checkpoints.json").read_text())]


def test_resume_from_the_newest_complete_state_past_a_newer_checkpoint(corpus, tmp_path,
                                                                         monkeypatch, capsys):
    """A run dir as kills leave it, built by hand: the step-4 checkpoint published but its
    state half-written (a staging dir of a killed save; a state dir missing files), the
    step-2 state still there. The run resumes from the newest complete state, says why
    the newer checkpoint is not used, retrains steps 3-4 and finishes."""
    tokenizer_dir, data_dir = corpus
    out = tmp_path / "run"
    run = lambda directory, steps: run_pretrain(  # noqa: E731
        str(data_dir), str(tokenizer_dir), str(directory), steps=steps, **RESUME_ARGS)
    with monkeypatch.context() as m:  # killed before the step-2 state was deleted
        m.setattr("korlm.pretrain.state._drop_other_states", lambda *a, **k: None)
        run(out, 4)
    states = out / "state"
    assert sorted(p.name for p in states.iterdir()) == ["step-000002", "step-000004"]
    # Killed while step 4's state was written: a local save leaves its staging dir.
    (states / "step-000004").rename(states / ".step-000004.tmp-0badc0de")
    staged = states / ".step-000004.tmp-0badc0de" / STATE_WEIGHTS
    staged.write_bytes(staged.read_bytes()[:500])
    # An object store's killed upload leaves the files it got to, under the final name.
    (states / "step-000006").mkdir()
    (states / "step-000006" / STATE_WEIGHTS).write_bytes(b"half")
    (out / "checkpoints.json").write_text(json.dumps(
        [{"step": 2, "uri": str(out / "checkpoints" / "step-000002")}]))  # as at the kill
    newer = out / "checkpoints" / "step-000004"
    inode = newer.stat().st_ino

    chosen, skipped = find_state(str(out))
    assert chosen.step == 2 and chosen.path == str(states / "step-000002")
    assert [s.path for s in skipped] == [str(states / ".step-000004.tmp-0badc0de"),
                                         str(states / "step-000006")]
    capsys.readouterr()
    final = run(out, 4)
    printed = capsys.readouterr().out
    assert (f"skipping training state {states / '.step-000004.tmp-0badc0de'}: a staging "
            "directory left by a killed save") in printed
    assert (f"skipping training state {states / 'step-000006'}: no state.json (its save did "
            "not finish)") in printed
    assert (f"resuming from the training state at step 2 ({states / 'step-000002'}): checkpoint "
            "step-000004 is newer but holds no optimizer state, so steps 3-4 are retrained and "
            "step-000004 written again") in printed
    assert "resuming " + str(out) + " from step 2" in printed
    assert [c["step"] for c in final] == _listed(out) == [2, 4]
    assert newer.stat().st_ino != inode  # retrained and written again
    assert [p.name for p in states.iterdir()] == ["step-000004"]  # the rest deleted
    assert [r["step"] for r in _read_log(out)] == [2, 4]

    # Killed after the first checkpoint, before any state: trained again from step 0.
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step-000002", fresh / "checkpoints" / "step-000002")
    (fresh / "checkpoints.json").write_text(json.dumps(
        [{"step": 2, "uri": str(fresh / "checkpoints" / "step-000002")}]))
    # ... but with checkpoints listed (only ever done after their state is saved) and no
    # state, the state was lost, not cut short: starting over is refused.
    with pytest.raises(KorlmError, match=r"cannot resume .*checkpoints up to step 2 but no "
                                         r"complete training state is left \(no state/\)"):
        run(fresh, 2)
    (fresh / "checkpoints.json").write_text("[]")
    capsys.readouterr()
    assert choose_resume_state(str(fresh)) == (None, None)
    assert ("resuming from step 0 (no training state was saved): checkpoint step-000002 is "
            "newer but holds no optimizer state, so steps 1-2 are retrained and step-000002 "
            "written again") in capsys.readouterr().out


def _copy_data(src: Path, dst: Path, **metadata) -> None:
    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name) if f.suffix == ".tfrecord" else None
    meta = json.loads((src / "metadata.json").read_text())
    meta.update(metadata)
    (dst / "metadata.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def contract_data(corpus, tmp_path_factory):
    """Data with the issue-5 features: eojeol word_starts + sentence_starts, and
    segment-pair examples with next-sentence labels."""
    tokenizer_dir, _ = corpus
    root = tmp_path_factory.mktemp("contract")
    words = write_pretraining_data(root / "words", tokenizer_dir, contract=True, max_seq_length=48)
    pairs = write_pretraining_data(root / "pairs", tokenizer_dir, pairs=True, max_seq_length=48)
    return tokenizer_dir, words, pairs


def test_dataset_feeds_segment_ids_and_masks_whole_eojeol(contract_data):
    tokenizer_dir, _, pairs = contract_data
    meta, files = inspect_data(str(pairs), str(tokenizer_dir))
    features = data_features(meta, files)
    assert {"segment_ids", "word_starts", "next_sentence_label"} <= set(features)
    ds = make_dataset(files, batch_size=32, max_seq_length=48, vocab_size=meta["vocab_size"],
                               special_ids=SPECIAL, mask_rate=0.3, seed=2, data_max_seq_length=48,
                               features=features, whole_word="eojeol", shuffle_buffer=1)
    inputs, mask_ids, mask_weights = next(iter(ds))
    segments, ids = inputs["segment_ids"].numpy(), inputs["token_ids"].numpy()
    assert (segments == 1).any(axis=1).all()  # every pair has a B segment
    for row in range(32):
        n = int(inputs["padding_mask"][row].numpy().sum())
        b = segments[row, :n].argmax()
        assert ids[row, b - 1] == SPECIAL["sep"] and (segments[row, b:n] == 1).all()


def test_pretrain_on_pair_data_with_whole_words_and_nsp_labels(contract_data, tmp_path, capsys):
    tokenizer_dir, words, pairs = contract_data
    run = lambda data, out, **kw: run_pretrain(  # noqa: E731
        str(data), str(tokenizer_dir), str(tmp_path / out), steps=2, checkpoint_every=2,
        batch_size=8, **kw)
    with pytest.raises(KorlmError, match=f"whole_word=morpheme needs the morpheme_starts feature, "
                                         f"which data {words} does not have"):
        run(words, "a", whole_word="morpheme")
    with pytest.raises(KorlmError, match=r"mask_token_rate \+ random_token_rate must be <= 1"):
        run(words, "a", mask_token_rate=0.7, random_token_rate=0.4)
    with pytest.raises(KorlmError, match=r"roberta has no next-sentence head .*ignore_nsp_labels"):
        run(pairs, "b", model="roberta")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    checkpoints = run(pairs, "c", whole_word="eojeol", max_predictions=8, ignore_nsp_labels=True)
    assert [c["step"] for c in checkpoints] == [2]
    assert "training MLM ONLY, the NSP labels are ignored" in capsys.readouterr().out
    assert not (Path(checkpoints[0]["uri"]) / NSP_HEAD).exists()


def test_pair_data_trains_the_next_sentence_head(contract_data, tmp_path, capsys):
    """BERT's recipe: MLM + NSP summed, both logged; the checkpoint keeps the MLM task
    (what evaluate and export load) and the NSP layer beside it; resume keeps both."""
    tokenizer_dir, _, pairs = contract_data
    out = tmp_path / "nsp"
    args = dict(steps=8, checkpoint_every=4, batch_size=16, log_every=2, learning_rate=3e-3,
                warmup_steps=1, whole_word="eojeol")
    run_pretrain(str(pairs), str(tokenizer_dir), str(out), **{**args, "steps": 4})
    checkpoints = run_pretrain(str(pairs), str(tokenizer_dir), str(out), **args)
    printed = capsys.readouterr().out
    assert "with the next-sentence head" in printed and "resuming" in printed
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6, 8]
    for record in log:
        assert {"mlm_loss", "nsp_loss", "nsp_accuracy", "mlm_accuracy"} <= set(record)
        # The total is the sum of the two objectives (Keras means per batch, same weights).
        assert record["loss"] == pytest.approx(record["mlm_loss"] + record["nsp_loss"], rel=0.02)
        assert record["nsp_loss"] == pytest.approx(np.log(2), abs=0.35)  # two classes
    head = np.load(Path(checkpoints[-1]["uri"]) / NSP_HEAD)
    assert head["kernel"].shape == (128, 2) and head["bias"].shape == (2,)
    assert type(load_pretraining_task(checkpoints[-1]["uri"])).__name__ == "BertMaskedLM"
    with pytest.raises(KorlmError, match="nsp=True"):  # a run with the head resumes with it
        run_pretrain(str(pairs), str(tokenizer_dir), str(out),
                              **{**args, "steps": 10, "ignore_nsp_labels": True})


def _inspect_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for line in text.splitlines():
        if line.startswith("example "):
            blocks.append({"head": line})
        elif blocks and line.startswith("  ") and ":" in line:
            key, _, value = line.strip().partition(":")
            blocks[-1][key.strip()] = value.strip()
    return blocks


def test_inspect_cli_decodes_masks_and_labels(contract_data, tmp_path):
    import subprocess
    import sys

    from korlm.tokenizer import tokenization

    tokenizer_dir, words, _ = contract_data
    conf = tmp_path / "c.yaml"
    conf.write_text("pretrain:\n  whole_word: eojeol\n  mask_rate: 0.3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "korlm.cli", "pretrain-data", "--inspect", str(words),
         "--tokenizer", str(tokenizer_dir), "--examples", "3", "--config", str(conf)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "masking: dynamic, eojeol-level, 30% of maskable tokens predicted" in proc.stdout
    blocks = _inspect_blocks(proc.stdout)
    assert len(blocks) == 3
    tok = tokenization.load(str(tokenizer_dir))
    tok.hf.enable_truncation(48)  # as the data was written
    known = {tok.decode(e.ids) for e in tok.hf.encode_batch(sample_reviews(301))}
    for block in blocks:
        tokens = block["input"].split(" ")
        labels = [item.split("=", 1) for item in block["labels"].split(" ")]
        assert labels and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        for pos, label in labels:
            shown = tokens[int(pos)]
            assert shown == "[MASK]" or shown == f"_{label}_" or (shown.startswith("~") and shown.endswith("~"))
        # The labels put back give one of the written examples.
        assert block["text"] in known
    # Missing data dir: one line naming it.
    proc = subprocess.run(
        [sys.executable, "-m", "korlm.cli", "pretrain-data", "--inspect", str(tmp_path / "nope"),
         "--tokenizer", str(tokenizer_dir)], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_inspect_shows_bart_noising_and_nsp_labels(contract_data):
    tokenizer_dir, words, pairs = contract_data
    bart = inspect_examples(str(words), str(tokenizer_dir), num_examples=2, model="bart",
                                     permute_sentences=True)
    assert "noising: text infilling 30% of tokens, span lengths ~ Poisson(3)" in bart
    blocks = _inspect_blocks(bart)
    assert len(blocks) == 2 and any("[MASK]" in b["encoder"] for b in blocks)
    again = inspect_examples(str(words), str(tokenizer_dir), num_examples=2, model="bart",
                                      permute_sentences=True)
    assert again == bart  # seeded: the same view twice
    nsp = inspect_examples(str(pairs), str(tokenizer_dir), num_examples=4)
    assert nsp.count("next_sentence_label 1 (random B)") + nsp.count("next_sentence_label 0") == 4
    assert "segment B from position" in nsp


def test_tensorboard_events_go_where_vertex_says(tmp_path, monkeypatch, capsys):
    """With a Vertex TensorBoard attached, Vertex names the upload folder in
    AIP_TENSORBOARD_LOG_DIR: the events go there, else to the run folder's tensorboard/."""
    import tensorflow as tf

    from korlm.pretrain.monitor import summary_writer

    run, vertex = tmp_path / "run", tmp_path / "vertex-tb"
    for env, where in ((None, run / "tensorboard"), (str(vertex), vertex)):
        if env is None:
            monkeypatch.delenv("AIP_TENSORBOARD_LOG_DIR", raising=False)
        else:
            monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", env)
        writer = summary_writer(str(run))
        with writer.as_default():
            tf.summary.scalar("loss", 1.5, step=1)
        writer.flush()
        tags = {v.tag for f in where.iterdir()
                for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value}
        assert tags == {"loss"}
    assert len(list((run / "tensorboard").iterdir())) == 1  # the Vertex run wrote nothing here
    assert f"TensorBoard events -> {vertex} (Vertex AI TensorBoard)" in capsys.readouterr().out
