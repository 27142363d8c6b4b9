"""Fine-tune one checkpoint (or its random-init twin) on one task and score it.

The backbone comes from ``models.load_backbone``: with ``random_init`` it is the same
architecture freshly initialised, so the baseline differs from the checkpoint only in
its weights. On top of it goes a cross-encoder head: a classifier over a sentence
representation (classification, sentence pairs as ``[CLS] a [SEP] b [SEP]``), one linear
output trained with mean squared error (regression), start/end logits over the tokens
(extractive QA, long contexts cut into overlapping windows: ``doc_stride``), or a tag per
token (token classification, aligned to and decoded from word or character tags by
:mod:`korlm.evaluation.tagging`).

The sentence representation is ``pooling`` (``evaluate.pooling``, :func:`resolve_pooling`):
``cls``, the first token's state (BERT: dropout + dense on the [CLS] state, Hugging Face's
``BertForSequenceClassification`` without the pooler; RoBERTa: its own classification head
over ``<s>``, a fresh dense + tanh then the output layer); ``mean``, the mean of the
unpadded token states, then dropout + dense; ``pooler``, BERT's pooled [CLS] (its
``pooled_dense`` + tanh from pretraining, KerasHub's ``BertTextClassifier``). A
masked-LM-only pretraining never trains the pooler (its weights stay the random init's),
so ``auto`` takes the pooler only when next-sentence prediction trained it and otherwise
:data:`AUTO_POOLING`; RoBERTa and BART have no pooler (``pooler`` is refused for them).
The backbone's dropout is ``dropout`` (``evaluate.dropout``), whatever the checkpoint was
pretrained with (``pretrain.dropout``), and the head uses the same rate.
BART checkpoints are fine-tuned as Hugging Face's ``BartForSequenceClassification`` and
``BartForQuestionAnswering`` do: the same ids go to the encoder and, shifted right behind
the decoder start token, to the decoder (``bart_inputs``); classification and regression
read the decoder state at each example's last real token (BART's ``cls``, its ``auto``;
``mean`` averages the decoder states), the span head every decoder state, and so does the
tagger (Hugging Face has no ``BartForTokenClassification``; this is how its one per-token
BART head, QA's, reads the states).

Fine-tuning uses fixed seeds, AdamW with linear warmup and decay, and early stopping on
the dev split's primary metric (the best epoch's weights are the ones scored). The
budget (examples, epochs, batch, learning rate, sequence length) and the splits used,
with any deterministic split derivation (``split_note``), go into ``metrics.json`` next
to the scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

from korlm import storage
from korlm.errors import KorlmError, NotBuiltError
from korlm.evaluation import metrics as metric_fns
from korlm.evaluation import tagging, tasks
from korlm.modeling.build import uses_segment_ids
from korlm.modeling.checkpoints import checkpoint_info, load_backbone, resolve_tokenizer
from korlm.pretrain.optimizer import no_weight_decay_variables, warmup_linear_decay

METRICS_JSON = "metrics.json"
RANDOM_INIT = "random-init"
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
MAX_ANSWER_TOKENS = 30
# BartClassificationHead's dropout (before and after its tanh dense). Hugging Face's
# default classifier_dropout is 0.0; 0.1 is what the BERT classifier here uses, so the
# families are fine-tuned with the same regularisation.
BART_CLASSIFIER_DROPOUT = 0.1
# BertForTokenClassification's dropout before the tag layer (hidden_dropout_prob).
TOKEN_CLASSIFIER_DROPOUT = 0.1
BART_INPUTS = ("encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
               "decoder_padding_mask")
POOLINGS = ("auto", "cls", "mean", "pooler")
# What `auto` picks for a BERT-like encoder whose pooler no objective trained (MLM only).
# Measured on the demo checkpoint (configs/local.yaml: bert-tiny, 1,200 MLM steps; NSMC
# 4,000 train / 1,000 test, up to 3 epochs, seeds 0-4; docs/evaluate.md, "Heads"): cls
# 0.767 ± 0.005 (SD), pooler 0.764 ± 0.004, mean 0.753 ± 0.028. The raw [CLS] state
# scored highest and as steadily as the pooler; mean pooling twice stopped after its
# first epoch far lower (0.728, 0.718), so it is not the default.
AUTO_POOLING = "cls"
AUTO_POOLING_NOTE = "the [CLS] state measured best on the demo's NSMC"
# Families whose backbone has a pooler (KerasHub BertBackbone's pooled_dense).
POOLER_FAMILIES = ("bert",)
DEFAULT_DROPOUT = 0.1


def load_tokenizer(tokenizer_dir: str, max_seq_length: int):
    """The HF tokenizer of a tokenizer dir, truncating and padding to ``max_seq_length``
    and adding ``[CLS] ... [SEP]`` (also when tokenizer.json has no post-processor)."""
    from tokenizers.processors import TemplateProcessing

    from korlm.tokenizer import tokenization

    path = storage.join(tokenizer_dir, "tokenizer.json")
    if not storage.exists(path):
        raise KorlmError(f"tokenizer not found: {path}")
    # KorlmTokenizer: applies the vocab's pre-tokenizer (morpheme segmentation) first.
    wrapper = tokenization.load(tokenizer_dir)
    tokenizer = wrapper.hf
    # Roles, not strings: a BART/RoBERTa-family vocab has <s> <pad> </s> (KorlmError if missing).
    roles = wrapper.special_token_ids()
    cls, sep, pad = (tokenizer.id_to_token(roles[r]) for r in ("cls", "sep", "pad"))
    if tokenizer.post_processor is None:
        tokenizer.post_processor = TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, roles["cls"]), (sep, roles["sep"])])
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(length=max_seq_length, pad_id=roles["pad"], pad_token=pad)
    return wrapper


def encode(tokenizer, data: tasks.TaskData) -> dict[str, Any]:
    """Backbone inputs (numpy int32) for a split."""
    import numpy as np

    if data.texts_b is None:
        encodings = tokenizer.encode_batch(data.texts)
    else:
        encodings = tokenizer.encode_batch(list(zip(data.texts, data.texts_b, strict=True)))
    return {
        "token_ids": np.array([e.ids for e in encodings], dtype="int32"),
        "segment_ids": np.array([e.type_ids for e in encodings], dtype="int32"),
        "padding_mask": np.array([e.attention_mask for e in encodings], dtype="int32"),
    }


def bart_inputs(x: dict[str, Any], decoder_start_id: int) -> dict[str, Any]:
    """``BartBackbone`` inputs from :func:`encode`'s (right-padded ``token_ids`` and
    ``padding_mask``), as ``BartForSequenceClassification`` builds them: the encoder reads
    the ids, the decoder reads them shifted right behind ``decoder_start_id`` (korlm's BART
    decoder starts with ``</s>``/``[SEP]``, as in pretraining: ``korlm.pretrain.noising``). Decoder
    position i reads token i-1 and stands for token i, so both masks are the ids' mask and
    a token's offsets (QA) are those of the encoder position."""
    import numpy as np

    token_ids = np.asarray(x["token_ids"], dtype="int32")
    mask = np.asarray(x["padding_mask"], dtype="int32")
    start = np.full((len(token_ids), 1), decoder_start_id, dtype="int32")
    return {"encoder_token_ids": token_ids, "encoder_padding_mask": mask,
            "decoder_token_ids": np.concatenate([start, token_ids[:, :-1]], axis=1),
            "decoder_padding_mask": mask}


def _bart_model_inputs():
    import keras

    return {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in BART_INPUTS}


def _last_real_token_state(sequence, padding_mask):
    """Each example's state at its last unpadded position (the final ``</s>``/``[SEP]``):
    ``BartForSequenceClassification``'s representation (the last EOS of the input)."""
    from keras import ops

    last = ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1
    last = ops.maximum(last, 0)[:, None, None]
    return ops.squeeze(ops.take_along_axis(sequence, last, axis=1), axis=1)


def _masked_mean(sequence, padding_mask):
    """The mean of each example's unpadded token states."""
    from keras import ops

    mask = ops.cast(padding_mask, sequence.dtype)[:, :, None]
    return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


def build_bart_classifier(backbone, num_outputs: int, dropout: float = BART_CLASSIFIER_DROPOUT,
                          pooling: str = "cls"):
    """``BartForSequenceClassification`` on a ``BartBackbone``: the decoder state at the
    last real token (``pooling`` cls; ``mean``: the mean of the unpadded decoder states),
    then ``BartClassificationHead`` (dropout, dense + tanh, dropout, dense to
    ``num_outputs`` logits; one output for regression)."""
    import keras

    def initializer():  # BART's init_std; one instance per layer
        return keras.initializers.TruncatedNormal(stddev=0.02)

    inputs = _bart_model_inputs()
    decoder = backbone(inputs)["decoder_sequence_output"]
    if pooling == "mean":
        x = _masked_mean(decoder, inputs["decoder_padding_mask"])
    else:
        x = _last_real_token_state(decoder, inputs["encoder_padding_mask"])
    x = keras.layers.Dropout(dropout, name="classifier_input_dropout")(x)
    x = keras.layers.Dense(backbone.hidden_dim, activation="tanh",
                           kernel_initializer=initializer(),
                           name="classifier_dense")(x)
    x = keras.layers.Dropout(dropout, name="classifier_output_dropout")(x)
    logits = keras.layers.Dense(num_outputs, kernel_initializer=initializer(),
                                name="classifier_logits")(x)
    return keras.Model(inputs, logits, name="bart_sequence_classifier")


def build_sequence_classifier(backbone, num_outputs: int, pooling: str,
                              dropout: float = DEFAULT_DROPOUT):
    """A classifier over an encoder's token states without its pooler: the first token's
    state (``cls``) or the mean of the unpadded token states (``mean``), then dropout and
    one dense layer to ``num_outputs`` logits. A BERT backbone's ``pooled_dense`` is
    frozen: nothing reads it, so no gradient would reach it."""
    import keras

    if pooling not in ("cls", "mean"):
        raise KorlmError(f"build_sequence_classifier pools cls or mean, not {pooling!r}")
    names = [name for name in ("token_ids", "segment_ids", "padding_mask")
             if name in backbone.input]
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in names}
    outputs = backbone(inputs)
    if isinstance(outputs, dict):  # BERT-like: token states and the pooled [CLS]
        if any(layer.name == "pooled_dense" for layer in backbone.layers):
            backbone.get_layer("pooled_dense").trainable = False
        sequence = outputs["sequence_output"]
    else:  # RoBERTa's backbone returns the token states
        sequence = outputs
    if pooling == "cls":
        x = sequence[:, 0, :]
    else:
        x = _masked_mean(sequence, inputs["padding_mask"])
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(x)
    logits = keras.layers.Dense(
        num_outputs, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="logits")(x)
    return keras.Model(inputs, logits, name=f"{pooling}_sequence_classifier")


def _pooler_trained(info: dict[str, Any], checkpoint_dir: str | None) -> bool:
    """Whether an objective trained the checkpoint's pooler: BERT pretrained with
    next-sentence labels (``nsp`` in korlm_checkpoint.json), or a Hugging Face export
    of ``BertForPreTraining`` (korlm writes it for NSP runs)."""
    if info.get("nsp"):
        return True
    if info.get("source") == "huggingface-export" and checkpoint_dir:
        from korlm.modeling import hf_import

        config = hf_import.read_config(checkpoint_dir) or {}
        return "BertForPreTraining" in (config.get("architectures") or [])
    return False


def resolve_pooling(requested: str, info: dict[str, Any],
                    checkpoint_dir: str | None = None) -> tuple[str, str]:
    """``(pooling, why)``: what ``requested`` (``evaluate.pooling``) means for the
    checkpoint ``info`` describes. ``auto``: the pooler where next-sentence prediction
    trained it, RoBERTa's and BART's own sentence token (``cls``), else
    :data:`AUTO_POOLING`. ``pooler`` is refused for families without one and warned
    about when no objective trained it."""
    if requested not in POOLINGS:
        raise KorlmError(f"pooling {requested!r} is unknown; choose one of {', '.join(POOLINGS)}")
    family = info.get("model")
    has_pooler = family in POOLER_FAMILIES
    trained = has_pooler and _pooler_trained(info, checkpoint_dir)
    if requested == "pooler":
        if not has_pooler:
            raise KorlmError(f"pooling pooler: a {family} model has no pooler; use cls ("
                             + ("its classification head over <s>" if family == "roberta"
                                else "the last real token's decoder state" if family == "bart"
                                else "the first token's state")
                             + ") or mean")
        if not trained:
            print("WARNING: pooling pooler on a checkpoint no next-sentence objective trained: "
                  "its pooler weights are the random initialisation's (evaluate.pooling auto "
                  "avoids it)", flush=True)
        return "pooler", "requested"
    if requested != "auto":
        return requested, "requested"
    if trained:
        return "pooler", "auto: next-sentence prediction trained the pooler"
    if family == "roberta":
        return "cls", "auto: RoBERTa's classification head over <s> (no pooler)"
    if family == "bart":
        return "cls", "auto: BART's last real token (BartForSequenceClassification)"
    return AUTO_POOLING, f"auto: no objective trained the pooler; {AUTO_POOLING_NOTE}"


def build_span_extractor(backbone):
    """Start/end logits (last axis) at every position: over BERT's or RoBERTa's token
    states, or, as ``BartForQuestionAnswering``, over every BART decoder state."""
    import keras
    import keras_hub

    if isinstance(backbone, keras_hub.models.BartBackbone):
        inputs = _bart_model_inputs()
        sequence = backbone(inputs)["decoder_sequence_output"]
    else:
        names = [name for name in ("token_ids", "segment_ids", "padding_mask")
                 if name in backbone.input]
        inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in names}
        outputs = backbone(inputs)
        if isinstance(outputs, dict):  # BERT: the pooler is not used by QA
            backbone.get_layer("pooled_dense").trainable = False  # QA reads tokens, not [CLS]
            sequence = outputs["sequence_output"]
        else:  # RoBERTa's backbone returns the token states
            sequence = outputs
    logits = keras.layers.Dense(
        2, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="span_logits")(sequence)
    return keras.Model(inputs, logits, name="span_extractor")


def token_states(backbone):
    """``(inputs, states)``: every position's final hidden state, for any backbone whose
    output is the token states (RoBERTa) or a dict holding them as ``sequence_output``
    (BERT, ELECTRA: their pooler is frozen, as nothing reads it), or, for BART, every
    decoder state (``BartForQuestionAnswering``'s per-token states)."""
    import keras
    import keras_hub

    if isinstance(backbone, keras_hub.models.BartBackbone):
        inputs = _bart_model_inputs()
        return inputs, backbone(inputs)["decoder_sequence_output"]
    names = [name for name in ("token_ids", "segment_ids", "padding_mask")
             if name in backbone.input]
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in names}
    outputs = backbone(inputs)
    if not isinstance(outputs, dict):
        return inputs, outputs
    if any(layer.name == "pooled_dense" for layer in backbone.layers):
        backbone.get_layer("pooled_dense").trainable = False
    return inputs, outputs["sequence_output"]


def build_token_classifier(backbone, num_labels: int, dropout: float = TOKEN_CLASSIFIER_DROPOUT):
    """``BertForTokenClassification`` / ``RobertaForTokenClassification``: dropout (0.1,
    their hidden dropout) and one linear layer to ``num_labels`` logits at every
    position, over :func:`token_states`."""
    import keras

    inputs, states = token_states(backbone)
    x = keras.layers.Dropout(dropout, name="token_classifier_dropout")(states)
    logits = keras.layers.Dense(
        num_labels, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="token_logits")(x)
    return keras.Model(inputs, logits, name="token_classifier")


def settings_for_task(params: dict[str, Any], task: str) -> dict[str, Any]:
    """``params`` (the evaluate section's keyword arguments) with ``per_task[task]``'s
    values applied and ``per_task`` removed."""
    params = dict(params)
    per_task = params.pop("per_task", None) or {}
    name = task.rstrip("/").rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    overrides = per_task.get(task) or per_task.get(name) or {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


# --- task heads ---

class _Head:
    """What differs between task types: the output layer, the loss, the targets and
    how predictions become scores."""

    # The sentence representation (resolve_pooling's) and the head's dropout; fine_tune
    # and the fine-tuned model loader set them. None: the head each family had before
    # pooling was a setting (BERT's pooler, RoBERTa's and BART's own heads).
    pooling: str | None = None
    dropout: float = DEFAULT_DROPOUT

    def __init__(self, spec: tasks.TaskSpec):
        self.spec = spec

    def inputs(self, tokenizer, data: tasks.TaskData) -> tuple[dict, Any]:
        import numpy as np

        dtype = "float32" if self.spec.type == "regression" else "int32"
        return encode(tokenizer, data), np.array(data.labels, dtype=dtype)

    def build(self, backbone):
        import keras
        import keras_hub

        num_outputs = 1 if self.spec.type == "regression" else self.spec.num_classes
        loss = (keras.losses.MeanSquaredError() if self.spec.type == "regression"
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        bert = isinstance(backbone, keras_hub.models.BertBackbone)
        pooling = self.pooling or ("pooler" if bert else "cls")
        if pooling == "pooler" and not bert:
            raise KorlmError(f"pooling pooler: {type(backbone).__name__} has no pooler; use cls or mean")
        if isinstance(backbone, keras_hub.models.BartBackbone):  # KerasHub has no BART classifier
            return build_bart_classifier(backbone, num_outputs, self.dropout, pooling), loss
        if pooling == "cls" and isinstance(backbone, keras_hub.models.ElectraBackbone):
            # KerasHub has no ELECTRA classifier: ElectraForSequenceClassification's head
            from korlm.modeling.electra import build_electra_classifier

            return build_electra_classifier(backbone, num_outputs, self.dropout), loss
        if pooling == "pooler":  # KerasHub's BERT classifier reads the pooled [CLS]
            return keras_hub.models.BertTextClassifier(
                backbone, num_classes=num_outputs, preprocessor=None, dropout=self.dropout), loss
        if pooling == "cls" and isinstance(backbone, keras_hub.models.RobertaBackbone):
            # RoBERTa's own head: the first token through a fresh dense + tanh
            return keras_hub.models.RobertaTextClassifier(
                backbone, num_classes=num_outputs, preprocessor=None, dropout=self.dropout), loss
        return build_sequence_classifier(backbone, num_outputs, pooling, self.dropout), loss

    def outputs(self, model, x, batch_size: int):
        """Regression scores, or class probabilities (softmax of the logits)."""
        return self.from_logits(model.predict(x, batch_size=batch_size, verbose=0))

    def from_logits(self, out):
        import numpy as np

        out = np.asarray(out, dtype="float64")
        if self.spec.type == "regression":
            return out[:, 0]
        out = np.exp(out - out.max(axis=-1, keepdims=True))
        return out / out.sum(axis=-1, keepdims=True)

    def predict(self, model, x, data: tasks.TaskData, batch_size: int) -> list:
        import numpy as np

        out = self.outputs(model, x, batch_size)
        if self.spec.type == "regression":
            return out.astype(float).tolist()
        return np.argmax(out, axis=-1).tolist()

    def gold(self, data: tasks.TaskData) -> list:
        """What the metrics compare predictions with."""
        return data.labels

    def score(self, data: tasks.TaskData, predictions: list) -> dict[str, float | None]:
        if self.spec.type == "regression" and not all(math.isfinite(p) for p in predictions):
            raise KorlmError(f"{self.spec.name}: the fine-tuned model predicts NaN/inf scores "
                             "(training diverged); lower learning_rate")
        return metric_fns.compute(self.spec.metrics, data.labels, predictions,
                                  self.spec.num_classes)


class _SpanHead(_Head):
    """Extractive QA: start/end logits over the tokens of ``[CLS] question [SEP]
    context-window [SEP]``; a question's answer is the best span over its windows."""

    def __init__(self, spec, tokenizer, max_seq_length: int, doc_stride: int):
        super().__init__(spec)
        if tokenizer.pre_tokenizer != "none":
            raise NotBuiltError("extractive QA with a morpheme pre-tokenized vocabulary "
                                "(answer offsets in segmented text)", 7)
        from tokenizers import Tokenizer

        # a copy: windowing changes truncation and padding settings
        self.tokenizer = Tokenizer.from_str(tokenizer.hf.to_str())
        self.tokenizer.no_padding()
        self.max_len, self.stride = max_seq_length, doc_stride
        self.features: dict[int, list] = {}

    def _windows(self, question: str, context: str):
        hf = self.tokenizer
        hf.no_truncation()
        question_ids = hf.encode(question, add_special_tokens=False)
        limit = self.max_len // 2  # a long question keeps half the window for context
        if len(question_ids.ids) > limit:
            question = question[:question_ids.offsets[limit - 1][1]]
        hf.enable_truncation(max_length=self.max_len, stride=self.stride,
                             strategy="only_second")
        first = hf.encode(question, context)
        return [first, *first.overflowing]

    def inputs(self, tokenizer, data: tasks.TaskData) -> tuple[dict, Any]:
        import numpy as np

        rows, targets, owners, offsets = [], [], [], []
        for q, (question, context, answers) in enumerate(
                zip(data.texts, data.texts_b, data.labels, strict=True)):
            answer = answers[0] if answers else None  # None: inference, no gold answer
            if answer is not None:
                a_start = answer["answer_start"]
                a_end = a_start + len(answer["text"])
            for window in self._windows(question, context):
                seq = window.sequence_ids
                ctx = [i for i, s in enumerate(seq) if s == 1]
                start = end = 0  # [CLS]: the answer is not in this window
                if answer is not None and ctx and window.offsets[ctx[0]][0] <= a_start and \
                        window.offsets[ctx[-1]][1] >= a_end:
                    start = next(i for i in ctx if window.offsets[i][1] > a_start)
                    end = next(i for i in reversed(ctx) if window.offsets[i][0] < a_end)
                pad = self.max_len - len(window.ids)
                rows.append((window.ids + [0] * pad, window.type_ids + [0] * pad,
                             window.attention_mask + [0] * pad))
                targets.append((start, end))
                owners.append(q)
                offsets.append([window.offsets[i] if seq[i] == 1 else None
                                for i in range(len(window.ids))])
        self.features[id(data)] = (owners, offsets)
        x = {name: np.array([r[k] for r in rows], dtype="int32")
             for k, name in enumerate(("token_ids", "segment_ids", "padding_mask"))}
        return x, np.array(targets, dtype="int32")

    def build(self, backbone):
        import keras

        model = build_span_extractor(backbone)
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def span_loss(y_true, y_pred):
            return 0.5 * (cross_entropy(y_true[:, 0], y_pred[:, :, 0])
                          + cross_entropy(y_true[:, 1], y_pred[:, :, 1]))

        return model, span_loss

    def spans(self, model, x, data: tasks.TaskData, batch_size: int) -> list[dict[str, Any]]:
        """Each question's best span over its windows: ``answer`` (the context's text),
        ``start``/``end`` (character offsets into the context) and ``score`` (start +
        end logit); an empty answer when no window holds a valid span."""
        owners, offsets = self.features[id(data)]
        logits = model.predict(x, batch_size=batch_size, verbose=0)
        best: dict[int, tuple[float, int, int]] = {}
        for f, q in enumerate(owners):
            valid = [i for i, o in enumerate(offsets[f]) if o is not None]
            if not valid:
                continue
            start_logits, end_logits = logits[f, :, 0], logits[f, :, 1]
            top = sorted(valid, key=lambda i: -start_logits[i])[:20]
            top_end = sorted(valid, key=lambda i: -end_logits[i])[:20]
            for s in top:
                for e in top_end:
                    if e < s or e - s >= MAX_ANSWER_TOKENS:
                        continue
                    score = float(start_logits[s] + end_logits[e])
                    if q not in best or score > best[q][0]:
                        best[q] = (score, offsets[f][s][0], offsets[f][e][1])
        found = []
        for q in range(len(data)):
            score, start, end = best.get(q, (0.0, 0, 0))
            found.append({"answer": data.texts_b[q][start:end], "start": start, "end": end,
                          "score": score})
        return found

    def predict(self, model, x, data: tasks.TaskData, batch_size: int) -> list:
        return [span["answer"] for span in self.spans(model, x, data, batch_size)]

    def gold(self, data: tasks.TaskData) -> list:
        return [[a["text"] for a in answers] for answers in data.labels]

    def score(self, data: tasks.TaskData, predictions: list) -> dict[str, float | None]:
        return metric_fns.compute(self.spec.metrics, self.gold(data), predictions)


class _TagHead(_Head):
    """Token classification: a tag per subword token, trained on the units' tags
    aligned to the tokens and decoded back to per-character tags (what the metrics
    score) and character spans (:mod:`korlm.evaluation.tagging`)."""

    def __init__(self, spec, tokenizer, label_all_subwords: bool | None = None):
        super().__init__(spec)
        if tokenizer.pre_tokenizer != "none":
            # offsets would index the segmented text, not the user's
            raise NotBuiltError("token classification with a morpheme pre-tokenized vocabulary "
                                "(tag offsets in segmented text)", 20)
        self.tagging = spec.tagging if label_all_subwords is None else dataclasses.replace(
            spec.tagging, label_all_subwords=bool(label_all_subwords))
        self.index = {name: i for i, name in enumerate(spec.label_names)}
        self.features: dict[int, list[tagging.Alignment]] = {}

    def units(self, data: tasks.TaskData) -> list[list[tuple[int, int]]]:
        return [label["units"] if label else tagging.units_of(text, self.tagging.level)
                for text, label in zip(data.texts, data.labels, strict=True)]

    def inputs(self, tokenizer, data: tasks.TaskData) -> tuple[dict, Any]:
        import numpy as np

        encodings = tokenizer.encode_batch(data.texts)
        length = len(encodings[0].ids) if encodings else 0
        y = np.full((len(encodings), length), tagging.IGNORE, dtype="int32")
        alignments = []
        for i, (e, units) in enumerate(zip(encodings, self.units(data), strict=True)):
            offsets = [o if s is not None else None for o, s in zip(e.offsets, e.sequence_ids,
                                                                     strict=True)]
            alignment = tagging.align(offsets, units, truncated=bool(e.overflowing))
            alignments.append(alignment)
            if data.labels[i]:
                y[i] = tagging.token_targets(alignment, data.labels[i]["tags"], length,
                                             self.index, self.tagging.scheme,
                                             self.tagging.label_all_subwords)
        self.features[id(data)] = alignments
        x = {"token_ids": np.array([e.ids for e in encodings], dtype="int32"),
             "segment_ids": np.array([e.type_ids for e in encodings], dtype="int32"),
             "padding_mask": np.array([e.attention_mask for e in encodings], dtype="int32")}
        return x, y

    def build(self, backbone):
        import keras

        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                          ignore_class=tagging.IGNORE)
        return build_token_classifier(backbone, len(self.index), self.dropout), loss

    def decode(self, probabilities, data: tasks.TaskData) -> list[tuple[list, list, list]]:
        """Per example ``(units, unit tags, unit scores)``: a unit's score is its head
        token's probability of the predicted tag (0 without a token)."""
        names = list(self.spec.label_names)
        out = []
        for i, (alignment, units) in enumerate(zip(self.features[id(data)], self.units(data),
                                                   strict=True)):
            best = probabilities[i].argmax(axis=-1)
            tags = tagging.unit_tags(alignment, [names[k] for k in best], len(units),
                                     self.tagging.scheme, self.tagging.label_all_subwords)
            scores = [0.0 if p is None else float(probabilities[i, p, best[p]])
                      for p in alignment.heads]
            out.append((units, tags, scores))
        return out

    def predict(self, model, x, data: tasks.TaskData, batch_size: int) -> list:
        """Each sentence's predicted per-character tags."""
        return [tagging.char_tags(text, units, tags, self.tagging.scheme)
                for text, (units, tags, _) in zip(
                    data.texts, self.decode(self.outputs(model, x, batch_size), data),
                    strict=True)]

    def spans(self, probabilities, data: tasks.TaskData) -> list[list[dict[str, Any]]]:
        """Each text's entities: character spans of the original text."""
        return [tagging.spans(text, units, tags, self.tagging.scheme, scores)
                for text, (units, tags, scores) in zip(
                    data.texts, self.decode(probabilities, data), strict=True)]

    def gold(self, data: tasks.TaskData) -> list:
        return [tagging.char_tags(text, label["units"], label["tags"], self.tagging.scheme)
                for text, label in zip(data.texts, data.labels, strict=True)]

    def score(self, data: tasks.TaskData, predictions: list) -> dict[str, float | None]:
        return metric_fns.compute(self.spec.metrics, self.gold(data), predictions,
                                  label_names=self.spec.label_names)

    def ceiling(self, data: tasks.TaskData, targets) -> dict[str, float | None]:
        """The scores of perfect token predictions (each position's training target; O
        where the loss skips): what this tokenizer's alignment and ``max_seq_length``
        let any model reach on ``data``."""
        import numpy as np

        outside = self.index[tagging.OUTSIDE]
        best = np.where(targets >= 0, targets, outside)
        oracle = np.zeros((*best.shape, len(self.index)), dtype="float32")
        np.put_along_axis(oracle, best[..., None], 1.0, axis=-1)
        predicted = [tagging.char_tags(text, units, tags, self.tagging.scheme)
                     for text, (units, tags, _) in zip(data.texts, self.decode(oracle, data),
                                                       strict=True)]
        return self.score(data, predicted)

    def coverage(self, data: tasks.TaskData) -> dict[str, int]:
        """How many units got no token: past ``max_seq_length`` or dropped by the
        tokenizer (both predicted O and scored)."""
        alignments = self.features[id(data)]
        return {"sentences": len(alignments),
                "truncated_sentences": sum(a.past_window > 0 for a in alignments),
                "units_past_window": sum(a.past_window for a in alignments),
                "units_without_token": sum(a.no_token for a in alignments)}


def make_head(spec: tasks.TaskSpec, tokenizer, max_seq_length: int, doc_stride: int,
              label_all_subwords: bool | None = None) -> _Head:
    """The task type's head: start/end spans over context windows for extractive QA,
    a tag per token for token classification (``label_all_subwords``: None keeps the
    task's setting), one output layer over the sequence representation otherwise."""
    if spec.type == "extractive-qa":
        return _SpanHead(spec, tokenizer, max_seq_length, doc_stride)
    if spec.type == "token-classification":
        return _TagHead(spec, tokenizer, label_all_subwords)
    return _Head(spec)


def _dev_early_stopping(head: _Head, dev_x, dev: tasks.TaskData, batch_size: int,
                        patience: int, epoch_callback=None):
    """A Keras callback that scores the dev split after each epoch, keeps the best
    epoch's weights, stops after ``patience`` epochs without improvement and restores
    the best weights at the end. ``epoch_callback(epoch, scores, value)`` sees each
    epoch's dev scores (hyperparameter search reports and prunes through it)."""
    import keras

    class DevMetricEarlyStopping(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history: list[dict[str, Any]] = []
            self.best_score, self.best_epoch, self.best_weights, self.wait = -math.inf, 0, None, 0

        def on_epoch_end(self, epoch, logs=None):
            predictions = head.predict(self.model, dev_x, dev, batch_size)
            scores = head.score(dev, predictions)
            value = scores[head.spec.metric]
            value = -math.inf if value is None else value
            self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", 0)),
                                 "dev": scores})
            if epoch_callback is not None:
                epoch_callback(epoch + 1, scores, value)
            if value > self.best_score:
                self.best_score, self.best_epoch, self.wait = value, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return DevMetricEarlyStopping()


def _check_tokenizer(tokenizer, tokenizer_dir: str, checkpoint_dir: str,
                     info: dict[str, Any]) -> None:
    # The vocab hash was checked by models.resolve_tokenizer; the size also catches a
    # checkpoint that records no hash.
    if tokenizer.get_vocab_size() != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens, checkpoint "
            f"{checkpoint_dir} was trained with {info['vocab_size']}; pass the run's tokenizer")


@dataclasses.dataclass
class FineTuned:
    """A fine-tuned task model and what produced it (:func:`fine_tune`)."""

    model: Any
    record: dict[str, Any]
    spec: tasks.TaskSpec
    info: dict[str, Any]


def model_inputs(head: _Head, tokenizer, info: dict[str, Any], data: tasks.TaskData):
    """``(x, y)`` for the checkpoint family: token types only where the family has them
    (not RoBERTa or BART), BART's encoder/decoder pair."""
    x, y = head.inputs(tokenizer, data)
    if not uses_segment_ids(info["model"]):
        x.pop("segment_ids", None)
    if info["model"] == "bart":
        x = bart_inputs(x, tokenizer.special_token_ids()["sep"])
    return x, y


def fine_tune(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
              data_dir: str | None, *, random_init: bool = False,
              max_train_examples: int | None = 2000, max_eval_examples: int | None = 1000,
              epochs: int = 1, batch_size: int = 32, learning_rate: float = 2e-4,
              max_seq_length: int = 64, seed: int = 0, patience: int = 1,
              doc_stride: int | None = None, mixed_precision: bool = False,
              weight_decay: float = WEIGHT_DECAY, warmup_ratio: float = WARMUP_RATIO,
              pooling: str = "auto", dropout: float = DEFAULT_DROPOUT,
              augment: dict[str, Any] | None = None,
              label_all_subwords: bool | None = None,
              epoch_callback: Callable[[int, dict, float], None] | None = None) -> FineTuned:
    """Fine-tune on ``task``'s train split with early stopping on its dev split and score
    its test split. ``task``: a built-in name, a task YAML file or a
    :class:`tasks.TaskSpec`. ``checkpoint_dir``: a korlm checkpoint or a korlm Hugging
    Face export. ``tokenizer_dir``: None for the checkpoint's own tokenizer, else an
    override checked against the checkpoint's vocab hash (:func:`models.resolve_tokenizer`).
    ``pooling``: the sentence representation (:func:`resolve_pooling`); ``dropout``: the
    backbone's and the head's dropout while fine-tuning (not the checkpoint's).
    ``augment``: settings for :func:`korlm.evaluation.augment.augment_task_data` (train split only).
    ``label_all_subwords``: token classification trains every subword of a unit (None:
    the task's setting; :mod:`korlm.evaluation.tagging`). ``epoch_callback(epoch, dev_scores, primary_value)`` runs after
    each epoch's dev scoring; what it raises (a pruned tuning trial) ends the run."""
    started = time.perf_counter()
    spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience),
                        ("max_train_examples", max_train_examples or 1),
                        ("max_eval_examples", max_eval_examples or 1)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if not 0 < learning_rate < 1:
        raise KorlmError(f"learning_rate must be between 0 and 1, got {learning_rate}")
    if not 0 <= weight_decay < 1:
        raise KorlmError(f"weight_decay must be in [0, 1), got {weight_decay}")
    if not 0 <= warmup_ratio < 1:
        raise KorlmError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0 <= dropout < 1:
        raise KorlmError(f"dropout must be in [0, 1), got {dropout}")
    info = checkpoint_info(checkpoint_dir)
    # QA and taggers read every token: no pooling
    sentence_head = spec.type not in ("extractive-qa", "token-classification")
    used_pooling, pooling_why = (resolve_pooling(pooling, info, checkpoint_dir) if sentence_head
                                 else (None, f"{spec.type}: logits over the tokens"))
    tokenizer_dir = resolve_tokenizer(checkpoint_dir, tokenizer_dir, info)
    if not 8 <= max_seq_length <= int(info["max_seq_length"]):
        raise KorlmError(f"max_seq_length must be between 8 and the checkpoint's "
                         f"{info['max_seq_length']}, got {max_seq_length}")
    if doc_stride is None:
        doc_stride = max_seq_length // 4
    if spec.type == "extractive-qa" and not 0 < doc_stride <= max_seq_length // 2 - 4:
        # questions keep at most half the window; the context part must exceed the stride
        raise KorlmError(f"doc_stride must be between 1 and max_seq_length/2 - 4 "
                         f"({max_seq_length // 2 - 4}), got {doc_stride}")
    splits = tasks.load_task(spec, data_dir, max_train_examples=max_train_examples,
                             max_eval_examples=max_eval_examples)
    spec = splits.spec
    train = splits.train
    if augment and spec.type == "token-classification":
        raise KorlmError("data augmentation does not apply to token classification: EDA's "
                         "edits would move the tagged words and characters")
    if augment:
        from korlm.evaluation import augment as augmentation

        train = augmentation.augment_task_data(train, seed=seed, spec=spec, **augment)
    tokenizer = load_tokenizer(tokenizer_dir, max_seq_length)
    _check_tokenizer(tokenizer, tokenizer_dir, checkpoint_dir, info)
    head = make_head(spec, tokenizer, max_seq_length, doc_stride, label_all_subwords)
    head.pooling, head.dropout = used_pooling, dropout
    if spec.type == "token-classification":
        spec = dataclasses.replace(spec, tagging=head.tagging)  # the setting used
    (x_train, y_train), (x_dev, _), (x_test, test_targets) = (
        model_inputs(head, tokenizer, info, s) for s in (train, splits.dev, splits.test))

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    float16 = bool(mixed_precision and tf.config.list_physical_devices("GPU"))
    if float16:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(seed)
    backbone = load_backbone(checkpoint_dir, load_weights=not random_init, dropout=dropout)
    model, loss = head.build(backbone)
    num_train = len(y_train)
    total_steps = max(1, num_train // batch_size) * epochs
    optimizer = keras.optimizers.AdamW(
        learning_rate=warmup_linear_decay(
            learning_rate, max(1, int(warmup_ratio * total_steps)), total_steps),
        weight_decay=weight_decay, epsilon=1e-6, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(num_train, seed=seed, reshuffle_each_iteration=True)
                .batch(batch_size, drop_remainder=num_train >= batch_size)
                .prefetch(tf.data.AUTOTUNE))
    eval_batch = max(batch_size, 128)
    stopper = _dev_early_stopping(head, x_dev, splits.dev, eval_batch, patience, epoch_callback)
    fit_started = time.perf_counter()
    try:
        history = model.fit(train_ds, epochs=epochs, shuffle=False, verbose=0,
                            callbacks=[stopper])
    finally:
        if float16:
            keras.mixed_precision.set_global_policy("float32")
    fit_seconds = time.perf_counter() - fit_started
    test_predictions = head.predict(model, x_test, splits.test, eval_batch)
    scores = head.score(splits.test, test_predictions)
    # how far chance moves these scores on this test set, and what a constant predictor
    # scores on it (the report flags rows within one standard error of that)
    gold = head.gold(splits.test)
    standard_errors, se_methods = metric_fns.standard_errors(
        spec.metrics, gold, test_predictions, spec.num_classes, label_names=spec.label_names)
    baseline = metric_fns.constant_baseline(spec.metrics, gold, spec.type,
                                            splits.train.labels, spec.num_classes,
                                            label_names=spec.label_names)
    split_note = splits.split_note
    if spec.type == "token-classification":
        coverage = head.coverage(splits.test)
        if coverage["units_past_window"] or coverage["units_without_token"]:
            unit = "characters" if spec.tagging.level == "char" else "words"
            split_note = "; ".join(filter(None, [split_note, (
                f"{coverage['truncated_sentences']} of {coverage['sentences']} test sentences "
                f"exceed max_seq_length {max_seq_length}: their {coverage['units_past_window']} "
                f"{unit} past it, and {coverage['units_without_token']} {unit} that the "
                "tokenizer drops, are scored as predicted O")]))

    name = RANDOM_INIT if random_init else checkpoint_dir.rstrip("/").rsplit("/", 1)[-1]
    record = {
        "task": spec.name,
        "task_type": spec.type,
        "checkpoint": name,
        "checkpoint_uri": checkpoint_dir,
        "tokenizer_uri": tokenizer_dir,
        "step": None if random_init else info.get("step"),
        "random_init": bool(random_init),
        # the sentence representation the head classified from (None: extractive QA)
        "pooling": used_pooling,
        "metrics": scores,
        "primary_metric": spec.metric,
        "undefined_metrics": sorted(k for k, v in scores.items() if v is None),
        "split_note": split_note,
        "splits": splits.summary(),
        "num_train": len(splits.train),
        "num_eval": len(splits.test),
        "standard_errors": standard_errors,
        "standard_error_methods": se_methods,
        # None: no constant prediction exists (extractive QA)
        "constant_baseline": baseline,
        "train_loss": float(history.history["loss"][-1]),
        "dev_history": stopper.history,
        "best_epoch": stopper.best_epoch,
        "best_dev_score": None if stopper.best_epoch == 0 else stopper.best_score,
        "seconds": round(time.perf_counter() - started, 2),
        "fine_tune_seconds": round(fit_seconds, 2),
        "fine_tune": {
            "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
            "max_seq_length": max_seq_length, "seed": seed, "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay, "max_train_examples": max_train_examples,
            "max_eval_examples": max_eval_examples, "optimizer": "adamw",
            "schedule": "linear warmup, linear decay",
            "early_stopping": f"dev {spec.metric}, patience {patience}",
            **({"doc_stride": doc_stride} if spec.type == "extractive-qa" else {}),
            **({"label_all_subwords": spec.tagging.label_all_subwords}
               if spec.type == "token-classification" else {}),
            **({"augment": dict(augment), "num_train_augmented": len(train)}
               if augment else {}),
            "mixed_precision": "mixed_float16" if float16 else "float32",
            "pooling": used_pooling, "pooling_requested": pooling, "pooling_note": pooling_why,
            "dropout": dropout,
        },
        "model": {k: info.get(k) for k in ("model", "size", "vocab_size", "max_seq_length")},
        # per-item test predictions: the report pairs a checkpoint with random init on them
        "predictions": {
            "split": "test",
            "items_sha256": metric_fns.items_digest(splits.test.texts, splits.test.texts_b,
                                                    gold),
            "gold": list(gold), "predicted": list(test_predictions)},
    }
    if spec.type == "token-classification":
        record["label_names"] = list(spec.label_names)
        record["tagging"] = {**spec.tagging.as_dict(), "test_coverage": coverage,
                             "alignment_ceiling": head.ceiling(splits.test, test_targets)}
    pretraining = {k: info[k] for k in ("train_loss", "heldout_loss", "heldout_accuracy",
                                        "unigram_entropy", "dropout") if info.get(k) is not None}
    if pretraining and not random_init:  # the checkpoint's own figures (korlm.pretrain.heldout)
        record["pretraining"] = pretraining
    if spec.is_classification:
        y_test = np.array(splits.test.labels)
        record["label_names"] = list(spec.label_names)
        record["majority_class_accuracy"] = float(
            np.max(np.bincount(y_test, minlength=spec.num_classes)) / len(y_test))
        # rows: gold class, columns: predicted class (test split), in label_names order;
        # the KFP evaluate component draws it as a ClassificationMetrics artifact
        record["confusion_matrix"] = {
            "labels": list(spec.label_names),
            "matrix": metric_fns.confusion_matrix(y_test, test_predictions, spec.num_classes)}
    return FineTuned(model, record, spec, info)


def write_metrics(record: dict[str, Any], directory: str) -> None:
    with open(os.path.join(directory, METRICS_JSON), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)


def describe(record: dict[str, Any]) -> str:
    scores = record["metrics"]
    shown = ", ".join(f"{k} {'undefined' if v is None else f'{v:.4f}'}" for k, v in scores.items())
    return (f"{record['task']} {record['checkpoint']}: {shown} (train {record['num_train']}, "
            f"eval {record['num_eval']}, {record['seconds']:.1f} s)")


def task_file(task: str | tasks.TaskSpec) -> str | None:
    """A YAML-declared task's file (an input the output must keep clear of), else None."""
    return task if isinstance(task, str) and task.endswith((".yaml", ".yml")) else None


def evaluate_checkpoint(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
                        data_dir: str | None, output_dir: str, *, overwrite: bool = False,
                        **settings) -> dict[str, Any]:
    """:func:`fine_tune` (same keyword arguments), then write ``metrics.json`` to
    ``output_dir`` (checked first: new, empty or, with ``overwrite``, an earlier
    evaluate output)."""
    checkpoint_info(checkpoint_dir)  # not a checkpoint: that first, not the output
    where = {"inputs": [checkpoint_dir, tokenizer_dir, task_file(task)], "containers": [data_dir]}
    storage.check_output(output_dir, "evaluate", overwrite=overwrite, **where)
    record = fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, **settings).record
    with storage.atomic_output_dir(output_dir, "evaluate", overwrite=overwrite, **where) as staging:
        write_metrics(record, staging)
    print(describe(record), flush=True)
    return record


def seed_folder(seed: int) -> str:
    return f"seed-{seed}"


def evaluate_runs(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
                  data_dir: str | None, output_dir: str, *, seeds: list[int] | None = None,
                  baselines: list[str] | tuple[str, ...] = (), overwrite: bool = False,
                  **settings) -> list[dict[str, Any]]:
    """:func:`evaluate_checkpoint` for every fine-tuning seed in ``seeds`` (None: the
    ``seed`` setting), plus the classical ``baselines``
    (:mod:`korlm.evaluation.baseline`; random init's companions), in one output:
    ``metrics.json`` for one seed, ``seed-<s>/metrics.json`` for several, and
    ``<baseline>/metrics.json`` for each baseline the task has. Returns the records
    (seeds first)."""
    from korlm.evaluation import baseline as classical

    checkpoint_info(checkpoint_dir)
    seeds = [settings.pop("seed", 0)] if seeds is None else list(seeds)
    settings.pop("seed", None)
    if not seeds or len(set(seeds)) != len(seeds):
        raise KorlmError(f"seeds must be distinct and at least one, got {seeds}")
    for name in baselines:
        if name not in classical.BASELINES:
            raise KorlmError(f"unknown baseline {name!r}; known: {', '.join(classical.BASELINES)}")
    where = {"inputs": [checkpoint_dir, tokenizer_dir, task_file(task)], "containers": [data_dir]}
    storage.check_output(output_dir, "evaluate", overwrite=overwrite, **where)
    written: list[tuple[str, dict[str, Any]]] = []
    for seed in seeds:
        record = fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, seed=seed,
                           **settings).record
        written.append(("" if len(seeds) == 1 else seed_folder(seed), record))
        print(describe(record) + f" (seed {seed})", flush=True)
    budget = {k: settings[k] for k in ("max_train_examples", "max_eval_examples") if k in settings}
    for name in baselines:
        record = classical.compute(name, checkpoint_dir, tokenizer_dir, task, data_dir, **budget)
        if record is None:
            spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
            print(f"{spec.name}: no {name} row ({classical.unsupported(spec.type)})", flush=True)
            continue
        written.append((name, record))
        print(describe(record) + f" [{record['note']}]", flush=True)
    with storage.atomic_output_dir(output_dir, "evaluate", overwrite=overwrite, **where) as staging:
        for folder, record in written:
            target = os.path.join(staging, folder) if folder else staging
            os.makedirs(target, exist_ok=True)
            write_metrics(record, target)
    return [record for _, record in written]
