"""Masked-LM pretraining: TFRecord shards of token ids -> checkpoints every K steps.

The input pipeline is pure ``tf.data``: read shards, batch, parse, mask dynamically with
``korlm.masking`` (tf-text's masking ops: a fresh mask every time an example is seen,
token-level or whole-word by eojeol/morpheme, 80/10/10 configurable) or read the masks of
statically masked data, pad to the sequence length. ``make_dataset(objective="bart")``
gives BART's text infilling / sentence permutation batches (``korlm.noising``) instead.
The model is ``models.build_masked_lm``; training is one ``model.fit`` call whose epochs
are checkpoint-sized chunks, with a callback that logs every ``log_every`` steps and
writes a checkpoint every ``checkpoint_every`` steps and at the last step.

Resume: with every checkpoint the callback also writes ``state/`` (model weights,
optimizer variables including the step counter, the step itself). Re-running the same
command continues from that step; a finished run re-run returns its checkpoint list
without training. Log lines written after the saved step (the work a kill threw away)
are dropped, so ``train_log.jsonl`` reads as one run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any

from korlm import models, storage
from korlm.errors import KorlmError
from korlm.presets import size_config
from korlm.pretrain_data_check import verify_shards
from korlm.vocab import vocab_hash

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINTS_JSON = "checkpoints.json"
TRAIN_LOG = "train_log.jsonl"
STATE_DIR = "state"
STATE_JSON = "state.json"
STATE_WEIGHTS = "model.weights.h5"
TENSORBOARD_DIR = "tensorboard"

DEFAULT_SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
# Settings a resumed run must share with the run it continues (weights would not fit or
# would mean something else otherwise).
RESUME_KEYS = ("model", "size", "vocab_size", "vocab_hash", "max_seq_length")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


# --------------------------------------------------------------------------- inputs

def _read_json(path: str, what: str) -> dict[str, Any]:
    if not storage.exists(path):
        raise KorlmError(f"{what} not found: {path}")
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{what} {path} is not valid JSON: {exc}") from None


def _normalize_hash(value: str) -> str:
    value = str(value).strip().lower()
    return value.split(":", 1)[1] if ":" in value else value


def tokenizer_vocab_hash(tokenizer_dir: str) -> str | None:
    """The vocabulary fingerprint of a tokenizer dir, computed by the same function that
    stamped the pretraining data (``korlm.vocab.vocab_hash``); None without a vocabulary."""
    try:
        return vocab_hash(tokenizer_dir)
    except KorlmError:
        return None


def _hashes_match(a: str, b: str) -> bool:
    # One side may store a shortened hash; 8 hex digits still tell vocabularies apart.
    a, b = _normalize_hash(a), _normalize_hash(b)
    short = min(len(a), len(b))
    return short >= 8 and a[:short] == b[:short]


def tokenizer_vocab_size(tokenizer_dir: str) -> int:
    path = storage.join(tokenizer_dir, "tokenizer.json")
    if not storage.exists(path):
        raise KorlmError(f"tokenizer not found: {path} (run `korlm vocab` first)")
    from tokenizers import Tokenizer

    return Tokenizer.from_str(storage.read_text(path)).get_vocab_size()


def _data_files(data_dir: str) -> list[str]:
    files = storage.glob(storage.join(data_dir, "train-*.tfrecord"))
    return files or storage.glob(storage.join(data_dir, "*.tfrecord"))


def inspect_data(data_dir: str, tokenizer_dir: str) -> tuple[dict[str, Any], list[str]]:
    """Metadata and shard list of a pretraining-data dir, checked against the tokenizer."""
    if not storage.isdir(data_dir):
        raise KorlmError(f"pretraining data dir not found: {data_dir} (run `korlm pretrain-data`)")
    meta = _read_json(storage.join(data_dir, "metadata.json"), "pretraining data metadata")
    files = _data_files(data_dir)
    if not files:
        raise KorlmError(f"no *.tfrecord shards in {data_dir}")
    if not meta.get("num_examples"):
        raise KorlmError(f"{data_dir} holds no examples (metadata.json num_examples is 0)")
    for key in ("max_seq_length", "vocab_size"):
        if key not in meta:
            raise KorlmError(f"{data_dir}/metadata.json lacks {key!r}")
    vocab_size = tokenizer_vocab_size(tokenizer_dir)
    if int(meta["vocab_size"]) != vocab_size:
        raise KorlmError(
            f"vocab size mismatch: data {data_dir} was made with {meta['vocab_size']} tokens, "
            f"tokenizer {tokenizer_dir} has {vocab_size}; use the tokenizer the data was made with")
    data_hash, tok_hash = meta.get("vocab_hash"), tokenizer_vocab_hash(tokenizer_dir)
    if data_hash and tok_hash and not _hashes_match(data_hash, tok_hash):
        raise KorlmError(
            f"vocab hash mismatch: data {data_dir} ({_normalize_hash(data_hash)[:12]}) was not "
            f"made with tokenizer {tokenizer_dir} ({tok_hash[:12]})")
    verify_shards(data_dir, meta, files)  # CRC-read every shard: a corrupt one fails here, named
    return meta, files


# ------------------------------------------------------------------------ tf.data

SEQUENCE_FEATURES = ("input_ids", "word_starts", "morpheme_starts", "sentence_starts", "segment_ids")
STATIC_FEATURES = ("masked_lm_positions", "masked_lm_ids")


def data_features(meta: dict[str, Any], files: list[str]) -> list[str]:
    """The feature names the shards hold: ``metadata.json``'s ``features``, or (data made
    before it listed them) the keys of the first record."""
    if meta.get("features"):
        return list(meta["features"])
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(files[:1]).take(1):
        return sorted(tf.train.Example.FromString(record.numpy()).features.feature)
    return ["input_ids"]


def check_data_settings(data_dir: str, meta: dict[str, Any], features: list[str], *,
                        objective: str = "mlm", whole_word: str = "none",
                        permute_sentences: bool = False, ignore_nsp_labels: bool = False,
                        inspecting: bool = False) -> str:
    """What the training settings need from the data, checked up front with one-line
    errors naming the data dir. Returns the masking mode, ``dynamic`` or ``static``.
    ``inspecting``: for ``inspect_examples``, which shows next-sentence labels instead of
    refusing them."""
    from korlm.errors import NotBuiltError
    from korlm.masking import WHOLE_WORD_MODES, WORD_FEATURE

    if objective not in ("mlm", "bart"):
        raise KorlmError(f"objective {objective!r} is unknown; choose mlm or bart")
    if whole_word not in WHOLE_WORD_MODES:
        raise KorlmError(f"whole_word {whole_word!r} is unknown; choose one of {', '.join(WHOLE_WORD_MODES)}")
    if "input_ids" not in features:
        raise KorlmError(f"{data_dir} has no input_ids feature (features: {', '.join(features)})")
    masking = meta.get("masking", "dynamic")
    if masking not in ("dynamic", "static"):
        raise KorlmError(f"{data_dir}/metadata.json: masking {masking!r} is unknown")
    if masking == "static":
        missing = [f for f in STATIC_FEATURES if f not in features]
        if missing:
            raise KorlmError(f"{data_dir} says masking: static but lacks {', '.join(missing)}")
        if objective == "bart":
            raise KorlmError(f"{data_dir} holds statically masked MLM examples; BART noising needs "
                             "dynamic data (pretrain_data.masking: dynamic)")
    elif objective == "mlm" and whole_word != "none" and WORD_FEATURE[whole_word] not in features:
        need = WORD_FEATURE[whole_word]
        hint = (" (written only for a morpheme vocab: build the vocab with --pre-tokenizer morpheme)"
                if whole_word == "morpheme" else " (re-run `korlm pretrain-data`)")
        raise KorlmError(f"whole_word={whole_word} needs the {need} feature, which data {data_dir} "
                         f"does not have{hint}; or set whole_word: none")
    if objective == "bart" and permute_sentences and "sentence_starts" not in features:
        raise KorlmError(f"permute_sentences needs the sentence_starts feature, which data {data_dir} "
                         "does not have (re-run `korlm pretrain-data`)")
    if (meta.get("nsp") or "next_sentence_label" in features) and not inspecting:
        if not ignore_nsp_labels:
            raise NotBuiltError(f"NSP head (data {data_dir} has next-sentence labels; set "
                                "pretrain.ignore_nsp_labels: true to train MLM only)", 6)
        print(f"WARNING: {data_dir} has next-sentence labels but pretraining with an NSP head is "
              "not built (issue #6): training MLM ONLY, the NSP labels are ignored "
              "(pretrain.ignore_nsp_labels: true)", flush=True)
    return masking


def _label_slots(meta: dict[str, Any], masking: str, max_predictions: int | None) -> int | None:
    """Label slots: the configured ``max_predictions``; for static data at least the
    data's own ``max_predictions_per_seq`` (fewer slots would drop its labels)."""
    if masking == "static" and meta.get("max_predictions_per_seq"):
        return max(int(max_predictions or 0), int(meta["max_predictions_per_seq"]))
    return max_predictions


def make_dataset(files: list[str], *, batch_size: int, max_seq_length: int, vocab_size: int,
                 special_ids: dict[str, int], mask_rate: float = 0.15, seed: int = 0,
                 data_max_seq_length: int | None = None, shuffle_buffer: int = 10_000,
                 objective: str = "mlm", features: list[str] | tuple[str, ...] = ("input_ids",),
                 masking: str = "dynamic", mask_token_rate: float = 0.8,
                 random_token_rate: float = 0.1, whole_word: str = "none",
                 max_predictions: int | None = None, static_mask_rate: float | None = None,
                 infill_rate: float = 0.3, poisson_lambda: float = 3.0,
                 permute_sentences: bool = False, repeat: bool = True,
                 passthrough: tuple[str, ...] | list[str] = (), sequential: bool = False):
    """Batches for training, from unpadded TFRecord examples (the pretrain-data contract).

    ``objective="mlm"``: ``(inputs, mask_ids, mask_weights)`` for KerasHub's
    ``BertMaskedLM``; ``inputs`` = ``token_ids``, ``segment_ids`` (the data's, zeros
    without them), ``padding_mask``, ``mask_positions``. Dynamic masking draws fresh masks
    every time an example is seen (``korlm.masking``); static data (``masking="static"``)
    brings its masks (``masked_lm_positions``/``masked_lm_ids``). ``whole_word`` reads
    word boundaries from ``word_starts`` (eojeol) or ``morpheme_starts``.

    ``objective="bart"``: ``(x, y, sample_weight)`` for ``BartSeq2SeqLM`` after text
    infilling and optional sentence permutation (``korlm.noising``).

    Examples longer than ``max_seq_length`` are cut, keeping a closing separator.
    ``features`` lists what the shards hold (``data_features``); only the features the
    settings use are parsed. ``passthrough`` features (e.g. ``next_sentence_label``, for
    ``inspect_examples``) are added to the inputs dict, padded dense. ``sequential``
    masks one batch at a time, so that after ``tf.random.set_seed`` the same batches get
    the same masks (parallel calls share the random state in whatever order they run).
    """
    import tensorflow as tf

    from korlm.masking import (
        WORD_FEATURE,
        MaskedLMMasker,
        default_max_predictions,
        static_mask_labels,
    )

    features = set(features)
    pad, sep = special_ids["pad"], special_ids["sep"]
    static = masking == "static"
    word_feature = WORD_FEATURE.get(whole_word) if objective == "mlm" and not static else None
    wanted = ["input_ids"]
    if word_feature:
        wanted.append(word_feature)
    if objective == "mlm" and "segment_ids" in features:
        wanted.append("segment_ids")
    if objective == "bart" and permute_sentences:
        wanted.append("sentence_starts")
    if static:
        wanted += list(STATIC_FEATURES)
    wanted += [f for f in passthrough if f not in wanted]
    missing = [f for f in wanted if f not in features]
    if missing:
        raise KorlmError(f"data {os.path.dirname(files[0])} lacks the features {', '.join(missing)}")
    spec = {name: tf.io.RaggedFeature(tf.int64) for name in wanted}
    truncate = data_max_seq_length is None or data_max_seq_length > max_seq_length

    if objective == "mlm":
        if static:
            slots = max_predictions or default_max_predictions(
                data_max_seq_length or max_seq_length, static_mask_rate or mask_rate)
        else:
            slots = max_predictions or default_max_predictions(max_seq_length, mask_rate)
            masker = MaskedLMMasker(vocab_size, special_ids, mask_rate=mask_rate,
                                    mask_token_rate=mask_token_rate,
                                    random_token_rate=random_token_rate,
                                    whole_word=word_feature is not None, max_predictions=slots)
    elif objective == "bart":
        from korlm.noising import BartNoiser

        noiser = BartNoiser(special_ids, max_seq_length, infill_rate=infill_rate,
                            poisson_lambda=poisson_lambda, permute_sentences=permute_sentences)
    else:
        raise KorlmError(f"objective {objective!r} is unknown; choose mlm or bart")

    def cut(parsed):
        """Cut every sequence feature to max_seq_length; a cut example ends with [SEP]
        again (a special token: a word start, no sentence start)."""
        too_long = parsed["input_ids"].row_lengths() > max_seq_length
        out = {}
        for name, values in parsed.items():
            if name not in SEQUENCE_FEATURES:
                out[name] = values
                continue
            values = values[:, :max_seq_length]
            fill = {"input_ids": sep, "word_starts": 1, "morpheme_starts": 1,
                    "sentence_starts": 0}.get(name)
            if fill is not None:
                ends = tf.boolean_mask(values.row_splits[1:] - 1, too_long)
                values = values.with_flat_values(tf.tensor_scatter_nd_update(
                    values.flat_values, ends[:, None],
                    tf.fill(tf.shape(ends), tf.cast(fill, values.dtype))))
            out[name] = values
        return out

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        parsed = {k: tf.cast(v, tf.int32) for k, v in parsed.items()}
        return cut(parsed) if truncate else parsed

    def to_mlm(serialized):
        parsed = parse(serialized)
        ids = parsed["input_ids"]
        lengths = ids.row_lengths()
        if static:
            labels = static_mask_labels(parsed["masked_lm_positions"], parsed["masked_lm_ids"],
                                        lengths, slots)
            masked = ids
        else:
            out = masker(ids, parsed.get(word_feature) if word_feature else None)
            masked, labels = out["token_ids"], out
        token_ids = masked.to_tensor(default_value=pad, shape=[batch_size, max_seq_length])
        segments = parsed.get("segment_ids")
        inputs = {
            "token_ids": token_ids,
            "segment_ids": (segments.to_tensor(default_value=0, shape=[batch_size, max_seq_length])
                            if segments is not None else tf.zeros_like(token_ids)),
            # From the lengths, not from token_ids: a random replacement may be id 0.
            "padding_mask": tf.sequence_mask(lengths, max_seq_length),
            "mask_positions": labels["mask_positions"],
        }
        inputs.update({name: parsed[name].to_tensor() for name in passthrough})
        return inputs, labels["mask_ids"], labels["mask_weights"]

    def to_bart(serialized):
        parsed = parse(serialized)
        x, y, weights = noiser(parsed["input_ids"], parsed.get("sentence_starts"))
        x.update({name: parsed[name].to_tensor() for name in passthrough})
        return x, y, weights

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(to_mlm if objective == "mlm" else to_bart,
                num_parallel_calls=None if sequential else tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def inspect_examples(data_dir: str, tokenizer_dir: str, *, num_examples: int = 3,
                     model: str = "bert", mask_rate: float = 0.15, mask_token_rate: float = 0.8,
                     random_token_rate: float = 0.1, whole_word: str = "none",
                     max_predictions: int | None = None, infill_rate: float = 0.3,
                     poisson_lambda: float = 3.0, permute_sentences: bool = False,
                     seed: int = 0, **other_pretrain_settings) -> str:
    """A text view of ``num_examples`` examples as training sees them: the batches come
    from :func:`make_dataset` with these settings (the ``pretrain`` config section; its
    other keys are accepted and unused), decoded with the tokenizer. MLM: the input with
    [MASK] / random replacements visible, and the labels; BART: the noised encoder input
    and the target. Statically masked data shows its own masks."""
    if num_examples < 1:
        raise KorlmError(f"--examples must be at least 1, got {num_examples}")
    meta, files = inspect_data(data_dir, tokenizer_dir)
    from korlm import tokenization
    from korlm.masking import check_rates
    from korlm.noising import check_noising

    check_rates(mask_rate, mask_token_rate, random_token_rate)
    check_noising(infill_rate, poisson_lambda)
    features = data_features(meta, files)
    objective = "bart" if model == "bart" or meta.get("objective") == "bart" else "mlm"
    masking = check_data_settings(data_dir, meta, features, objective=objective,
                                  whole_word=whole_word, permute_sentences=permute_sentences,
                                  inspecting=True)
    special_ids = {**DEFAULT_SPECIAL_IDS, **(meta.get("special_token_ids") or {})}
    seq_len = int(meta["max_seq_length"])
    import tensorflow as tf

    tf.random.set_seed(seed)  # the same view for the same seed
    shown = [f for f in ("next_sentence_label",) if f in features]
    dataset = make_dataset(
        files, batch_size=num_examples, max_seq_length=seq_len, vocab_size=int(meta["vocab_size"]),
        special_ids=special_ids, mask_rate=mask_rate, seed=seed, data_max_seq_length=seq_len,
        shuffle_buffer=1, objective=objective, features=features, masking=masking,
        mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
        whole_word=whole_word, max_predictions=_label_slots(meta, masking, max_predictions),
        static_mask_rate=meta.get("mask_rate"), infill_rate=infill_rate,
        poisson_lambda=poisson_lambda, permute_sentences=permute_sentences, passthrough=shown,
        sequential=True)
    x, y, weights = next(iter(dataset))
    x = {k: v.numpy() for k, v in x.items()}
    y, weights = y.numpy(), weights.numpy()
    tok = tokenization.load(tokenizer_dir)
    name = tok.hf.id_to_token
    mask_id = special_ids["mask"]

    lines = [f"{data_dir}: {meta['num_examples']:,} examples of at most {seq_len} tokens, packing "
             f"{meta.get('packing', 'full-sentences')}, objective {objective}"]
    if objective == "mlm" and masking == "static":
        lines.append(f"masking: static (from the data, dupe_factor {meta.get('dupe_factor')}, "
                     f"mask_rate {meta.get('mask_rate')})")
    elif objective == "mlm":
        lines.append(f"masking: dynamic, {whole_word if whole_word != 'none' else 'token'}-level, "
                     f"{mask_rate:.0%} of maskable tokens predicted: {mask_token_rate:.0%} [MASK], "
                     f"{random_token_rate:.0%} random, {1 - mask_token_rate - random_token_rate:.0%} kept")
        lines.append("legend: [MASK] masked; ~tok~ replaced by a random token; _tok_ predicted but "
                     "kept; labels are position=original token")
    else:
        lines.append(f"noising: text infilling {infill_rate:.0%} of tokens, span lengths ~ "
                     f"Poisson({poisson_lambda:g}), one {name(mask_id)} per span"
                     + (", sentences permuted" if permute_sentences else ""))
    for row in range(num_examples):
        lines.append("")
        if objective == "mlm":
            n = int(x["padding_mask"][row].sum())
            ids = x["token_ids"][row, :n].tolist()
            real = weights[row] > 0
            positions = x["mask_positions"][row][real].tolist()
            labels = y[row][real].tolist()
            original = list(ids)
            shown_tokens = [name(i) for i in ids]
            kinds = {"mask": 0, "random": 0, "kept": 0}
            for pos, label in zip(positions, labels, strict=True):
                original[pos] = label
                if ids[pos] == mask_id:
                    kinds["mask"] += 1
                elif ids[pos] == label:
                    kinds["kept"] += 1
                    shown_tokens[pos] = f"_{name(ids[pos])}_"
                else:
                    kinds["random"] += 1
                    shown_tokens[pos] = f"~{name(ids[pos])}~"
            head = (f"example {row + 1}: {n} tokens, {len(positions)} predicted ({kinds['mask']} "
                    f"[MASK], {kinds['random']} random, {kinds['kept']} kept)")
            if (x["segment_ids"][row, :n] == 1).any():
                head += f", segment B from position {int((x['segment_ids'][row, :n] == 1).argmax())}"
            if "next_sentence_label" in x:
                label = int(x["next_sentence_label"][row][0])
                head += f", next_sentence_label {label} ({'random B' if label else 'B follows A'})"
            lines.append(head)
            lines.append(f"  text  : {tok.decode(original)}")
            lines.append(f"  input : {' '.join(shown_tokens)}")
            lines.append("  labels: " + " ".join(f"{p}={name(i)}" for p, i in zip(positions, labels, strict=True)))
        else:
            n = int(weights[row].sum())
            enc_len = int(x["encoder_padding_mask"][row].sum())
            enc = x["encoder_token_ids"][row, :enc_len].tolist()
            spans = enc.count(mask_id)
            covered = n - (enc_len - spans)
            lines.append(f"example {row + 1}: {n} tokens -> encoder {enc_len} tokens, {spans} "
                         f"{name(mask_id)} (spans) covering {covered} tokens")
            lines.append(f"  target : {tok.decode(y[row, :n].tolist())}")
            lines.append(f"  encoder: {' '.join(name(i) for i in enc)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- model

@functools.cache
def _warmup_linear_decay_class():
    import keras

    @keras.saving.register_keras_serializable(package="korlm")
    class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warmup to ``peak`` over ``warmup_steps``, then linear decay to 0 at
        ``total_steps``."""

        def __init__(self, peak, warmup_steps, total_steps):
            self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            up = self.peak * step / max(self.warmup_steps, 1)
            down = self.peak * keras.ops.maximum(
                0.0, (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1))
            return keras.ops.where(step < self.warmup_steps, up, down)

        def get_config(self):
            return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                    "total_steps": self.total_steps}

    return WarmupLinearDecay


def warmup_linear_decay(peak: float, warmup_steps: int, total_steps: int):
    """Learning-rate schedule: linear warmup, then linear decay to 0 (BERT's)."""
    return _warmup_linear_decay_class()(peak, warmup_steps, total_steps)


def no_weight_decay_variables(task) -> list:
    """LayerNorm scales/offsets and biases: excluded from weight decay as in BERT."""
    import keras

    excluded = {id(v) for layer in task._flatten_layers()
                if isinstance(layer, keras.layers.LayerNormalization) for v in layer.weights}
    return [v for v in task.trainable_variables
            if id(v) in excluded or "bias" in v.name]


def compile_masked_lm(task, *, learning_rate: float, warmup_steps: int, total_steps: int,
                      weight_decay: float):
    """Compile for MLM training; returns the learning-rate schedule."""
    import keras

    schedule = warmup_linear_decay(learning_rate, warmup_steps, total_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-6, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(task))
    task.compile(
        optimizer=optimizer,
        # Mean over masked tokens only (the weights mark real mask slots), not over all
        # mask_selection_length slots.
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="mlm_accuracy")],
        # XLA on CPU compiles for long and ran no faster here.
        jit_compile=False,
    )
    optimizer.build(task.trainable_variables)
    return schedule


# ------------------------------------------------------------------- run state

def _write_text_atomic(path: str, text: str) -> None:
    if storage.is_remote(path):  # an object store write is atomic already
        storage.write_text(path, text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    storage.write_text(tmp, text)
    os.replace(tmp, path)


def _write_json_atomic(path: str, obj: Any) -> None:
    _write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _read_checkpoints(output_dir: str) -> list[dict]:
    path = storage.join(output_dir, CHECKPOINTS_JSON)
    return json.loads(storage.read_text(path)) if storage.exists(path) else []


def _local_copy(remote_dir: str, names: list[str]) -> str:
    local = tempfile.mkdtemp(prefix="korlm-state-")
    for name in names:
        with storage.open_file(storage.join(remote_dir, name), "rb") as src, \
                open(os.path.join(local, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def save_state(task, output_dir: str, state: dict[str, Any]) -> None:
    """``state/``: the compiled task's weights file, which holds the optimizer variables
    (step counter and moments) too, plus ``state.json``."""
    with storage.atomic_output_dir(storage.join(output_dir, STATE_DIR)) as staging:
        task.save_weights(os.path.join(staging, STATE_WEIGHTS))
        with open(os.path.join(staging, STATE_JSON), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)


def load_state(output_dir: str) -> dict[str, Any] | None:
    path = storage.join(output_dir, STATE_DIR, STATE_JSON)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def restore_state(task, output_dir: str, step: int) -> None:
    """Load ``state/`` into a compiled task whose optimizer is built."""
    state_dir = storage.join(output_dir, STATE_DIR)
    local = _local_copy(state_dir, [STATE_WEIGHTS]) if storage.is_remote(state_dir) else state_dir
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task.load_weights(os.path.join(local, STATE_WEIGHTS))
        # Keras only warns when it skips a mismatched optimizer; resuming without it
        # would silently restart the schedule and moments.
        skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
        if skipped:
            raise KorlmError(f"cannot resume from {state_dir}: {skipped[0].strip()}")
    except ValueError as exc:
        raise KorlmError(f"cannot resume from {state_dir}: {exc}; use a new --output") from None
    finally:
        if local != state_dir:
            shutil.rmtree(local, ignore_errors=True)
    restored = int(task.optimizer.iterations.numpy())
    if restored != step:
        raise KorlmError(f"{state_dir} is inconsistent: state.json says step {step}, the "
                         f"optimizer is at step {restored}; use a new --output")


@contextlib.contextmanager
def _optimizer_detached(task):
    # A compiled task's weights file carries the optimizer (2x the model); checkpoints
    # are for evaluation and export, the optimizer lives in state/.
    optimizer = task.optimizer
    task.optimizer = None
    try:
        yield task
    finally:
        task.optimizer = optimizer


class _TrainLog:
    """``train_log.jsonl``: appended locally, rewritten whole for object stores."""

    def __init__(self, output_dir: str, keep_until_step: int):
        self.path = storage.join(output_dir, TRAIN_LOG)
        self.records: list[dict] = []
        if storage.exists(self.path):
            for line in storage.read_text(self.path).splitlines():
                if line.strip():
                    record = json.loads(line)
                    if record.get("step", 0) <= keep_until_step:
                        self.records.append(record)
        self.flush()

    def append(self, record: dict) -> None:
        self.records.append(record)
        if not storage.is_remote(self.path):
            with storage.open_file(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        _write_text_atomic(self.path, text)


# -------------------------------------------------------------------- training

def _monitor_class():
    import keras

    class TrainMonitor(keras.callbacks.Callback):
        """Logs every ``log_every`` steps, checkpoints every ``checkpoint_every`` steps."""

        def __init__(self, *, run: dict, start_step: int, steps_per_epoch: int, log: _TrainLog,
                     checkpoints: list[dict], writer, tokens_per_step: int, schedule):
            super().__init__()
            self.run, self.start_step, self.steps_per_epoch = run, start_step, steps_per_epoch
            self.log, self.checkpoints, self.writer = log, checkpoints, writer
            self.tokens_per_step, self.schedule = tokens_per_step, schedule
            self.window_start = time.perf_counter()
            self.window_steps = 0
            self.last_loss: float | None = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_base = self.start_step + epoch * self.steps_per_epoch

        def on_train_batch_end(self, batch, logs=None):
            run = self.run
            step = self.epoch_base + batch + 1
            self.window_steps += 1
            is_log = step % run["log_every"] == 0 or step == run["steps"]
            is_ckpt = step % run["checkpoint_every"] == 0 or step == run["steps"]
            if is_log or is_ckpt:
                loss = float(logs["loss"])
                accuracy = float(logs["mlm_accuracy"])
                self.last_loss = loss
            if is_log:
                seconds = max(time.perf_counter() - self.window_start, 1e-9)
                # The rate step `step` was taken with (the schedule counts from 0).
                lr = float(self.schedule(step - 1))
                record = {
                    "step": step, "loss": round(loss, 5), "mlm_accuracy": round(accuracy, 5),
                    "learning_rate": lr,
                    "steps_per_second": round(self.window_steps / seconds, 3),
                    # Sequence positions (batch x max_seq_length, padding included).
                    "tokens_per_second": round(self.window_steps * self.tokens_per_step / seconds, 1),
                    "time": round(time.time(), 3),
                }
                self.log.append(record)
                if self.writer is not None:
                    import tensorflow as tf

                    with self.writer.as_default(step=step):
                        for key in ("loss", "mlm_accuracy", "learning_rate", "tokens_per_second"):
                            tf.summary.scalar(key, record[key])
                print(f"step {step}/{run['steps']} loss {loss:.4f} mlm_acc {accuracy:.4f} "
                      f"lr {lr:.2e} {record['steps_per_second']:.2f} steps/s "
                      f"{record['tokens_per_second']:.0f} tokens/s", flush=True)
                self.model.reset_metrics()
                self.window_start = time.perf_counter()
                self.window_steps = 0
            if is_ckpt:
                saving = time.perf_counter()
                self._checkpoint(step)
                self.window_start += time.perf_counter() - saving  # speed = training only
            if step >= run["steps"]:
                self.model.stop_training = True

        def _checkpoint(self, step: int) -> None:
            run = self.run
            uri = storage.join(run["output_dir"], CHECKPOINTS_DIR, checkpoint_name(step))
            info = {k: run[k] for k in RESUME_KEYS}
            info.update(step=step, train_loss=self.last_loss)
            with _optimizer_detached(self.model) as task:
                models.save_checkpoint(task, uri, info)
            # The state follows the checkpoint: a kill between the two re-trains from the
            # previous state and overwrites this checkpoint with the same step.
            save_state(self.model, run["output_dir"], {**info, "log_every": run["log_every"]})
            self.checkpoints[:] = [c for c in self.checkpoints if c["step"] < step]
            self.checkpoints.append({"step": step, "uri": uri})
            _write_json_atomic(storage.join(run["output_dir"], CHECKPOINTS_JSON), self.checkpoints)
            if storage.is_remote(run["output_dir"]):
                self.log.flush()
            print(f"checkpoint {checkpoint_name(step)} -> {uri}", flush=True)

    return TrainMonitor


def _summary_writer(output_dir: str):
    """TensorBoard event files when the ``tensorboard`` package is there (tf.summary
    needs it for scalars); train_log.jsonl holds the same numbers regardless."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(storage.join(output_dir, TENSORBOARD_DIR))


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def run_pretrain(data_dir: str, tokenizer_dir: str, output_dir: str, *, model: str = "bert",
                 size: str = "tiny", steps: int = 300, checkpoint_every: int = 100,
                 batch_size: int = 32, learning_rate: float = 5e-4, warmup_steps: int = 30,
                 weight_decay: float = 0.01, mask_rate: float = 0.15,
                 mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
                 whole_word: str = "none", max_predictions: int | None = None,
                 infill_rate: float = 0.3, poisson_lambda: float = 3.0,
                 permute_sentences: bool = False, ignore_nsp_labels: bool = False,
                 max_seq_length: int | None = None, seed: int = 0,
                 log_every: int = 10) -> list[dict]:
    """Pretrain a masked LM; returns the checkpoint list (also in ``checkpoints.json``).

    ``steps`` is the total step count of the run, so re-running with a larger value
    extends a finished run (the learning-rate schedule is then recomputed for the new
    total) and re-running with the same value after a kill continues where it stopped.

    Masking: ``mask_rate`` of the maskable tokens (at most ``max_predictions``) are
    predicted, of which ``mask_token_rate`` become [MASK], ``random_token_rate`` a random
    token, the rest stay; ``whole_word`` (none|eojeol|morpheme) masks whole words. Static
    data brings its own masks. ``infill_rate``, ``poisson_lambda`` and
    ``permute_sentences`` are BART's noising (the BART model itself is issue #6).
    """
    if not storage.is_remote(output_dir):
        output_dir = os.path.abspath(output_dir)
    models.check_family(model)
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every),
                        ("batch_size", batch_size), ("log_every", log_every)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if max_predictions is not None and int(max_predictions) < 1:
        raise KorlmError(f"max_predictions must be at least 1, got {max_predictions}")
    if warmup_steps < 0 or learning_rate <= 0 or weight_decay < 0:
        raise KorlmError("learning_rate must be > 0, warmup_steps and weight_decay >= 0")
    try:
        size_config(size)
    except ValueError as exc:
        raise KorlmError(str(exc)) from None

    meta, files = inspect_data(data_dir, tokenizer_dir)
    # After the data checks: these import TensorFlow, which is slow and noisy on stderr.
    from korlm.masking import check_rates
    from korlm.noising import check_noising

    check_rates(mask_rate, mask_token_rate, random_token_rate)
    check_noising(infill_rate, poisson_lambda)
    data_len = int(meta["max_seq_length"])
    seq_len = int(max_seq_length or data_len)
    if seq_len < 8:
        raise KorlmError(f"max_seq_length must be at least 8, got {seq_len}")
    special_ids = {**DEFAULT_SPECIAL_IDS, **(meta.get("special_token_ids") or {})}
    features = data_features(meta, files)
    objective = "bart" if model == "bart" else "mlm"
    masking = check_data_settings(data_dir, meta, features, objective=objective,
                                  whole_word=whole_word, permute_sentences=permute_sentences,
                                  ignore_nsp_labels=ignore_nsp_labels)
    if masking == "static":
        print(f"{data_dir} is statically masked (dupe_factor {meta.get('dupe_factor')}): using its "
              "masks; mask_rate, mask_token_rate, random_token_rate and whole_word do not apply",
              flush=True)
    run = {
        "output_dir": output_dir, "model": model, "size": size,
        "vocab_size": int(meta["vocab_size"]),
        "vocab_hash": meta.get("vocab_hash") or tokenizer_vocab_hash(tokenizer_dir),
        "max_seq_length": seq_len, "steps": int(steps),
        "checkpoint_every": int(checkpoint_every), "log_every": int(log_every),
    }

    state = load_state(output_dir)
    start_step = 0
    if state is not None:
        for key in RESUME_KEYS:
            if state.get(key) != run[key]:
                raise KorlmError(
                    f"{output_dir} holds a run with {key}={state.get(key)!r}, not {run[key]!r}; "
                    "use a new --output or the original settings to resume")
        start_step = int(state["step"])
    checkpoints = [c for c in _read_checkpoints(output_dir) if c["step"] <= start_step]
    if start_step >= steps:
        print(f"{output_dir} already trained to step {start_step}; nothing to do", flush=True)
        return checkpoints

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(seed)
    with _strategy().scope():
        task = models.build_masked_lm(model, size, run["vocab_size"], seq_len)
        schedule = compile_masked_lm(task, learning_rate=learning_rate,
                                     warmup_steps=warmup_steps, total_steps=steps,
                                     weight_decay=weight_decay)
    if start_step:
        restore_state(task, output_dir, start_step)
        print(f"resuming {output_dir} from step {start_step}", flush=True)
    # A resumed run sees a new data order and new masks, not a replay of the first steps.
    keras.utils.set_random_seed(seed + start_step)
    dataset = make_dataset(files, batch_size=batch_size, max_seq_length=seq_len,
                           vocab_size=run["vocab_size"], special_ids=special_ids,
                           mask_rate=mask_rate, seed=seed + start_step,
                           data_max_seq_length=data_len, objective=objective,
                           features=features, masking=masking,
                           mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                           whole_word=whole_word,
                           max_predictions=_label_slots(meta, masking, max_predictions),
                           static_mask_rate=meta.get("mask_rate"), infill_rate=infill_rate,
                           poisson_lambda=poisson_lambda, permute_sentences=permute_sentences)

    storage.makedirs(output_dir)
    log = _TrainLog(output_dir, keep_until_step=start_step)
    _write_json_atomic(storage.join(output_dir, CHECKPOINTS_JSON), checkpoints)
    writer = _summary_writer(output_dir)
    remaining = steps - start_step
    steps_per_epoch = min(checkpoint_every, remaining)
    monitor = _monitor_class()(
        run=run, start_step=start_step, steps_per_epoch=steps_per_epoch, log=log,
        checkpoints=checkpoints, writer=writer, tokens_per_step=batch_size * seq_len,
        schedule=schedule)
    print(f"pretraining {model}-{size} ({task.count_params():,} params) on {len(files)} shards, "
          f"{meta['num_examples']:,} examples: steps {start_step + 1}..{steps}, batch "
          f"{batch_size}, seq {seq_len}", flush=True)
    with warnings.catch_warnings():
        # The pooler is part of the backbone but not of the MLM loss.
        warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
        task.fit(dataset, steps_per_epoch=steps_per_epoch, shuffle=False,
                 epochs=math.ceil(remaining / steps_per_epoch), callbacks=[monitor], verbose=0)
    if writer is not None:
        writer.close()
    return list(checkpoints)
