"""BART noising (korlm.pretrain.noising) over 10k contract examples: text infilling statistics,
exact reconstruction of the noised input from the drawn spans, sentence permutation, and
the make_dataset(objective="bart") batches a KerasHub BartSeq2SeqLM trains on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from korlm.pretrain.dataset import make_dataset
from korlm.pretrain.noising import BartNoiser
from tests.test_masking import (
    MAX_LEN,
    NUM,
    SPECIAL,
    SPECIAL_IDS,
    VOCAB,
    synthetic_examples,
    write_shards,
)

BATCH = 1000


@pytest.fixture(scope="module")
def examples():
    return synthetic_examples(NUM, seed=11)


def ragged(examples, name, tf):
    return tf.RaggedTensor.from_row_lengths(
        np.concatenate([e[name] for e in examples]).astype(np.int32),
        [len(e[name]) for e in examples])


def rows_of(rt) -> list[np.ndarray]:
    return np.split(rt.flat_values.numpy(), rt.row_splits.numpy()[1:-1])


def noise_all(examples, noiser):
    """Run noiser.noise over all examples in batches; numpy rows out."""
    import tensorflow as tf

    fn = tf.function(lambda ids, starts: noiser.noise(ids, starts))
    rows = {"noised": [], "permuted": [], "span_lengths": [], "span_starts": [], "maskable": []}
    for start in range(0, len(examples), BATCH):
        part = examples[start:start + BATCH]
        noised, details = fn(ragged(part, "input_ids", tf), ragged(part, "sentence_starts", tf))
        rows["noised"] += rows_of(noised)
        rows["permuted"] += rows_of(details["permuted"])
        rows["span_lengths"] += rows_of(details["span_lengths"])
        rows["span_starts"] += rows_of(details["span_starts"])
        rows["maskable"] += details["maskable"].numpy().tolist()
    return rows


def expected_infill(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list[int]:
    """Plain-Python text infilling from the drawn spans (coordinates = index among the
    maskable tokens): each span -> one [MASK], a zero-length span inserts one, a span cut
    by a special token gives one [MASK] on each side."""
    maskable = [i for i, t in enumerate(ids) if t not in SPECIAL_IDS]
    span_of = {}
    inserts: dict[int, int] = {}
    for k, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        if n == 0:
            inserts[s] = inserts.get(s, 0) + 1
        for c in range(s, s + n):
            span_of[maskable[c]] = k
    out, prev, cursor = [], None, 0
    for i, t in enumerate(ids):
        is_maskable = t not in SPECIAL_IDS
        anchor = is_maskable or (cursor == len(maskable) and i > 0 and ids[i - 1] not in SPECIAL_IDS)
        if anchor:
            out += [SPECIAL["mask"]] * inserts.get(cursor, 0)
        span = span_of.get(i)
        if span is None:
            out.append(int(t))
        elif span != prev:
            out.append(SPECIAL["mask"])
        prev = span
        cursor += is_maskable
    return out


def test_text_infilling_statistics_and_exact_layout(examples):
    rows = noise_all(examples, BartNoiser(SPECIAL, MAX_LEN))
    lengths = np.concatenate(rows["span_lengths"])
    maskable = np.array(rows["maskable"])
    covered = np.array([s.sum() for s in rows["span_lengths"]])
    # Span lengths ~ Poisson(3): mean within 3 +- 0.2, zero-length share ~ e^-3.
    assert abs(lengths.mean() - 3.0) < 0.2, lengths.mean()
    assert abs((lengths == 0).mean() - math.exp(-3)) < 0.01
    assert abs(lengths.var() - 3.0) < 0.3
    # 30% of the maskable tokens covered, overall and on average per example.
    assert abs(covered.sum() / maskable.sum() - 0.3) < 0.01, covered.sum() / maskable.sum()
    noised_all = np.concatenate(rows["noised"])
    assert (noised_all == SPECIAL["mask"]).sum() >= len(lengths)  # one [MASK] per span at least
    for example, noised, starts, spans, n in list(zip(examples, rows["noised"], rows["span_starts"],
                                                      rows["span_lengths"], maskable, strict=True))[:2000]:
        ids = example["input_ids"]
        assert n == (~np.isin(ids, SPECIAL_IDS)).sum()
        # Disjoint spans inside the maskable tokens.
        assert (starts[1:] >= starts[:-1] + spans[:-1]).all() and (starts + spans <= n).all()
        # The noised input is exactly the infilling of those spans; specials untouched.
        assert noised.tolist() == expected_infill(ids, starts, spans)
        assert noised[0] == SPECIAL["cls"] and noised[-1] == SPECIAL["sep"]
        assert (noised == SPECIAL["sep"]).sum() == (ids == SPECIAL["sep"]).sum()
        assert len(noised) == len(ids) - spans.sum() + (noised == SPECIAL["mask"]).sum()
        assert (noised == SPECIAL["mask"]).sum() >= len(spans)


def test_sentence_permutation_preserves_tokens(examples):
    rows = noise_all(examples, BartNoiser(SPECIAL, MAX_LEN, infill_rate=0.0, permute_sentences=True))
    moved = several = 0
    for i, (example, permuted, noised) in enumerate(zip(examples, rows["permuted"], rows["noised"],
                                                        strict=True)):
        ids = example["input_ids"]
        assert (noised == permuted).all()  # infill_rate 0: nothing masked
        assert len(permuted) == len(ids) and permuted[0] == ids[0] and permuted[-1] == ids[-1]
        assert (np.sort(permuted) == np.sort(ids)).all()  # the same multiset of tokens
        if i >= 2000:
            continue
        # Whole sentences move: the original's units reappear intact.
        starts = example["sentence_starts"].astype(bool) | np.isin(ids, SPECIAL_IDS)
        starts |= np.r_[True, np.isin(ids, SPECIAL_IDS)[:-1]]
        cuts = np.flatnonzero(starts)
        units = sorted(tuple(u) for u in np.split(ids, cuts[1:]))
        text = " ".join(map(str, permuted.tolist()))
        assert all(" ".join(map(str, u)) in text for u in units)
        if len(units) > 4:
            several += 1
            moved += not (permuted == ids).all()
    assert several > 200 and moved / several > 0.9


def test_bart_dataset_batches_train_a_keras_hub_bart(tmp_path, examples):
    import keras
    import keras_hub

    data_dir = write_shards(tmp_path / "bart", examples[:512], metadata={"objective": "bart",
                                                                         "packing": "span"})
    meta = json.loads((data_dir / "metadata.json").read_text())
    ds = make_dataset(
        [str(p) for p in data_dir.glob("*.tfrecord")], batch_size=256, max_seq_length=MAX_LEN,
        vocab_size=VOCAB, special_ids=SPECIAL, seed=0, shuffle_buffer=1, objective="bart",
        features=meta["features"], permute_sentences=True)
    x, y, weights = (part for part in next(iter(ds)))
    assert set(x) == {"encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
                      "decoder_padding_mask"}
    x = {k: v.numpy() for k, v in x.items()}
    y, weights = y.numpy(), weights.numpy()
    for row, example in enumerate(examples[:256]):
        ids = example["input_ids"]
        n = len(ids)
        # Labels: the original (unpermuted, unmasked) ids; decoder input: </s> then the same
        # ids shifted right (KerasHub's BART packing).
        assert (y[row, :n] == ids).all() and (y[row, n:] == SPECIAL["pad"]).all()
        assert (weights[row] == (np.arange(MAX_LEN) < n)).all()
        assert x["decoder_token_ids"][row, 0] == SPECIAL["sep"]
        assert (x["decoder_token_ids"][row, 1:n + 1] == ids[:MAX_LEN - 1][:n]).all()
        assert x["decoder_padding_mask"][row].sum() == min(n + 1, MAX_LEN)
        m = x["encoder_padding_mask"][row].sum()
        enc = x["encoder_token_ids"][row, :m]
        assert enc[0] == SPECIAL["cls"] and enc[-1] == SPECIAL["sep"]
        assert (enc == SPECIAL["mask"]).any() or n < 40
        assert (x["encoder_token_ids"][row, m:] == SPECIAL["pad"]).all()

    backbone = keras_hub.models.BartBackbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=MAX_LEN, dropout=0.0)
    model = keras_hub.models.BartSeq2SeqLM(backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)  # one step: tracing the graph would take 10x longer
    head = slice(0, 32)
    loss = model.train_on_batch({k: v[head] for k, v in x.items()}, y[head],
                                sample_weight=weights[head], return_dict=True)["loss"]
    assert np.isfinite(loss) and abs(float(loss) - math.log(VOCAB)) < 1.0


def test_noising_validation():
    from korlm.errors import KorlmError

    with pytest.raises(KorlmError, match="infill_rate"):
        BartNoiser(SPECIAL, MAX_LEN, infill_rate=1.2)
    with pytest.raises(KorlmError, match="poisson_lambda"):
        BartNoiser(SPECIAL, MAX_LEN, poisson_lambda=0)
