"""The report: checkpoints by step, the baseline last, plots written."""

import json
import os

import pytest

from korlm.errors import KorlmError
from korlm.evaluation.report import build_report

KOELECTRA_ROWS = ["KoELECTRA-Small-v3 (external)", "KoELECTRA-Base-v3 (external)",
                  "KoBERT (external)"]
KLUE_ROWS = ["KLUE-BERT-base (external)", "KLUE-RoBERTa-small (external)",
             "KLUE-RoBERTa-base (external)", "KLUE-RoBERTa-large (external)"]


def _metrics(d, checkpoint, step, acc, random_init=False, task="nsmc", metrics=None,
             split_note=""):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": task, "checkpoint": checkpoint, "step": step,
                   "random_init": random_init, "metrics": metrics or {"accuracy": acc},
                   "split_note": split_note}, f)


def test_report_orders_rows_and_writes_files(tmp_path):
    _metrics(tmp_path / "e2" / "nsmc", "step-000200", 200, 0.71)
    _metrics(tmp_path / "e1" / "nsmc", "step-000100", 100, 0.65)
    _metrics(tmp_path / "base" / "nsmc", "random-init", None, 0.55, random_init=True)
    out = tmp_path / "report"
    summary = build_report([str(tmp_path / "e2"), str(tmp_path / "e1"), str(tmp_path / "base")],
                           str(out))
    assert summary["rows"][:3] == ["step-000100", "step-000200", "random-init"]
    assert summary["columns"] == ["nsmc/accuracy"]
    md = (out / "results.md").read_text()
    assert "| step-000200 | **0.7100** |" in md
    assert "| random-init | 0.5500 |" in md
    # published reference rows come last, marked external, never bold, with their source
    assert summary["rows"][3:] == ["KoELECTRA-Small-v3 (external)",
                                   "KoELECTRA-Base-v3 (external)", "KoBERT (external)"]
    assert "| KoELECTRA-Small-v3 (external) | 0.8936 |" in md
    assert "github.com/monologg/KoELECTRA" in md
    assert (out / "nsmc_accuracy.png").stat().st_size > 1000
    page = (out / "results.html").read_text()
    assert "<table>" in page and "class='external'" in page


def test_report_notes_undefined_values_and_reference_columns(tmp_path):
    note = "train/dev/test derived from klue-sts-v1.1_dev.json (519 rows) by a fixed permutation"
    _metrics(tmp_path / "a" / "klue-sts", "step-000100", 100, None, task="klue-sts",
             metrics={"pearson": 0.31, "spearman": None, "f1_at_threshold": 0.5},
             split_note=note)
    _metrics(tmp_path / "b" / "klue-sts", "random-init", None, None, task="klue-sts",
             random_init=True, metrics={"pearson": 0.12, "spearman": 0.1,
                                        "f1_at_threshold": 0.4}, split_note=note)
    summary = build_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    # the KLUE rows report klue-sts Pearson and F1@3.0 but not Spearman: external rows
    # after the run's rows, no extra columns, "—" where the source gives no number
    assert summary["rows"] == ["step-000100", "random-init"] + KLUE_ROWS
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["external_rows"] == KLUE_ROWS
    assert summary["columns"] == ["klue-sts/f1_at_threshold", "klue-sts/pearson",
                                  "klue-sts/spearman"]
    md = summary["markdown"]
    assert "| step-000100 | **0.5000** | **0.3100** | n/a |" in md
    assert "| KLUE-RoBERTa-base (external) | 0.8540 | 0.9250 | — |" in md
    assert "n/a: undefined" in md and f"- klue-sts: {note}" in md
    assert (tmp_path / "out" / "klue-sts_spearman.png").exists()
    assert summary["split_notes"] == {"klue-sts": note}
    empty = build_report([str(tmp_path / "a")], str(tmp_path / "out2"), references=[])
    assert empty["rows"] == ["step-000100"]


def test_report_renders_klue_reference_rows_as_external(tmp_path):
    _metrics(tmp_path / "e" / "klue-nli", "step-000100", 100, 0.41, task="klue-nli")
    _metrics(tmp_path / "e" / "nsmc", "step-000100", 100, 0.62)
    _metrics(tmp_path / "b" / "klue-nli", "random-init", None, 0.36, random_init=True,
             task="klue-nli")
    out = tmp_path / "report"
    summary = build_report([str(tmp_path / "e"), str(tmp_path / "b")], str(out))
    # KoELECTRA/KoBERT report nsmc, the KLUE models klue-nli: each row only where its
    # source has a number, never bold even where it is the column's largest value
    assert summary["rows"][2:] == KOELECTRA_ROWS + KLUE_ROWS
    saved = json.loads((out / "results.json").read_text())
    assert saved["external_rows"] == KOELECTRA_ROWS + KLUE_ROWS
    md = (out / "results.md").read_text()
    assert "| step-000100 | **0.4100** | **0.6200** |" in md
    assert "| KLUE-BERT-base (external) | 0.8163 | — |" in md
    assert "| KLUE-RoBERTa-large (external) | 0.8917 | — |" in md
    assert "| KoBERT (external) | — | 0.8959 |" in md
    assert "github.com/KLUE-benchmark/KLUE @ 3efd98708a40ff49251fddde35453f8fbb11f536" in md
    page = (out / "results.html").read_text()
    assert page.count("class='external'") == len(KOELECTRA_ROWS + KLUE_ROWS)
    assert "KLUE-RoBERTa-small (external)" in page
    assert saved["values"]["KLUE-RoBERTa-base (external)"] == {
        "klue-nli/accuracy": pytest.approx(0.8483)}


def test_report_errors(tmp_path):
    with pytest.raises(KorlmError, match="does not exist"):
        build_report([str(tmp_path / "missing")], str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KorlmError, match="no metrics.json"):
        build_report([str(tmp_path / "empty")], str(tmp_path / "out"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    with pytest.raises(KorlmError, match="not valid JSON"):
        build_report([str(tmp_path / "broken")], str(tmp_path / "out"))


def test_report_component_writes_markdown_and_self_contained_html(tmp_path):
    from types import SimpleNamespace

    from components.report import report

    _metrics(tmp_path / "e1" / "nsmc", "step-000100", 100, 0.65)
    _metrics(tmp_path / "base" / "nsmc", "random-init", None, 0.55, random_init=True)
    art = lambda name: SimpleNamespace(path=str(tmp_path / name))  # noqa: E731
    table, page = art("table.md"), art("page.html")
    report([art("e1")], art("base"), art("report"), table, page)
    assert "| step-000100 | **0.6500** |" in (tmp_path / "table.md").read_text()
    html_page = (tmp_path / "page.html").read_text()
    assert 'src="data:image/png;base64,' in html_page and 'src="nsmc_accuracy.png"' not in html_page
    assert (tmp_path / "report" / "results.html").exists()


def _seeded(d, checkpoint, step, acc, seed, random_init=False):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": "nsmc", "checkpoint": checkpoint, "step": step,
                   "random_init": random_init, "metrics": {"accuracy": acc},
                   "fine_tune": {"seed": seed}}, f)


def test_report_averages_fine_tuning_seeds_and_refuses_duplicates(tmp_path):
    """Several seeds of one checkpoint and task: mean ± sample SD (seeds) in the cell,
    never the last file read; the same seed twice is an error naming both files."""
    for seed, (ckpt, base) in enumerate([(0.746, 0.727), (0.730, 0.743), (0.739, 0.752)]):
        _seeded(tmp_path / f"s{seed}" / "step-000600" / "nsmc", "step-000600", 600, ckpt, seed)
        _seeded(tmp_path / f"s{seed}" / "random-init" / "nsmc", "random-init", None, base, seed,
                random_init=True)
    dirs = [str(tmp_path / f"s{seed}") for seed in range(3)]
    summary = build_report(dirs, str(tmp_path / "out"), references=[])
    assert summary["values"]["step-000600"]["nsmc/accuracy"] == pytest.approx(0.738333, abs=1e-6)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| step-000600 | 0.7383 ± 0.0080 (3) |" in md
    assert "| random-init | **0.7407 ± 0.0127 (3)** |" in md
    assert "number of fine-tuning seeds" in md
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["spread"]["random-init"]["nsmc/accuracy"]["seeds"] == 3
    _seeded(tmp_path / "again" / "nsmc", "step-000600", 600, 0.5, 1)
    with pytest.raises(KorlmError, match=r"two results for step-000600 on nsmc with fine-tuning "
                                         r"seed 1: .*s1.*metrics.json and .*again.*metrics.json"):
        build_report([*dirs, str(tmp_path / "again")], str(tmp_path / "out2"), references=[])


def _noisy(d, checkpoint, step, acc, n, majority=0.75, random_init=False):
    """A metrics.json as evaluate now writes it: SEs and the constant baseline."""
    os.makedirs(d, exist_ok=True)
    se = (acc * (1 - acc) / n) ** 0.5
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": "nsmc", "checkpoint": checkpoint, "step": step,
                   "random_init": random_init, "num_eval": n,
                   "metrics": {"accuracy": acc, "macro_f1": acc - 0.1},
                   "standard_errors": {"accuracy": se, "macro_f1": se},
                   "constant_baseline": {"kind": "majority class", "prediction": 0,
                                         "metrics": {"accuracy": majority,
                                                     "macro_f1": 0.4286}}}, f)


def test_report_shows_standard_errors_and_flags_scores_at_the_majority_rate(tmp_path):
    # 400 test items, majority class 0.75: 0.752 is noise, 0.85 is not
    _noisy(tmp_path / "a" / "nsmc", "step-000100", 100, 0.752, 400)
    _noisy(tmp_path / "b" / "nsmc", "step-000200", 200, 0.85, 400)
    _noisy(tmp_path / "c" / "nsmc", "random-init", None, 0.749, 400, random_init=True)
    # an older metrics.json of another task: no SE, no baseline -> plain value and "—"
    _metrics(tmp_path / "d" / "kornli", "step-000200", 200, 0.5, task="kornli")
    out = tmp_path / "out"
    summary = build_report([str(tmp_path / p) for p in "abcd"], str(out), references=[])
    md = (out / "results.md").read_text()
    se752 = (0.752 * 0.248 / 400) ** 0.5
    assert f"| step-000100 | — | 0.7520 ± {se752:.4f} ≈ | 0.6520 ± {se752:.4f} |" in md
    assert "| step-000200 | **0.5000** | **0.8500 ± 0.0179** | **0.7500 ± 0.0179** |" in md
    assert "| random-init | — | 0.7490 ± 0.0217 ≈ |" in md
    assert "| constant predictor | — | 0.7500 | 0.4286 |" in md
    assert "≈: within one standard error of the constant predictor" in md
    assert "nsmc: majority class" in md
    assert summary["flags"] == {"step-000100": {"nsmc/accuracy": True},
                                "random-init": {"nsmc/accuracy": True}}
    saved = json.loads((out / "results.json").read_text())
    assert saved["within_one_se_of_constant"]["step-000100"] == ["nsmc/accuracy"]
    assert saved["constant_row"] == "constant predictor"
    assert "≈" in (out / "results.html").read_text()
    for png in ("nsmc_accuracy.png", "nsmc_macro_f1.png", "kornli_accuracy.png"):
        assert (out / png).stat().st_size > 1000
    # an ablation arm's rows are the run's checkpoints, not the constant predictor
    from korlm.evaluation.ablation import arm_rows
    assert [r["checkpoint"] for r in arm_rows("a", str(out))] == [
        "step-000100", "step-000200", "random-init"]


def _predicted(d, checkpoint, step, gold, predicted, seed=0, random_init=False, **extra):
    """A metrics.json with per-item test predictions, as evaluate now writes it."""
    os.makedirs(d, exist_ok=True)
    acc = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": "nsmc", "task_type": "classification", "checkpoint": checkpoint,
                   "step": step, "random_init": random_init, "metrics": {"accuracy": acc},
                   "standard_errors": {"accuracy": (acc * (1 - acc) / len(gold)) ** 0.5},
                   "constant_baseline": {"kind": "majority class", "prediction": 1,
                                         "metrics": {"accuracy": sum(gold) / len(gold)}},
                   "label_names": ["0", "1"], "fine_tune": {"seed": seed},
                   "predictions": {"split": "test", "items_sha256": "same-items",
                                   "gold": gold, "predicted": predicted}, **extra}, f)


def test_report_pairs_each_row_with_random_init_on_the_same_items(tmp_path):
    """Δ vs random init ± paired SE on a hand-made example: 8 items, two seeds each.

    Per-item correctness, averaged over seeds: checkpoint [1, 1, .5, 1, 0, 1, .5, 1],
    random init [1, 0, .5, .5, 0, 1, 0, 1]; differences d = [0, 1, 0, .5, 0, 0, .5, 0]:
    mean 0.25, sample SD sqrt(0.142857), paired SE = SD / sqrt(8) = 0.1336."""
    gold = [1, 0, 1, 1, 0, 1, 0, 1]
    flip = lambda ps, wrong: [1 - g if i in wrong else g for i, g in enumerate(ps)]  # noqa: E731
    _predicted(tmp_path / "c" / "s0", "step-000100", 100, gold, flip(gold, {2, 4}), seed=0)
    _predicted(tmp_path / "c" / "s1", "step-000100", 100, gold, flip(gold, {4, 6}), seed=1)
    _predicted(tmp_path / "r" / "s0", "random-init", None, gold, flip(gold, {1, 2, 4, 6}),
               seed=0, random_init=True)
    _predicted(tmp_path / "r" / "s1", "random-init", None, gold, flip(gold, {1, 3, 4, 6}),
               seed=1, random_init=True)
    # the bag-of-words row: one record, no seed; wrong on items 0 and 4
    _predicted(tmp_path / "r" / "bag-of-words", "bag-of-words", None, gold, flip(gold, {0, 4}),
               seed=None, baseline="bag-of-words",
               note="multinomial-naive-bayes (alpha=0.3, count features), chosen on dev "
                    "accuracy among 12 candidates")
    # an older record without predictions: no Δ, and the report says why
    _metrics(tmp_path / "old" / "nsmc", "step-000200", 200, 0.5)
    out = tmp_path / "out"
    summary = build_report([str(tmp_path / p) for p in ("c", "r", "old")], str(out),
                           references=[])
    assert summary["rows"] == ["step-000100", "step-000200", "random-init", "bag-of-words",
                               "constant predictor"]
    paired = summary["paired"]["step-000100"]["nsmc/accuracy"]
    assert paired["delta"] == pytest.approx(0.25)
    assert paired["se"] == pytest.approx((1 / 7) ** 0.5 / 8 ** 0.5)  # 0.1336
    assert paired["seeds"] == [2, 2] and paired["n"] == 8
    # bag-of-words: correctness [0,1,1,1,0,1,1,1] vs [1,0,.5,.5,0,1,0,1]
    d = [-1, 1, 0.5, 0.5, 0, 0, 1, 0]
    mean = sum(d) / 8
    se = (sum((x - mean) ** 2 for x in d) / 7 / 8) ** 0.5
    assert summary["paired"]["bag-of-words"]["nsmc/accuracy"]["se"] == pytest.approx(se)
    md = (out / "results.md").read_text()
    assert "| step-000100 | +0.2500 ± 0.1336 |" in md
    assert f"| bag-of-words | {mean:+.4f} ± {se:.4f} |" in md
    assert "No Δ for step-000200: metrics.json without per-item predictions" in md
    assert "bag-of-words, nsmc: multinomial-naive-bayes (alpha=0.3" in md
    # the bag-of-words row is a contender for the best cell and flagged like any row
    assert "| bag-of-words | **0.7500 ± 0.1531 ≈** |" in md  # 5 of 8 are the majority
    saved = json.loads((out / "results.json").read_text())
    assert saved["paired_vs_random_init"]["step-000100"]["nsmc/accuracy"]["delta"] == 0.25
    assert all("predictions" not in r for r in saved["records"])
    assert "Δ vs random-init" in (out / "results.html").read_text()
    # different test items are not paired
    _predicted(tmp_path / "other" / "nsmc", "step-000300", 300, gold, gold)
    rec = json.loads((tmp_path / "other" / "nsmc" / "metrics.json").read_text())
    rec["predictions"]["items_sha256"] = "other-items"
    (tmp_path / "other" / "nsmc" / "metrics.json").write_text(json.dumps(rec))
    summary = build_report([str(tmp_path / p) for p in ("c", "r", "other")],
                           str(tmp_path / "out2"), references=[])
    assert "step-000300" not in summary["paired"]
    assert "not scored on the same test items" in summary["markdown"]


def test_report_flags_a_bag_of_words_row_at_the_majority_rate_and_draws_it(tmp_path):
    _noisy(tmp_path / "a" / "nsmc", "step-000100", 100, 0.85, 400)
    _noisy(tmp_path / "b" / "nsmc", "random-init", None, 0.80, 400, random_init=True)
    _noisy(tmp_path / "b" / "bow", "bag-of-words", None, 0.752, 400)
    rec = json.loads((tmp_path / "b" / "bow" / "metrics.json").read_text())
    (tmp_path / "b" / "bow" / "metrics.json").write_text(json.dumps(
        {**rec, "baseline": "bag-of-words", "note": "ridge"}))
    _metrics(tmp_path / "b" / "korquad", "random-init", None, 0.1, random_init=True,
             task="korquad", metrics={"exact_match": 0.1, "f1": 0.2})
    rec = json.loads((tmp_path / "b" / "korquad" / "metrics.json").read_text())
    (tmp_path / "b" / "korquad" / "metrics.json").write_text(json.dumps(
        {**rec, "task_type": "extractive-qa"}))
    summary = build_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"),
                           references=[])
    assert summary["flags"]["bag-of-words"] == {"nsmc/accuracy": True}
    md = summary["markdown"]
    assert "| bag-of-words | — | — | 0.7520 ± 0.0216 ≈ |" in md
    assert "bag-of-words: not computed for korquad (extractive QA answers with a span" in md
    assert (tmp_path / "out" / "nsmc_accuracy.png").stat().st_size > 1000


def test_report_paper_style_prints_percent_in_the_koelectra_and_klue_order(tmp_path, capsys):
    from korlm.cli import main

    _noisy(tmp_path / "a" / "nsmc", "step-000100", 100, 0.7610, 1000, majority=0.5)
    for task, metrics in (("klue-nli", {"accuracy": 0.5}), ("kornli", {"accuracy": 0.4}),
                          ("korquad", {"exact_match": 0.1, "f1": 0.3}),
                          ("korsts", {"pearson": 0.2, "spearman": 0.25}),
                          ("chatbot", {"accuracy": 0.9}), ("klue-ner", {"char_f1": 0.6,
                                                                       "entity_f1": 0.5})):
        _metrics(tmp_path / "a" / task, "step-000100", 100, None, task=task, metrics=metrics)
    code = main(["report", "--results", str(tmp_path / "a"), "--output", str(tmp_path / "out"),
                 "--style", "paper"])
    assert code == 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.splitlines()[2] == (
        "| checkpoint | NSMC (acc) | NSMC (F1) | KorNLI (acc) | KorSTS (spearman) | "
        "KorSTS (Pearson r) | KorQuAD (EM) | KorQuAD (F1) | KLUE-NLI (acc) | KLUE-NER (entity F1) "
        "| KLUE-NER (char F1) | Chatbot (acc) |")
    se = (0.761 * 0.239 / 1000) ** 0.5
    assert f"| step-000100 | 76.10 ± {100 * se:.2f} | 66.10 ± {100 * se:.2f} | 40.00 | 25.00 |" in md
    assert "| KoELECTRA-Small-v3 (external) | 89.36 | — | 78.60 | 80.79 |" in md
    assert "Scores in percent with two decimals" in md
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["style"] == "paper" and saved["columns"][:2] == ["nsmc/accuracy",
                                                                 "nsmc/macro_f1"]
    assert saved["values"]["step-000100"]["nsmc/accuracy"] == 0.761  # stored as fractions
    with pytest.raises(KorlmError, match="unknown report style 'latex'"):
        build_report([str(tmp_path / "a")], str(tmp_path / "o2"), style="latex")
