"""Held-out loss during pretraining: the model's loss on a fixed slice of text it never
trains on, and the unigram floor to read it against.

``korlm pretrain-data`` writes the slice to ``DATA/heldout/`` (``pretrain_data.
heldout_fraction``; ``korlm.pretrain_data.beam``) and the unigram entropy of the training
examples' maskable tokens to ``metadata.json`` (``unigram_entropy_nats``). Here the slice is
read once, masked (MLM) or noised (BART) with a fixed seed and kept in memory as batches,
so every checkpoint is scored on exactly the same inputs and targets: the numbers are
comparable across checkpoints and runs, and deterministic for given weights (no dropout).

:func:`evaluate_heldout` takes a ``batch_loss(x, y, weights) -> (loss sum, correct,
weight)`` function, so any objective plugs in: :func:`token_loss` serves every model whose
pretraining task maps ``x`` to logits over label slots (masked LM: the masked positions;
BART: the target tokens); ELECTRA passes its own (``korlm.pretrain.electra.heldout_loss``:
the generator's masked-LM loss as ``heldout_loss``, plus the discriminator's loss and
accuracy over every token with replacements drawn with a fixed seed). The loss is the
mean cross-entropy over the real label slots, as the training loss
(``korlm.pretrain.optimizer``), in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from korlm import storage

HELDOUT_SEED = 20240601  # fixed: the same masks at every checkpoint and in every run
MAX_BATCH = 64


def heldout_files(data_dir: str, meta: dict[str, Any]) -> list[str]:
    """The held-out shards of a pretraining-data directory; [] for data written before
    pretrain-data held a slice out (or with ``heldout_fraction: 0``)."""
    block = meta.get("heldout") or {}
    if not block.get("num_examples"):
        return []
    folder = storage.join(data_dir, block.get("dir", "heldout"))
    files = [storage.join(folder, name) for name in block.get("shards") or []]
    return [f for f in files if storage.exists(f)]


def batch_size_for(examples: int, largest: int = MAX_BATCH, multiple: int = 1) -> int:
    """Equal batches of at most ``largest`` that leave fewer examples unused than there are
    batches (batches must be full: the input pipeline drops a remainder), rounded down to
    a ``multiple`` of the data-parallel replicas; 0 when there are fewer examples than that."""
    batches = max(1, math.ceil(examples / max(largest, multiple)))
    size = (examples // batches) // multiple * multiple
    return size or (multiple if examples >= multiple else 0)


def load_batches(files: list[str], *, num_examples: int, max_examples: int, replicas: int = 1,
                 **dataset_settings) -> list[tuple[Any, Any, Any]]:
    """The held-out slice as numpy ``(x, y, weights)`` batches, masked/noised with
    :data:`HELDOUT_SEED` (``dataset_settings``: :func:`korlm.pretrain.dataset.make_dataset`'s,
    without ``batch_size``, ``seed``, ``repeat``, ``sequential`` or ``shuffle_buffer``).
    At most ``max_examples`` examples, in file order, in batches that split over
    ``replicas``."""
    import numpy as np

    from korlm.pretrain.dataset import make_dataset

    examples = min(int(num_examples), int(max_examples))
    if examples < 1:
        return []
    batch = batch_size_for(examples, multiple=max(1, int(replicas)))
    if batch < 1:
        return []
    dataset = make_dataset(files, batch_size=batch, seed=HELDOUT_SEED, repeat=False,
                           sequential=True, shuffle_buffer=1, **dataset_settings)

    def to_numpy(tree):
        if isinstance(tree, dict):
            return {k: np.asarray(v) for k, v in tree.items()}
        return np.asarray(tree)

    return [tuple(to_numpy(part) for part in element)
            for element in dataset.take(examples // batch)]


def token_sums(logits, labels, weights) -> tuple[float, float, float]:
    """The summed cross-entropy and correct argmax predictions of ``logits`` ``[batch,
    slots, vocab]`` against ``labels`` over the slots with weight, and that weight."""
    from keras import ops

    logits = ops.cast(logits, "float32")
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    w = ops.cast(ops.convert_to_tensor(weights), "float32")
    picked = ops.squeeze(ops.take_along_axis(logits, labels[..., None], axis=-1), axis=-1)
    cross_entropy = ops.logsumexp(logits, axis=-1) - picked
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), "float32")
    return (float(ops.convert_to_numpy(ops.sum(cross_entropy * w))),
            float(ops.convert_to_numpy(ops.sum(correct * w))),
            float(ops.convert_to_numpy(ops.sum(w))))


def token_loss(model) -> Callable[[Any, Any, Any], tuple[float, float, float]]:
    """``batch_loss`` for a model that maps ``x`` to logits ``[batch, slots, vocab]``
    (``BertMaskedLM``/``RobertaMaskedLM`` over the masked positions, ``BartSeq2SeqLM``
    over the target tokens): the summed cross-entropy and correct predictions over the
    slots with weight, and their weight (:func:`token_sums`)."""

    def batch_loss(x, y, weights):
        return token_sums(model.predict_on_batch(x), y, weights)

    return batch_loss


def evaluate_heldout(batches, batch_loss) -> dict[str, float] | None:
    """Mean loss (nats) and accuracy over every weighted slot of ``batches``, with
    ``batch_loss(x, y, weights) -> (loss sum, correct, weight[, extras])``; None without
    batches. ``extras`` (an objective's other figures, e.g. ELECTRA's discriminator) maps a
    name to ``(sum, count)``: its mean over all batches is returned as ``heldout_<name>``."""
    loss = correct = weight = 0.0
    extras: dict[str, list[float]] = {}
    for x, y, w in batches:
        batch = batch_loss(x, y, w)
        loss, correct, weight = loss + batch[0], correct + batch[1], weight + batch[2]
        for name, (total, count) in (batch[3] if len(batch) > 3 else {}).items():
            acc = extras.setdefault(name, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + total, acc[1] + count
    if not weight:
        return None
    out = {"heldout_loss": round(loss / weight, 5), "heldout_accuracy": round(correct / weight, 5),
           "heldout_predictions": int(weight)}
    out.update({f"heldout_{name}": round(total / count, 5)
                for name, (total, count) in extras.items() if count})
    return out


class HeldOut:
    """What a pretraining run scores at each checkpoint: the fixed batches, the loss
    function (built from the checkpointed model on first use) and the unigram floor."""

    def __init__(self, batches, unigram_entropy: float | None,
                 make_batch_loss: Callable[[Any], Callable] = token_loss):
        self.batches, self.unigram_entropy = batches, unigram_entropy
        self.make_batch_loss = make_batch_loss
        self._loss = None

    def __call__(self, model) -> dict[str, float]:
        """Held-out figures of ``model`` (with the unigram floor, when known)."""
        if self._loss is None:
            self._loss = self.make_batch_loss(model)
        out = evaluate_heldout(self.batches, self._loss) or {}
        if out and self.unigram_entropy is not None:
            out["unigram_entropy"] = round(float(self.unigram_entropy), 5)
        return out


def prepare_heldout(data_dir: str, meta: dict[str, Any], *, max_examples: int, objective: str,
                    model_seq_len: int, replicas: int = 1,
                    make_batch_loss: Callable[[Any], Callable] = token_loss,
                    **dataset_settings) -> HeldOut | None:
    """The run's :class:`HeldOut` from the data directory ``data_dir`` (the run's root
    data: the same slice whichever phase trains), or None, said in the log, when the data
    has no held-out slice, ``max_examples`` is 0 or the run spans several hosts.
    ``make_batch_loss(model)``: the objective's ``batch_loss`` (default :func:`token_loss`)."""
    from korlm.pretrain.distribute import process_index_and_count

    if max_examples <= 0:
        print("pretrain.heldout_examples is 0: no held-out loss is computed", flush=True)
        return None
    if process_index_and_count()[1] > 1:
        print("a multi-host run: no held-out loss is computed (scored on one host only)",
              flush=True)
        return None
    files = heldout_files(data_dir, meta)
    if not files:
        print(f"{data_dir} has no held-out slice (written before pretrain-data held one out, or "
              "with pretrain_data.heldout_fraction 0): no held-out loss is computed; training "
              "loss only", flush=True)
        return None
    data_len = int(meta["max_seq_length"])
    batches = load_batches(files, num_examples=int(meta["heldout"]["num_examples"]),
                           max_examples=max_examples, replicas=replicas, objective=objective,
                           max_seq_length=min(data_len, model_seq_len),
                           data_max_seq_length=data_len, **dataset_settings)
    if not batches:
        print(f"{data_dir}/heldout holds fewer examples than the {replicas} replicas: no "
              "held-out loss is computed", flush=True)
        return None
    floor = meta.get("unigram_entropy_nats") if objective == "mlm" else None
    used = sum(len(y) for _, y, _ in batches)
    print(f"held-out loss at every checkpoint: {used} examples of {data_dir}/heldout "
          f"(fixed masks, seed {HELDOUT_SEED})"
          + (f"; unigram floor {floor:.3f} nats" if floor is not None else ""), flush=True)
    return HeldOut(batches, floor, make_batch_loss)
