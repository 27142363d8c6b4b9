"""Fine-tune one checkpoint (or its random-init twin) on one task and score it.

The backbone comes from ``models.load_backbone``: with ``random_init`` it is the same
architecture freshly initialised, so the baseline differs from the checkpoint only in
its weights. On top of it goes a cross-encoder head: a classifier over a sentence
representation (classification, sentence pairs as ``[CLS] a [SEP] b [SEP]``), one linear
output trained with mean squared error (regression), start/end logits over the tokens
(extractive QA, long contexts cut into overlapping windows: ``doc_stride``), or a tag per
token (token classification, aligned to and decoded from word or character tags by
:mod:`korlm.evaluation.tagging`).

The sentence representation is ``pooling`` (``evaluate.pooling``, :func:`resolve_pooling`):
``cls``, the first token's state (BERT: dropout + dense on the [CLS] state, Hugging Face's
``BertForSequenceClassification`` without the pooler; RoBERTa: its own classification head
over ``<s>``, a fresh dense + tanh then the output layer); ``mean``, the mean of the
unpadded token states, then dropout + dense; ``pooler``, BERT's pooled [CLS] (its
``pooled_dense`` + tanh from pretraining, KerasHub's ``BertTextClassifier``). A
masked-LM-only pretraining never trains the pooler (its weights stay the random init's),
so ``auto`` takes the pooler only when next-sentence prediction trained it and otherwise
:data:`AUTO_POOLING`; RoBERTa and BART have no pooler (``pooler`` is refused for them).
The backbone's dropout is ``dropout`` (``evaluate.dropout``), whatever the checkpoint was
pretrained with (``pretrain.dropout``), and the head uses the same rate.
BART checkpoints are fine-tuned as Hugging Face's ``BartForSequenceClassification`` and
``BartForQuestionAnswering`` do: the same ids go to the encoder and, shifted right behind
the decoder start token, to the decoder (``bart_inputs``); classification and regression
read the decoder state at each example's last real token (BART's ``cls``, its ``auto``;
``mean`` averages the decoder states), the span head every decoder state, and so does the
tagger (Hugging Face has no ``BartForTokenClassification``; this is how its one per-token
BART head, QA's, reads the states).

Fine-tuning uses fixed seeds, AdamW with linear warmup and decay, and early stopping on
the dev split's primary metric (the best epoch's weights are the ones scored). The
budget (examples, epochs, batch, learning rate, sequence length) and the splits used,
with any deterministic split derivation (``split_note``), go into ``metrics.json`` next
to the scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.evaluation import metrics as metric_fns
from korlm.evaluation import tasks
from korlm.evaluation.heads import DEFAULT_DROPOUT, Head, bart_inputs, make_head, resolve_pooling
from korlm.modeling.build import uses_segment_ids
from korlm.modeling.checkpoints import checkpoint_info, load_backbone, resolve_tokenizer
from korlm.pretrain.optimizer import no_weight_decay_variables, warmup_linear_decay

METRICS_JSON = "metrics.json"
RANDOM_INIT = "random-init"
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
def load_tokenizer(tokenizer_dir: str, max_seq_length: int):
    """The HF tokenizer of a tokenizer dir, truncating and padding to ``max_seq_length``
    and adding ``[CLS] ... [SEP]`` (also when tokenizer.json has no post-processor)."""
    from tokenizers.processors import TemplateProcessing

    from korlm.tokenizer import tokenization

    path = storage.join(tokenizer_dir, "tokenizer.json")
    if not storage.exists(path):
        raise KorlmError(f"tokenizer not found: {path}")
    # KorlmTokenizer: applies the vocab's pre-tokenizer (morpheme segmentation) first.
    wrapper = tokenization.load(tokenizer_dir)
    tokenizer = wrapper.hf
    # Roles, not strings: a BART/RoBERTa-family vocab has <s> <pad> </s> (KorlmError if missing).
    roles = wrapper.special_token_ids()
    cls, sep, pad = (tokenizer.id_to_token(roles[r]) for r in ("cls", "sep", "pad"))
    if tokenizer.post_processor is None:
        tokenizer.post_processor = TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, roles["cls"]), (sep, roles["sep"])])
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(length=max_seq_length, pad_id=roles["pad"], pad_token=pad)
    return wrapper


LENGTH_MULTIPLE = 16


def length_grouped_batches(x: dict[str, Any], y, batch_size: int, seed: int,
                           multiple: int = LENGTH_MULTIPLE):
    """Shuffled training batches of examples of similar length, each cut to its longest
    example rounded up to ``multiple`` tokens, and the number of batches an epoch has.

    ``x`` holds the examples padded to one width (:func:`load_tokenizer` pads to
    ``max_seq_length``); a row's length is the largest count of its ``*padding_mask``
    inputs. Examples are grouped by ``ceil(length / multiple)`` (``tf.data``'s
    ``bucket_by_sequence_length``) after a seeded shuffle that changes every epoch; a
    group's last batch may be smaller (nothing is dropped). Every input array that has the
    padded width, and ``y`` when it has it too (a tag per token), is cut to the batch's
    width: the padding removed was masked out anyway, so a batch computes what it would
    padded, on a fraction of the positions (NSMC at ``max_seq_length`` 64: 22 tokens on
    average). Few widths mean few traces of the training step. ``multiple`` = the padded
    width: one group, every batch at full width."""
    import numpy as np
    import tensorflow as tf

    width = next(iter(x.values())).shape[1]
    lengths = np.max([np.asarray(v).sum(axis=1) for k, v in x.items() if k.endswith("padding_mask")],
                     axis=0).astype("int32")
    groups = np.minimum(-(-np.maximum(lengths, 1) // multiple), -(-width // multiple))
    steps_per_epoch = int(sum(-(-count // batch_size) for count in np.bincount(groups) if count))
    boundaries = [multiple * g + 1 for g in range(1, int(-(-width // multiple)))]
    cut_y = np.ndim(y) == 2 and np.shape(y)[1] == width

    def cut(xb, yb, nb):
        keep = tf.minimum(width, tf.cast(tf.math.ceil(tf.reduce_max(nb) / multiple), tf.int32) * multiple)
        xb = {k: v[:, :keep] if v.shape[1] == width else v for k, v in xb.items()}
        return xb, (yb[:, :keep] if cut_y else yb)

    ds = (tf.data.Dataset.from_tensor_slices((x, y, lengths))
          .shuffle(len(lengths), seed=seed, reshuffle_each_iteration=True)
          .bucket_by_sequence_length(lambda _x, _y, n: n, boundaries,
                                     [batch_size] * (len(boundaries) + 1), no_padding=True)
          .map(cut, deterministic=True)
          # the count is exact: Keras then knows where an epoch ends (and tf.data checks it)
          .apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
          .prefetch(tf.data.AUTOTUNE))
    return ds, max(1, steps_per_epoch)


def settings_for_task(params: dict[str, Any], task: str) -> dict[str, Any]:
    """``params`` (the evaluate section's keyword arguments) with ``per_task[task]``'s
    values applied and ``per_task`` removed."""
    params = dict(params)
    per_task = params.pop("per_task", None) or {}
    name = task.rstrip("/").rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    overrides = per_task.get(task) or per_task.get(name) or {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def _dev_early_stopping(head: Head, dev_x, dev: tasks.TaskData, batch_size: int,
                        patience: int, epoch_callback=None):
    """A Keras callback that scores the dev split after each epoch, keeps the best
    epoch's weights, stops after ``patience`` epochs without improvement and restores
    the best weights at the end. ``epoch_callback(epoch, scores, value)`` sees each
    epoch's dev scores (hyperparameter search reports and prunes through it)."""
    import keras

    class DevMetricEarlyStopping(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history: list[dict[str, Any]] = []
            self.best_score, self.best_epoch, self.best_weights, self.wait = -math.inf, 0, None, 0

        def on_epoch_end(self, epoch, logs=None):
            predictions = head.predict(self.model, dev_x, dev, batch_size)
            scores = head.score(dev, predictions)
            value = scores[head.spec.metric]
            value = -math.inf if value is None else value
            self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", 0)),
                                 "dev": scores})
            if epoch_callback is not None:
                epoch_callback(epoch + 1, scores, value)
            if value > self.best_score:
                self.best_score, self.best_epoch, self.wait = value, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return DevMetricEarlyStopping()


def _check_tokenizer(tokenizer, tokenizer_dir: str, checkpoint_dir: str,
                     info: dict[str, Any]) -> None:
    # The vocab hash was checked by models.resolve_tokenizer; the size also catches a
    # checkpoint that records no hash.
    if tokenizer.get_vocab_size() != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens, checkpoint "
            f"{checkpoint_dir} was trained with {info['vocab_size']}; pass the run's tokenizer")


@dataclasses.dataclass
class FineTuned:
    """A fine-tuned task model and what produced it (:func:`fine_tune`)."""

    model: Any
    record: dict[str, Any]
    spec: tasks.TaskSpec
    info: dict[str, Any]


def model_inputs(head: Head, tokenizer, info: dict[str, Any], data: tasks.TaskData):
    """``(x, y)`` for the checkpoint family: token types only where the family has them
    (not RoBERTa or BART), BART's encoder/decoder pair."""
    x, y = head.inputs(tokenizer, data)
    if not uses_segment_ids(info["model"]):
        x.pop("segment_ids", None)
    if info["model"] == "bart":
        x = bart_inputs(x, tokenizer.special_token_ids()["sep"])
    return x, y


def fine_tune(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
              data_dir: str | None, *, random_init: bool = False,
              max_train_examples: int | None = 2000, max_eval_examples: int | None = 1000,
              epochs: int = 1, batch_size: int = 32, learning_rate: float = 2e-4,
              max_seq_length: int = 64, seed: int = 0, patience: int = 1,
              doc_stride: int | None = None, mixed_precision: bool = False,
              weight_decay: float = WEIGHT_DECAY, warmup_ratio: float = WARMUP_RATIO,
              pooling: str = "auto", dropout: float = DEFAULT_DROPOUT,
              group_by_length: bool = True,
              augment: dict[str, Any] | None = None,
              label_all_subwords: bool | None = None,
              epoch_callback: Callable[[int, dict, float], None] | None = None) -> FineTuned:
    """Fine-tune on ``task``'s train split with early stopping on its dev split and score
    its test split. ``task``: a built-in name, a task YAML file or a
    :class:`tasks.TaskSpec`. ``checkpoint_dir``: a korlm checkpoint or a korlm Hugging
    Face export. ``tokenizer_dir``: None for the checkpoint's own tokenizer, else an
    override checked against the checkpoint's vocab hash (:func:`models.resolve_tokenizer`).
    ``pooling``: the sentence representation (:func:`resolve_pooling`); ``dropout``: the
    backbone's and the head's dropout while fine-tuning (not the checkpoint's).
    ``group_by_length``: training batches by length (:func:`length_grouped_batches`);
    False pads every batch to ``max_seq_length``.
    ``augment``: settings for :func:`korlm.evaluation.augment.augment_task_data` (train split only).
    ``label_all_subwords``: token classification trains every subword of a unit (None:
    the task's setting; :mod:`korlm.evaluation.tagging`). ``epoch_callback(epoch, dev_scores, primary_value)`` runs after
    each epoch's dev scoring; what it raises (a pruned tuning trial) ends the run."""
    started = time.perf_counter()
    spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience),
                        ("max_train_examples", max_train_examples or 1),
                        ("max_eval_examples", max_eval_examples or 1)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if not 0 < learning_rate < 1:
        raise KorlmError(f"learning_rate must be between 0 and 1, got {learning_rate}")
    if not 0 <= weight_decay < 1:
        raise KorlmError(f"weight_decay must be in [0, 1), got {weight_decay}")
    if not 0 <= warmup_ratio < 1:
        raise KorlmError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0 <= dropout < 1:
        raise KorlmError(f"dropout must be in [0, 1), got {dropout}")
    info = checkpoint_info(checkpoint_dir)
    # QA and taggers read every token: no pooling
    sentence_head = spec.type not in ("extractive-qa", "token-classification")
    used_pooling, pooling_why = (resolve_pooling(pooling, info, checkpoint_dir) if sentence_head
                                 else (None, f"{spec.type}: logits over the tokens"))
    tokenizer_dir = resolve_tokenizer(checkpoint_dir, tokenizer_dir, info)
    if not 8 <= max_seq_length <= int(info["max_seq_length"]):
        raise KorlmError(f"max_seq_length must be between 8 and the checkpoint's "
                         f"{info['max_seq_length']}, got {max_seq_length}")
    if doc_stride is None:
        doc_stride = max_seq_length // 4
    if spec.type == "extractive-qa" and not 0 < doc_stride <= max_seq_length // 2 - 4:
        # questions keep at most half the window; the context part must exceed the stride
        raise KorlmError(f"doc_stride must be between 1 and max_seq_length/2 - 4 "
                         f"({max_seq_length // 2 - 4}), got {doc_stride}")
    splits = tasks.load_task(spec, data_dir, max_train_examples=max_train_examples,
                             max_eval_examples=max_eval_examples)
    spec = splits.spec
    train = splits.train
    if augment and spec.type == "token-classification":
        raise KorlmError("data augmentation does not apply to token classification: EDA's "
                         "edits would move the tagged words and characters")
    if augment:
        from korlm.evaluation import augment as augmentation

        train = augmentation.augment_task_data(train, seed=seed, spec=spec, **augment)
    tokenizer = load_tokenizer(tokenizer_dir, max_seq_length)
    _check_tokenizer(tokenizer, tokenizer_dir, checkpoint_dir, info)
    head = make_head(spec, tokenizer, max_seq_length, doc_stride, label_all_subwords)
    head.pooling, head.dropout = used_pooling, dropout
    if spec.type == "token-classification":
        spec = dataclasses.replace(spec, tagging=head.tagging)  # the setting used
    (x_train, y_train), (x_dev, _), (x_test, test_targets) = (
        model_inputs(head, tokenizer, info, s) for s in (train, splits.dev, splits.test))

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    float16 = bool(mixed_precision and tf.config.list_physical_devices("GPU"))
    if float16:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(seed)
    backbone = load_backbone(checkpoint_dir, load_weights=not random_init, dropout=dropout)
    model, loss = head.build(backbone)
    train_ds, steps_per_epoch = length_grouped_batches(
        x_train, y_train, batch_size, seed, multiple=LENGTH_MULTIPLE if group_by_length else max_seq_length)
    total_steps = steps_per_epoch * epochs
    optimizer = keras.optimizers.AdamW(
        learning_rate=warmup_linear_decay(
            learning_rate, max(1, int(warmup_ratio * total_steps)), total_steps),
        weight_decay=weight_decay, epsilon=1e-6, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    eval_batch = max(batch_size, 128)
    stopper = _dev_early_stopping(head, x_dev, splits.dev, eval_batch, patience, epoch_callback)
    fit_started = time.perf_counter()
    try:
        history = model.fit(train_ds, epochs=epochs, shuffle=False, verbose=0,
                            callbacks=[stopper])
    finally:
        if float16:
            keras.mixed_precision.set_global_policy("float32")
    fit_seconds = time.perf_counter() - fit_started
    test_predictions = head.predict(model, x_test, splits.test, eval_batch)
    scores = head.score(splits.test, test_predictions)
    # how far chance moves these scores on this test set, and what a constant predictor
    # scores on it (the report flags rows within one standard error of that)
    gold = head.gold(splits.test)
    standard_errors, se_methods = metric_fns.standard_errors(
        spec.metrics, gold, test_predictions, spec.num_classes, label_names=spec.label_names)
    baseline = metric_fns.constant_baseline(spec.metrics, gold, spec.type,
                                            splits.train.labels, spec.num_classes,
                                            label_names=spec.label_names)
    split_note = splits.split_note
    if spec.type == "token-classification":
        coverage = head.coverage(splits.test)
        if coverage["units_past_window"] or coverage["units_without_token"]:
            unit = "characters" if spec.tagging.level == "char" else "words"
            split_note = "; ".join(filter(None, [split_note, (
                f"{coverage['truncated_sentences']} of {coverage['sentences']} test sentences "
                f"exceed max_seq_length {max_seq_length}: their {coverage['units_past_window']} "
                f"{unit} past it, and {coverage['units_without_token']} {unit} that the "
                "tokenizer drops, are scored as predicted O")]))

    name = RANDOM_INIT if random_init else checkpoint_dir.rstrip("/").rsplit("/", 1)[-1]
    record = {
        "task": spec.name,
        "task_type": spec.type,
        "checkpoint": name,
        "checkpoint_uri": checkpoint_dir,
        "tokenizer_uri": tokenizer_dir,
        "step": None if random_init else info.get("step"),
        "random_init": bool(random_init),
        # the sentence representation the head classified from (None: extractive QA)
        "pooling": used_pooling,
        "metrics": scores,
        "primary_metric": spec.metric,
        "undefined_metrics": sorted(k for k, v in scores.items() if v is None),
        "split_note": split_note,
        "splits": splits.summary(),
        "num_train": len(splits.train),
        "num_eval": len(splits.test),
        "standard_errors": standard_errors,
        "standard_error_methods": se_methods,
        # None: no constant prediction exists (extractive QA)
        "constant_baseline": baseline,
        "train_loss": float(history.history["loss"][-1]),
        "dev_history": stopper.history,
        "best_epoch": stopper.best_epoch,
        "best_dev_score": None if stopper.best_epoch == 0 else stopper.best_score,
        "seconds": round(time.perf_counter() - started, 2),
        "fine_tune_seconds": round(fit_seconds, 2),
        "fine_tune": {
            "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
            "max_seq_length": max_seq_length, "group_by_length": group_by_length,
            "seed": seed, "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay, "max_train_examples": max_train_examples,
            "max_eval_examples": max_eval_examples, "optimizer": "adamw",
            "schedule": "linear warmup, linear decay",
            "early_stopping": f"dev {spec.metric}, patience {patience}",
            **({"doc_stride": doc_stride} if spec.type == "extractive-qa" else {}),
            **({"label_all_subwords": spec.tagging.label_all_subwords}
               if spec.type == "token-classification" else {}),
            **({"augment": dict(augment), "num_train_augmented": len(train)}
               if augment else {}),
            "mixed_precision": "mixed_float16" if float16 else "float32",
            "pooling": used_pooling, "pooling_requested": pooling, "pooling_note": pooling_why,
            "dropout": dropout,
        },
        "model": {k: info.get(k) for k in ("model", "size", "vocab_size", "max_seq_length")},
        # per-item test predictions: the report pairs a checkpoint with random init on them
        "predictions": {
            "split": "test",
            "items_sha256": metric_fns.items_digest(splits.test.texts, splits.test.texts_b,
                                                    gold),
            "gold": list(gold), "predicted": list(test_predictions)},
    }
    if spec.type == "token-classification":
        record["label_names"] = list(spec.label_names)
        record["tagging"] = {**spec.tagging.as_dict(), "test_coverage": coverage,
                             "alignment_ceiling": head.ceiling(splits.test, test_targets)}
    pretraining = {k: info[k] for k in ("train_loss", "heldout_loss", "heldout_accuracy",
                                        "unigram_entropy", "dropout") if info.get(k) is not None}
    if pretraining and not random_init:  # the checkpoint's own figures (korlm.pretrain.heldout)
        record["pretraining"] = pretraining
    if spec.is_classification:
        y_test = np.array(splits.test.labels)
        record["label_names"] = list(spec.label_names)
        record["majority_class_accuracy"] = float(
            np.max(np.bincount(y_test, minlength=spec.num_classes)) / len(y_test))
        # rows: gold class, columns: predicted class (test split), in label_names order;
        # the KFP evaluate component draws it as a ClassificationMetrics artifact
        record["confusion_matrix"] = {
            "labels": list(spec.label_names),
            "matrix": metric_fns.confusion_matrix(y_test, test_predictions, spec.num_classes)}
    return FineTuned(model, record, spec, info)


def write_metrics(record: dict[str, Any], directory: str) -> None:
    with open(os.path.join(directory, METRICS_JSON), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)


def describe(record: dict[str, Any]) -> str:
    scores = record["metrics"]
    shown = ", ".join(f"{k} {'undefined' if v is None else f'{v:.4f}'}" for k, v in scores.items())
    return (f"{record['task']} {record['checkpoint']}: {shown} (train {record['num_train']}, "
            f"eval {record['num_eval']}, {record['seconds']:.1f} s)")


def task_file(task: str | tasks.TaskSpec) -> str | None:
    """A YAML-declared task's file (an input the output must keep clear of), else None."""
    return task if isinstance(task, str) and task.endswith((".yaml", ".yml")) else None


def evaluate_checkpoint(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
                        data_dir: str | None, output_dir: str, *, overwrite: bool = False,
                        **settings) -> dict[str, Any]:
    """:func:`fine_tune` (same keyword arguments), then write ``metrics.json`` to
    ``output_dir`` (checked first: new, empty or, with ``overwrite``, an earlier
    evaluate output)."""
    checkpoint_info(checkpoint_dir)  # not a checkpoint: that first, not the output
    where = {"inputs": [checkpoint_dir, tokenizer_dir, task_file(task)], "containers": [data_dir]}
    storage.check_output(output_dir, "evaluate", overwrite=overwrite, **where)
    record = fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, **settings).record
    with storage.atomic_output_dir(output_dir, "evaluate", overwrite=overwrite, **where) as staging:
        write_metrics(record, staging)
    print(describe(record), flush=True)
    return record


def seed_folder(seed: int) -> str:
    return f"seed-{seed}"


def evaluate_runs(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
                  data_dir: str | None, output_dir: str, *, seeds: list[int] | None = None,
                  baselines: list[str] | tuple[str, ...] = (), overwrite: bool = False,
                  **settings) -> list[dict[str, Any]]:
    """:func:`evaluate_checkpoint` for every fine-tuning seed in ``seeds`` (None: the
    ``seed`` setting), plus the classical ``baselines``
    (:mod:`korlm.evaluation.baseline`; random init's companions), in one output:
    ``metrics.json`` for one seed, ``seed-<s>/metrics.json`` for several, and
    ``<baseline>/metrics.json`` for each baseline the task has. Returns the records
    (seeds first)."""
    from korlm.evaluation import baseline as classical

    checkpoint_info(checkpoint_dir)
    seeds = [settings.pop("seed", 0)] if seeds is None else list(seeds)
    settings.pop("seed", None)
    if not seeds or len(set(seeds)) != len(seeds):
        raise KorlmError(f"seeds must be distinct and at least one, got {seeds}")
    for name in baselines:
        if name not in classical.BASELINES:
            raise KorlmError(f"unknown baseline {name!r}; known: {', '.join(classical.BASELINES)}")
    where = {"inputs": [checkpoint_dir, tokenizer_dir, task_file(task)], "containers": [data_dir]}
    storage.check_output(output_dir, "evaluate", overwrite=overwrite, **where)
    written: list[tuple[str, dict[str, Any]]] = []
    for seed in seeds:
        record = fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, seed=seed,
                           **settings).record
        written.append(("" if len(seeds) == 1 else seed_folder(seed), record))
        print(describe(record) + f" (seed {seed})", flush=True)
    budget = {k: settings[k] for k in ("max_train_examples", "max_eval_examples") if k in settings}
    for name in baselines:
        record = classical.compute(name, checkpoint_dir, tokenizer_dir, task, data_dir, **budget)
        if record is None:
            spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
            print(f"{spec.name}: no {name} row ({classical.unsupported(spec.type)})", flush=True)
            continue
        written.append((name, record))
        print(describe(record) + f" [{record['note']}]", flush=True)
    with storage.atomic_output_dir(output_dir, "evaluate", overwrite=overwrite, **where) as staging:
        for folder, record in written:
            target = os.path.join(staging, folder) if folder else staging
            os.makedirs(target, exist_ok=True)
            write_metrics(record, target)
    return [record for _, record in written]
