"""Fine-tune one checkpoint (or its random-init twin) on one task and score it.

The backbone comes from ``models.load_backbone``: with ``random_init`` it is the same
architecture freshly initialised, so the baseline differs from the checkpoint only in
its weights. Fine-tuning uses fixed seeds, a fixed budget (examples, epochs, batch,
learning rate) and records that budget in ``metrics.json`` next to the score.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from korlm import models, pretrain, storage, tasks
from korlm.errors import KorlmError

METRICS_JSON = "metrics.json"
RANDOM_INIT = "random-init"
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01


def load_tokenizer(tokenizer_dir: str, max_seq_length: int):
    """The HF tokenizer of a tokenizer dir, truncating and padding to ``max_seq_length``
    and adding ``[CLS] ... [SEP]`` (also when tokenizer.json has no post-processor)."""
    from tokenizers.processors import TemplateProcessing

    from korlm import tokenization

    path = storage.join(tokenizer_dir, "tokenizer.json")
    if not storage.exists(path):
        raise KorlmError(f"tokenizer not found: {path}")
    # KorlmTokenizer: applies the vocab's pre-tokenizer (morpheme segmentation) first.
    wrapper = tokenization.load(tokenizer_dir)
    tokenizer = wrapper.hf
    ids = {t: tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise KorlmError(f"{path} has no {', '.join(missing)} token")
    if tokenizer.post_processor is None:
        tokenizer.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(length=max_seq_length, pad_id=ids["[PAD]"], pad_token="[PAD]")
    return wrapper


def encode(tokenizer, data: tasks.TaskData) -> dict[str, Any]:
    """Backbone inputs (numpy int32) for a split."""
    import numpy as np

    if data.texts_b is None:
        encodings = tokenizer.encode_batch(data.texts)
    else:
        encodings = tokenizer.encode_batch(list(zip(data.texts, data.texts_b, strict=True)))
    return {
        "token_ids": np.array([e.ids for e in encodings], dtype="int32"),
        "segment_ids": np.array([e.type_ids for e in encodings], dtype="int32"),
        "padding_mask": np.array([e.attention_mask for e in encodings], dtype="int32"),
    }


def evaluate_checkpoint(checkpoint_dir: str, tokenizer_dir: str, task: str, data_dir: str,
                        output_dir: str, *, random_init: bool = False,
                        max_train_examples: int | None = 2000,
                        max_eval_examples: int | None = 1000, epochs: int = 1,
                        batch_size: int = 32, learning_rate: float = 2e-4,
                        max_seq_length: int = 64, seed: int = 0) -> dict[str, Any]:
    """Fine-tune on ``task``'s train split, score its test split, write ``metrics.json``."""
    started = time.perf_counter()
    spec = tasks.get_task(task)
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("max_train_examples", max_train_examples or 1),
                        ("max_eval_examples", max_eval_examples or 1)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if not 0 < learning_rate < 1:
        raise KorlmError(f"learning_rate must be between 0 and 1, got {learning_rate}")
    info = models.checkpoint_info(checkpoint_dir)
    if not 8 <= max_seq_length <= int(info["max_seq_length"]):
        raise KorlmError(f"max_seq_length must be between 8 and the checkpoint's "
                         f"{info['max_seq_length']}, got {max_seq_length}")
    train = tasks.load_split(spec, data_dir, "train", max_train_examples)
    test = tasks.load_split(spec, data_dir, "test", max_eval_examples)
    tokenizer = load_tokenizer(tokenizer_dir, max_seq_length)
    if tokenizer.get_vocab_size() != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens, checkpoint "
            f"{checkpoint_dir} was trained with {info['vocab_size']}; pass the run's tokenizer")
    x_train, x_test = encode(tokenizer, train), encode(tokenizer, test)

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    backbone = models.load_backbone(checkpoint_dir, load_weights=not random_init)
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=spec.num_classes, preprocessor=None)
    total_steps = max(1, len(train) // batch_size) * epochs
    optimizer = keras.optimizers.AdamW(
        learning_rate=pretrain.warmup_linear_decay(
            learning_rate, max(1, int(WARMUP_RATIO * total_steps)), total_steps),
        weight_decay=WEIGHT_DECAY, epsilon=1e-6, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_list=pretrain.no_weight_decay_variables(classifier))
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=False)
    y_train = np.array(train.labels, dtype="int32")
    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
                .batch(batch_size, drop_remainder=len(train) >= batch_size)
                .prefetch(tf.data.AUTOTUNE))
    fit_started = time.perf_counter()
    history = classifier.fit(train_ds, epochs=epochs, shuffle=False, verbose=0)
    fit_seconds = time.perf_counter() - fit_started
    logits = classifier.predict(x_test, batch_size=max(batch_size, 128), verbose=0)
    predictions = np.argmax(logits, axis=-1)
    y_test = np.array(test.labels)
    accuracy = float(np.mean(predictions == y_test))
    majority = float(np.max(np.bincount(y_test, minlength=spec.num_classes)) / len(y_test))

    name = RANDOM_INIT if random_init else checkpoint_dir.rstrip("/").rsplit("/", 1)[-1]
    record = {
        "task": spec.name,
        "checkpoint": name,
        "checkpoint_uri": checkpoint_dir,
        "step": None if random_init else info.get("step"),
        "random_init": bool(random_init),
        "metrics": {spec.metric: accuracy},
        "majority_class_accuracy": majority,
        "num_train": len(train),
        "num_eval": len(test),
        "train_loss": float(history.history["loss"][-1]),
        "seconds": round(time.perf_counter() - started, 2),
        "fine_tune_seconds": round(fit_seconds, 2),
        "fine_tune": {
            "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
            "max_seq_length": max_seq_length, "seed": seed, "warmup_ratio": WARMUP_RATIO,
            "weight_decay": WEIGHT_DECAY, "max_train_examples": max_train_examples,
            "max_eval_examples": max_eval_examples, "optimizer": "adamw",
            "schedule": "linear warmup, linear decay",
        },
        "model": {k: info.get(k) for k in ("model", "size", "vocab_size", "max_seq_length")},
    }
    with storage.atomic_output_dir(output_dir) as staging:
        with open(os.path.join(staging, METRICS_JSON), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
    print(f"{spec.name} {name}: {spec.metric} {accuracy:.4f} "
          f"(train {len(train)}, eval {len(test)}, {record['seconds']:.1f} s)", flush=True)
    return record
