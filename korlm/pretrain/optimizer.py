"""The pretraining optimizer, schedule, losses and metrics (``compile_pretraining``);
the schedule and the weight-decay exclusions also serve fine-tuning
(``korlm.evaluation.evaluate``)."""

from __future__ import annotations

import functools

from korlm.errors import KorlmError


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


def make_optimizer(model, *, learning_rate: float, warmup_steps: int, total_steps: int,
                   weight_decay: float, optimizer: str = "adamw", clip_norm: float | None = 1.0,
                   grad_accum_steps: int = 1, beta_2: float = 0.999, epsilon: float = 1e-6):
    """Pretraining's optimizer for ``model`` and its learning-rate schedule (in updates):
    AdamW or LAMB, warmup then linear decay, global-norm clipping, LayerNorm and bias
    excluded from weight decay, ``grad_accum_steps`` micro-batches per update."""
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
    opt.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return opt, schedule


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

    opt, schedule = make_optimizer(
        task, learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=total_steps,
        weight_decay=weight_decay, optimizer=optimizer, clip_norm=clip_norm,
        grad_accum_steps=grad_accum_steps, beta_2=beta_2, epsilon=epsilon)
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
