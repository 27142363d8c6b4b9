"""BART noising as TensorFlow ops, for ``tf.data`` on any host: text infilling and sentence
permutation (Lewis et al. 2020, section 2.2), vectorised over a ragged batch.

Text infilling: per example, ``budget = ceil(maskable_tokens * infill_rate)`` tokens are
covered by spans whose lengths are drawn from Poisson(``poisson_lambda``); spans are drawn
until the budget is reached, and the span that crosses it is kept whole with probability
(budget left) / (its length), else dropped, so the expected masked count is the budget and
the mean span length stays at lambda (fairseq's ``add_whole_word_mask`` cuts the last span
to fit instead, which shortens the mean span to 2.89 at 128 tokens). The spans are laid out at random, disjoint, over the maskable tokens
(special tokens are never maskable, so ``<s>``/``</s>`` and document separators stay).
Each span becomes ONE mask token; a zero-length span inserts one mask token. A span is
never merged with a neighbour: two spans side by side give two mask tokens, so the number
of mask tokens equals the number of spans (a span that straddles an inner special token,
possible only when an example crosses a document boundary, gives one mask token each side).

Sentence permutation (optional, before infilling): the sentences (from the
``sentence_starts`` feature) between the first and last token are shuffled; the first
and last tokens stay in place, an inner special token moves as a unit of its own.

The decoder is trained to rebuild the original (unpermuted, unmasked) example. The
output is what KerasHub's ``BartSeq2SeqLM`` takes, packed the way its preprocessor packs
it: ``encoder_token_ids``/``encoder_padding_mask``; ``decoder_token_ids`` = ``[</s>, <s>,
tokens..., </s>]`` without its last position, ``decoder_padding_mask``; labels = the
original ids (the next decoder token), sample weights = their padding mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import tensorflow as tf

from korlm.errors import KorlmError
from korlm.pretrain.masking import RandomDraws, special_id_list


def _special_mask(ids, special_ids: list[int]):
    special = tf.zeros_like(ids, dtype=tf.bool)
    for i in special_ids:
        special |= tf.equal(ids, i)
    return special


def permute_sentences(token_ids, sentence_starts, special_ids: list[int],
                      draws: RandomDraws | None = None):
    """Shuffle the sentences of each row of ``token_ids`` (ragged ``[batch, (tokens)]``).

    A unit starts at every ``sentence_starts`` 1, at every special token and right after
    one; the first and the last token of a row are units that stay in place."""
    ids = token_ids.flat_values
    n = tf.shape(ids, out_type=tf.int64)[0]
    special = _special_mask(ids, special_ids)
    row_starts = tf.cast(token_ids.row_starts(), tf.int64)
    row_lasts = tf.cast(token_ids.row_limits(), tf.int64) - 1
    at_row_start = tf.scatter_nd(row_starts[:, None], tf.ones_like(row_starts, tf.bool), [n])
    after_row_start = tf.scatter_nd(tf.minimum(row_starts + 1, n - 1)[:, None],
                                    token_ids.row_lengths() > 1, [n])
    at_row_last = tf.scatter_nd(row_lasts[:, None], tf.ones_like(row_lasts, tf.bool), [n])
    after_special = tf.concat([[True], special[:-1]], axis=0)
    starts = (tf.cast(sentence_starts.flat_values, tf.bool) | special | after_special
              | at_row_start | after_row_start | at_row_last)
    unit_starts = tf.where(starts)[:, 0]
    units = tf.RaggedTensor.from_row_starts(tf.range(n), unit_starts, validate=False)
    unit_row = tf.gather(tf.cast(token_ids.value_rowids(), tf.int64), unit_starts)
    first = tf.gather(at_row_start, unit_starts)
    last = tf.gather(at_row_last, unit_starts) & ~first
    # Sort key: the row, then 0 (first unit), 1 + U[0,1) (movable units), 3 (last unit).
    offset = tf.where(first, 0.0, tf.where(last, 3.0, 1.0 + (draws or RandomDraws()).uniform(tf.shape(unit_row))))
    key = tf.cast(unit_row, tf.float64) * 4.0 + tf.cast(offset, tf.float64)
    order = tf.gather(units, tf.argsort(key, stable=True)).flat_values
    return token_ids.with_flat_values(tf.gather(ids, order))


@dataclass(frozen=True)
class BartNoiser:
    """Text infilling (+ optional sentence permutation) of ragged batches, in graph mode.

    ``noiser.infill(token_ids)`` -> ``(noised ragged ids, details)``; ``noiser(token_ids,
    sentence_starts=None)`` -> ``(x, y, sample_weight)`` padded to ``max_seq_length``.
    """

    special_ids: Mapping[str, int]
    max_seq_length: int
    infill_rate: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = False

    def __post_init__(self):
        check_noising(self.infill_rate, self.poisson_lambda)
        missing = [r for r in ("pad", "cls", "sep", "mask") if r not in self.special_ids]
        if missing:
            raise KorlmError(f"special_token_ids lacks the roles {', '.join(missing)}")

    @property
    def max_spans(self) -> int:
        """Spans drawn per example: enough that Poisson lengths reach the largest budget
        (mean + 4 standard deviations, plus slack for zero-length spans)."""
        budget = math.ceil(self.max_seq_length * self.infill_rate)
        spans = budget / self.poisson_lambda
        return int(math.ceil(1.2 * spans + 4 * math.sqrt(spans) + 8))

    def infill(self, token_ids, draws: RandomDraws | None = None):
        """Text infilling of ragged ``[batch, (tokens)]`` ids. Returns the noised ids
        (ragged) and a dict of details per row (``span_lengths``, ``span_starts`` in
        maskable-token coordinates, ``maskable``), for tests and inspection."""
        specials = special_id_list(self.special_ids)
        mask_id = int(self.special_ids["mask"])
        token_ids = tf.cast(token_ids, tf.int32)
        lengths = token_ids.row_lengths()
        ids = token_ids.to_tensor(default_value=-1)  # [batch, T]
        batch = tf.shape(ids)[0]
        valid = tf.sequence_mask(lengths, tf.shape(ids, out_type=tf.int64)[1])
        maskable = valid & ~_special_mask(ids, specials)
        maskable_i = tf.cast(maskable, tf.int32)
        n = tf.reduce_sum(maskable_i, axis=1)
        budget = tf.cast(tf.math.ceil(tf.cast(n, tf.float32) * self.infill_rate), tf.int32)

        # Span lengths: Poisson draws until the budget is reached. The span that crosses
        # the budget is kept whole with probability (budget left) / (its length), else
        # dropped: the expected masked count is the budget and the span lengths keep their
        # mean (cutting it to fit, as fairseq does, shortens spans: mean 2.89, not 3, at
        # 128 tokens).
        rng = draws or RandomDraws()
        draws = tf.cast(rng.poisson([batch, self.max_spans], self.poisson_lambda), tf.int32)
        before = tf.cumsum(draws, axis=1, exclusive=True)
        left = budget[:, None] - before
        kept = left > 0
        crossing = kept & (draws > left)
        drop = crossing & (rng.uniform(tf.shape(draws))
                           * tf.cast(draws, tf.float32) >= tf.cast(left, tf.float32))
        kept &= ~drop
        span_len = tf.where(kept, draws, 0)
        # A kept crossing span may pass the maskable tokens of a very short example: cut.
        room = n[:, None] - tf.cumsum(span_len, axis=1, exclusive=True)
        kept &= (room > 0) | (span_len == 0)
        span_len = tf.where(kept, tf.minimum(span_len, room), 0)
        unmasked = n - tf.reduce_sum(span_len, axis=1)
        # Layout: the unmasked tokens are cut into (spans + 1) runs of random length, the
        # i-th span goes after the i-th cut (cuts sorted; spans stay in draw order).
        big = tf.int32.max // 2
        cuts = tf.cast(tf.floor(rng.uniform(tf.shape(draws))
                                * tf.cast(unmasked + 1, tf.float32)[:, None]), tf.int32)
        cuts = tf.sort(tf.where(kept, tf.minimum(cuts, unmasked[:, None]), big), axis=1)
        span_start = tf.where(kept, cuts + tf.cumsum(span_len, axis=1, exclusive=True), big)

        # Which span covers each maskable token (coordinates: index among maskable tokens).
        cursor = tf.cumsum(maskable_i, axis=1, exclusive=True)
        span = tf.searchsorted(span_start, cursor, side="right") - 1
        span_c = tf.maximum(span, 0)
        covered = (maskable & (span >= 0)
                   & (cursor < tf.gather(span_start, span_c, batch_dims=1)
                      + tf.gather(span_len, span_c, batch_dims=1)))
        span_id = tf.where(covered, span, -1)
        prev_id = tf.pad(span_id[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
        opens = covered & (prev_id != span_id)
        # Zero-length spans insert a mask token before the maskable token at their start,
        # or, at the end, before the token after the last maskable one.
        zero = kept & (span_len == 0)
        inserts = tf.math.bincount(tf.where(zero, span_start, 0), weights=tf.cast(zero, tf.int32),
                                   minlength=tf.shape(ids)[1] + 1, axis=-1)
        prev_maskable = tf.pad(maskable[:, :-1], [[0, 0], [1, 0]])
        anchor = maskable | (valid & (cursor == n[:, None]) & prev_maskable)
        inserted = tf.where(anchor, tf.gather(inserts, cursor, batch_dims=1), 0)
        emit = tf.where(valid, inserted + tf.where(covered & ~opens, 0, 1), 0)

        flat = lambda t: tf.boolean_mask(t, valid)  # noqa: E731
        f_ids, f_emit, f_ins, f_cov = flat(ids), flat(emit), flat(inserted), flat(covered)
        source = tf.repeat(tf.range(tf.shape(f_ids)[0]), f_emit)
        k = tf.range(tf.shape(source)[0]) - tf.gather(tf.cumsum(f_emit, exclusive=True), source)
        values = tf.where((k < tf.gather(f_ins, source)) | tf.gather(f_cov, source),
                          mask_id, tf.gather(f_ids, source))
        noised = tf.RaggedTensor.from_row_lengths(values, tf.reduce_sum(emit, axis=1), validate=False)
        details = {
            "span_lengths": tf.RaggedTensor.from_tensor(span_len, lengths=tf.reduce_sum(tf.cast(kept, tf.int32), 1)),
            "span_starts": tf.RaggedTensor.from_tensor(span_start, lengths=tf.reduce_sum(tf.cast(kept, tf.int32), 1)),
            "maskable": n,
        }
        return noised, details

    def noise(self, token_ids, sentence_starts=None, seed=None):
        """Permutation (when on) then infilling; returns (noised ragged ids, details)."""
        token_ids = tf.cast(token_ids, tf.int32)
        draws = RandomDraws(seed)  # seed: [2] ints, or None for TF's stateful ops
        source = token_ids
        if self.permute_sentences:
            if sentence_starts is None:
                raise KorlmError("sentence permutation needs the sentence_starts feature")
            source = permute_sentences(token_ids, sentence_starts, special_id_list(self.special_ids),
                                       draws)
        noised, details = self.infill(source, draws)
        details["permuted"] = source
        return noised, details

    def __call__(self, token_ids, sentence_starts=None, seed=None):
        """``(x, y, sample_weight)`` for ``BartSeq2SeqLM``, padded to ``max_seq_length``."""
        length = self.max_seq_length
        pad, sep = int(self.special_ids["pad"]), int(self.special_ids["sep"])
        token_ids = tf.cast(token_ids, tf.int32)
        noised, _ = self.noise(token_ids, sentence_starts, seed)
        encoder_lengths = noised.row_lengths()
        # Zero-length spans can make a short example longer than max_seq_length: cut it,
        # keeping a closing </s>.
        too_long = encoder_lengths > length
        noised = noised[:, :length]
        last = tf.boolean_mask(noised.row_splits[1:] - 1, too_long)
        noised = noised.with_flat_values(tf.tensor_scatter_nd_update(
            noised.flat_values, last[:, None], tf.fill(tf.shape(last), sep)))
        encoder_lengths = tf.minimum(encoder_lengths, length)
        batch = tf.shape(encoder_lengths)[0]
        original = token_ids.to_tensor(default_value=pad, shape=[batch, length])
        lengths = tf.minimum(token_ids.row_lengths(), length)
        # The decoder reads [</s>, <s>, tokens..., </s>] and predicts the next token.
        decoder = tf.concat([tf.fill([batch, 1], sep), original[:, :-1]], axis=1)
        x = {
            "encoder_token_ids": noised.to_tensor(default_value=pad, shape=[batch, length]),
            "encoder_padding_mask": tf.sequence_mask(encoder_lengths, length),
            "decoder_token_ids": decoder,
            "decoder_padding_mask": tf.sequence_mask(tf.minimum(lengths + 1, length), length),
        }
        return x, original, tf.cast(tf.sequence_mask(lengths, length), tf.float32)


def check_noising(infill_rate: float, poisson_lambda: float) -> None:
    if not 0 <= infill_rate < 1:
        raise KorlmError(f"infill_rate must be in [0, 1), got {infill_rate}")
    if not 0 < poisson_lambda <= 64:
        raise KorlmError(f"poisson_lambda must be in (0, 64], got {poisson_lambda}")
