"""Task heads for fine-tuning: what differs between task types (the output layer over
the backbone, the loss, the targets and how predictions become scores), and the Keras
builders of those layers for each backbone family. :mod:`korlm.evaluation.evaluate` fine-tunes
with them; :mod:`korlm.evaluation.finetune` rebuilds them to serve.

Sentence-level heads read ``pooling`` (:func:`resolve_pooling`): ``cls``, ``mean`` or BERT's
``pooler`` (see :mod:`korlm.evaluation.evaluate` for what each means per family); extractive
QA reads start/end logits at every token (:class:`_SpanHead`), token classification a tag
per token (:class:`_TagHead`, :mod:`korlm.evaluation.tagging`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from korlm.errors import KorlmError, NotBuiltError
from korlm.evaluation import metrics as metric_fns
from korlm.evaluation import tagging, tasks

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


# --- task heads ---

class Head:
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


class _SpanHead(Head):
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


class _TagHead(Head):
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
              label_all_subwords: bool | None = None) -> Head:
    """The task type's head: start/end spans over context windows for extractive QA,
    a tag per token for token classification (``label_all_subwords``: None keeps the
    task's setting), one output layer over the sequence representation otherwise."""
    if spec.type == "extractive-qa":
        return _SpanHead(spec, tokenizer, max_seq_length, doc_stride)
    if spec.type == "token-classification":
        return _TagHead(spec, tokenizer, label_all_subwords)
    return Head(spec)
