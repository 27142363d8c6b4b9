"""The scores Korean benchmark tables report, in plain numpy (no scipy/sklearn needed).

Every function takes gold values first and predictions second, returns a float in the
task's usual range (fractions, not percent) or ``None`` when the score is undefined
(a correlation of constant predictions), and rejects empty or NaN input with a
:class:`KorlmError`. ``exact_match`` and ``f1`` follow the official KorQuAD 1.0
evaluation script: its answer normalization and character-level F1, max over the gold
answers of a question. ``entity_f1``, ``entity_micro_f1`` and ``char_f1`` score token
classification (KLUE-NER's definitions: :mod:`korlm.evaluation.tagging`) over
per-sentence tag sequences.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from korlm.errors import KorlmError
from korlm.evaluation import tagging

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman", "f1_at_threshold")
QA_METRICS = ("exact_match", "f1")
TAGGING_METRICS = tagging.METRICS
ALL_METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS + QA_METRICS + TAGGING_METRICS
# KLUE-STS: "binary label" is real-valued similarity >= 3.0.
STS_THRESHOLD = 3.0


def _arrays(gold: Sequence, predicted: Sequence, dtype=float) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(gold, dtype=dtype), np.asarray(predicted, dtype=dtype)
    if y.shape != p.shape or y.ndim != 1:
        raise KorlmError(f"gold and predicted values differ in shape: {y.shape} vs {p.shape}")
    if not len(y):
        raise KorlmError("cannot score an empty split")
    if dtype is float:
        for which, values in (("gold", y), ("predicted", p)):
            if np.isnan(values).any():
                raise KorlmError(f"{which} values contain NaN (position "
                                 f"{int(np.argmax(np.isnan(values)))})")
    return y, p


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> float:
    y, p = _arrays(gold, predicted, dtype=np.int64)
    return float(np.mean(y == p))


def macro_f1(gold: Sequence[int], predicted: Sequence[int],
             labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: classes seen in gold or
    predictions); a class with no true and no predicted example counts as F1 0, as
    scikit-learn does with ``zero_division=0``."""
    y, p = _arrays(gold, predicted, dtype=np.int64)
    classes = sorted(set(y.tolist()) | set(p.tolist())) if labels is None else list(labels)
    scores = []
    for c in classes:
        tp = int(np.sum((p == c) & (y == c)))
        fp = int(np.sum((p == c) & (y != c)))
        fn = int(np.sum((p != c) & (y == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int],
                     num_classes: int) -> list[list[int]]:
    """Counts ``matrix[true][predicted]`` over class ids ``0..num_classes-1`` (rows: gold
    class, columns: predicted class, as scikit-learn and the KFP/Vertex confusion matrix
    read them); the cells sum to the number of examples."""
    y, p = _arrays(gold, predicted, dtype=np.int64)
    for which, values in (("gold", y), ("predicted", p)):
        if values.min() < 0 or values.max() >= num_classes:
            raise KorlmError(f"{which} class ids must be in 0..{num_classes - 1}, got "
                             f"{int(values.min())}..{int(values.max())}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y, p), 1)
    return matrix.tolist()


def pearson(gold: Sequence[float], predicted: Sequence[float]) -> float | None:
    y, p = _arrays(gold, predicted)
    if np.all(y == y[0]) or np.all(p == p[0]):
        return None  # constant: mean subtraction would leave float rounding, not zeros
    yc, pc = y - y.mean(), p - p.mean()
    denominator = float(np.sqrt(np.sum(yc * yc) * np.sum(pc * pc)))
    if denominator == 0.0:
        return None  # constant gold or predictions: correlation undefined
    return float(np.clip(np.sum(yc * pc) / denominator, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=float)
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman(gold: Sequence[float], predicted: Sequence[float]) -> float | None:
    y, p = _arrays(gold, predicted)
    return pearson(_average_ranks(y), _average_ranks(p))


def f1_at_threshold(gold: Sequence[float], predicted: Sequence[float],
                    threshold: float = STS_THRESHOLD) -> float:
    """Binary F1 (positive class: score >= threshold) of thresholded predictions
    against thresholded gold scores: KLUE-STS's F1."""
    y, p = _arrays(gold, predicted)
    yb, pb = y >= threshold, p >= threshold
    tp = int(np.sum(yb & pb))
    fp, fn = int(np.sum(~yb & pb)), int(np.sum(yb & ~pb))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


# --- KorQuAD 1.0 (official evaluate-v1.0.py semantics) ---

_KORQUAD_SYMBOLS = re.compile("['\"《》<>〈〉()‘’]")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """KorQuAD 1.0 normalization: quote/bracket symbols to spaces, lower case, ASCII
    punctuation removed, whitespace collapsed."""
    text = _KORQUAD_SYMBOLS.sub(" ", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(text.split())


def answer_exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def answer_f1(prediction: str, answer: str) -> float:
    """Character-level F1 of the normalized strings, spaces excluded (KorQuAD's F1)."""
    pred_chars = list(normalize_answer(prediction).replace(" ", ""))
    gold_chars = list(normalize_answer(answer).replace(" ", ""))
    common = sum((Counter(pred_chars) & Counter(gold_chars)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_chars), common / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def _qa_score(fn: Callable[[str, str], float], answers: Sequence[Sequence[str]],
              predictions: Sequence[str]) -> float:
    if len(answers) != len(predictions):
        raise KorlmError(f"{len(answers)} questions but {len(predictions)} predictions")
    if not answers:
        raise KorlmError("cannot score an empty split")
    return float(np.mean([max(fn(pred, a) for a in golds)
                          for golds, pred in zip(answers, predictions, strict=True)]))


def exact_match(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> float:
    """Share of questions whose prediction equals one of its gold answers (normalized)."""
    return _qa_score(answer_exact_match, answers, predictions)


def qa_f1(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> float:
    """Mean over questions of the best character F1 against the gold answers."""
    return _qa_score(answer_f1, answers, predictions)


def compute(names: Sequence[str], gold, predicted, num_classes: int | None = None,
            label_names: Sequence[str] | None = None) -> dict[str, float | None]:
    """The named metrics for one split; unknown names are a KorlmError. ``label_names``:
    a token-classification task's tags (``char_f1`` averages over all of them)."""
    out: dict[str, float | None] = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(gold, predicted)
        elif name == "macro_f1":
            out[name] = macro_f1(gold, predicted,
                                 None if num_classes is None else range(num_classes))
        elif name == "pearson":
            out[name] = pearson(gold, predicted)
        elif name == "spearman":
            out[name] = spearman(gold, predicted)
        elif name == "f1_at_threshold":
            out[name] = f1_at_threshold(gold, predicted)
        elif name == "exact_match":
            out[name] = exact_match(gold, predicted)
        elif name == "f1":
            out[name] = qa_f1(gold, predicted)
        elif name in TAGGING_METRICS:
            out[name] = tagging.score(name, gold, predicted, label_names)
        else:
            raise KorlmError(f"unknown metric {name!r}; known metrics: {', '.join(ALL_METRICS)}")
    return out


# --- how much a score can move by chance: standard errors and constant baselines ---

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0


def proportion_se(p: float, n: int) -> float:
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of a share ``p`` of ``n`` items
    (accuracy, exact match)."""
    if n <= 0:
        raise KorlmError(f"a standard error needs a test set, got n={n}")
    if not 0.0 <= p <= 1.0:
        raise KorlmError(f"a share must lie in [0, 1], got {p}")
    return float(np.sqrt(p * (1.0 - p) / n))


def _qa_item_scores(name: str, answers, predictions) -> np.ndarray:
    fn = answer_exact_match if name == "exact_match" else answer_f1
    return np.array([max(fn(pred, a) for a in golds)
                     for golds, pred in zip(answers, predictions, strict=True)])


def standard_errors(names: Sequence[str], gold, predicted, num_classes: int | None = None,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    label_names: Sequence[str] | None = None
                    ) -> tuple[dict[str, float | None], dict[str, str]]:
    """``(se, method)`` per metric over the test items: accuracy the binomial formula,
    QA exact match / F1 the standard error of the mean of per-question scores, the rest
    (macro-F1, Pearson, Spearman, F1@threshold) the standard deviation of the score over
    ``resamples`` bootstrap resamples of the test items (fixed ``seed``; resamples where
    the score is undefined are skipped); the tagging metrics resample whole sentences. ``None`` where the score itself is undefined
    or every resample was."""
    se: dict[str, float | None] = {}
    method: dict[str, str] = {}
    n = len(gold)
    for name in names:
        if name == "accuracy":
            se[name] = proportion_se(accuracy(gold, predicted), n)
            method[name] = "binomial sqrt(p(1-p)/n)"
        elif name in QA_METRICS:
            scores = _qa_item_scores(name, gold, predicted)
            se[name] = float(np.std(scores, ddof=1) / np.sqrt(n)) if n > 1 else None
            method[name] = "standard error of the mean over questions"
        elif name in TAGGING_METRICS:
            se[name] = tagging.bootstrap_se(name, gold, predicted, label_names, resamples, seed)
            method[name] = (f"bootstrap over test sentences ({resamples} resamples, "
                            f"seed {seed})")
        else:
            if compute([name], gold, predicted, num_classes)[name] is None:
                se[name] = None
            else:
                g, p = np.asarray(gold), np.asarray(predicted)
                rng = np.random.default_rng(seed)  # the same resamples for every metric
                values = [compute([name], g[idx], p[idx], num_classes)[name]
                          for idx in (rng.integers(0, n, size=n) for _ in range(resamples))]
                values = [v for v in values if v is not None]
                se[name] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            method[name] = f"bootstrap over test items ({resamples} resamples, seed {seed})"
    return se, method


def constant_baseline(names: Sequence[str], gold, task_type: str,
                      train_labels=None, num_classes: int | None = None,
                      label_names: Sequence[str] | None = None) -> dict | None:
    """The scores of one constant prediction for every test item: classification the
    test split's most frequent gold class (its share is the majority-class accuracy),
    regression the mean train score (correlations of a constant are undefined:
    ``None``); token classification ``O`` for every character (no entity: entity F1 0).
    Extractive QA has no constant answer: ``None``."""
    if task_type in ("classification", "pair-classification"):
        y = np.asarray(gold, dtype=np.int64)
        if not len(y):
            raise KorlmError("cannot score an empty split")
        majority = int(np.argmax(np.bincount(y, minlength=num_classes or 0)))
        return {"kind": "majority class (most frequent test label)", "prediction": majority,
                "metrics": compute(names, y, [majority] * len(y), num_classes)}
    if task_type == "token-classification":
        outside = [[tagging.OUTSIDE] * len(tags) for tags in gold]
        scores = compute(names, gold, outside, num_classes, label_names)
        # no predicted entity: 0 whenever the gold holds one (None only if it holds none)
        return {"kind": "constant prediction (every character O)",
                "prediction": tagging.OUTSIDE, "metrics": scores}
    if task_type == "regression":
        if train_labels is None or not len(train_labels):
            raise KorlmError("a constant regression baseline needs the train scores")
        mean = float(np.mean(np.asarray(train_labels, dtype=float)))
        return {"kind": "constant prediction (mean train score)", "prediction": mean,
                "metrics": compute(names, gold, [mean] * len(gold), num_classes)}
    return None


# --- paired differences: a checkpoint against random init on the same test items ---

# Metrics that are a mean of per-item scores: their paired difference is a mean of
# per-item differences, with the usual standard error of a mean.
ITEM_MEAN_METRICS = ("accuracy",) + QA_METRICS
# The metrics paired_difference knows how to resample (gold: class ids, scores or answers).
PAIRED_METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS + QA_METRICS


def items_digest(texts: Sequence[str], texts_b: Sequence[str] | None, gold) -> str:
    """A SHA-256 over a split's texts and gold labels, in order: two records are paired
    item by item only when their test splits have the same digest."""
    import hashlib
    import json

    blob = json.dumps([list(texts), None if texts_b is None else list(texts_b), list(gold)],
                      ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def item_scores(name: str, gold, predicted) -> np.ndarray:
    """Per-item scores whose mean is metric ``name`` (:data:`ITEM_MEAN_METRICS`):
    correctness for accuracy, the best exact match / character F1 over the gold answers
    for QA."""
    if name == "accuracy":
        y, p = _arrays(gold, predicted, dtype=np.int64)
        return (y == p).astype(float)
    if name in QA_METRICS:
        return _qa_item_scores(name, gold, predicted)
    raise KorlmError(f"{name} is not a mean of per-item scores")


def paired_difference(name: str, gold, predicted_a: Sequence[Sequence],
                      predicted_b: Sequence[Sequence], num_classes: int | None = None,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                      ) -> dict | None:
    """``A - B`` on metric ``name`` over the same test items, and its paired standard error.

    ``predicted_a`` / ``predicted_b``: one prediction list per fine-tuning seed of each
    system (K_A and K_B seeds; the systems' scores are their seed means, as the report's
    cells). For a mean of per-item scores s (accuracy, QA exact match / F1), each item's
    score is first averaged over a system's seeds, s̄_i, then d_i = s̄_Ai - s̄_Bi:
    ``delta = mean(d)`` and ``se = sd(d) / sqrt(n)`` (sample SD, n test items): the paired
    standard error of Miller (2024), "Adding Error Bars to Evals", arXiv:2411.00640, §4
    (paired differences; averaging resampled answers per question first). Other metrics
    (macro-F1, correlations, F1@threshold) are not per-item means: ``se`` is the SD of
    ``delta`` over ``resamples`` paired bootstrap resamples of the test items, the same
    items for both systems (Koehn 2004, "Statistical significance tests for machine
    translation evaluation"), each resample's ``delta`` the difference of seed-mean
    scores. ``None`` when the metric is undefined for a seed (a constant correlation)."""
    if name not in PAIRED_METRICS:
        raise KorlmError(f"no paired difference for {name!r}; it is defined for "
                         f"{', '.join(PAIRED_METRICS)}")
    if not predicted_a or not predicted_b:
        raise KorlmError("a paired difference needs predictions of both systems")
    n = len(gold)
    for preds in (*predicted_a, *predicted_b):
        if len(preds) != n:
            raise KorlmError(f"{n} test items but {len(preds)} predictions")
    if name in ITEM_MEAN_METRICS:
        mean_a = np.mean([item_scores(name, gold, p) for p in predicted_a], axis=0)
        mean_b = np.mean([item_scores(name, gold, p) for p in predicted_b], axis=0)
        d = mean_a - mean_b
        return {"delta": float(d.mean()),
                "se": float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else None,
                "n": n, "seeds": [len(predicted_a), len(predicted_b)],
                "method": "paired: SE of the per-item difference of seed-mean scores"}
    g = np.asarray(gold, dtype=float)  # class ids or scores (QA metrics are item means)
    arrays_a = [np.asarray(p) for p in predicted_a]
    arrays_b = [np.asarray(p) for p in predicted_b]

    def delta(idx) -> float | None:
        values = []
        for arrays in (arrays_a, arrays_b):
            scores = [compute([name], g[idx].tolist(), p[idx].tolist(), num_classes)[name]
                      for p in arrays]
            if any(s is None for s in scores):
                return None
            values.append(float(np.mean(scores)))
        return values[0] - values[1]

    point = delta(np.arange(n))
    if point is None:
        return None
    rng = np.random.default_rng(seed)
    draws = [delta(rng.integers(0, n, size=n)) for _ in range(resamples)]
    draws = [v for v in draws if v is not None]
    return {"delta": point, "se": float(np.std(draws, ddof=1)) if len(draws) > 1 else None,
            "n": n, "seeds": [len(predicted_a), len(predicted_b)],
            "method": f"paired bootstrap over test items ({resamples} resamples, seed {seed})"}
