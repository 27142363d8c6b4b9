"""The bag-of-words baseline row, several fine-tuning seeds in one evaluate output, and the
report's paired differences from random init, on a tiny real checkpoint and NSMC slice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.evaluation import baseline, evaluate, tasks
from korlm.evaluation import metrics as metric_fns
from korlm.evaluation.report import build_report
from korlm.pretrain.train import run_pretrain
from korlm.tokenizer import tokenization
from tests.test_evaluate import _write_user_tasks, write_nsmc_slice
from tests.test_pretrain import build_tokenizer, write_pretraining_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, max_seq_length=48)
    checkpoints = run_pretrain(str(data_dir), str(tokenizer_dir), str(root / "run"),
                               steps=4, checkpoint_every=4, batch_size=8)
    nsmc_dir = write_nsmc_slice(root / "nsmc", num_train=600, num_test=200)
    return tokenizer_dir, checkpoints[-1]["uri"], nsmc_dir


def test_bag_of_words_picks_its_model_on_dev_and_scores_test(setup):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB

    tokenizer_dir, checkpoint, nsmc_dir = setup
    record = baseline.bag_of_words(checkpoint, None, "nsmc", str(nsmc_dir))
    assert record["checkpoint"] == record["baseline"] == "bag-of-words"
    assert record["tokenizer_uri"] == str(Path(checkpoint) / "tokenizer")  # the checkpoint's own
    assert record["num_train"] == 540 and record["num_eval"] == 200
    bow = record["bag_of_words"]
    tried = bow["candidates"]
    assert len(tried) == 12 and {c["model"] for c in tried} == {
        "multinomial-naive-bayes", "logistic-regression"}
    # the dev choice is real: the first candidate with the best dev accuracy
    dev = [c["dev"]["accuracy"] for c in tried]
    chosen = tried[dev.index(max(dev))]
    assert (bow["model"], bow["params"], bow["binary"]) == (
        chosen["model"], chosen["params"], chosen["binary"])
    assert len(set(dev)) > 1, "every candidate scored the same on dev: nothing was chosen"
    assert bow["model"] in record["note"] and "dev accuracy" in record["note"]

    # the same model refitted here from the same tokens scores the same test accuracy
    splits = tasks.load_task(tasks.get_task("nsmc"), str(nsmc_dir), max_train_examples=2000,
                             max_eval_examples=1000)
    tok = tokenization.load(str(Path(checkpoint) / "tokenizer"))
    docs = [baseline.features(tok, s) for s in (splits.train, splits.test)]
    vec = CountVectorizer(analyzer=lambda d: d, binary=bow["binary"])
    x_train, x_test = vec.fit_transform(docs[0]), vec.transform(docs[1])
    model = (MultinomialNB(**bow["params"]) if bow["model"] == "multinomial-naive-bayes"
             else LogisticRegression(max_iter=2000, random_state=0, **bow["params"]))
    predicted = model.fit(x_train, splits.train.labels).predict(x_test).tolist()
    assert record["predictions"]["predicted"] == predicted
    assert record["metrics"]["accuracy"] == pytest.approx(
        np.mean(np.array(predicted) == np.array(splits.test.labels)))
    assert record["metrics"]["accuracy"] > record["constant_baseline"]["metrics"]["accuracy"]
    acc = record["metrics"]["accuracy"]
    assert record["standard_errors"]["accuracy"] == pytest.approx(math.sqrt(acc * (1 - acc) / 200))
    assert bow["num_features"] == len(vec.vocabulary_)
    assert any(" " in f for f in vec.vocabulary_)  # bigrams
    assert any(f.startswith("##") for f in vec.vocabulary_)  # WordPiece continuation pieces


def test_pair_features_and_the_tasks_without_a_bag_of_words(setup, tmp_path):
    tokenizer_dir, checkpoint, _ = setup
    tok = tokenization.load(str(tokenizer_dir))
    pair = tasks.TaskData(["영화 정말 재밌다"], [0], texts_b=["정말 재밌다 최고"])
    feats = baseline.features(tok, pair)[0]
    a, b = (tok.encode_batch([t], add_special_tokens=False)[0].tokens
            for t in (pair.texts[0], pair.texts_b[0]))
    assert a[0] == "영" and a[1] == "##화"  # this small vocab's WordPiece pieces
    assert f"a:{a[0]}" in feats and f"b:{b[-1]}" in feats and f"a:{a[0]} {a[1]}" in feats
    shared = sorted(set(a) & set(b))
    assert shared and [f for f in feats if f.startswith("shared:")] == [f"shared:{t}" for t in shared]
    overlap = round(10 * len(shared) / len(set(a) | set(b)))
    assert [f for f in feats if f.startswith("overlap:")] == [f"overlap:{overlap}"]
    assert len(feats) == 2 * len(a) - 1 + 2 * len(b) - 1 + len(shared) + 1

    files = _write_user_tasks(tmp_path / "tasks")
    # every odd pair repeats text a as text b: the shared-token features find them
    pairs = baseline.bag_of_words(checkpoint, None, str(files["pairs"]), None)
    assert pairs["task_type"] == "pair-classification" and "a:/b: blocks" in (
        pairs["bag_of_words"]["features"])
    assert pairs["metrics"]["accuracy"] >= 0.95
    # regression: ridge on the same features, chosen on dev pearson
    sts = baseline.bag_of_words(checkpoint, None, str(files["sts"]), None)
    assert sts["bag_of_words"]["model"] == "ridge" and len(sts["bag_of_words"]["candidates"]) == 8
    assert set(sts["metrics"]) == {"pearson", "spearman", "f1_at_threshold"}
    assert "dev pearson" in sts["note"]
    # extractive QA: none, with the reason the report prints
    assert baseline.bag_of_words(checkpoint, None, str(files["qa"]), None) is None
    assert "span" in baseline.unsupported("extractive-qa")
    with pytest.raises(KorlmError, match="unknown baseline 'tf-idf'"):
        baseline.compute("tf-idf", checkpoint, None, "nsmc", None)


def _hand_paired(gold, a_seeds, b_seeds):
    """The paired SE written out: per-item correctness averaged over seeds, then the SE
    of the mean of the per-item differences."""
    n = len(gold)
    mean_a = [sum(p[i] == gold[i] for p in a_seeds) / len(a_seeds) for i in range(n)]
    mean_b = [sum(p[i] == gold[i] for p in b_seeds) / len(b_seeds) for i in range(n)]
    d = [x - y for x, y in zip(mean_a, mean_b, strict=True)]
    mean = sum(d) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)


def test_seeds_and_the_bag_of_words_in_one_output_and_the_paired_report(setup, tmp_path):
    tokenizer_dir, checkpoint, nsmc_dir = setup
    common = dict(max_seq_length=16, batch_size=32, epochs=1, max_train_examples=64,
                  max_eval_examples=100, seed=0)
    checkpoint_out, random_out = tmp_path / "eval" / "ckpt", tmp_path / "eval" / "random"
    tuned = evaluate.evaluate_runs(checkpoint, None, "nsmc", str(nsmc_dir), str(checkpoint_out),
                                   seeds=[1, 2], **common)
    base = evaluate.evaluate_runs(checkpoint, None, "nsmc", str(nsmc_dir), str(random_out),
                                  seeds=[1, 2], baselines=["bag-of-words"], random_init=True,
                                  **common)
    assert [r["fine_tune"]["seed"] for r in tuned] == [1, 2]
    assert [r.get("baseline") for r in base] == [None, None, "bag-of-words"]
    for out, seed in ((checkpoint_out, 1), (checkpoint_out, 2), (random_out, 2)):
        written = json.loads((out / f"seed-{seed}" / "metrics.json").read_text())
        assert written["fine_tune"]["seed"] == seed and len(written["predictions"]["gold"]) == 100
    assert not (checkpoint_out / "metrics.json").exists()
    bow = json.loads((random_out / "bag-of-words" / "metrics.json").read_text())
    assert bow["num_train"] == 64 and bow["num_eval"] == 100  # the fine-tuning splits
    assert len({r["predictions"]["items_sha256"] for r in tuned + base}) == 1

    summary = build_report([str(tmp_path / "eval")], str(tmp_path / "report"), references=[])
    md = (tmp_path / "report" / "results.md").read_text()
    assert summary["rows"] == ["step-000004", "random-init", "bag-of-words", "constant predictor"]
    assert "(2)" in md  # two seeds: mean ± SD (2)
    gold = base[0]["predictions"]["gold"]
    delta, se = _hand_paired(gold, [r["predictions"]["predicted"] for r in tuned],
                             [r["predictions"]["predicted"] for r in base[:2]])
    paired = summary["paired"]["step-000004"]["nsmc/accuracy"]
    assert paired["delta"] == pytest.approx(delta) and paired["se"] == pytest.approx(se)
    # the Δ is the difference of the table's seed means
    assert delta == pytest.approx(summary["values"]["step-000004"]["nsmc/accuracy"]
                                  - summary["values"]["random-init"]["nsmc/accuracy"])
    assert f"| step-000004 | {delta:+.4f} ± {se:.4f} |" in md
    bow_delta, bow_se = _hand_paired(gold, [bow["predictions"]["predicted"]],
                                     [r["predictions"]["predicted"] for r in base[:2]])
    assert f"| bag-of-words | {bow_delta:+.4f} ± {bow_se:.4f} |" in md
    assert "Δ vs random-init (± paired SE)" in md and "arXiv:2411.00640" in md
    assert "bag-of-words, nsmc: " in md and bow["bag_of_words"]["model"] in md
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "predictions" not in saved["records"][0]
    assert saved["paired_vs_random_init"]["bag-of-words"]["nsmc/accuracy"]["seeds"] == [1, 2]


def test_evaluate_cli_random_init_writes_the_seeds_and_the_baseline(setup, tmp_path, capsys):
    from korlm.cli import main

    _, checkpoint, nsmc_dir = setup
    args = ["evaluate", "--checkpoint", checkpoint, "--task", "nsmc", "--data-dir", str(nsmc_dir),
            "--max-seq-length", "16", "--batch-size", "64", "--epochs", "1",
            "--max-train-examples", "64", "--max-eval-examples", "32"]
    assert main([*args, "--output", str(tmp_path / "r"), "--random-init", "--seeds", "3"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["random_init"] is True
    assert (tmp_path / "r" / "bag-of-words" / "metrics.json").exists()
    assert '"predictions"' not in capsys.readouterr().out  # 64 x 2 numbers are not printed
    assert main([*args, "--output", str(tmp_path / "n"), "--random-init", "--no-baselines"]) == 0
    assert not (tmp_path / "n" / "bag-of-words").exists()
    assert main([*args, "--output", str(tmp_path / "x"), "--seeds", "1", "1"]) == 2
    assert "--seeds: seeds must be distinct" in capsys.readouterr().err


def test_paired_difference_of_a_bootstrapped_metric():
    gold = [0, 1, 1, 0, 1, 0, 1, 1, 0, 1] * 5
    a = [g if i % 4 else 1 - g for i, g in enumerate(gold)]
    b = [g if i % 3 else 1 - g for i, g in enumerate(gold)]
    result = metric_fns.paired_difference("macro_f1", gold, [a], [b], 2)
    assert result["delta"] == pytest.approx(metric_fns.macro_f1(gold, a, [0, 1])
                                            - metric_fns.macro_f1(gold, b, [0, 1]))
    assert 0 < result["se"] < 0.2 and "paired bootstrap" in result["method"]
    same = metric_fns.paired_difference("macro_f1", gold, [a], [a], 2)
    assert same["delta"] == 0 and same["se"] == 0
    exact = metric_fns.paired_difference("exact_match", [["가"], ["나"], ["다"]],
                                         [["가", "x", "다"]], [["가", "나", "y"]])
    assert exact["delta"] == pytest.approx(0) and exact["se"] == pytest.approx(
        math.sqrt(((0 - 0) ** 2 + 1 + 1) / 2 / 3))
    with pytest.raises(KorlmError, match="no paired difference for 'entity_f1'"):
        metric_fns.paired_difference("entity_f1", [0], [[0]], [[0]])
    with pytest.raises(KorlmError, match="3 test items but 2 predictions"):
        metric_fns.paired_difference("accuracy", [0, 1, 1], [[0, 1]], [[0, 1, 1]])
