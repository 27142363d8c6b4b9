"""Model construction and the checkpoint format, shared by pretrain, evaluate and export.

A korlm checkpoint is a KerasHub preset directory written by ``Task.save_to_preset``
(``config.json``, ``model.weights.h5``, ``task.json``, ``task.weights.h5``,
``metadata.json``) plus ``korlm_checkpoint.json`` (step, family, size, vocab size,
sequence length). Anything KerasHub can load, korlm can evaluate and export.

Heavy imports (keras, keras_hub) happen inside functions so that importing this module
is cheap for the CLI's ``--help`` and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError, NotBuiltError
from korlm.presets import MODEL_FAMILIES, size_config

CHECKPOINT_INFO = "korlm_checkpoint.json"
BUILT_FAMILIES = ("bert",)


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub

    return keras, keras_hub


def check_family(model: str) -> None:
    if model not in MODEL_FAMILIES:
        raise KorlmError(f"unknown model {model!r}; choose one of {', '.join(MODEL_FAMILIES)}")
    if model not in BUILT_FAMILIES:
        raise NotBuiltError(f"model family {model!r}", 6)


def _match_hf_bert_head(task) -> None:
    # KerasHub's BERT encoder uses tanh-approximated GELU and LayerNorm epsilon 1e-12,
    # but its MLM head uses exact GELU and epsilon 1e-5; Hugging Face BERT has one
    # `hidden_act` and one `layer_norm_eps` for all layers. Using the encoder's values in
    # the head makes the exported model compute exactly what was trained (max logit
    # difference ~2e-6 instead of ~2e-4). The head is rebuilt from code on load, so
    # this runs on every build and load.
    from keras_hub.src.models.bert.bert_backbone import gelu_approximate

    head = task.masked_lm_head
    head._intermediate_dense.activation = gelu_approximate
    head.intermediate_activation = gelu_approximate
    head._intermediate_layer_norm.epsilon = task.backbone.embeddings_layer_norm.epsilon


def build_backbone(model: str, size: str, vocab_size: int, max_seq_length: int,
                   dropout: float = 0.1):
    check_family(model)
    _, keras_hub = _keras()
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocab_size,
        max_sequence_length=max_seq_length,
        dropout=dropout,
        **size_config(size),
    )


def build_masked_lm(model: str, size: str, vocab_size: int, max_seq_length: int,
                    dropout: float = 0.1):
    """A freshly initialised masked-LM task (backbone + MLM head), no preprocessor."""
    _, keras_hub = _keras()
    backbone = build_backbone(model, size, vocab_size, max_seq_length, dropout)
    task = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    _match_hf_bert_head(task)
    return task


def save_checkpoint(task, checkpoint_dir: str, info: dict[str, Any]) -> None:
    """Write a checkpoint directory atomically (a killed save leaves no half checkpoint)."""
    with storage.atomic_output_dir(checkpoint_dir) as staging:
        task.save_to_preset(staging)
        with open(os.path.join(staging, CHECKPOINT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)


def checkpoint_info(checkpoint_dir: str) -> dict[str, Any]:
    path = storage.join(checkpoint_dir, CHECKPOINT_INFO)
    if not storage.exists(path):
        raise KorlmError(f"{checkpoint_dir} is not a korlm checkpoint (no {CHECKPOINT_INFO})")
    return json.loads(storage.read_text(path))


def load_masked_lm(checkpoint_dir: str):
    info = checkpoint_info(checkpoint_dir)
    check_family(info["model"])
    _, keras_hub = _keras()
    task = keras_hub.models.BertMaskedLM.from_preset(checkpoint_dir, load_weights=True)
    _match_hf_bert_head(task)
    return task


def load_backbone(checkpoint_dir: str, load_weights: bool = True):
    """The checkpoint's backbone; ``load_weights=False`` gives the same architecture
    freshly initialised (the random-init baseline)."""
    info = checkpoint_info(checkpoint_dir)
    check_family(info["model"])
    _, keras_hub = _keras()
    return keras_hub.models.BertBackbone.from_preset(checkpoint_dir, load_weights=load_weights)
