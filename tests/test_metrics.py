"""korlm.evaluation.metrics against values computed by hand."""

import math

import pytest

from korlm.errors import KorlmError
from korlm.evaluation import metrics


def test_accuracy_and_macro_f1_by_hand():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    assert metrics.accuracy(gold, pred) == pytest.approx(4 / 6)
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
    assert metrics.macro_f1(gold, pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a declared class never seen counts as F1 0 (sklearn zero_division=0)
    assert metrics.macro_f1([0, 1], [0, 1], labels=range(3)) == pytest.approx(2 / 3)


def test_pearson_spearman_by_hand():
    gold = [1.0, 2.0, 3.0, 4.0]
    pred = [1.0, 3.0, 2.0, 5.0]
    # means 2.5 and 2.75; centred products 2.625 - 0.125 - 0.375 + 3.375 = 5.5
    assert metrics.pearson(gold, pred) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    # ranks 1 2 3 4 vs 1 3 2 4: 1 - 6 * 2 / (4 * 15) = 0.8
    assert metrics.spearman(gold, pred) == pytest.approx(0.8)
    # ties share their average rank: [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    tied = metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4])
    assert tied == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert metrics.pearson([1, 2, 3], [2, 2, 2]) is None  # undefined, not 0 or NaN


def test_f1_at_threshold_klue_sts():
    gold = [4.0, 3.0, 2.9, 0.5, 3.5]
    pred = [3.2, 2.0, 3.0, 1.0, 4.9]
    # gold positives: 0, 1, 4; predicted positives: 0, 2, 4 -> tp 2, fp 1, fn 1
    assert metrics.f1_at_threshold(gold, pred) == pytest.approx(2 / 3)


def test_korquad_normalization_exact_match_and_char_f1():
    assert metrics.normalize_answer("《 임종석 》의") == "임종석 의"
    assert metrics.normalize_answer("(1989년) 2월!") == "1989년 2월"
    assert metrics.answer_exact_match("'임종석'", "임종석") == 1.0
    # char F1 ignores spaces: "1989년 2월" vs "1989년 2월 15일": 7 common, 7 and 10 chars
    assert metrics.answer_f1("1989년 2월", "1989년 2월 15일") == pytest.approx(
        2 * (7 / 7) * (7 / 10) / (7 / 7 + 7 / 10))
    answers = [["임종석", "임종석 의원"], ["1989년"]]
    assert metrics.exact_match(answers, ["임종석 의원", "1990년"]) == pytest.approx(0.5)
    assert metrics.qa_f1(answers, ["임종석", "1990년"]) == pytest.approx(
        (1.0 + 0.8) / 2)  # 1990년 vs 1989년: 4 of 5 characters in common


def test_bad_input():
    with pytest.raises(KorlmError, match="predicted values contain NaN"):
        metrics.pearson([1, 2, 3], [1, float("nan"), 2])
    with pytest.raises(KorlmError, match="empty split"):
        metrics.accuracy([], [])
    with pytest.raises(KorlmError, match="differ in shape"):
        metrics.accuracy([1, 2], [1])
    with pytest.raises(KorlmError, match="unknown metric 'auc'"):
        metrics.compute(["auc"], [1], [1])
    assert metrics.compute(["accuracy", "macro_f1"], [0, 1], [0, 0], num_classes=2) == {
        "accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}


def test_confusion_matrix_counts_gold_rows_and_predicted_columns():
    from korlm.evaluation.metrics import confusion_matrix

    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert matrix == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert sum(map(sum, matrix)) == 6
    assert confusion_matrix([1, 1], [1, 1], 3) == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]
    with pytest.raises(KorlmError, match="class ids must be in 0..1"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_standard_errors_and_constant_baselines():
    # accuracy: binomial sqrt(p(1-p)/n); 0.75 of 400 items -> 0.02165
    assert metrics.proportion_se(0.75, 400) == pytest.approx((0.75 * 0.25 / 400) ** 0.5)
    assert metrics.proportion_se(1.0, 10) == 0.0
    with pytest.raises(KorlmError):
        metrics.proportion_se(0.5, 0)
    gold = [0, 1] * 50
    pred = [0, 1] * 40 + [1, 0] * 10  # 80 % right
    se, method = metrics.standard_errors(("accuracy", "macro_f1"), gold, pred, 2)
    assert se["accuracy"] == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    # the bootstrap SE of macro-F1 is near the binomial one here (balanced classes)
    assert 0.02 < se["macro_f1"] < 0.07 and "bootstrap" in method["macro_f1"]
    assert metrics.standard_errors(("macro_f1",), gold, pred, 2)[0] == {"macro_f1": se["macro_f1"]}
    # a constant prediction: correlation and its SE undefined
    assert metrics.standard_errors(("pearson",), [1.0, 2.0, 3.0], [2.0] * 3)[0] == {"pearson": None}
    # QA: SE of the mean of per-question scores (EM 1, 0, 1, 0 -> sd 0.577 / 2)
    em = metrics.standard_errors(("exact_match",), [["a"], ["b"], ["c"], ["d"]],
                                 ["a", "x", "c", "y"])[0]["exact_match"]
    assert em == pytest.approx(0.5773502 / 2)
    # majority class 0 (3 of 4): accuracy 0.75, macro-F1 of always 0 = (0.857 + 0) / 2
    base = metrics.constant_baseline(("accuracy", "macro_f1"), [0, 0, 0, 1], "classification",
                                     num_classes=2)
    assert base["prediction"] == 0 and base["metrics"]["accuracy"] == 0.75
    assert base["metrics"]["macro_f1"] == pytest.approx((6 / 7) / 2)
    reg = metrics.constant_baseline(("pearson", "f1_at_threshold"), [1.0, 4.0, 5.0],
                                    "regression", train_labels=[3.0, 4.0])
    assert reg["prediction"] == 3.5 and reg["metrics"]["pearson"] is None
    assert reg["metrics"]["f1_at_threshold"] == pytest.approx(0.8)  # always >= 3.0
    assert metrics.constant_baseline(("exact_match",), [["a"]], "extractive-qa") is None


def test_a_constant_that_does_not_subtract_to_zero_has_no_correlation():
    # the mean of three 2.7s is not 2.7 in floats (x - mean(x) = -4.4e-16): still undefined
    constant = [2.7] * 3
    assert metrics.pearson([1.0, 4.0, 5.0], constant) is None
    assert metrics.spearman([1.0, 4.0, 5.0], constant) is None
