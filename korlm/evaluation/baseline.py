"""The bag-of-words baseline row: what a linear model on the checkpoint's own tokens scores.

A pretrained encoder that does not beat a bag-of-words model on the same tokens has not
shown that pretraining helped, however it compares with random init. ``korlm evaluate``
computes this row beside random init (``evaluate.baselines: [bag-of-words]``) for every
classification, pair-classification and regression task:

- features: the checkpoint's tokenizer (its WordPiece or SentencePiece tokens, after the
  vocab's morpheme pre-tokenization where it has one) applied to the whole text (the
  encoder sees only ``max_seq_length`` tokens), unigrams and bigrams of the token
  strings. A pair gets separate blocks for its two texts (``a:`` and ``b:`` features),
  a ``shared:`` feature for each token type present in both and one ``overlap:k``
  feature, k = round(10 x Jaccard overlap of their token sets): what a linear model can
  use of how much the texts agree (paraphrase, NLI, question pairs).
- models (scikit-learn): multinomial naive Bayes (``alpha`` 0.1 / 0.3 / 1) and logistic
  regression (``C`` 0.1 / 1 / 10) for classification, ridge regression (``alpha``
  0.1 / 1 / 10 / 100) for regression, each on token counts and on binary presence. The
  candidate with the best dev score on the task's primary metric (the first listed on a
  tie) is fitted on the train split alone (the encoder's train split; dev only chooses,
  as early stopping does for fine-tuning) and scored on the test split with the task's
  metrics, standard errors and per-item predictions (paired errors in the report).

Extractive QA (a span, not a label) and token classification (a tag per token) have no
bag-of-words model here: :func:`unsupported` says so and the report notes the gap.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

from korlm.errors import KorlmError
from korlm.evaluation import metrics as metric_fns
from korlm.evaluation import tasks

BAG_OF_WORDS = "bag-of-words"
BASELINES = (BAG_OF_WORDS,)
SUPPORTED_TYPES = ("classification", "pair-classification", "regression")
NB_ALPHAS = (0.1, 0.3, 1.0)
LR_CS = (0.1, 1.0, 10.0)
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0)
OVERLAP_BUCKETS = 10


def unsupported(task_type: str) -> str | None:
    """Why a task type has no bag-of-words row, or None when it has one."""
    if task_type in SUPPORTED_TYPES:
        return None
    if task_type == "extractive-qa":
        return "extractive QA answers with a span of the context, not a label"
    return f"{task_type} is not a text-to-label task"


def _ngrams(tokens: list[str], prefix: str = "") -> list[str]:
    return ([prefix + t for t in tokens]
            + [f"{prefix}{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)])


def features(tokenizer, data: tasks.TaskData) -> list[list[str]]:
    """Each example's feature strings (module docstring): token uni- and bigrams, and
    for pairs the ``a:``/``b:`` blocks, ``shared:`` tokens and the ``overlap:k`` bucket."""
    tokens_a = [e.tokens for e in tokenizer.encode_batch(data.texts, add_special_tokens=False)]
    if data.texts_b is None:
        return [_ngrams(t) for t in tokens_a]
    tokens_b = [e.tokens for e in tokenizer.encode_batch(data.texts_b, add_special_tokens=False)]
    out = []
    for a, b in zip(tokens_a, tokens_b, strict=True):
        shared = sorted(set(a) & set(b))
        union = set(a) | set(b)
        overlap = round(OVERLAP_BUCKETS * len(shared) / len(union)) if union else 0
        out.append(_ngrams(a, "a:") + _ngrams(b, "b:") + [f"shared:{t}" for t in shared]
                   + [f"overlap:{overlap}"])
    return out


def candidates(task_type: str) -> list[tuple[str, dict[str, Any], bool]]:
    """``(model, hyperparameters, binary features)`` in the order a dev tie is broken."""
    if task_type == "regression":
        return [("ridge", {"alpha": a}, binary) for binary in (False, True) for a in RIDGE_ALPHAS]
    return ([("multinomial-naive-bayes", {"alpha": a}, binary)
             for binary in (False, True) for a in NB_ALPHAS]
            + [("logistic-regression", {"C": c}, binary)
               for binary in (False, True) for c in LR_CS])


def _model(name: str, params: dict[str, Any]):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.naive_bayes import MultinomialNB

    if name == "multinomial-naive-bayes":
        return MultinomialNB(**params)
    if name == "logistic-regression":
        return LogisticRegression(max_iter=2000, random_state=0, **params)
    return Ridge(random_state=0, **params)


def _tokenizer(checkpoint_dir: str, tokenizer_dir: str | None):
    from korlm.modeling.checkpoints import resolve_tokenizer
    from korlm.tokenizer import tokenization

    resolved = resolve_tokenizer(checkpoint_dir, tokenizer_dir)
    wrapper = tokenization.load(resolved)
    wrapper.hf.no_truncation()  # the whole text (a fresh copy: nothing else uses it)
    wrapper.hf.no_padding()
    return wrapper, resolved


def bag_of_words(checkpoint_dir: str, tokenizer_dir: str | None, task: str | tasks.TaskSpec,
                 data_dir: str | None, *, max_train_examples: int | None = 2000,
                 max_eval_examples: int | None = 1000, **_fine_tuning) -> dict[str, Any] | None:
    """The bag-of-words record of ``task`` (``metrics.json``'s fields, row
    ``bag-of-words``) on the same splits fine-tuning uses (``max_*_examples``), with the
    tokenizer of ``checkpoint_dir`` (or the ``tokenizer_dir`` override, checked as
    fine-tuning checks it). Other fine-tuning settings are accepted and unused. ``None``
    for a task type without a bag-of-words model (:func:`unsupported`)."""
    started = time.perf_counter()
    spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
    if unsupported(spec.type):
        return None
    splits = tasks.load_task(spec, data_dir, max_train_examples=max_train_examples,
                             max_eval_examples=max_eval_examples)
    spec = splits.spec
    tokenizer, resolved = _tokenizer(checkpoint_dir, tokenizer_dir)
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import CountVectorizer
    from threadpoolctl import threadpool_limits

    docs = {name: features(tokenizer, getattr(splits, name)) for name in tasks.SPLITS}
    regression = spec.type == "regression"
    y = {name: np.asarray(getattr(splits, name).labels, dtype=float if regression else int)
         for name in tasks.SPLITS}

    def as_labels(out) -> list:
        return [float(v) for v in out] if regression else [int(v) for v in out]

    matrices: dict[bool, dict[str, Any]] = {}
    tried, best = [], None
    for name, params, binary in candidates(spec.type):
        if binary not in matrices:
            vectorizer = CountVectorizer(analyzer=lambda doc: doc, binary=binary)
            train_x = vectorizer.fit_transform(docs["train"])
            matrices[binary] = {"train": train_x, "vocabulary": len(vectorizer.vocabulary_),
                                **{s: vectorizer.transform(docs[s]) for s in ("dev", "test")}}
        x = matrices[binary]
        model = _model(name, params)
        # one BLAS thread: on these small sparse problems more threads only contend
        # (logistic regression on the demo's NSMC split: 0.1 s of CPU instead of 1.5 s)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x["train"], y["train"])
        dev_scores = metric_fns.compute(spec.metrics, splits.dev.labels,
                                        as_labels(model.predict(x["dev"])), spec.num_classes)
        value = dev_scores[spec.metric]
        tried.append({"model": name, "params": params, "binary": binary,
                      "dev": dev_scores})
        if best is None or (value is not None and value > best[0]):
            best = (-math.inf if value is None else value, name, params, binary, model)
    _, name, params, binary, model = best
    x = matrices[binary]
    predictions = as_labels(model.predict(x["test"]))
    scores = metric_fns.compute(spec.metrics, splits.test.labels, predictions, spec.num_classes)
    standard_errors, se_methods = metric_fns.standard_errors(
        spec.metrics, splits.test.labels, predictions, spec.num_classes)
    constant = metric_fns.constant_baseline(spec.metrics, splits.test.labels, spec.type,
                                            splits.train.labels, spec.num_classes)
    shown = ", ".join(f"{k}={v:g}" for k, v in params.items())
    family = tokenizer.hf.model.__class__.__name__
    pre = " (morpheme pre-tokenized)" if tokenizer.pre_tokenizer == "morpheme" else ""
    record = {
        "task": spec.name,
        "task_type": spec.type,
        "checkpoint": BAG_OF_WORDS,
        "baseline": BAG_OF_WORDS,
        "checkpoint_uri": checkpoint_dir,
        "tokenizer_uri": resolved,
        "step": None,
        "random_init": False,
        "metrics": scores,
        "primary_metric": spec.metric,
        "undefined_metrics": sorted(k for k, v in scores.items() if v is None),
        "split_note": splits.split_note,
        "splits": splits.summary(),
        "num_train": len(splits.train),
        "num_eval": len(splits.test),
        "standard_errors": standard_errors,
        "standard_error_methods": se_methods,
        "constant_baseline": constant,
        "note": (f"{name} ({shown}, {'binary' if binary else 'count'} features), chosen on "
                 f"dev {spec.metric} among {len(tried)} candidates"),
        "bag_of_words": {
            "model": name, "params": params, "binary": binary,
            "features": (f"unigrams + bigrams of the checkpoint's {family} tokens{pre}, whole "
                         "text" + ("; pairs: a:/b: blocks, shared: tokens, overlap bucket"
                               if splits.test.texts_b is not None else "")),
            "num_features": x["vocabulary"], "selected_on": f"dev {spec.metric}",
            "candidates": tried, "library": "scikit-learn"},
        "predictions": {
            "split": "test",
            "items_sha256": metric_fns.items_digest(splits.test.texts, splits.test.texts_b,
                                                    splits.test.labels),
            "gold": list(splits.test.labels), "predicted": predictions},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if spec.is_classification:
        record["label_names"] = list(spec.label_names)
        record["confusion_matrix"] = {
            "labels": list(spec.label_names),
            "matrix": metric_fns.confusion_matrix(splits.test.labels, predictions,
                                                  spec.num_classes)}
    return record


def compute(name: str, checkpoint_dir: str, tokenizer_dir: str | None,
            task: str | tasks.TaskSpec, data_dir: str | None, **settings) -> dict | None:
    """The record of baseline ``name`` (one of :data:`BASELINES`), or None where the task
    has none."""
    if name != BAG_OF_WORDS:
        raise KorlmError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return bag_of_words(checkpoint_dir, tokenizer_dir, task, data_dir, **settings)
