"""The ELECTRA model (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as Discriminators Rather
Than Generators"), the KoELECTRA recipe: a small masked-LM generator and a discriminator
(KerasHub ``ElectraBackbone`` + a per-token binary head) trained jointly.

One step: the generator reads the MLM-masked batch (``korlm.pretrain.masking``'s masks)
and predicts the masked tokens; a replacement for every masked position is sampled from
its softmax (temperature 1, no gradient through the sample); the discriminator reads the
original tokens with those replacements and says, for every non-padding token, whether it
was replaced (a sample equal to the original counts as original, as in the paper). The
loss is ``generator MLM loss + 50 x discriminator loss`` (``DISCRIMINATOR_WEIGHT``,
google-research/electra's ``disc_weight``), each a mean over its tokens.

The generator shares the discriminator's embedding block (token, position and segment
tables and their LayerNorm: ELECTRA's tied ``electra/embeddings`` scope), sized to the
discriminator's ``embedding_dim``; each model projects it to its own hidden size when
they differ. Its MLM head (dense to the embedding size, exact GELU, LayerNorm) outputs
through the transposed shared token table plus a bias: Hugging Face's
``ElectraForMaskedLM``. The discriminator head is ``ElectraForPreTraining``'s (dense,
the encoder's activation, dense to one logit).

Checkpoints (``save_to_preset``): the discriminator backbone as a KerasHub preset (what
evaluation fine-tunes: ``load_backbone`` gives an ``ElectraBackbone``), plus
``electra.json`` (generator dimensions, dropout, the loss weight) and
``electra_heads.npz`` (the generator's own layers and both heads, by variable path).
Training it (the input, the optimizer, FLOPs) is ``korlm.pretrain.electra``'s.
"""

from __future__ import annotations

import functools
import json
import os

from korlm.errors import KorlmError
from korlm.modeling.presets import generator_config, model_config

DISCRIMINATOR_WEIGHT = 50.0
ELECTRA_JSON = "electra.json"
ELECTRA_HEADS = "electra_heads.npz"
# What a step reports besides Keras's total ``loss`` and the generator's ``mlm_loss`` and
# ``mlm_accuracy`` (``korlm.pretrain.monitor`` logs them): the discriminator's loss and
# accuracy over the non-padding tokens and the share of them that was replaced.
LOGGED = ("disc_loss", "disc_accuracy", "replaced_rate")
_INIT_STDDEV = 0.02


def _initializer():
    import keras

    return keras.initializers.TruncatedNormal(stddev=_INIT_STDDEV)


def _replica_share(value):
    """``value`` / replicas under a TensorFlow ``tf.distribute`` strategy (Keras's own
    losses scale so: each replica's gradient is summed across replicas)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return value * (1.0 / replicas)
    return value


@functools.cache
def _pretraining_class():
    import keras
    from keras import ops
    from keras_hub.layers import MaskedLMHead, TransformerEncoder
    from keras_hub.src.utils.keras_utils import gelu_approximate

    class ElectraPretraining(keras.Model):
        """Generator + discriminator over one shared embedding block (module docstring).

        Inputs: the MLM batch of ``korlm.pretrain.dataset`` (``token_ids`` masked,
        ``segment_ids``, ``padding_mask``, ``mask_positions``) plus its labels
        ``mask_ids`` and ``mask_weights`` (``korlm.pretrain.electra.labels_in_inputs``). Outputs
        ``{"mlm": generator logits at the mask slots, "disc": discriminator logits per
        token, "replaced": 1 where the discriminator's input was replaced}``."""

        def __init__(self, backbone, generator: dict, *, dropout: float = 0.1,
                     discriminator_weight: float = DISCRIMINATOR_WEIGHT, seed=None, **kwargs):
            super().__init__(name=kwargs.pop("name", "electra_pretraining"), **kwargs)
            self.backbone = backbone
            self.generator_dims = dict(generator)
            self.dropout = float(dropout)
            self.discriminator_weight = float(discriminator_weight)
            embedding_dim = int(backbone.embedding_dim)
            hidden = int(generator["hidden_dim"])
            self.generator_projection = (
                keras.layers.Dense(hidden, kernel_initializer=_initializer(),
                                   name="generator_embeddings_projection")
                if hidden != embedding_dim else None)
            self.generator_layers = [
                TransformerEncoder(num_heads=int(generator["num_heads"]),
                                   intermediate_dim=int(generator["intermediate_dim"]),
                                   activation=gelu_approximate, dropout=self.dropout,
                                   layer_norm_epsilon=1e-12, kernel_initializer=_initializer(),
                                   name=f"generator_transformer_layer_{i}")
                for i in range(int(generator["num_layers"]))]
            # ElectraGeneratorPredictions: dense to the embedding size, exact GELU,
            # LayerNorm; then the tied token table and a bias (generator_lm_head). In
            # float32 under a mixed policy: KerasHub's MaskedLMHead does not autocast and
            # would add its float32 bias to bfloat16 logits (TensorFlow refuses); the
            # softmax over the vocabulary wants float32 anyway.
            self.generator_head = MaskedLMHead(
                token_embedding=backbone.token_embedding, intermediate_activation="gelu",
                layer_norm_epsilon=1e-12, kernel_initializer=_initializer(),
                dtype="float32", name="generator_head")
            # ElectraDiscriminatorPredictions: dense + the encoder's activation, one logit.
            self.discriminator_dense = keras.layers.Dense(
                int(backbone.hidden_dim), activation=gelu_approximate,
                kernel_initializer=_initializer(), name="discriminator_dense")
            self.discriminator_prediction = keras.layers.Dense(
                1, kernel_initializer=_initializer(), name="discriminator_prediction")
            self.sampler = keras.random.SeedGenerator(seed, name="generator_sampler")
            self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
            self.disc_loss_tracker = keras.metrics.Mean(name="disc_loss")
            self.mlm_accuracy = keras.metrics.SparseCategoricalAccuracy(name="mlm_accuracy")
            self.disc_accuracy = keras.metrics.BinaryAccuracy(name="disc_accuracy", threshold=0.0)
            self.replaced_rate = keras.metrics.Mean(name="replaced_rate")

        # --- the two networks

        def _embed(self, token_ids, segment_ids, training):
            """The shared embedding block, as ``ElectraBackbone`` computes it."""
            b = self.backbone
            tokens = b.token_embedding(token_ids)
            x = b.embeddings_add((tokens, b.position_embedding(tokens), b.segment_embedding(segment_ids)))
            x = b.embeddings_layer_norm(x)
            return b.embeddings_dropout(x, training=training)

        def generator_sequence(self, inputs, training=False):
            x = self._embed(inputs["token_ids"], inputs["segment_ids"], training)
            if self.generator_projection is not None:
                x = self.generator_projection(x)
            for layer in self.generator_layers:
                x = layer(x, padding_mask=inputs["padding_mask"], training=training)
            return x

        def generator_logits(self, inputs, mask_positions, training=False):
            return self.generator_head(self.generator_sequence(inputs, training),
                                       mask_positions=mask_positions)

        def discriminator_logits(self, inputs, training=False):
            sequence = self.backbone({k: inputs[k] for k in ("token_ids", "segment_ids",
                                                            "padding_mask")},
                                     training=training)["sequence_output"]
            hidden = self.discriminator_dense(sequence)
            return ops.squeeze(self.discriminator_prediction(hidden), axis=-1)

        # --- one step

        def corrupt(self, inputs, logits, seed):
            """The discriminator's input: the original tokens (rebuilt from the masked batch
            and its labels ``mask_ids``/``mask_weights``) with a replacement sampled from
            the generator's ``logits`` at every real mask slot; and which tokens differ."""
            token_ids = ops.cast(inputs["token_ids"], "int32")
            positions = ops.cast(inputs["mask_positions"], "int32")
            vocab = int(self.backbone.vocab_size)
            flat = ops.reshape(ops.cast(ops.stop_gradient(logits), "float32"), (-1, vocab))
            samples = ops.reshape(keras.random.categorical(flat, 1, dtype="int32", seed=seed),
                                  ops.shape(positions))
            # Each real mask slot as a one-hot row over the sequence (padding slots: zeros).
            real = ops.cast(ops.greater(inputs["mask_weights"], 0), "int32")
            slots = ops.one_hot(positions, ops.shape(token_ids)[1], dtype="int32") * real[:, :, None]
            masked = ops.sum(slots, axis=1)
            kept = token_ids * (1 - masked)
            original = kept + ops.sum(slots * ops.cast(inputs["mask_ids"], "int32")[:, :, None], axis=1)
            corrupted = ops.stop_gradient(kept + ops.sum(slots * samples[:, :, None], axis=1))
            return corrupted, ops.cast(ops.not_equal(corrupted, original), "float32")

        def call(self, inputs, training=False):
            positions = ops.cast(inputs["mask_positions"], "int32")
            logits = self.generator_logits(inputs, positions, training=training)
            corrupted, replaced = self.corrupt(inputs, logits, self.sampler)
            disc = self.discriminator_logits({**inputs, "token_ids": corrupted}, training=training)
            return {"mlm": logits, "disc": disc, "replaced": replaced}

        def discriminator_sums(self, inputs, logits, seed: int) -> dict:
            """Held-out sums of the discriminator over one batch (``korlm.pretrain.
            electra.heldout_loss``): its cross-entropy, correct calls and replaced tokens
            over the non-padding tokens, with replacements drawn from the generator's
            ``logits`` with the fixed ``seed`` (not the training sampler: scoring leaves
            training's random stream alone, and the same weights give the same figures)."""
            corrupted, replaced = self.corrupt(inputs, logits, seed)
            disc = ops.cast(self.discriminator_logits({**inputs, "token_ids": corrupted}), "float32")
            padding = ops.cast(inputs["padding_mask"], "float32")
            disc_loss = ops.binary_crossentropy(replaced, disc, from_logits=True) * padding
            disc_right = ops.cast(ops.equal(ops.cast(disc > 0, "float32"), replaced), "float32") * padding

            def total(v):
                return float(ops.convert_to_numpy(ops.sum(v)))

            return {"disc_loss": total(disc_loss), "disc_correct": total(disc_right),
                    "tokens": total(padding), "replaced": total(replaced * padding)}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            weights = ops.cast(sample_weight, "float32")
            mlm = ops.sparse_categorical_crossentropy(
                ops.cast(y, "int32"), ops.cast(y_pred["mlm"], "float32"), from_logits=True)
            mlm = ops.sum(mlm * weights) / ops.maximum(ops.sum(weights), 1.0)
            padding = ops.cast(x["padding_mask"], "float32")
            disc = ops.binary_crossentropy(y_pred["replaced"], ops.cast(y_pred["disc"], "float32"),
                                           from_logits=True)
            disc = ops.sum(disc * padding) / ops.maximum(ops.sum(padding), 1.0)
            self.mlm_loss_tracker.update_state(mlm)
            self.disc_loss_tracker.update_state(disc)
            return _replica_share(mlm + self.discriminator_weight * disc)

        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            padding = ops.cast(x["padding_mask"], "float32")
            self.mlm_accuracy.update_state(y, y_pred["mlm"], sample_weight=sample_weight)
            self.disc_accuracy.update_state(y_pred["replaced"][..., None],
                                            ops.cast(y_pred["disc"], "float32")[..., None],
                                            sample_weight=padding)
            self.replaced_rate.update_state(y_pred["replaced"], sample_weight=padding)
            return self.get_metrics_result()

        # --- checkpoints

        def head_variables(self) -> list:
            """Every variable outside the discriminator backbone: the generator's own
            layers and both heads."""
            shared = {id(v) for v in self.backbone.weights}
            return [v for v in self.weights if id(v) not in shared]

        def save_to_preset(self, preset_dir: str) -> None:
            import numpy as np

            self.backbone.save_to_preset(preset_dir)
            with open(os.path.join(preset_dir, ELECTRA_JSON), "w", encoding="utf-8") as f:
                json.dump({"generator": self.generator_dims, "dropout": self.dropout,
                           "discriminator_weight": self.discriminator_weight}, f, indent=2,
                          sort_keys=True)
            np.savez(os.path.join(preset_dir, ELECTRA_HEADS),
                     **{v.path: np.asarray(v.numpy(), dtype="float32") for v in self.head_variables()})

    return ElectraPretraining


def build_electra(size: str, vocab_size: int, max_seq_length: int, dropout: float = 0.1,
                  backbone=None, generator: dict | None = None, seed=None):
    """A freshly initialised ELECTRA pretraining model at ``size`` (``korlm.modeling.presets``:
    ``ELECTRA_SIZES`` and ``generator_config``), built. ``backbone``: an existing
    discriminator (a loaded checkpoint) instead of a new one."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub
    import numpy as np

    if backbone is None:
        backbone = keras_hub.models.ElectraBackbone(
            vocab_size=vocab_size, max_sequence_length=max_seq_length, dropout=dropout,
            **model_config("electra", size))
    model = _pretraining_class()(backbone, generator or generator_config(size), dropout=dropout,
                                 seed=seed)
    length = min(8, int(backbone.max_sequence_length))
    dummy = {"token_ids": np.zeros((1, length), "int32"), "segment_ids": np.zeros((1, length), "int32"),
             "padding_mask": np.ones((1, length), "int32"), "mask_positions": np.zeros((1, 1), "int32"),
             "mask_ids": np.zeros((1, 1), "int32"), "mask_weights": np.zeros((1, 1), "float32")}
    model(dummy, training=False)  # builds every layer: the optimizer is built from them
    return model


def load_electra(checkpoint_dir: str, backbone):
    """The pretraining model of an ELECTRA checkpoint around its loaded ``backbone``."""
    import io

    import numpy as np

    from korlm import storage

    meta_path, heads_path = (storage.join(checkpoint_dir, n) for n in (ELECTRA_JSON, ELECTRA_HEADS))
    for path in (meta_path, heads_path):
        if not storage.exists(path):
            raise KorlmError(f"ELECTRA checkpoint {checkpoint_dir} lacks {path.rsplit('/', 1)[-1]} "
                             "(its generator and heads)")
    try:
        meta = json.loads(storage.read_text(meta_path))
        with storage.open_file(heads_path, "rb") as f:
            arrays = dict(np.load(io.BytesIO(f.read())))
    except (OSError, ValueError, KeyError) as exc:
        raise KorlmError(f"ELECTRA checkpoint {checkpoint_dir} is corrupt ({exc})") from None
    model = build_electra(None, int(backbone.vocab_size), int(backbone.max_sequence_length),
                          dropout=float(meta.get("dropout", 0.1)), backbone=backbone,
                          generator=meta["generator"])
    model.discriminator_weight = float(meta.get("discriminator_weight", DISCRIMINATOR_WEIGHT))
    variables = model.head_variables()
    if sorted(arrays) != sorted(v.path for v in variables):
        raise KorlmError(f"{heads_path} does not fit the ELECTRA model its electra.json describes")
    for v in variables:
        if tuple(arrays[v.path].shape) != tuple(v.shape):
            raise KorlmError(f"{heads_path}: {v.path} has shape {arrays[v.path].shape}, "
                             f"expected {tuple(v.shape)}")
        v.assign(arrays[v.path])
    return model


# --------------------------------------------------------------------------- fine-tuning


def build_electra_classifier(backbone, num_outputs: int, dropout: float = 0.1):
    """Hugging Face ``ElectraForSequenceClassification`` on an ``ElectraBackbone``
    (``ElectraClassificationHead``): the first token's state, dropout, dense + exact GELU,
    dropout, dense to ``num_outputs`` logits. The backbone's pooler is not used."""
    import keras

    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    backbone.get_layer("pooled_dense").trainable = False  # ELECTRA has no pooler
    x = backbone(inputs)["sequence_output"][:, 0, :]
    x = keras.layers.Dropout(dropout, name="classifier_input_dropout")(x)
    x = keras.layers.Dense(int(backbone.hidden_dim), activation="gelu",
                           kernel_initializer=_initializer(), name="classifier_dense")(x)
    x = keras.layers.Dropout(dropout, name="classifier_output_dropout")(x)
    logits = keras.layers.Dense(num_outputs, kernel_initializer=_initializer(),
                                name="classifier_logits")(x)
    return keras.Model(inputs, logits, name="electra_sequence_classifier")
