"""Pretraining input: the pretraining-data directory checked against the tokenizer and
the training settings, and the ``tf.data`` pipeline over its shards.

The input pipeline is pure ``tf.data``: read shards, batch, parse, mask dynamically with
``korlm.pretrain.masking`` (tf-text's masking ops: a fresh mask every time an example is
seen, token-level or whole-word by eojeol/morpheme, 80/10/10 configurable) or read the
masks of statically masked data, pad to the sequence length. ``make_dataset(objective=
"bart")`` gives BART's text infilling / sentence permutation batches
(``korlm.pretrain.noising``) instead. ``inspect_examples`` decodes a few batches for
``korlm pretrain-data --inspect``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.pretrain_data.shards import verify_shards
from korlm.tokenizer.files import hashes_match, normalize_hash, vocab_hash

DEFAULT_SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


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
    stamped the pretraining data (``korlm.tokenizer.files.vocab_hash``); None without a vocabulary."""
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
    from korlm.pretrain.masking import WHOLE_WORD_MODES, WORD_FEATURE

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


def label_slots(meta: dict[str, Any], masking: str, max_predictions: int | None) -> int | None:
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
    every time an example is seen (``korlm.pretrain.masking``); static data (``masking="static"``)
    brings its masks (``masked_lm_positions``/``masked_lm_ids``). ``whole_word`` reads
    word boundaries from ``word_starts`` (eojeol) or ``morpheme_starts``.

    ``objective="bart"``: ``(x, y, sample_weight)`` for ``BartSeq2SeqLM`` after text
    infilling and optional sentence permutation (``korlm.pretrain.noising``).

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

    from korlm.pretrain.masking import (
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
        from korlm.pretrain.noising import BartNoiser

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
    from korlm.pretrain.masking import check_rates
    from korlm.pretrain.noising import check_noising
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
        whole_word=whole_word, max_predictions=label_slots(meta, masking, max_predictions),
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
