"""Masked-LM masking as TensorFlow ops, for ``tf.data`` on any host (CPU, GPU, TPU VM).

The frame is ``tensorflow_text.mask_language_model``: an item selector picks what to
predict, a ``MaskValuesChooser`` decides 80/10/10 per selected token, and tf-text does the
gathers and scatters. What korlm adds:

- :class:`WholeWordSelector` (whole-word masking): the batch is grouped ``[batch, (words),
  (tokens)]`` from the ``word_starts`` / ``morpheme_starts`` features, words are visited
  in random order and taken whole while they fit in the *token* budget
  ``min(ceil(maskable_tokens * rate), max_predictions)`` (a word that does not fit is
  skipped, as in BERT's ``create_pretraining_data``). tf-text's ``RandomItemSelector``
  counts its budget in items, so with grouped input it masks ``ceil(words * rate)`` words:
  a token budget that varies with word length and can overflow ``max_predictions``.
- Token-level masking keeps tf-text's ``RandomItemSelector`` (its budget is the same
  ``ceil(maskable * rate)`` capped at ``max_predictions``), as KerasHub's
  ``MaskedLMMaskGenerator`` did before.
- :class:`NonSpecialMaskValuesChooser`: the 10% random replacements are drawn from the
  vocabulary *without* the special tokens (tf-text draws from all ids, so ``[CLS]`` or
  ``[PAD]`` could appear mid-sequence).

Special tokens (every role in the data's ``special_token_ids``) are never selected: each
is forced to be a word of its own and is unselectable. Output is what KerasHub's
``BertMaskedLM`` takes: ``token_ids``, ``mask_positions`` (ascending) and the labels
``mask_ids`` / ``mask_weights``, padded to ``max_predictions`` slots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import tensorflow as tf
import tensorflow_text as tf_text

from korlm.errors import KorlmError

WHOLE_WORD_MODES = ("none", "eojeol", "morpheme")
# The feature holding the word boundaries of each whole-word mode.
WORD_FEATURE = {"eojeol": "word_starts", "morpheme": "morpheme_starts"}


def special_id_list(special_ids: Mapping[str, int]) -> list[int]:
    """The distinct special-token ids, ascending."""
    return sorted({int(i) for i in special_ids.values() if i is not None})


def check_rates(mask_rate: float, mask_token_rate: float, random_token_rate: float) -> None:
    """One-line KorlmError for impossible masking rates."""
    if not 0 < mask_rate < 1:
        raise KorlmError(f"mask_rate must be between 0 and 1, got {mask_rate}")
    if mask_token_rate < 0 or random_token_rate < 0:
        raise KorlmError("mask_token_rate and random_token_rate must be >= 0, got "
                         f"{mask_token_rate} and {random_token_rate}")
    if mask_token_rate + random_token_rate > 1 + 1e-9:
        raise KorlmError(f"mask_token_rate + random_token_rate must be <= 1, got "
                         f"{mask_token_rate} + {random_token_rate} = "
                         f"{mask_token_rate + random_token_rate:g}")


def default_max_predictions(max_seq_length: int, mask_rate: float) -> int:
    """Label slots per example when not configured: the largest budget an example of
    ``max_seq_length`` tokens can have."""
    return max(1, math.ceil(max_seq_length * mask_rate))


# ------------------------------------------------------------------ tf-text parts

class RandomDraws:
    """Where the masking and noising ops get their random numbers. ``seed`` None: TF's
    stateful ops (``tf.random.uniform``...), whose state a tf.data pipeline shares with
    every iterator Keras opens over it. ``seed`` a ``[2]`` int tensor (e.g. the run's
    seed and the batch index): stateless ops, each call with its own seed folded in from
    a counter, so a batch's draws depend on nothing but its seed — what a deterministic
    resume needs."""

    def __init__(self, seed=None):
        self.seed = None if seed is None else tf.cast(seed, tf.int64)
        self.calls = 0

    def _next_seed(self):
        self.calls += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.calls)

    def uniform(self, shape, maxval=None, dtype=tf.float32):
        if self.seed is None:
            return tf.random.uniform(shape, maxval=maxval, dtype=dtype)
        return tf.random.stateless_uniform(shape, self._next_seed(), maxval=maxval, dtype=dtype)

    def poisson(self, shape, lam):
        if self.seed is None:
            return tf.random.poisson(shape, lam)
        return tf.random.stateless_poisson(shape, self._next_seed(), lam)

    def shuffle(self, values):
        if self.seed is None:
            return tf.random.shuffle(values)
        return tf.random.experimental.stateless_shuffle(values, self._next_seed())


class WholeWordSelector(tf_text.RandomItemSelector):
    """tf-text's random selector with the budget counted in tokens, not items: selects
    whole words (axis 1 of ``[batch, (words), (tokens)]``) in random order until
    ``min(ceil(maskable_tokens * rate), max_selections_per_batch)`` tokens are selected; a
    word longer than what is left is skipped and later, shorter words are still tried
    (BERT's recipe). Words holding an unselectable id are never selected."""

    def __init__(self, *args, draws: RandomDraws | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = draws or RandomDraws()

    def get_selection_mask(self, input_ids, axis=1):
        if axis != 1 or input_ids.ragged_rank != 2:
            raise ValueError("WholeWordSelector takes [batch, (words), (tokens)] at axis 1")
        selectable = self.get_selectable(input_ids, axis)  # [batch, (words)]
        word_len = tf.cast(input_ids.row_lengths(axis=2), tf.int32)
        word_len = selectable.with_flat_values(
            tf.where(selectable.flat_values, word_len.flat_values, 0))
        maskable = tf.reduce_sum(word_len, axis=1)
        budget = tf.minimum(
            tf.cast(tf.math.ceil(tf.cast(maskable, tf.float32) * self.selection_rate), tf.int32),
            int(self.max_selections_per_batch))
        # Visiting order: selectable words in random order, then the rest.
        keys = selectable.with_flat_values(tf.where(
            selectable.flat_values, self.draws.uniform(tf.shape(selectable.flat_values)), 2.0))
        order = tf.argsort(keys.to_tensor(default_value=3.0), axis=1, stable=True)
        lengths = tf.gather(word_len.to_tensor(0), order, batch_dims=1)  # [batch, words]
        batch, num_words = tf.shape(lengths)[0], tf.shape(lengths)[1]

        # Greedy fill, one visiting rank at a time for the whole batch; stops once every
        # row's budget is used.
        def not_full(j, used, taken):
            return (j < num_words) & tf.reduce_any(used < budget)

        def visit(j, used, taken):
            length = lengths[:, j]
            ok = (length > 0) & (used + length <= budget)
            return j + 1, used + tf.where(ok, length, 0), taken.write(j, ok)

        _, _, taken = tf.while_loop(
            not_full, visit, (tf.constant(0), tf.zeros_like(budget),
                              tf.TensorArray(tf.bool, size=0, dynamic_size=True,
                                             element_shape=tf.TensorShape([None]))))
        taken = tf.transpose(tf.reshape(taken.stack(), [-1, batch]))
        taken = tf.pad(taken, [[0, 0], [0, num_words - tf.shape(taken)[1]]])
        # Back from visiting order to word order.
        chosen = tf.gather(taken, tf.argsort(order, axis=1), batch_dims=1)
        return tf.RaggedTensor.from_tensor(chosen, lengths=selectable.row_lengths())


class NonSpecialMaskValuesChooser(tf_text.MaskValuesChooser):
    """80/10/10 per selected token; the random replacements never draw a special token."""

    def __init__(self, vocab_size, mask_token, special_ids, mask_token_rate=0.8,
                 random_token_rate=0.1, draws: RandomDraws | None = None):
        super().__init__(vocab_size, mask_token, mask_token_rate, random_token_rate)
        self.draws = draws or RandomDraws()
        self.special_ids = sorted({int(i) for i in special_ids if 0 <= int(i) < vocab_size})
        if len(self.special_ids) >= vocab_size:
            raise KorlmError("the vocabulary holds only special tokens")

    def get_mask_values(self, masked_lm_ids):
        flat = masked_lm_ids.flat_values
        draw = self.draws.uniform(tf.shape(flat))
        # The r-th non-special id: step past each special id (ascending) at or below it.
        random_ids = self.draws.uniform(tf.shape(flat), maxval=self.vocab_size - len(self.special_ids),
                                        dtype=tf.int32)
        for special in self.special_ids:
            random_ids += tf.cast(random_ids >= special, tf.int32)
        values = tf.where(draw < self._mask_token_rate, tf.cast(self.mask_token, flat.dtype),
                          tf.where(draw < self._mask_token_rate + self._random_token_rate,
                                   tf.cast(random_ids, flat.dtype), flat))
        return masked_lm_ids.with_flat_values(values)


# ------------------------------------------------------------------------ masker

def group_words(token_ids, word_starts, special_ids: list[int]):
    """``[batch, (tokens)]`` -> ``[batch, (words), (tokens)]``. A word starts where
    ``word_starts`` is 1, at every special token, after every special token and at the
    first token of a row, so no word mixes special and ordinary tokens."""

    ids = token_ids.flat_values
    special = tf.zeros_like(ids, dtype=tf.bool)
    for i in special_ids:
        special |= tf.equal(ids, i)
    starts = tf.cast(word_starts.flat_values, tf.bool) | special
    after_special = tf.concat([[True], special[:-1]], axis=0)
    row_starts = tf.cast(token_ids.row_starts(), tf.int64)
    row_start = tf.scatter_nd(row_starts[:, None], tf.ones_like(row_starts, dtype=tf.bool),
                              tf.shape(ids, out_type=tf.int64))
    starts = starts | after_special | row_start
    positions = tf.where(starts)[:, 0]
    words = tf.RaggedTensor.from_row_starts(ids, positions, validate=False)
    rows = token_ids.with_flat_values(tf.cast(starts, tf.int64))
    return tf.RaggedTensor.from_row_lengths(words, tf.reduce_sum(rows, axis=1), validate=False)


@dataclass(frozen=True)
class MaskedLMMasker:
    """Dynamic MLM masking of ragged batches, in graph mode.

    ``masker(token_ids, word_starts=None)`` takes ``token_ids`` as a ``tf.RaggedTensor``
    ``[batch, (tokens)]`` (or a dense ``[batch, tokens]`` tensor with ``lengths``) and,
    for whole-word masking, ``word_starts`` of the same shape (1 where a word begins).
    Returns ``token_ids`` (ragged, masked), ``mask_positions``, ``mask_ids`` (int32) and
    ``mask_weights`` (float32), the last three ``[batch, max_predictions]``.
    """

    vocab_size: int
    special_ids: Mapping[str, int]
    mask_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    whole_word: bool = False
    max_predictions: int = 20

    def __post_init__(self):
        check_rates(self.mask_rate, self.mask_token_rate, self.random_token_rate)
        if "mask" not in self.special_ids:
            raise KorlmError("special_token_ids has no 'mask' role; remake the data with `korlm pretrain-data`")
        if int(self.max_predictions) < 1:
            raise KorlmError(f"max_predictions must be at least 1, got {self.max_predictions}")

    def selector(self, draws: RandomDraws | None = None):
        draws = draws or RandomDraws()
        specials = special_id_list(self.special_ids)
        if self.whole_word:
            return WholeWordSelector(int(self.max_predictions), self.mask_rate,
                                     unselectable_ids=specials, draws=draws)
        return tf_text.RandomItemSelector(
            max_selections_per_batch=int(self.max_predictions), selection_rate=self.mask_rate,
            unselectable_ids=specials, shuffle_fn=draws.shuffle)

    def chooser(self, draws: RandomDraws | None = None):
        return NonSpecialMaskValuesChooser(
            self.vocab_size, int(self.special_ids["mask"]), special_id_list(self.special_ids),
            mask_token_rate=self.mask_token_rate, random_token_rate=self.random_token_rate,
            draws=draws)

    def __call__(self, token_ids, word_starts=None, lengths=None, seed=None):
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.RaggedTensor.from_tensor(token_ids, lengths=lengths)
            if word_starts is not None and not isinstance(word_starts, tf.RaggedTensor):
                word_starts = tf.RaggedTensor.from_tensor(word_starts, lengths=lengths)
        token_ids = tf.cast(token_ids, tf.int32)
        items = token_ids
        if self.whole_word:
            if word_starts is None:
                raise KorlmError("whole-word masking needs word_starts")
            items = group_words(token_ids, word_starts, special_id_list(self.special_ids))
        draws = RandomDraws(seed)  # seed: [2] ints, or None for TF's stateful ops
        masked, positions, labels = tf_text.mask_language_model(
            items, item_selector=self.selector(draws), mask_values_chooser=self.chooser(draws))
        if masked.ragged_rank > 1:
            masked = masked.merge_dims(1, 2)
        shape = tf.cast([-1, self.max_predictions], tf.int64)
        return {
            "token_ids": masked,
            "mask_positions": tf.cast(positions, tf.int32).to_tensor(shape=shape),
            "mask_ids": tf.cast(labels, tf.int32).to_tensor(shape=shape),
            "mask_weights": tf.ones_like(positions, tf.float32).to_tensor(shape=shape),
        }


def static_mask_labels(masked_lm_positions, masked_lm_ids, lengths, max_predictions: int):
    """Labels of statically masked data (``masked_lm_positions``/``masked_lm_ids`` ragged
    ``[batch, (n)]``), padded to ``max_predictions`` slots. Positions at or beyond
    ``lengths - 1`` (cut off, or the closing separator after a cut) are dropped. More
    than ``max_predictions`` left in an example is an error, not a silent cut."""

    positions = tf.cast(masked_lm_positions, tf.int32)
    ids = tf.cast(masked_lm_ids, tf.int32)
    limit = tf.cast(tf.gather(lengths, positions.value_rowids()), tf.int32) - 1
    keep = positions.flat_values < limit
    positions = tf.ragged.boolean_mask(positions, positions.with_flat_values(keep))
    ids = tf.ragged.boolean_mask(ids, ids.with_flat_values(keep))
    check = tf.debugging.assert_less_equal(
        tf.reduce_max(tf.concat([tf.cast(positions.row_lengths(), tf.int64), [0]], 0)),
        tf.cast(max_predictions, tf.int64),
        message=f"static masking: an example has more masked positions than max_predictions "
                f"({max_predictions}); raise pretrain.max_predictions")
    with tf.control_dependencies([check]):
        shape = tf.cast([-1, max_predictions], tf.int64)
        return {
            "mask_positions": positions.to_tensor(shape=shape),
            "mask_ids": ids.to_tensor(shape=shape),
            "mask_weights": tf.ones_like(positions, tf.float32).to_tensor(shape=shape),
        }
