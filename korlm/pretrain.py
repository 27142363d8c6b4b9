"""Masked-LM pretraining: TFRecord shards of token ids -> checkpoints every K steps.

The input pipeline is pure ``tf.data``: read shards, batch, parse, mask dynamically with
``korlm.masking`` (tf-text's masking ops: a fresh mask every time an example is seen,
token-level or whole-word by eojeol/morpheme, 80/10/10 configurable) or read the masks of
statically masked data, pad to the sequence length. ``make_dataset(objective="bart")``
gives BART's text infilling / sentence permutation batches (``korlm.noising``) instead.
The model is ``build.build_masked_lm``; training is one ``model.fit`` call whose epochs
are checkpoint-sized chunks, with a callback that logs every ``log_every`` steps and
writes a checkpoint every ``checkpoint_every`` steps and at the last step.

Every checkpoint carries a copy of the tokenizer (``checkpoints/step-N/tokenizer/``, its
vocab hash in ``korlm_checkpoint.json``), so later steps need only the checkpoint.

Resume: after every checkpoint the callback also writes ``state/step-N/`` (model weights,
optimizer variables including the step counter, the step itself, the data position) and
then deletes the older state. Re-running the same command continues from the newest
complete state (:func:`choose_resume_state`: half-written ones are skipped, a newer
checkpoint without a state is named and re-trained); a finished run re-run returns its
checkpoint list without training. Log lines written after the saved step (the work a kill
threw away) are dropped, so ``train_log.jsonl`` reads as one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.modeling import build
from korlm.modeling import checkpoints as ckpt
from korlm.modeling.presets import size_config
from korlm.pretrain_data.shards import verify_shards
from korlm.tokenizer.files import hashes_match, normalize_hash, vocab_hash

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINTS_JSON = "checkpoints.json"
TRAIN_LOG = "train_log.jsonl"
STATE_DIR = "state"
STATE_JSON = "state.json"
STATE_WEIGHTS = "model.weights.h5"
TENSORBOARD_DIR = "tensorboard"
# What a run folder holds (fnmatch patterns of its top-level names, atomic-write temp
# files included): the rest of a folder is the user's, and an --overwrite keeps clear of it.
RUN_ENTRIES = (CHECKPOINTS_DIR, f"{CHECKPOINTS_JSON}*", f"{TRAIN_LOG}*", STATE_DIR, f".{STATE_DIR}.*",
               TENSORBOARD_DIR)

DEFAULT_SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
# Settings a resumed run must share with the run it continues (weights would not fit or
# would mean something else otherwise).
RESUME_KEYS = ("model", "size", "vocab_size", "vocab_hash", "max_seq_length", "grad_accum_steps",
               "nsp")


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


_normalize_hash = normalize_hash


def tokenizer_vocab_hash(tokenizer_dir: str) -> str | None:
    """The vocabulary fingerprint of a tokenizer dir, computed by the same function that
    stamped the pretraining data (``korlm.vocab.vocab_hash``); None without a vocabulary."""
    try:
        return vocab_hash(tokenizer_dir)
    except KorlmError:
        return None


_hashes_match = hashes_match


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
                        inspecting: bool = False, model: str = "bert") -> str:
    """What the training settings need from the data, checked up front with one-line
    errors naming the data dir. Returns the masking mode, ``dynamic`` or ``static``.
    ``inspecting``: for ``inspect_examples``, which shows next-sentence labels instead of
    refusing them."""
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
    if has_nsp_labels(meta, features) and not inspecting:
        if "next_sentence_label" not in features:
            raise KorlmError(f"{data_dir}/metadata.json says nsp: true but the shards have no "
                             "next_sentence_label feature; re-run `korlm pretrain-data`")
        if ignore_nsp_labels:
            print(f"WARNING: {data_dir} has next-sentence labels: training MLM ONLY, the NSP "
                  "labels are ignored (pretrain.ignore_nsp_labels: true)", flush=True)
        elif model != "bert":
            raise KorlmError(f"data {data_dir} has next-sentence labels but {model} has no "
                             "next-sentence head (RoBERTa dropped NSP, BART never had it): make "
                             "the data without --nsp, or set pretrain.ignore_nsp_labels: true")
    return masking


def has_nsp_labels(meta: dict[str, Any], features: list[str]) -> bool:
    return bool(meta.get("nsp") or "next_sentence_label" in features)


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
                 passthrough: tuple[str, ...] | list[str] = (), sequential: bool = False,
                 segment_ids: bool = True, skip_examples: int = 0, nsp: bool = False):
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
    draws every batch's masks/noise from stateless ops seeded by ``(seed, batch index)``,
    so the same seed gives the same batches however the dataset is iterated.
    ``segment_ids=False`` leaves them out of the MLM inputs (RoBERTa has no token types).
    ``nsp``: BERT's two objectives, labels and weights as dicts ``{"mlm": ..., "nsp": ...}``
    with the ``next_sentence_label`` of each example (1 = B is a random segment).

    ``skip_examples`` resumes at a data position: the first ``skip_examples`` examples of
    the (seeded, hence reproducible) order are skipped unread by the masking. Normally the
    resumed run then sees the same examples with fresh masks; with ``sequential`` it gets
    exactly the batches an uninterrupted run would (``skip_examples`` must then be a
    multiple of ``batch_size``).
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
    if objective == "mlm" and segment_ids and "segment_ids" in features:
        wanted.append("segment_ids")
    if objective == "bart" and permute_sentences:
        wanted.append("sentence_starts")
    if static:
        wanted += list(STATIC_FEATURES)
    if nsp and objective == "mlm":
        wanted.append("next_sentence_label")
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

    def batch_seed(index):
        # Deterministic mode: the draws of batch `index` are a function of (seed, index).
        return None if index is None else tf.stack([tf.cast(seed, tf.int64), index])

    def to_mlm(serialized, index=None):
        parsed = parse(serialized)
        ids = parsed["input_ids"]
        lengths = ids.row_lengths()
        if static:
            labels = static_mask_labels(parsed["masked_lm_positions"], parsed["masked_lm_ids"],
                                        lengths, slots)
            masked = ids
        else:
            out = masker(ids, parsed.get(word_feature) if word_feature else None,
                         seed=batch_seed(index))
            masked, labels = out["token_ids"], out
        token_ids = masked.to_tensor(default_value=pad, shape=[batch_size, max_seq_length])
        segments = parsed.get("segment_ids")
        inputs = {
            "token_ids": token_ids,
            # From the lengths, not from token_ids: a random replacement may be id 0.
            "padding_mask": tf.sequence_mask(lengths, max_seq_length),
            "mask_positions": labels["mask_positions"],
        }
        if segment_ids:
            inputs["segment_ids"] = (
                segments.to_tensor(default_value=0, shape=[batch_size, max_seq_length])
                if segments is not None else tf.zeros_like(token_ids))
        inputs.update({name: parsed[name].to_tensor() for name in passthrough})
        if nsp:
            label = parsed["next_sentence_label"].to_tensor(shape=[batch_size, 1])[:, 0]
            return (inputs, {"mlm": labels["mask_ids"], "nsp": label},
                    {"mlm": labels["mask_weights"], "nsp": tf.ones([batch_size], tf.float32)})
        return inputs, labels["mask_ids"], labels["mask_weights"]

    def to_bart(serialized, index=None):
        parsed = parse(serialized)
        x, y, weights = noiser(parsed["input_ids"], parsed.get("sentence_starts"),
                              seed=batch_seed(index))
        x.update({name: parsed[name].to_tensor() for name in passthrough})
        return x, y, weights

    ds = tf.data.Dataset.from_tensor_slices(files)
    if sequential:
        # One endless stream shuffled once: every iterator over the dataset sees the same
        # order (reshuffling per iteration would give each new iterator, e.g. one Keras
        # opens, another order), and the buffers still mix across epochs.
        ds = ds.repeat() if repeat else ds
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    else:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=not sequential)
    if repeat and not sequential:
        ds = ds.repeat()
    if skip_examples < 0:
        raise KorlmError(f"skip_examples must be >= 0, got {skip_examples}")
    if skip_examples and sequential and skip_examples % batch_size:
        raise KorlmError(f"a deterministic resume needs the examples seen ({skip_examples}) to be a "
                         f"multiple of the batch size ({batch_size}); was the batch size changed?")
    if skip_examples and not sequential:
        ds = ds.skip(skip_examples)
    ds = ds.batch(batch_size, drop_remainder=True)
    to_batch = to_mlm if objective == "mlm" else to_bart
    if sequential:
        # Stateless draws seeded by the batch index: the skipped batches need no masking
        # and the masks do not depend on how many iterators Keras opens over the dataset.
        ds = ds.enumerate().skip(skip_examples // batch_size)
        ds = ds.map(lambda index, serialized: to_batch(serialized, index),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
    from korlm.masking import check_rates
    from korlm.noising import check_noising
    from korlm.tokenizer import tokenization

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
        ``total_steps``. With gradient accumulation the optimizer calls the schedule with
        its micro-batch counter; ``micro_batches`` (per update) turns that into updates."""

        def __init__(self, peak, warmup_steps, total_steps, micro_batches=1):
            self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
            self.micro_batches = micro_batches

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            if self.micro_batches > 1:
                step = keras.ops.floor(step / self.micro_batches)
            up = self.peak * step / max(self.warmup_steps, 1)
            down = self.peak * keras.ops.maximum(
                0.0, (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1))
            return keras.ops.where(step < self.warmup_steps, up, down)

        def get_config(self):
            return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                    "total_steps": self.total_steps, "micro_batches": self.micro_batches}

    return WarmupLinearDecay


def warmup_linear_decay(peak: float, warmup_steps: int, total_steps: int, micro_batches: int = 1):
    """Learning-rate schedule: linear warmup, then linear decay to 0 (BERT's)."""
    return _warmup_linear_decay_class()(peak, warmup_steps, total_steps, micro_batches)


def no_weight_decay_variables(task) -> list:
    """LayerNorm scales/offsets and biases: excluded from weight decay as in BERT."""
    import keras

    excluded = {id(v) for layer in task._flatten_layers()
                if isinstance(layer, keras.layers.LayerNormalization) for v in layer.weights}
    return [v for v in task.trainable_variables
            if id(v) in excluded or "bias" in v.name]


OPTIMIZERS = ("adamw", "lamb")


def accuracy_name(objective: str) -> str:
    """The logged accuracy: over masked tokens (MLM) or over target tokens (BART)."""
    return "mlm_accuracy" if objective == "mlm" else "token_accuracy"


def compile_pretraining(task, *, objective: str = "mlm", learning_rate: float, warmup_steps: int,
                        total_steps: int, weight_decay: float, optimizer: str = "adamw",
                        clip_norm: float | None = 1.0, grad_accum_steps: int = 1,
                        beta_2: float = 0.999, epsilon: float = 1e-6,
                        jit_compile: bool = False, nsp: bool = False):
    """Compile a pretraining task; returns the learning-rate schedule (in updates).

    AdamW (BERT's optimizer) or LAMB (You et al. 2020, for large batches; Keras's LAMB
    applies the weight decay decoupled, before the trust-ratio update), warmup then
    linear decay, clipping by the *global* gradient norm (``clip_norm``; 0/None: off),
    LayerNorm and bias excluded from weight decay, and ``grad_accum_steps`` micro-batches
    averaged per update (Keras's ``gradient_accumulation_steps``). ``nsp``: the model has
    outputs ``{"mlm", "nsp"}`` (``build.add_next_sentence_head``); the loss is their sum,
    as in BERT, and both are logged.

    The loss is the mean over the real label slots only (``mean_with_sample_weight``):
    the masked tokens for MLM, the target tokens for BART. KerasHub's own MLM loss
    divides by every ``mask_positions`` slot, padding included, and reads too low.
    """
    import keras

    if optimizer not in OPTIMIZERS:
        raise KorlmError(f"optimizer {optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if int(grad_accum_steps) < 1:
        raise KorlmError(f"grad_accum_steps must be at least 1, got {grad_accum_steps}")
    schedule = warmup_linear_decay(learning_rate, warmup_steps, total_steps, int(grad_accum_steps))
    common = dict(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=beta_2,
                  epsilon=epsilon, global_clipnorm=clip_norm or None,
                  gradient_accumulation_steps=int(grad_accum_steps) if grad_accum_steps > 1 else None)
    opt = (keras.optimizers.AdamW(**common) if optimizer == "adamw"
           else keras.optimizers.Lamb(**common))
    opt.exclude_from_weight_decay(var_list=no_weight_decay_variables(task))
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")
    metric = keras.metrics.SparseCategoricalAccuracy(name=accuracy_name(objective))
    if nsp:  # Keras prefixes the output name: mlm_accuracy, nsp_accuracy
        loss = {"mlm": loss, "nsp": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
        metric = {"mlm": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  "nsp": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
    else:
        metric = [metric]
    task.compile(
        optimizer=opt,
        loss=loss,
        weighted_metrics=metric,
        # XLA on CPU compiles for long; on TPU the strategy compiles regardless.
        jit_compile=jit_compile,
    )
    task.optimizer.build(task.trainable_variables)
    return schedule


def compile_masked_lm(task, **settings):
    """:func:`compile_pretraining` for a masked LM."""
    return compile_pretraining(task, objective="mlm", **settings)


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
    if not storage.exists(path):
        return []
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{path} is corrupt ({exc}); fix or delete it to resume") from None


def _local_copy(remote_dir: str, names: list[str]) -> str:
    local = tempfile.mkdtemp(prefix="korlm-state-")
    for name in names:
        with storage.open_file(storage.join(remote_dir, name), "rb") as src, \
                open(os.path.join(local, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def state_dir(output_dir: str, step: int) -> str:
    """Where the training state of ``step`` lives: ``state/step-NNNNNN/``."""
    return storage.join(output_dir, STATE_DIR, checkpoint_name(step))


def save_state(task, output_dir: str, state: dict[str, Any]) -> None:
    """``state/step-NNNNNN/``: the compiled task's weights file, which holds the optimizer
    variables (step counter, moments, accumulated gradients) and the dropout seed states
    too, plus ``state.json`` (step, data position, settings, the weights file's size).
    Written atomically under its own name; only then are the older states deleted, so a
    save killed at any point leaves the previous state whole."""
    target = state_dir(output_dir, int(state["step"]))
    # inside korlm's own run folder: a half-uploaded state of the same step is replaced
    with storage.atomic_output_dir(target, "pretrain-state", overwrite=True,
                                   replace_any=True) as staging:
        weights = os.path.join(staging, STATE_WEIGHTS)
        task.save_weights(weights)
        seeds = _seed_states(task)
        with open(os.path.join(staging, STATE_JSON), "w", encoding="utf-8") as f:
            json.dump({**state, "seed_states": seeds, "files": {STATE_WEIGHTS: os.path.getsize(weights)}},
                      f, indent=2, sort_keys=True)
    _drop_other_states(output_dir, keep=checkpoint_name(int(state["step"])))


def _is_staging(name: str, stem: str) -> bool:
    # storage.atomic_output_dir's local staging directory: ".<name>.tmp-<hex>"
    return name.startswith(f".{stem}") and ".tmp-" in name


def _drop_other_states(output_dir: str, keep: str) -> None:
    """After a state is saved: every other state korlm wrote in this run dir (older ones,
    half-written newer ones, the single ``state/`` of runs before ``state/step-N/``, and
    staging directories left by killed saves) is deleted."""
    root = storage.join(output_dir, STATE_DIR)
    for name in (STATE_JSON, STATE_WEIGHTS, "_SUCCESS"):  # the old layout; state.json first
        if storage.exists(storage.join(root, name)):
            storage.remove_tree(storage.join(root, name))
    for name in storage.listdir(root):
        if name != keep and (_step_of(name) is not None or _is_staging(name, "step-")):
            storage.remove_tree(storage.join(root, name))
    if not storage.is_remote(output_dir):  # the old layout's staging, beside state/
        for name in storage.listdir(output_dir):
            if _is_staging(name, STATE_DIR):
                storage.remove_tree(storage.join(output_dir, name))


def _step_of(name: str) -> int | None:
    if name.startswith("step-") and name[5:].isdigit():
        return int(name[5:])
    return None


def _file_size(path: str) -> int:
    with storage.open_file(path, "rb") as f:
        return f.seek(0, 2)


@dataclasses.dataclass
class SavedState:
    """A training state found in a run dir: ``state`` (``state.json``) and ``path`` when
    it is complete, else ``problem`` says why it cannot be resumed from."""

    path: str
    step: int | None
    state: dict[str, Any] | None = None
    problem: str | None = None


def _inspect_state(path: str, step: int | None) -> SavedState:
    found = SavedState(path, step)
    json_path = storage.join(path, STATE_JSON)
    if not storage.exists(json_path):
        found.problem = f"no {STATE_JSON} (its save did not finish)"
        return found
    try:
        state = json.loads(storage.read_text(json_path))
    except json.JSONDecodeError as exc:
        found.problem = f"{STATE_JSON} is corrupt ({exc})"
        return found
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        found.problem = f"{STATE_JSON} is corrupt (no step)"
        return found
    if step is not None and state["step"] != step:
        found.problem = f"{STATE_JSON} says step {state['step']}"
        return found
    found.step = state["step"]
    weights = storage.join(path, STATE_WEIGHTS)
    if not storage.exists(weights):
        found.problem = f"no {STATE_WEIGHTS} (its save did not finish)"
        return found
    if storage.is_remote(path) and not storage.exists(storage.join(path, "_SUCCESS")):
        found.problem = "no _SUCCESS marker (its upload did not finish)"
        return found
    expected = (state.get("files") or {}).get(STATE_WEIGHTS)
    if expected is not None and _file_size(weights) != int(expected):
        found.problem = (f"{STATE_WEIGHTS} has {_file_size(weights)} bytes, {STATE_JSON} "
                         f"records {expected} (truncated or torn)")
        return found
    found.state = state
    return found


def saved_states(output_dir: str) -> list[SavedState]:
    """Every training state in a run dir, oldest first, complete or not: ``state/step-N/``
    directories, the single ``state/`` of older runs, and the staging directories of
    killed saves (never complete)."""
    root = storage.join(output_dir, STATE_DIR)
    found: list[SavedState] = []
    if not storage.isdir(root):
        return found
    if storage.exists(storage.join(root, STATE_JSON)):  # a run from before state/step-N/
        found.append(_inspect_state(root, None))
    for name in storage.listdir(root):
        step = _step_of(name)
        if step is not None:
            found.append(_inspect_state(storage.join(root, name), step))
        elif _is_staging(name, "step-"):
            found.append(SavedState(storage.join(root, name), None,
                                    problem="a staging directory left by a killed save"))
    return sorted(found, key=lambda s: -1 if s.step is None else s.step)


def find_state(output_dir: str) -> tuple[SavedState | None, list[SavedState]]:
    """``(newest complete state or None, the states skipped as incomplete)``."""
    found = saved_states(output_dir)
    complete = [s for s in found if s.problem is None]
    return (complete[-1] if complete else None), [s for s in found if s.problem is not None]


def load_state(output_dir: str) -> dict[str, Any] | None:
    """``state.json`` of the newest complete training state, or None."""
    chosen, _ = find_state(output_dir)
    return None if chosen is None else chosen.state


def newer_checkpoints(output_dir: str, step: int) -> list[tuple[str, bool]]:
    """``(name, complete)`` of the checkpoint directories on disk past ``step``, oldest
    first (a checkpoint is published before the state that follows it: a kill or a failed
    state save in between leaves one)."""
    root = storage.join(output_dir, CHECKPOINTS_DIR)
    if not storage.isdir(root):
        return []
    found = []
    for name in storage.listdir(root):
        n = _step_of(name)
        if n is not None and n > step:
            path = storage.join(root, name)
            complete = storage.exists(storage.join(path, ckpt.CHECKPOINT_INFO)) and (
                not storage.is_remote(path) or storage.exists(storage.join(path, "_SUCCESS")))
            found.append((n, name, complete))
    return [(name, complete) for _, name, complete in sorted(found)]


def choose_resume_state(output_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    """The state a (re-)run starts from, with one line printed for each thing skipped and
    for a checkpoint newer than the state: ``(state.json, its directory)``, or
    ``(None, None)`` to start at step 0.

    The newest *complete* state wins; half-written ones (a staging directory, a missing or
    truncated file, no ``_SUCCESS`` on an object store) are skipped. A checkpoint newer
    than that state holds the weights but not the optimizer (moments, step counter,
    accumulated gradients) nor the dropout seed states, so training resumes from the
    state and re-trains the steps up to it, writing that checkpoint again: starting from
    its weights with a fresh optimizer would break the deterministic-resume guarantee (a
    killed and resumed run ends bit-identical to an uninterrupted one) and, with Adam's
    moments reset to zero, take outsized first updates. At most ``checkpoint_every`` steps
    are re-trained. With no complete state left while ``checkpoints.json`` lists
    checkpoints (a damaged run dir, not a kill), starting over would throw their training
    away: that is refused.
    """
    chosen, skipped = find_state(output_dir)
    for s in skipped:
        print(f"skipping training state {s.path}: {s.problem}", flush=True)
    listed = _read_checkpoints(output_dir)
    if chosen is None and listed:
        last = max(int(c["step"]) for c in listed)
        why = "; ".join(f"{s.path}: {s.problem}" for s in skipped) or f"no {STATE_DIR}/"
        raise KorlmError(f"cannot resume {output_dir}: checkpoints.json lists checkpoints up to "
                         f"step {last} but no complete training state is left ({why}); restore "
                         "the state or use a new --output")
    step = 0 if chosen is None else int(chosen.step)
    newer = newer_checkpoints(output_dir, step)
    for name, complete in newer:
        if not complete:
            print(f"checkpoint {name} is incomplete (its save did not finish): it is written "
                  "again when training reaches its step", flush=True)
    complete = [name for name, ok in newer if ok]
    if complete:
        last = _step_of(complete[-1])
        which = (f"the training state at step {step} ({chosen.path})" if chosen is not None
                 else "step 0 (no training state was saved)")
        print(f"resuming from {which}: checkpoint {complete[-1]} is newer but holds no "
              f"optimizer state, so steps {step + 1}-{last} are retrained and "
              f"{', '.join(complete)} written again", flush=True)
    return (None, None) if chosen is None else (chosen.state, chosen.path)


def _seed_generators(task) -> list:
    """The dropout layers' seed generators, in layer order (their states move every step;
    a deterministic resume restores them)."""
    import keras

    found = []
    for layer in task._flatten_layers():
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator) and value not in found:
                found.append(value)
    return found


def _seed_states(task) -> list[list[int]]:
    return [[int(x) for x in g.state.numpy().reshape(-1)] for g in _seed_generators(task)]


def restore_state(task, state_dir: str, step: int, seed_states: list | None = None) -> None:
    """Load a training state directory (:func:`choose_resume_state`) into a compiled task
    whose optimizer is built."""
    if not storage.exists(storage.join(state_dir, STATE_WEIGHTS)):
        raise KorlmError(f"cannot resume: {state_dir} has state.json but no {STATE_WEIGHTS}; "
                         "use a new --output")
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
    except (ValueError, OSError, KeyError, RuntimeError) as exc:  # h5py: RuntimeError too
        raise KorlmError(f"cannot resume from {state_dir} (corrupt or incompatible: "
                         f"{str(exc).splitlines()[0][:200]}); use a new --output") from None
    finally:
        if local != state_dir:
            shutil.rmtree(local, ignore_errors=True)
    restored = int(task.optimizer.iterations.numpy())
    if restored != step:
        raise KorlmError(f"{state_dir} is inconsistent: state.json says step {step}, the "
                         f"optimizer is at step {restored}; use a new --output")
    generators = _seed_generators(task)
    if seed_states and len(seed_states) == len(generators):
        import numpy as np

        for generator, value in zip(generators, seed_states, strict=True):
            generator.state.assign(
                np.asarray(value, dtype=generator.state.dtype).reshape(generator.state.shape))


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


def prune_checkpoints(checkpoints: list[dict], *, keep_last: int | None,
                      keep_every: int | None, final_step: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the last ``keep_last`` checkpoints, every checkpoint whose step is
    a multiple of ``keep_every`` (the ones evaluated) and the final one are kept;
    ``keep_last`` None keeps everything."""
    if keep_last is None:
        return list(checkpoints), []
    ordered = sorted(checkpoints, key=lambda c: c["step"])
    recent = {c["step"] for c in ordered[-keep_last:]} if keep_last > 0 else set()
    kept, dropped = [], []
    for c in ordered:
        keep = (c["step"] in recent or c["step"] == final_step
                or (keep_every and c["step"] % keep_every == 0))
        (kept if keep else dropped).append(c)
    return kept, dropped


# -------------------------------------------------------------------- training

PREEMPT_ENV = "KORLM_PREEMPT_AT_STEP"


def _monitor_class():
    import keras

    class TrainMonitor(keras.callbacks.Callback):
        """Logs every ``log_every`` steps, checkpoints every ``checkpoint_every`` steps.

        ``fit`` counts micro-batches; with gradient accumulation an update (a step) is
        every ``micro_batches`` of them, and only update boundaries are acted on."""

        def __init__(self, *, run: dict, phase: dict, start_step: int, micro_per_epoch: int,
                     log: _TrainLog, checkpoints: list[dict], writer, schedule, progress,
                     flops_per_token: float | None, peak_flops: float | None,
                     task, nsp_head=None, tokenizer_files=None):
            super().__init__()
            self.tokenizer_files = tokenizer_files
            # What a checkpoint holds: the pretraining task (+ NSP head); the trained
            # model may be a wrapper around them.
            self.task, self.nsp_head = task, nsp_head
            self.run, self.phase, self.start_step = run, phase, start_step
            self.micro_per_epoch, self.micro = micro_per_epoch, run["grad_accum_steps"]
            self.log, self.checkpoints, self.writer = log, checkpoints, writer
            self.tokens_per_step = phase["batch_size"] * phase["max_seq_length"]
            self.schedule, self.progress = schedule, progress
            self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
            self.metric = accuracy_name(run["objective"])
            self.window_start = time.perf_counter()
            self.window_steps = 0
            self.last_loss: float | None = None
            preempt = os.environ.get(PREEMPT_ENV, "").strip()
            self.preempt_at = int(preempt) if preempt.isdigit() else None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_base = self.start_step * self.micro + epoch * self.micro_per_epoch

        def on_train_batch_end(self, batch, logs=None):
            micro = self.epoch_base + batch + 1
            if micro % self.micro:
                return
            run, step = self.run, micro // self.micro
            self.window_steps += 1
            if self.progress is not None:
                self.progress.update(1)
            is_log = step % run["log_every"] == 0 or step == run["steps"]
            is_ckpt = step % run["checkpoint_every"] == 0 or step == run["steps"]
            if is_log or is_ckpt:
                self.last_loss = float(logs["loss"])
            if is_log:
                self._log(step, logs)
            if is_ckpt:
                saving = time.perf_counter()
                self._checkpoint(step)
                self.window_start += time.perf_counter() - saving  # speed = training only
            if step >= self.phase["end_step"]:
                self.model.stop_training = True
            if self.preempt_at is not None and step >= self.preempt_at:
                # Fault injection for preemption tests: die like a reclaimed VM, no cleanup.
                print(f"{PREEMPT_ENV}={self.preempt_at}: killing the process after step {step}",
                      flush=True)
                os.kill(os.getpid(), 9)

        def _log(self, step: int, logs) -> None:
            run = self.run
            loss, accuracy = float(logs["loss"]), float(logs[self.metric])
            seconds = max(time.perf_counter() - self.window_start, 1e-9)
            # The rate step `step` was taken with (the schedule counts from 0).
            lr = float(self.schedule((step - 1) * self.micro))
            tokens_per_second = self.window_steps * self.tokens_per_step / seconds
            record = {
                "step": step, "loss": round(loss, 5), self.metric: round(accuracy, 5),
                **{k: round(float(logs[k]), 5) for k in ("mlm_loss", "nsp_loss", "nsp_accuracy")
                   if k in logs},
                "learning_rate": lr, "max_seq_length": self.phase["max_seq_length"],
                "steps_per_second": round(self.window_steps / seconds, 3),
                # Sequence positions (batch x max_seq_length, padding included).
                "tokens_per_second": round(tokens_per_second, 1),
                "time": round(time.time(), 3),
            }
            if self.flops_per_token:
                # 4 significant digits: a tiny model on a CPU runs at a few GFLOP/s.
                record["model_tflops_per_second"] = float(
                    f"{tokens_per_second * self.flops_per_token / 1e12:.4g}")
                if self.peak_flops:
                    record["mfu"] = float(
                        f"{tokens_per_second * self.flops_per_token / self.peak_flops:.4g}")
            self.log.append(record)
            if self.writer is not None:
                import tensorflow as tf

                with self.writer.as_default(step=step):
                    for key in ("loss", self.metric, "learning_rate", "tokens_per_second", "mfu",
                                "mlm_loss", "nsp_loss", "nsp_accuracy"):
                        if key in record:
                            tf.summary.scalar(key, record[key])
                self.writer.flush()
            mfu = f" MFU {record['mfu']:.1%}" if "mfu" in record else ""
            nsp = (f" nsp_accuracy {record['nsp_accuracy']:.4f}" if "nsp_accuracy" in record else "")
            line = (f"step {step}/{run['steps']} loss {loss:.4f} {self.metric} {accuracy:.4f}{nsp} "
                    f"lr {lr:.2e} {record['steps_per_second']:.2f} steps/s "
                    f"{record['tokens_per_second']:.0f} tokens/s{mfu}")
            if self.progress is not None:
                self.progress.write(line)
            else:
                print(line, flush=True)
            self.model.reset_metrics()
            self.window_start = time.perf_counter()
            self.window_steps = 0

        def _checkpoint(self, step: int) -> None:
            run = self.run
            uri = storage.join(run["output_dir"], CHECKPOINTS_DIR, checkpoint_name(step))
            info = {k: run[k] for k in RESUME_KEYS}
            info.update(step=step, train_loss=self.last_loss, objective=run["objective"])
            with _optimizer_detached(self.task) as task:
                ckpt.save_checkpoint(task, uri, info, nsp_head=self.nsp_head,
                                       tokenizer_files=self.tokenizer_files)
            # The state follows the checkpoint: a kill between the two re-trains from the
            # previous state and overwrites this checkpoint with the same step
            # (choose_resume_state says so).
            examples = self.phase["examples_before"] + (
                step - self.phase["start_step"]) * self.phase["batch_size"]
            save_state(self.model, run["output_dir"],
                       {**info, "log_every": run["log_every"], "phase": self.phase["index"],
                        "examples_seen": examples,
                        "phase_examples_seen": (step - self.phase["start_step"]) * self.phase["batch_size"]})
            self.checkpoints[:] = [c for c in self.checkpoints if c["step"] < step]
            self.checkpoints.append({"step": step, "uri": uri})
            kept, dropped = prune_checkpoints(self.checkpoints, keep_last=run["keep_checkpoints"],
                                              keep_every=run["keep_checkpoint_every"],
                                              final_step=run["steps"])
            self.checkpoints[:] = kept
            _write_json_atomic(storage.join(run["output_dir"], CHECKPOINTS_JSON), self.checkpoints)
            for old in dropped:  # after checkpoints.json stops naming them
                storage.remove_tree(old["uri"])
            if storage.is_remote(run["output_dir"]):
                self.log.flush()
            msg = f"checkpoint {checkpoint_name(step)} -> {uri}"
            if dropped:
                msg += f" (removed {', '.join(checkpoint_name(c['step']) for c in dropped)})"
            if self.progress is not None:
                self.progress.write(msg)
            else:
                print(msg, flush=True)

    return TrainMonitor


def _build_without_reading(model, dataset, batch_size: int) -> None:
    """Build the compiled loss and metrics from the dataset's spec. Otherwise the first
    ``fit`` of a process pulls (and loses) a batch to build them, and ``examples_seen``
    would be a batch short of the data position after every (re)start."""
    import numpy as np
    import tensorflow as tf

    def zeros(spec):
        shape = [d if d is not None else batch_size for d in spec.shape]
        return np.zeros(shape, spec.dtype.as_numpy_dtype)

    model._symbolic_build(data_batch=tf.nest.map_structure(zeros, dataset.element_spec))


def _summary_writer(output_dir: str):
    """TensorBoard event files (``tensorboard/``); train_log.jsonl holds the same numbers."""
    try:
        import tensorboard  # noqa: F401  (tf.summary writes scalars only with it)
    except ImportError:
        print("WARNING: the tensorboard package is missing: no TensorBoard events are written "
              "(train_log.jsonl has the same figures)", flush=True)
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(storage.join(output_dir, TENSORBOARD_DIR))


def _progress_bar(total: int, initial: int, show: str):
    """A tqdm bar on a terminal (``progress: auto``) or always (``bar``); log lines only
    (``lines``) or when stdout is not a terminal (KFP and Vertex logs)."""
    import sys

    if show == "lines" or (show == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def plan_phases(steps: int, batch_size: int, max_seq_length: int | None,
                phases: list[dict] | None) -> list[dict]:
    """The run as phases: ``[{index, start_step, end_step, batch_size, max_seq_length,
    examples_before}]``. Without ``phases`` one phase covers every step. With phases
    (the two-phase BERT recipe: most steps at 128 tokens, the rest at 512), their steps
    must add up to ``steps``; an unset ``batch_size`` takes the run's."""
    specs = phases or [{"steps": steps, "max_seq_length": max_seq_length, "batch_size": batch_size}]
    total = sum(int(p["steps"]) for p in specs)
    if total != steps:
        raise KorlmError(f"pretrain.phases add up to {total} steps but pretrain.steps is {steps}")
    plan, start, examples = [], 0, 0
    for i, spec in enumerate(specs):
        if int(spec["steps"]) <= 0:
            raise KorlmError(f"pretrain.phases[{i}].steps must be greater than 0")
        batch = int(spec.get("batch_size") or batch_size)
        plan.append({"index": i, "start_step": start, "end_step": start + int(spec["steps"]),
                     "batch_size": batch, "max_seq_length": spec.get("max_seq_length") or max_seq_length,
                     "examples_before": examples})
        examples += int(spec["steps"]) * batch
        start += int(spec["steps"])
    return plan


def phase_data_dir(data_dir: str, seq_len: int | None) -> str:
    """A phase's data: ``DATA/seq{N}`` when the pretraining data was also packed at that
    length (``pretrain_data.extra_seq_lengths``, listed in its ``seq_length_variants``),
    else ``DATA`` itself (examples longer than the phase's length are then cut)."""
    if not seq_len:
        return data_dir
    meta_path = storage.join(data_dir, "metadata.json")
    variants = {}
    if storage.exists(meta_path):
        try:
            variants = json.loads(storage.read_text(meta_path)).get("seq_length_variants") or {}
        except json.JSONDecodeError:
            return data_dir  # inspect_data names the corrupt file
    if str(seq_len) in variants:
        return storage.join(data_dir, variants[str(seq_len)])
    return data_dir


def _devices(strategy: str, tpu: str | None, precision: str, plan: list[dict], micro: int):
    """Strategy and precision (``korlm.distribute``), and the batch checked against the
    replicas before any model is built."""
    from korlm import distribute

    dist = distribute.resolve_strategy(strategy, tpu=tpu)
    choice = distribute.set_precision(precision, dist)
    for phase in plan:
        distribute.check_batch(phase["batch_size"], dist.num_replicas, micro)
    return dist, choice


def _check_memory(dist, task, model: str, size: str, plan: list[dict], micro: int,
                  policy: str) -> None:
    """Refuse a per-replica batch that certainly does not fit the device's memory."""
    from korlm import distribute
    from korlm.modeling.presets import model_config

    dims = model_config(model, size)
    layers = dims["num_layers"] * (2 if model == "bart" else 1)
    for phase in plan:
        distribute.check_train_memory(
            dist, params=int(task.count_params()),
            per_replica_batch=phase["batch_size"] // micro // dist.num_replicas,
            seq_len=phase["max_seq_length"], hidden=dims["hidden_dim"], layers=layers,
            precision=policy, heads=dims["num_heads"], intermediate=dims["intermediate_dim"])


def _flops_per_token(model: str, size: str, vocab_size: int, seq_len: int,
                     slots: int | None, mask_rate: float) -> float:
    from korlm import distribute
    from korlm.masking import default_max_predictions

    predictions = None
    if model != "bart":
        predictions = slots or default_max_predictions(seq_len, mask_rate)
    from korlm.modeling.presets import model_config

    return distribute.model_flops_per_token(model, model_config(model, size), vocab_size, seq_len,
                                            mlm_predictions=predictions)


def run_pretrain(data_dir: str, tokenizer_dir: str, output_dir: str, *, model: str = "bert",
                 size: str = "tiny", steps: int = 300, checkpoint_every: int = 100,
                 batch_size: int = 32, learning_rate: float = 5e-4, warmup_steps: int = 30,
                 weight_decay: float = 0.01, optimizer: str = "adamw", clip_norm: float = 1.0,
                 grad_accum_steps: int = 1, mask_rate: float = 0.15,
                 mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
                 whole_word: str = "none", max_predictions: int | None = None,
                 infill_rate: float = 0.3, poisson_lambda: float = 3.0,
                 permute_sentences: bool = False, ignore_nsp_labels: bool = False,
                 max_seq_length: int | None = None, phases: list[dict] | None = None,
                 keep_checkpoints: int | None = None, keep_checkpoint_every: int | None = None,
                 strategy: str = "auto", tpu: str | None = None, precision: str = "auto",
                 peak_tflops: float | None = None, deterministic: bool = False,
                 progress: str = "auto", seed: int = 0, log_every: int = 10,
                 overwrite: bool = False) -> list[dict]:
    """Pretrain a model from scratch; returns the checkpoint list (also in ``checkpoints.json``).

    ``model``: bert or roberta (masked LM) or bart (denoising: text infilling and optional
    sentence permutation), at ``size`` (``korlm.presets``). ``steps`` is the total number
    of optimizer updates of the run (``batch_size`` examples each, accumulated over
    ``grad_accum_steps`` micro-batches), so re-running with a larger value extends a
    finished run (the learning-rate schedule is then recomputed for the new total) and
    re-running with the same value after a kill continues where it stopped, at the same
    data position. ``phases`` splits the steps by sequence length (BERT: 90% at 128,
    10% at 512); the model is built for the longest.

    Masking: ``mask_rate`` of the maskable tokens (at most ``max_predictions``) are
    predicted, of which ``mask_token_rate`` become [MASK], ``random_token_rate`` a random
    token, the rest stay; ``whole_word`` (none|eojeol|morpheme) masks whole words. Static
    data brings its own masks. ``deterministic``: a killed and resumed run ends with the
    same weights as an uninterrupted one (op determinism, sequential input pipeline).

    ``output_dir`` must be new, empty or korlm's own pretraining run (resumed; with
    ``overwrite`` started again): a folder holding anything else is refused untouched.
    """
    if not storage.is_remote(output_dir):
        output_dir = os.path.abspath(output_dir)
    build.check_family(model)
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every),
                        ("batch_size", batch_size), ("log_every", log_every),
                        ("grad_accum_steps", grad_accum_steps)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if max_predictions is not None and int(max_predictions) < 1:
        raise KorlmError(f"max_predictions must be at least 1, got {max_predictions}")
    if warmup_steps < 0 or learning_rate <= 0 or weight_decay < 0:
        raise KorlmError("learning_rate must be > 0, warmup_steps and weight_decay >= 0")
    if optimizer not in OPTIMIZERS:
        raise KorlmError(f"optimizer {optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if keep_checkpoints is not None and int(keep_checkpoints) < 1:
        raise KorlmError(f"keep_checkpoints must be at least 1 (or unset to keep all), got {keep_checkpoints}")
    try:
        size_config(size)
    except ValueError as exc:
        raise KorlmError(str(exc)) from None
    plan = plan_phases(int(steps), int(batch_size), max_seq_length, phases)
    for phase in plan:
        if phase["batch_size"] % int(grad_accum_steps):
            raise KorlmError(f"batch size {phase['batch_size']} does not split into "
                             f"grad_accum_steps={grad_accum_steps} equal micro-batches")

    objective = build.objective_of(model)
    # Each phase's data, checked before anything imports TensorFlow or writes.
    phase_inputs = []
    for phase in plan:
        pdir = phase_data_dir(data_dir, phase["max_seq_length"])
        meta, files = inspect_data(pdir, tokenizer_dir)
        data_len = int(meta["max_seq_length"])
        phase["max_seq_length"] = seq_len = int(phase["max_seq_length"] or data_len)
        if seq_len < 8:
            raise KorlmError(f"max_seq_length must be at least 8, got {seq_len}")
        if seq_len > data_len:
            raise KorlmError(f"max_seq_length {seq_len} is longer than the data's {data_len} "
                             f"({pdir}): no example would be longer than {data_len}; make data "
                             f"with `korlm pretrain-data --max-seq-length {seq_len}`")
        if seq_len < data_len:
            print(f"WARNING: phase {phase['index'] + 1} trains at {seq_len} tokens on data packed "
                  f"at {data_len} ({pdir}): longer examples are cut and their tail is never "
                  f"trained on; pack at {seq_len} too (pretrain_data.extra_seq_lengths)", flush=True)
        phase_inputs.append((pdir, meta, files))
    first_meta = phase_inputs[0][1]
    for pdir, meta, _ in phase_inputs[1:]:
        if int(meta["vocab_size"]) != int(first_meta["vocab_size"]):
            raise KorlmError(f"{pdir} was made with another vocabulary than {phase_inputs[0][0]}")

    # The run folder: new, empty or korlm's own run (see RUN_ENTRIES); checked before
    # TensorFlow loads, claimed (marked) once every setting has been checked.
    storage.check_run_dir(output_dir, "pretrain", RUN_ENTRIES, inputs=[data_dir, tokenizer_dir],
                          overwrite=overwrite)

    # After the data checks: these import TensorFlow, which is slow and noisy on stderr.
    from korlm.masking import check_rates
    from korlm.noising import check_noising

    check_rates(mask_rate, mask_token_rate, random_token_rate)
    check_noising(infill_rate, poisson_lambda)
    prepared = []
    for pdir, meta, files in phase_inputs:
        features = data_features(meta, files)
        masking = check_data_settings(pdir, meta, features, objective=objective,
                                      whole_word=whole_word, permute_sentences=permute_sentences,
                                      ignore_nsp_labels=ignore_nsp_labels, model=model)
        if masking == "static":
            print(f"{pdir} is statically masked (dupe_factor {meta.get('dupe_factor')}): using its "
                  "masks; mask_rate, mask_token_rate, random_token_rate and whole_word do not apply",
                  flush=True)
        prepared.append((pdir, meta, files, features, masking))
    model_seq_len = max(p["max_seq_length"] for p in plan)
    labelled = {has_nsp_labels(p[1], p[3]) for p in prepared}
    if len(labelled) > 1:
        raise KorlmError("some phases' data have next-sentence labels and some do not; make all "
                         "phases' data with the same pretrain_data.nsp")
    nsp = labelled == {True} and not ignore_nsp_labels
    run = {
        "output_dir": output_dir, "model": model, "size": size, "objective": objective,
        "vocab_size": int(first_meta["vocab_size"]),
        "vocab_hash": first_meta.get("vocab_hash") or tokenizer_vocab_hash(tokenizer_dir),
        "max_seq_length": model_seq_len, "grad_accum_steps": int(grad_accum_steps),
        "steps": int(steps), "checkpoint_every": int(checkpoint_every),
        "log_every": int(log_every), "keep_checkpoints": keep_checkpoints,
        "keep_checkpoint_every": keep_checkpoint_every, "nsp": nsp,
    }
    # Every checkpoint carries the tokenizer (read once here, written into each).
    tokenizer_files = ckpt.read_tokenizer_files(tokenizer_dir)

    claim = storage.claim_run_dir(output_dir, "pretrain", RUN_ENTRIES,
                                  inputs=[data_dir, tokenizer_dir], overwrite=overwrite)
    if claim == "replace":
        print(f"{output_dir}: --overwrite: the earlier run's checkpoints, state and logs were "
              "removed; training starts again", flush=True)
    # what a killed run of this folder was writing (a checkpoint's or a state's staging
    # folder is found and reported by choose_resume_state)
    storage.remove_stale_staging(output_dir, STATE_DIR)
    state, resume_dir = choose_resume_state(output_dir)
    start_step = 0
    if state is not None:
        for key in RESUME_KEYS:
            if key in state and state.get(key) != run[key]:
                raise KorlmError(
                    f"{output_dir} holds a run with {key}={state.get(key)!r}, not {run[key]!r}; "
                    "use a new --output or the original settings to resume")
        start_step = int(state["step"])
    checkpoints = [c for c in _read_checkpoints(output_dir) if c["step"] <= start_step]
    if start_step >= steps:
        print(f"{output_dir} already trained to step {start_step}; nothing to do", flush=True)
        storage.mark_complete(output_dir)
        return checkpoints

    import keras

    policy_before = keras.mixed_precision.global_policy().name
    try:
        checkpoints = _train(**locals())
    except BaseException:
        if claim in ("new", "empty"):  # e.g. no GPU for strategy gpu: leave no run folder
            storage.release_run_dir(output_dir, remove_folder=claim == "new")
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
    storage.mark_complete(output_dir)
    return checkpoints


def _train(*, data_dir, tokenizer_dir, output_dir, model, size, steps, checkpoint_every,
           batch_size, learning_rate, warmup_steps, weight_decay, optimizer, clip_norm,
           grad_accum_steps, mask_rate, mask_token_rate, random_token_rate, whole_word,
           max_predictions, infill_rate, poisson_lambda, permute_sentences, plan, prepared,
           run, state, resume_dir, start_step, checkpoints, tokenizer_files, strategy, tpu,
           precision, peak_tflops, deterministic, progress, seed, objective, model_seq_len,
           nsp, **_unused) -> list[dict]:
    dist, precision_choice = _devices(strategy, tpu, precision, plan, int(grad_accum_steps))
    import keras

    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    with dist.scope():
        task = build.build_pretraining_task(model, size, run["vocab_size"], model_seq_len)
        # With next-sentence labels BERT trains both heads; checkpoints save the MLM task
        # (and the NSP layer beside it), the state the whole trained model.
        trained, nsp_head = build.add_next_sentence_head(task) if nsp else (task, None)
        schedule = compile_pretraining(
            trained, objective=objective, nsp=nsp, learning_rate=learning_rate, warmup_steps=warmup_steps,
            total_steps=steps, weight_decay=weight_decay, optimizer=optimizer,
            clip_norm=clip_norm, grad_accum_steps=int(grad_accum_steps),
            # XLA where it pays: under JAX always, on TF GPUs/TPUs; on a TF CPU it
            # compiled for long and ran no faster here.
            jit_compile=dist.jit_compile)
    _check_memory(dist, task, model, size, plan, int(grad_accum_steps), precision_choice.policy)
    if start_step:
        restore_state(trained, resume_dir, start_step,
                      state.get("seed_states") if deterministic else None)
        print(f"resuming {output_dir} from step {start_step}", flush=True)
    if not deterministic:
        # A resumed run sees fresh masks and dropout, not a replay of the first steps'.
        keras.utils.set_random_seed(seed + start_step)

    storage.makedirs(output_dir)
    log = _TrainLog(output_dir, keep_until_step=start_step)
    _write_json_atomic(storage.join(output_dir, CHECKPOINTS_JSON), checkpoints)
    writer = _summary_writer(output_dir)
    # MFU's denominator: pretrain.peak_tflops per device, or the table's figure for the
    # device and precision (None on a CPU: no MFU is logged).
    peak = dist.peak_flops(precision_choice.policy,
                           override=peak_tflops * 1e12 if peak_tflops else None)
    params = trained.count_params()
    print(f"pretraining {model}-{size}{' with the next-sentence head' if nsp else ''} "
          f"({params:,} params) on {dist.describe()}, "
          f"{precision_choice.policy} ({precision_choice.reason}): steps "
          f"{start_step + 1}..{steps}, batch {batch_size}"
          + (f" in {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else "")
          + ", phases " + ", ".join(f"{p['end_step'] - p['start_step']} steps x seq "
                                    f"{p['max_seq_length']}" for p in plan), flush=True)
    progress = _progress_bar(int(steps), start_step, progress)
    special_fallback = DEFAULT_SPECIAL_IDS
    try:
        for phase, (pdir, meta, files, features, masking) in zip(plan, prepared, strict=True):
            if phase["end_step"] <= start_step:
                continue
            first = max(start_step, phase["start_step"])
            seq_len, batch = phase["max_seq_length"], phase["batch_size"]
            micro_batch = batch // int(grad_accum_steps)
            special_ids = {**special_fallback, **(meta.get("special_token_ids") or {})}
            print(f"phase {phase['index'] + 1}/{len(plan)}: steps {first + 1}..{phase['end_step']} "
                  f"at seq {seq_len} from {pdir} ({len(files)} shards, {meta['num_examples']:,} "
                  "examples)", flush=True)
            dataset = make_dataset(
                files, batch_size=micro_batch, max_seq_length=seq_len,
                vocab_size=run["vocab_size"], special_ids=special_ids, mask_rate=mask_rate,
                seed=seed + phase["index"], data_max_seq_length=int(meta["max_seq_length"]),
                objective=objective, features=features, masking=masking,
                mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                whole_word=whole_word, max_predictions=_label_slots(meta, masking, max_predictions),
                static_mask_rate=meta.get("mask_rate"), infill_rate=infill_rate,
                poisson_lambda=poisson_lambda, permute_sentences=permute_sentences,
                segment_ids=build.uses_segment_ids(model), sequential=deterministic, nsp=nsp,
                skip_examples=(first - phase["start_step"]) * batch)
            remaining = phase["end_step"] - first
            chunk = min(int(checkpoint_every), remaining)
            micro = int(grad_accum_steps)
            monitor = _monitor_class()(
                run=run, phase=phase, start_step=first, micro_per_epoch=chunk * micro, log=log,
                checkpoints=checkpoints, writer=writer, schedule=schedule, progress=progress,
                flops_per_token=_flops_per_token(model, size, run["vocab_size"], seq_len,
                                                 _label_slots(meta, masking, max_predictions)
                                                 if objective == "mlm" else None, mask_rate),
                peak_flops=peak, task=task, nsp_head=nsp_head, tokenizer_files=tokenizer_files)
            _build_without_reading(trained, dataset, micro_batch)
            with warnings.catch_warnings():
                # The pooler is part of BERT's backbone but not of the MLM loss.
                warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
                trained.fit(dataset, steps_per_epoch=chunk * micro,
                         shuffle=False, epochs=math.ceil(remaining / chunk), callbacks=[monitor],
                         verbose=0)
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
    return list(checkpoints)
