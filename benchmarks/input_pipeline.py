"""Input pipeline vs training step: can tf.data feed the model?

Examples/s of ``korlm.pretrain.dataset.make_dataset`` (read TFRecord shards + parse + mask/noise +
pad + batch) for token-level MLM, whole-eojeol MLM and BART text infilling (+ sentence
permutation), against the training step rate (examples/s) of the ``mini`` BERT masked LM
(``korlm.modeling.presets``) on the same machine, fed from a batch cached in memory so the step
rate is the model's alone. Runs are interleaved round by round (train, mlm, wwm, bart, ...)
and the medians reported; the load average is printed with every run, since this
machine's 2 cores are shared.

The data is synthetic but in the pretrain-data contract (``input_ids`` with [CLS]/[SEP],
``word_starts``, ``morpheme_starts``, ``sentence_starts``; 80% of examples full length,
a fifth crossing a document boundary), written as real TFRecord shards.

    .venv/bin/python benchmarks/input_pipeline.py --examples 20000 --batch-size 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def write_data(out: Path, num: int, seq_len: int, vocab: int, shards: int, seed: int = 0) -> list[str]:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(out / f"train-{i:05d}-of-{shards:05d}.tfrecord") for i in range(shards)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i in range(num):
        length = seq_len if rng.random() < 0.8 else int(rng.integers(8, seq_len))
        inner = length - 2
        ids = rng.integers(len(SPECIAL), vocab, inner)
        word = rng.random(inner) < 0.4
        word[0] = True
        morpheme = word | (rng.random(inner) < 0.3)
        sentence = word & (rng.random(inner) < 0.12)
        sentence[0] = True
        if rng.random() < 0.2 and inner > 6:
            cut = int(rng.integers(2, inner - 2))
            ids[cut] = SPECIAL["sep"]
            word[cut] = morpheme[cut] = word[cut + 1] = morpheme[cut + 1] = sentence[cut + 1] = True
            sentence[cut] = False
        values = {
            "input_ids": np.r_[SPECIAL["cls"], ids, SPECIAL["sep"]],
            "word_starts": np.r_[1, word, 1], "morpheme_starts": np.r_[1, morpheme, 1],
            "sentence_starts": np.r_[0, sentence, 0],
        }
        feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64).tolist()))
                   for k, v in values.items()}
        writers[i % shards].write(tf.train.Example(features=tf.train.Features(feature=feature))
                                  .SerializeToString())
    for w in writers:
        w.close()
    return files


PIPELINES = {
    "mlm": {"objective": "mlm"},
    "wwm": {"objective": "mlm", "whole_word": "eojeol"},
    "bart": {"objective": "bart", "permute_sentences": True},
}
FEATURES = ["input_ids", "morpheme_starts", "sentence_starts", "word_starts"]


def pipeline_rate(files, name, *, batch_size, seq_len, vocab, batches) -> float:
    """Examples/s of a fresh dataset over `batches` batches, after 5 warm-up batches
    (graph tracing and the shuffle buffer's first fill are not counted)."""
    from korlm.pretrain.dataset import make_dataset

    ds = make_dataset(files, batch_size=batch_size, max_seq_length=seq_len, vocab_size=vocab,
                               special_ids=SPECIAL, seed=0, data_max_seq_length=seq_len,
                               features=FEATURES, shuffle_buffer=2_000, **PIPELINES[name])
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def build_trainer(files, *, size, batch_size, seq_len, vocab):
    import keras

    from korlm.modeling.build import build_masked_lm
    from korlm.pretrain.dataset import make_dataset
    from korlm.pretrain.optimizer import compile_masked_lm

    keras.utils.set_random_seed(0)
    task = build_masked_lm("bert", size, vocab, seq_len)
    compile_masked_lm(task, learning_rate=1e-4, warmup_steps=10, total_steps=10_000,
                               weight_decay=0.01)
    batch = next(iter(make_dataset(files, batch_size=batch_size, max_seq_length=seq_len,
                                            vocab_size=vocab, special_ids=SPECIAL, seed=0,
                                            data_max_seq_length=seq_len, features=FEATURES)))
    import tensorflow as tf

    cached = tf.data.Dataset.from_tensors(batch).repeat()
    task.fit(cached, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    return task, cached


def train_rate(task, cached, *, batch_size, steps) -> float:
    """Examples/s from the median step time (per-batch callback), so the per-``fit``
    set-up is not counted."""
    import keras

    stamps: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    task.fit(cached, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    durations = [end - begin for begin, end in zip(stamps[::2], stamps[1::2], strict=True)]
    return batch_size / statistics.median(durations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=20_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", default="mini")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=100, help="pipeline batches timed per run")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed per run")
    args = ap.parse_args()

    import tensorflow as tf

    print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, loadavg {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        files = write_data(Path(tmp), args.examples, args.seq_len, args.vocab_size, args.shards)
        print(f"wrote {args.examples} examples in {len(files)} shards ({time.perf_counter() - t:.1f} s)",
              flush=True)
        task, cached = build_trainer(files, size=args.size, batch_size=args.batch_size,
                                     seq_len=args.seq_len, vocab=args.vocab_size)
        rates: dict[str, list[float]] = {"train": [], **{k: [] for k in PIPELINES}}
        for r in range(args.rounds):
            rate = train_rate(task, cached, batch_size=args.batch_size, steps=args.steps)
            rates["train"].append(rate)
            print(f"round {r + 1} train ({args.size} BERT) {rate:8.1f} ex/s  loadavg {os.getloadavg()}",
                  flush=True)
            for name in PIPELINES:
                rate = pipeline_rate(files, name, batch_size=args.batch_size, seq_len=args.seq_len,
                                     vocab=args.vocab_size, batches=args.batches)
                rates[name].append(rate)
                print(f"round {r + 1} {name:<5} pipeline   {rate:8.1f} ex/s  loadavg {os.getloadavg()}",
                      flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        summary = {
            "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab_size": args.vocab_size,
            "model": f"bert-{args.size}", "train_examples_per_s": round(med["train"], 1),
            **{f"{k}_examples_per_s": round(med[k], 1) for k in PIPELINES},
            **{f"{k}_over_train": round(med[k] / med["train"], 1) for k in PIPELINES},
            "loadavg_end": os.getloadavg(),
        }
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
