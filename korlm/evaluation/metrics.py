"""The scores Korean benchmark tables report, in plain numpy (no scipy/sklearn needed).

Every function takes gold values first and predictions second, returns a float in the
task's usual range (fractions, not percent) or ``None`` when the score is undefined
(a correlation of constant predictions), and rejects empty or NaN input with a
:class:`KorlmError`. ``exact_match`` and ``f1`` follow the official KorQuAD 1.0
evaluation script: its answer normalization and character-level F1, max over the gold
answers of a question.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from korlm.errors import KorlmError

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman", "f1_at_threshold")
QA_METRICS = ("exact_match", "f1")
ALL_METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS + QA_METRICS
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


def compute(names: Sequence[str], gold, predicted, num_classes: int | None = None
            ) -> dict[str, float | None]:
    """The named metrics for one split; unknown names are a KorlmError."""
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
        else:
            raise KorlmError(f"unknown metric {name!r}; known metrics: {', '.join(ALL_METRICS)}")
    return out
