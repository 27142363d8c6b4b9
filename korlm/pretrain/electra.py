"""Pretraining ELECTRA (the model, its loss and its step: ``korlm.modeling.electra``): the
MLM batches with their labels in the inputs (the discriminator's labels need the original
tokens), the optimizer (``korlm.pretrain.optimizer``'s settings; the loss and metrics are
the model's own) and the FLOPs per token of a step for MFU and cost estimates.

The recipe (KoELECTRA's, after google-research/electra): a generator 1/4 of the
discriminator's width (1/3 at base) on the MLM batches (``korlm.pretrain.masking``),
replacements sampled from its softmax, the discriminator's replaced-token loss over every
non-padding token weighted 50 against the generator's MLM loss, shared embeddings.
"""

from __future__ import annotations

from korlm.errors import KorlmError
from korlm.modeling.presets import generator_config, model_config


def labels_in_inputs(dataset):
    """The MLM batches ``(x, mask_ids, mask_weights)`` with the labels also in ``x``: the
    model rebuilds the original tokens from them to label the discriminator's input."""
    return dataset.map(lambda x, y, w: ({**x, "mask_ids": y, "mask_weights": w}, y, w))


def heldout_loss(model):
    """``batch_loss`` for ``korlm.pretrain.heldout`` over the plain MLM batches: the
    generator's cross-entropy over the masked slots (``heldout_loss``/``heldout_accuracy``,
    read against the unigram floor like BERT's, though from a generator 1/4 as wide) and,
    as extras, the discriminator's loss and accuracy over every non-padding token
    (``heldout_disc_loss``/``heldout_disc_accuracy``) and the share of tokens replaced."""
    from keras import ops

    from korlm.pretrain.heldout import HELDOUT_SEED, token_sums

    def batch_loss(x, y, weights):
        inputs = {k: ops.convert_to_tensor(v)
                  for k, v in {**x, "mask_ids": y, "mask_weights": weights}.items()}
        logits = model.generator_logits(inputs, ops.cast(inputs["mask_positions"], "int32"))
        s = model.discriminator_sums(inputs, logits, seed=HELDOUT_SEED)
        return (*token_sums(logits, y, weights),
                {"disc_loss": (s["disc_loss"], s["tokens"]),
                 "disc_accuracy": (s["disc_correct"], s["tokens"]),
                 "replaced_rate": (s["replaced"], s["tokens"])})

    return batch_loss


def compile_electra(model, *, learning_rate: float, warmup_steps: int, total_steps: int,
                    weight_decay: float, optimizer: str = "adamw", clip_norm: float | None = 1.0,
                    grad_accum_steps: int = 1, beta_2: float = 0.999, epsilon: float = 1e-6,
                    jit_compile: bool = False, objective: str = "mlm", nsp: bool = False):
    """Compile for pretraining with ``korlm.pretrain.optimizer``'s schedule, AdamW/LAMB and
    weight-decay exclusions (:func:`korlm.pretrain.optimizer.compile_pretraining`'s
    settings); the loss and metrics are the model's own. Returns the schedule."""

    if objective != "mlm" or nsp:
        raise KorlmError("ELECTRA trains on MLM batches without next-sentence labels")

    from korlm.pretrain.optimizer import make_optimizer

    opt, schedule = make_optimizer(
        model, learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=total_steps,
        weight_decay=weight_decay, optimizer=optimizer, clip_norm=clip_norm,
        grad_accum_steps=grad_accum_steps, beta_2=beta_2, epsilon=epsilon)
    model.compile(optimizer=opt, jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)
    return schedule


def flops_per_token(size: str, vocab_size: int, seq_len: int, mlm_predictions: int) -> float:
    """Training FLOPs per token of one ELECTRA step (``distribute.model_flops_per_token``'s
    PaLM formula for each encoder): the generator over every position with its MLM head on
    the ``mlm_predictions`` slots (dense to the embedding size, tied output), the
    discriminator over every position with its head (a hidden x hidden dense and one
    logit), and the embedding projections where a hidden size differs from the embeddings'."""
    from korlm.pretrain.distribute import model_flops_per_token

    disc, gen = model_config("electra", size), generator_config(size)
    s, e = int(seq_len), int(disc["embedding_dim"])
    encoders = sum(model_flops_per_token("bert", dims, vocab_size, s, mlm_predictions=0)
                   for dims in (disc, gen))
    forward = 2 * s * disc["hidden_dim"] * (disc["hidden_dim"] + 1)
    forward += 2 * int(mlm_predictions) * (gen["hidden_dim"] * e + e * vocab_size)
    forward += sum(2 * s * e * d["hidden_dim"] for d in (disc, gen) if d["hidden_dim"] != e)
    return encoders + 3.0 * forward / s
