"""Fine-tune a checkpoint on one task and keep the model: a servable model directory.

``korlm evaluate`` fine-tunes to *score* a checkpoint and throws the model away;
``korlm finetune`` runs the same fine-tuning (:func:`korlm.evaluation.evaluate.fine_tune`: early
stopping on dev, the best epoch's weights, the same metrics) and writes what a product
team deploys::

    MODEL_DIR/
      korlm_finetuned.json   task (name, type, labels, metrics), backbone family, sequence
                             length, QA doc stride, the head's pooling, the fine-tuning
                             settings and scores
      label_map.json         class id -> label (classification; a tagger's tag ids)
      metrics.json           the same record ``korlm evaluate`` writes
      model.weights.h5       the whole task model (backbone + head)
      backbone/              the backbone's architecture (config only, no weights)
      tokenizer/             the tokenizer, so the directory is self-contained

:func:`load_finetuned` rebuilds the model from code and the architecture, loads the
weights and answers ``classify`` / ``regress`` / ``answer`` / ``tag`` calls (``korlm serve``
puts an HTTP API in front of it). The checkpoint may be a korlm checkpoint or a korlm Hugging Face
export (:mod:`korlm.modeling.hf_import`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.evaluation import evaluate, heads, tagging, tasks
from korlm.modeling.checkpoints import (
    CHECKPOINT_INFO,
    checkpoint_info,
    load_backbone,
    resolve_tokenizer,
)
from korlm.tokenizer.files import TOKENIZER_DIR_FILES

FINETUNED_JSON = "korlm_finetuned.json"
LABEL_MAP_JSON = "label_map.json"
WEIGHTS_FILE = "model.weights.h5"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
# Architecture files of a backbone: a korlm checkpoint (KerasHub preset) or an HF export.
_ARCHITECTURE_FILES = ("config.json", "metadata.json", CHECKPOINT_INFO)


def _copy_files(src: str, dst: str, names: tuple[str, ...]) -> list[str]:
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in names:
        path = storage.join(src, name)
        if storage.exists(path):
            with storage.open_file(path, "rb") as f, open(os.path.join(dst, name), "wb") as out:
                out.write(f.read())
            copied.append(name)
    return copied


def finetune(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
             data_dir: str | None, output_dir: str, *, overwrite: bool = False,
             **settings) -> dict[str, Any]:
    """Fine-tune (``settings``: :func:`korlm.evaluation.evaluate.fine_tune`'s keyword arguments) and
    write the servable model directory (checked first: new, empty or, with
    ``overwrite``, an earlier finetune output). ``tokenizer_dir``: None for the
    checkpoint's own tokenizer (a korlm checkpoint's copy, a Hugging Face export's files),
    else an override checked against the checkpoint's vocab hash
    (:func:`korlm.modeling.checkpoints.resolve_tokenizer`). Returns the metrics record."""
    if settings.get("random_init"):
        raise KorlmError("finetune keeps a model for serving; random_init is for "
                         "evaluation baselines (korlm evaluate --random-init)")
    checkpoint_info(checkpoint_dir)  # not a checkpoint: that first, not the output
    where = {"inputs": [checkpoint_dir, tokenizer_dir, evaluate.task_file(task)],
             "containers": [data_dir]}
    storage.check_output(output_dir, "finetune", overwrite=overwrite, **where)
    tokenizer_dir = resolve_tokenizer(checkpoint_dir, tokenizer_dir)
    tuned = evaluate.fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, **settings)
    record, spec = tuned.record, tuned.spec
    fine_tune = record["fine_tune"]
    meta = {
        "format_version": FORMAT_VERSION,
        "task": {"name": spec.name, "type": spec.type, "description": spec.description,
                 "metrics": list(spec.metrics),
                 "label_names": None if spec.label_names is None else list(spec.label_names),
                 "label_descriptions": (None if spec.label_descriptions is None
                                        else list(spec.label_descriptions)),
                 # token classification: scheme, unit level, subword labelling
                 "tagging": None if spec.tagging is None else spec.tagging.as_dict()},
        "model": {k: tuned.info.get(k) for k in ("model", "size", "vocab_size",
                                                  "max_seq_length", "step", "source")},
        "checkpoint_uri": checkpoint_dir,
        "max_seq_length": fine_tune["max_seq_length"],
        "doc_stride": fine_tune.get("doc_stride"),
        # the head to rebuild (korlm.evaluation.heads.resolve_pooling); files written
        # before it was recorded rebuild each family's earlier head (BERT: the pooler)
        "pooling": record.get("pooling"),
        "fine_tune": fine_tune,
        "metrics": record["metrics"],
        "best_epoch": record["best_epoch"],
        "best_dev_score": record["best_dev_score"],
    }
    with storage.atomic_output_dir(output_dir, "finetune", overwrite=overwrite, **where) as staging:
        copied = _copy_files(checkpoint_dir, os.path.join(staging, BACKBONE_DIR),
                             _ARCHITECTURE_FILES)
        if "config.json" not in copied:
            raise KorlmError(f"{checkpoint_dir} has no config.json to rebuild the backbone from")
        if not _copy_files(tokenizer_dir, os.path.join(staging, TOKENIZER_DIR),
                           TOKENIZER_DIR_FILES):
            raise KorlmError(f"no tokenizer files in {tokenizer_dir}")
        tuned.model.save_weights(os.path.join(staging, WEIGHTS_FILE))
        evaluate.write_metrics(record, staging)
        with open(os.path.join(staging, FINETUNED_JSON), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        if spec.label_names is not None:
            with open(os.path.join(staging, LABEL_MAP_JSON), "w", encoding="utf-8") as f:
                descriptions = spec.label_descriptions or spec.label_names
                json.dump({str(i): {"label": name, "description": about}
                           for i, (name, about) in enumerate(
                               zip(spec.label_names, descriptions, strict=True))},
                          f, indent=2, ensure_ascii=False)
    print(evaluate.describe(record) + f" -> {output_dir}", flush=True)
    return record


class FineTunedModel:
    """A fine-tuned task model loaded for inference (:func:`load_finetuned`)."""

    def __init__(self, model_dir: str, batch_size: int = 32):
        path = storage.join(model_dir, FINETUNED_JSON)
        if not storage.exists(path):
            raise KorlmError(f"{model_dir} is not a fine-tuned korlm model (no {FINETUNED_JSON}; "
                             "make one with korlm finetune)")
        try:
            meta = json.loads(storage.read_text(path))
        except json.JSONDecodeError as exc:
            raise KorlmError(f"{path} is corrupt (not JSON: {exc})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise KorlmError(f"{path}: format_version {meta.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}")
        task = meta["task"]
        self.meta = meta
        self.task_name: str = task["name"]
        self.task_type: str = task["type"]
        self.label_names: list[str] | None = task["label_names"]
        self.label_descriptions: list[str] | None = task.get("label_descriptions")
        self.max_seq_length: int = int(meta["max_seq_length"])
        self.metrics: dict[str, Any] = meta["metrics"]
        self.batch_size = batch_size
        self.spec = tasks.TaskSpec(
            name=self.task_name, description=task.get("description", ""), type=self.task_type,
            metrics=tuple(task["metrics"]),
            label_names=None if self.label_names is None else tuple(self.label_names),
            label_descriptions=(None if self.label_descriptions is None
                                else tuple(self.label_descriptions)),
            tagging=None if not task.get("tagging") else tagging.TaggingSpec(**task["tagging"]))
        local = _local_copy(model_dir)
        backbone_dir = os.path.join(local, BACKBONE_DIR)
        self.info = checkpoint_info(backbone_dir)
        self.tokenizer = evaluate.load_tokenizer(os.path.join(local, TOKENIZER_DIR),
                                                 self.max_seq_length)
        self.head = heads.make_head(self.spec, self.tokenizer, self.max_seq_length,
                                       meta["doc_stride"])
        self.pooling: str | None = meta.get("pooling")  # None: written before it was recorded
        self.head.pooling = self.pooling
        backbone = load_backbone(backbone_dir, load_weights=False)
        self.model, _ = self.head.build(backbone)
        try:
            self.model.load_weights(os.path.join(local, WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise KorlmError(f"{model_dir}/{WEIGHTS_FILE} cannot be loaded "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None

    def _expect(self, *types: str) -> None:
        if self.task_type not in types:
            raise KorlmError(f"model {self.task_name} is a {self.task_type} model; this call "
                             f"needs {' or '.join(types)}")

    @staticmethod
    def _texts(values, what: str) -> list[str]:
        values = list(values)
        if not values:
            raise KorlmError(f"{what}: no inputs")
        for i, v in enumerate(values):  # an empty string is a valid (if odd) document
            if not isinstance(v, str):
                raise KorlmError(f"{what}[{i}] must be a string, got {type(v).__name__}")
        return values

    def untokenized(self, texts, probe_chars: int = 64) -> list[int]:
        """Indexes of the ``texts`` that this model's tokenizer turns into no token at all:
        every character is one its normalizer or pre-tokenizer drops (a WordPiece vocab's
        BertNormalizer drops control, format, private-use and U+FFFD characters; all vocabs
        drop whitespace). ``korlm serve`` rejects such text (the model would see only
        ``[CLS] [SEP]``). Each text's first ``probe_chars`` characters are encoded first;
        only a text whose prefix gave no token is encoded whole, so a check of long texts
        costs about ``probe_chars`` characters each."""
        texts = list(texts)
        if not texts:
            return []

        def token_counts(values: list[str]) -> list[int]:  # padding positions are 0 in the mask
            return [sum(e.attention_mask) for e in
                    self.tokenizer.encode_batch(values, add_special_tokens=False)]

        empty = [i for i, n in enumerate(token_counts([t[:probe_chars] for t in texts])) if n == 0]
        longer = [i for i in empty if len(texts[i]) > probe_chars]
        if longer:
            kept = {i for i, n in zip(longer, token_counts([texts[i] for i in longer]),
                                      strict=True) if n > 0}
            empty = [i for i in empty if i not in kept]
        return empty

    def _run(self, data: tasks.TaskData):
        x, _ = evaluate.model_inputs(self.head, self.tokenizer, self.info, data)
        return x

    def _forward(self, x):
        """The model's outputs, ``predict_on_batch`` per chunk of ``batch_size`` rows:
        for the small batches of a server, Keras ``predict`` costs more in its own
        machinery (iterator, callbacks) than in the model (65 vs 27 ms for one text)."""
        import numpy as np

        rows = len(next(iter(x.values())))
        return np.concatenate([
            np.asarray(self.model.predict_on_batch(
                {k: v[i:i + self.batch_size] for k, v in x.items()}))
            for i in range(0, rows, self.batch_size)])

    def classify(self, texts, texts_b=None) -> list[dict[str, Any]]:
        """Labels and class probabilities; ``texts_b`` for sentence-pair models."""
        self._expect("classification", "pair-classification")
        texts = self._texts(texts, "texts")
        if (texts_b is None) != (self.task_type == "classification"):
            raise KorlmError(f"model {self.task_name} is a {self.task_type} model: "
                             + ("pass text pairs (texts_b)" if texts_b is None
                                else "it takes single texts, not pairs"))
        if texts_b is not None:
            texts_b = self._texts(texts_b, "texts_b")
            if len(texts_b) != len(texts):
                raise KorlmError(f"{len(texts)} texts but {len(texts_b)} texts_b")
        data = tasks.TaskData(texts, [0] * len(texts), texts_b)
        probabilities = self.head.from_logits(self._forward(self._run(data)))
        out = []
        for row in probabilities:
            best = int(row.argmax())
            out.append({"label": self.label_names[best], "label_id": best,
                        **({"description": self.label_descriptions[best]}
                           if self.label_descriptions else {}),
                        "probabilities": {name: float(p)
                                          for name, p in zip(self.label_names, row, strict=True)}})
        return out

    def regress(self, texts_a, texts_b) -> list[float]:
        """The regression score of each pair (e.g. STS similarity on its 0-5 scale)."""
        self._expect("regression")
        texts_a, texts_b = self._texts(texts_a, "texts_a"), self._texts(texts_b, "texts_b")
        if len(texts_a) != len(texts_b):
            raise KorlmError(f"{len(texts_a)} texts_a but {len(texts_b)} texts_b")
        data = tasks.TaskData(texts_a, [0.0] * len(texts_a), texts_b)
        return [float(v) for v in self.head.from_logits(self._forward(self._run(data)))]

    def answer(self, questions, contexts) -> list[dict[str, Any]]:
        """The best answer span of each (question, context): ``answer``, ``start``/``end``
        (character offsets into the context) and ``score``; long contexts are windowed."""
        self._expect("extractive-qa")
        questions = self._texts(questions, "questions")
        contexts = self._texts(contexts, "contexts")
        if len(questions) != len(contexts):
            raise KorlmError(f"{len(questions)} questions but {len(contexts)} contexts")
        data = tasks.TaskData(questions, [None] * len(questions), contexts)
        try:
            return self.head.spans(self.model, self._run(data), data, self.batch_size)
        finally:
            self.head.features.pop(id(data), None)  # window bookkeeping of this call

    def tag(self, texts) -> list[list[dict[str, Any]]]:
        """Each text's entities: ``start``/``end`` (character offsets into the text as
        given: ``text[start:end]`` is the entity), ``label`` (the entity type), ``text``
        and ``score`` (mean probability of the predicted tags). Text past
        ``max_seq_length`` tokens is not tagged."""
        self._expect("token-classification")
        texts = self._texts(texts, "texts")
        data = tasks.TaskData(texts, [None] * len(texts))
        try:
            return self.head.spans(self.head.from_logits(self._forward(self._run(data))), data)
        finally:
            self.head.features.pop(id(data), None)  # alignment bookkeeping of this call


def _local_copy(model_dir: str) -> str:
    """``model_dir`` itself when local; a gs:// model is copied to a temporary folder
    (Keras reads weights and presets from local files)."""
    if not storage.is_remote(model_dir):
        return model_dir
    import tempfile

    local = tempfile.mkdtemp(prefix="korlm-finetuned-")
    storage.copy_tree(model_dir, local)
    return local


def load_finetuned(model_dir: str, batch_size: int = 32) -> FineTunedModel:
    return FineTunedModel(model_dir, batch_size=batch_size)
