"""Model construction, shared by pretrain, evaluate and the Hugging Face import.

Three families, each a KerasHub backbone + pretraining task (keras-hub composes them;
korlm writes no layers of its own):

| family  | backbone          | pretraining task   | objective                              |
|---------|-------------------|--------------------|----------------------------------------|
| bert    | ``BertBackbone``    | ``BertMaskedLM``     | masked LM (segment ids, pooler)         |
| roberta | ``RobertaBackbone`` | ``RobertaMaskedLM``  | masked LM (no segment ids, no pooler)   |
| bart    | ``BartBackbone``    | ``BartSeq2SeqLM``    | denoising seq2seq (text infilling)     |
| electra | ``ElectraBackbone`` | ``korlm.modeling.electra`` | replaced token detection (+ a masked-LM generator) |

KerasHub has no ELECTRA pretraining task: ``korlm.modeling.electra`` composes it from the
discriminator backbone and KerasHub layers (the generator shares its embeddings).

Sizes are in ``korlm.modeling.presets``. Heavy imports (keras, keras_hub) happen inside
functions so that importing this module is cheap for the CLI's ``--help`` and for
pipeline compilation.
"""

from __future__ import annotations

import os

from korlm.errors import KorlmError
from korlm.modeling.presets import MODEL_FAMILIES, model_config

BUILT_FAMILIES = ("bert", "roberta", "bart", "electra")
MASKED_LM_FAMILIES = ("bert", "roberta")
# KerasHub class names per family: backbone, pretraining task.
_CLASSES = {
    "bert": ("BertBackbone", "BertMaskedLM"),
    "roberta": ("RobertaBackbone", "RobertaMaskedLM"),
    "bart": ("BartBackbone", "BartSeq2SeqLM"),
    "electra": ("ElectraBackbone", None),  # the task: korlm.modeling.electra
}


def import_keras():
    """``(keras, keras_hub)``, imported on first use (TensorFlow backend unless set)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub

    return keras, keras_hub


def check_family(model: str) -> None:
    if model not in MODEL_FAMILIES:
        raise KorlmError(f"unknown model {model!r}; choose one of {', '.join(MODEL_FAMILIES)}")


def objective_of(model: str) -> str:
    """``mlm`` for the encoder families (ELECTRA's generator reads MLM batches), ``bart``
    (denoising seq2seq) for BART."""
    check_family(model)
    return "bart" if model == "bart" else "mlm"


def uses_segment_ids(model: str) -> bool:
    """BERT and ELECTRA have token-type (segment) embeddings."""
    return model in ("bert", "electra")


def backbone_class(model: str):
    check_family(model)
    return getattr(import_keras()[1].models, _CLASSES[model][0])


def task_class(model: str):
    check_family(model)
    if _CLASSES[model][1] is None:
        raise KorlmError(f"KerasHub has no {model} pretraining task; korlm builds it "
                         "(build_pretraining_task)")
    return getattr(import_keras()[1].models, _CLASSES[model][1])


def _match_hf_bert_head(task) -> None:
    # KerasHub's BERT encoder uses tanh-approximated GELU and LayerNorm epsilon 1e-12,
    # but its MLM head uses exact GELU and epsilon 1e-5; Hugging Face BERT has one
    # `hidden_act` and one `layer_norm_eps` for all layers. Using the encoder's values in
    # the head makes the exported model compute exactly what was trained (max logit
    # difference ~2e-6 instead of ~2e-4). The head is rebuilt from code on load, so
    # this runs on every build and load. (RoBERTa and BART use exact GELU and 1e-5
    # everywhere, as Hugging Face does: nothing to match.)
    from keras_hub.src.models.bert.bert_backbone import gelu_approximate

    head = task.masked_lm_head
    head._intermediate_dense.activation = gelu_approximate
    head.intermediate_activation = gelu_approximate
    head._intermediate_layer_norm.epsilon = task.backbone.embeddings_layer_norm.epsilon


def after_build(model: str, task):
    if model == "bert":
        _match_hf_bert_head(task)
    return task


def build_backbone(model: str, size: str, vocab_size: int, max_seq_length: int,
                   dropout: float = 0.1):
    """A freshly initialised backbone of ``model`` at ``size`` (``korlm.modeling.presets``; BART's
    encoder and decoder each get half the size's layers; ELECTRA: the discriminator)."""
    if model == "electra":  # KerasHub's ElectraBackbone names its vocabulary vocab_size
        return backbone_class(model)(vocab_size=vocab_size, max_sequence_length=max_seq_length,
                                     dropout=dropout, **model_config(model, size))
    return backbone_class(model)(
        vocabulary_size=vocab_size,
        max_sequence_length=max_seq_length,
        dropout=dropout,
        **model_config(model, size),
    )


def build_pretraining_task(model: str, size: str, vocab_size: int, max_seq_length: int,
                           dropout: float = 0.1):
    """A freshly initialised pretraining task (backbone + LM head), no preprocessor:
    a masked LM for bert/roberta, ``BartSeq2SeqLM`` for bart, ELECTRA's generator and
    discriminator (``korlm.modeling.electra``)."""
    if model == "electra":
        from korlm.modeling.electra import build_electra

        return build_electra(size, vocab_size, max_seq_length, dropout)
    backbone = build_backbone(model, size, vocab_size, max_seq_length, dropout)
    return after_build(model, task_class(model)(backbone, preprocessor=None))


def build_masked_lm(model: str, size: str, vocab_size: int, max_seq_length: int,
                    dropout: float = 0.1):
    """A freshly initialised masked-LM task (bert or roberta)."""
    if model not in MASKED_LM_FAMILIES:
        raise KorlmError(f"{model} is not a masked LM; use build_pretraining_task")
    return build_pretraining_task(model, size, vocab_size, max_seq_length, dropout)


def add_next_sentence_head(task):
    """BERT's two pretraining objectives in one model (Hugging Face ``BertForPreTraining``):
    the ``BertMaskedLM`` task's backbone and MLM head, plus a next-sentence classifier
    (dense, 2 logits; 1 = segment B is random) over the pooled [CLS] output. KerasHub has
    no such task; this composes its layers, so the MLM task ``task`` shares every weight
    and is what checkpoints save. Returns ``(model, nsp_layer)``; the model's outputs are
    ``{"mlm": ..., "nsp": ...}``."""
    keras, _ = import_keras()
    backbone = task.backbone
    inputs = dict(task.input)
    outputs = backbone({name: inputs[name] for name in backbone.input})
    mlm = task.masked_lm_head(outputs["sequence_output"], inputs["mask_positions"])
    head = keras.layers.Dense(2, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                              dtype=backbone.dtype_policy, name="nsp_head")
    nsp = head(outputs["pooled_output"])
    return keras.Model(inputs, {"mlm": mlm, "nsp": nsp}, name="bert_pretraining"), head


def parameter_count(model: str, size: str, vocab_size: int, max_seq_length: int) -> int:
    """Parameters of the pretraining task (built and counted, not estimated)."""
    return int(build_pretraining_task(model, size, vocab_size, max_seq_length).count_params())
