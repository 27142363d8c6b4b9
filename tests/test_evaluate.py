"""Unit tests of korlm.tasks and korlm.evaluate on a tiny NSMC slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from korlm import evaluate, pretrain, tasks
from korlm.errors import KorlmError, NotBuiltError
from tests.test_pretrain import build_tokenizer, write_pretraining_data

NSMC = Path(__file__).resolve().parents[1] / "data" / "sample" / "eval" / "nsmc"


def write_nsmc_slice(out_dir: Path, num_train: int = 200, num_test: int = 100) -> Path:
    """The first rows of the sample NSMC files, plus the quirks of the real files: an
    empty document and a tripled-quote document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, n in (("ratings_train.txt", num_train), ("ratings_test.txt", num_test)):
        lines = (NSMC / name).read_text(encoding="utf-8").splitlines()[: n - 1]
        lines += ["1234567\t\t0", '7654321\t"""최고"" 라는 말밖에"\t1']
        (out_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, max_seq_length=48)
    checkpoints = pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(root / "run"),
                                        steps=6, checkpoint_every=6, batch_size=8)
    nsmc_dir = write_nsmc_slice(root / "nsmc")
    return tokenizer_dir, checkpoints[-1]["uri"], nsmc_dir


def test_nsmc_reader_matches_pandas_default_quoting():
    spec = tasks.get_task("nsmc")
    splits = tasks.load_task(spec, str(NSMC))
    assert splits.sizes == {"train": 3600, "dev": 400, "test": 1000}
    assert set(splits.train.labels) == {0, 1}
    assert "dev (early stopping) = 400 of 4000 rows of ratings_train.txt" in splits.split_note
    frame = pd.read_csv(NSMC / "ratings_test.txt", sep="\t")
    assert splits.test.labels == frame["label"].tolist()
    assert splits.test.texts == frame["document"].fillna("").tolist()
    # the derived dev split is a fixed subset, and capped splits fixed samples of it
    again = tasks.load_task(spec, str(NSMC), max_eval_examples=50)
    assert len(again.dev) == 50 and set(again.dev.texts) <= set(splits.dev.texts)
    assert again.dev.texts == tasks.load_task(spec, str(NSMC), max_eval_examples=50).dev.texts


def test_nsmc_reader_empty_and_quoted_documents(tmp_path):
    nsmc = write_nsmc_slice(tmp_path / "nsmc", num_train=5, num_test=5)
    data = tasks.load_task(tasks.get_task("nsmc"), str(nsmc)).test
    assert data.texts[-2:] == ["", '"최고" 라는 말밖에']
    assert data.labels[-2:] == [0, 1]
    # The task folder may also be given as its parent (<data_dir>/<task>/).
    assert len(tasks.load_task(tasks.get_task("nsmc"), str(tmp_path)).test) == 5


def test_tokenizer_without_post_processor_gets_cls_and_sep(tmp_path):
    tokenizer_dir = build_tokenizer(tmp_path / "tok", num_sentences=100, post_processor=False)
    tokenizer = evaluate.load_tokenizer(str(tokenizer_dir), 16)
    data = tasks.TaskData(["아 더빙.. 진짜 짜증나네요 목소리", "굳"], [0, 1])
    x = evaluate.encode(tokenizer, data)
    assert x["token_ids"].shape == (2, 16)
    assert (x["token_ids"][:, 0] == 2).all()
    n = x["padding_mask"].sum(axis=1)
    assert x["token_ids"][1, n[1] - 1] == 3 and (x["token_ids"][1, n[1]:] == 0).all()


def test_task_registry_errors(tmp_path):
    with pytest.raises(KorlmError, match="unknown task 'sst2'; known tasks: nsmc, klue-nli"):
        tasks.get_task("sst2")
    for name in ("klue-nli", "klue-sts", "korsts", "kornli", "question-pair", "hate-speech",
                 "hate-speech-bias", "chatbot", "korquad"):
        assert tasks.get_task(name).built
    with pytest.raises(KorlmError, match=r"nsmc data not found: .*ratings_train.txt"):
        tasks.load_task(tasks.get_task("nsmc"), str(tmp_path))


def test_evaluate_checkpoint_and_random_init(setup, tmp_path):
    tokenizer_dir, checkpoint, nsmc_dir = setup
    common = dict(max_seq_length=32, batch_size=16, learning_rate=2e-4, seed=1)
    record = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), "nsmc", str(nsmc_dir),
                                          str(tmp_path / "ckpt"), **common)
    written = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert written == record
    assert record["task"] == "nsmc" and record["checkpoint"] == "step-000006"
    assert record["step"] == 6 and record["random_init"] is False
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert record["num_train"] == 180 and record["num_eval"] == 100
    assert "dev (early stopping) = 20 of 200 rows" in record["split_note"]
    assert record["fine_tune"]["learning_rate"] == 2e-4
    assert record["fine_tune"]["max_seq_length"] == 32 and record["seconds"] > 0

    baseline = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), "nsmc",
                                            str(nsmc_dir), str(tmp_path / "random"),
                                            random_init=True, **common)
    assert baseline["checkpoint"] == "random-init" and baseline["step"] is None
    assert baseline["random_init"] is True
    assert 0.0 <= baseline["metrics"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "random" / "metrics.json").read_text()) == baseline
    assert baseline["fine_tune"] == record["fine_tune"]


def test_random_init_has_the_checkpoints_architecture(setup):
    from korlm import models

    _, checkpoint, _ = setup
    trained = models.load_backbone(checkpoint)
    fresh = models.load_backbone(checkpoint, load_weights=False)
    assert trained.get_config() == fresh.get_config()
    assert [w.shape for w in trained.weights] == [w.shape for w in fresh.weights]
    assert any((a.numpy() != b.numpy()).any() for a, b in zip(trained.weights, fresh.weights,
                                                               strict=True))


def test_evaluate_errors(setup, tmp_path):
    tokenizer_dir, checkpoint, nsmc_dir = setup
    run = lambda **kw: evaluate.evaluate_checkpoint(  # noqa: E731
        **{"checkpoint_dir": checkpoint, "tokenizer_dir": str(tokenizer_dir), "task": "nsmc",
           "data_dir": str(nsmc_dir), "output_dir": str(tmp_path / "out"),
           "max_seq_length": 32, **kw})
    with pytest.raises(KorlmError, match="korquad data not found: .*KorQuAD_v1.0_train.json"):
        run(task="korquad")
    with pytest.raises(KorlmError, match="known tasks"):
        run(task="nope")
    with pytest.raises(KorlmError, match="ratings_train.txt"):
        run(data_dir=str(tmp_path))
    with pytest.raises(KorlmError, match="not a korlm checkpoint"):
        run(checkpoint_dir=str(tmp_path))
    with pytest.raises(KorlmError, match="max_seq_length"):
        run(max_seq_length=512)
    with pytest.raises(KorlmError, match="patience must be greater than 0"):
        run(patience=0)
    other_tokenizer = build_tokenizer(tmp_path / "tok", num_sentences=200, vocab_size=300)
    with pytest.raises(KorlmError, match="tokens, checkpoint"):
        run(tokenizer_dir=str(other_tokenizer))
    assert not (tmp_path / "out").exists()


def test_roberta_checkpoint_fine_tunes_and_bart_is_not_built(setup, tmp_path):
    tokenizer_dir, _, nsmc_dir = setup
    data_dir = write_pretraining_data(tmp_path / "examples", tokenizer_dir, max_seq_length=48)
    roberta = pretrain.run_pretrain(str(data_dir), str(tokenizer_dir), str(tmp_path / "roberta"),
                                    model="roberta", steps=2, checkpoint_every=2, batch_size=8)
    record = evaluate.evaluate_checkpoint(
        roberta[-1]["uri"], str(tokenizer_dir), "nsmc", str(nsmc_dir), str(tmp_path / "out"),
        max_seq_length=32, epochs=1, batch_size=16)
    assert record["model"]["model"] == "roberta"
    assert 0 <= record["metrics"]["accuracy"] <= 1 and record["num_eval"] == 100

    fake = tmp_path / "bart-ckpt"
    shutil.copytree(roberta[-1]["uri"], fake)
    info = json.loads((fake / "korlm_checkpoint.json").read_text())
    (fake / "korlm_checkpoint.json").write_text(json.dumps({**info, "model": "bart"}))
    with pytest.raises(NotBuiltError, match="BART checkpoints.*issue #7"):
        evaluate.evaluate_checkpoint(str(fake), str(tokenizer_dir), "nsmc", str(nsmc_dir),
                                     str(tmp_path / "out2"), max_seq_length=32)


def test_tokenizer_with_the_same_size_but_another_vocabulary_is_refused(setup, tmp_path):
    tokenizer_dir, checkpoint, nsmc_dir = setup
    other = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, other)
    vocab = (other / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab[-1], vocab[-2] = vocab[-2], vocab[-1]
    (other / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    with pytest.raises(KorlmError, match="is not the vocabulary checkpoint"):
        evaluate.evaluate_checkpoint(checkpoint, str(other), "nsmc", str(nsmc_dir),
                                     str(tmp_path / "out"), max_seq_length=32)


def _write_user_tasks(root: Path) -> dict[str, Path]:
    """Three small task files: pair classification (tsv, no header, 0-based columns),
    regression (jsonl, named fields) and extractive QA (SQuAD JSON)."""
    root.mkdir(parents=True, exist_ok=True)
    reviews = [line.split("\t")[1] for line in
               (NSMC / "ratings_train.txt").read_text(encoding="utf-8").splitlines()[1:200]]
    pairs = [f"{'same' if i % 2 else 'other'}\t{r}\t{r if i % 2 else reviews[i - 1]}"
             for i, r in enumerate(reviews[1:], start=1)]
    (root / "pairs_train.tsv").write_text("\n".join(pairs[:120]) + "\n", encoding="utf-8")
    (root / "pairs_test.tsv").write_text("\n".join(pairs[120:]) + "\n", encoding="utf-8")
    (root / "pairs.yaml").write_text(
        "name: my-pairs\ntype: pair-classification\nformat: tsv\nheader: false\n"
        "columns: {label: 0, text_a: 1, text_b: 2}\ntrain: pairs_train.tsv\n"
        "test: pairs_test.tsv\nmetrics: [accuracy, macro_f1]\n", encoding="utf-8")
    rows = [{"a": r, "b": reviews[(i * 7) % len(reviews)], "score": (i % 11) / 2}
            for i, r in enumerate(reviews)]
    for name, part in (("sts_train.jsonl", rows[:100]), ("sts_dev.jsonl", rows[100:130]),
                       ("sts_test.jsonl", rows[130:])):
        (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                         for r in part), encoding="utf-8")
    (root / "sts.yaml").write_text(
        "name: my-sts\ntype: regression\nformat: jsonl\n"
        "columns: {text_a: a, text_b: b, label: score}\ntrain: sts_train.jsonl\n"
        "dev: sts_dev.jsonl\ntest: sts_test.jsonl\n"
        "metrics: [pearson, spearman, f1_at_threshold]\n", encoding="utf-8")
    articles = []
    for a in range(12):
        context = " ".join(reviews[a * 5:(a + 1) * 5])
        qas = []
        for q in range(3):
            answer = reviews[a * 5 + q].split()[0] if reviews[a * 5 + q].split() else "영화"
            start = context.find(answer)
            if start < 0:
                continue
            qas.append({"id": f"{a}-{q}", "question": f"{q}번째 문장의 첫 단어는?",
                        "answers": [{"text": answer, "answer_start": start}]})
        articles.append({"title": str(a), "paragraphs": [{"context": context, "qas": qas}]})
    (root / "qa.json").write_text(json.dumps({"version": "test", "data": articles},
                                             ensure_ascii=False), encoding="utf-8")
    (root / "qa.yaml").write_text(
        "name: my-qa\ntype: extractive-qa\nformat: json\ntrain: qa.json\ntest: qa.json\n",
        encoding="utf-8")
    return {"pairs": root / "pairs.yaml", "sts": root / "sts.yaml", "qa": root / "qa.yaml"}


def test_user_tasks_pair_regression_and_qa(setup, tmp_path, capsys):
    from korlm.cli import main

    tokenizer_dir, checkpoint, _ = setup
    files = _write_user_tasks(tmp_path / "tasks")
    # pair classification through the CLI (korlm evaluate --task FILE.yaml)
    code = main(["evaluate", "--checkpoint", checkpoint, "--tokenizer", str(tokenizer_dir),
                 "--task", str(files["pairs"]), "--output", str(tmp_path / "pairs"),
                 "--max-seq-length", "32", "--batch-size", "16", "--epochs", "2"])
    assert code == 0
    pairs = json.loads((tmp_path / "pairs" / "metrics.json").read_text())
    assert pairs["task"] == "my-pairs" and pairs["task_type"] == "pair-classification"
    assert set(pairs["metrics"]) == {"accuracy", "macro_f1"}
    assert pairs["label_names"] == ["other", "same"]
    assert "dev (early stopping) = 12 of 120 rows of pairs_train.tsv" in pairs["split_note"]
    assert pairs["num_train"] == 108 and pairs["num_eval"] == 78
    assert 1 <= pairs["best_epoch"] <= 2 and pairs["dev_history"][0]["epoch"] == 1

    common = dict(max_seq_length=32, batch_size=16, epochs=2, seed=3)
    sts = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), str(files["sts"]),
                                       None, str(tmp_path / "sts"), **{**common, "epochs": 1})
    assert set(sts["metrics"]) == {"pearson", "spearman", "f1_at_threshold"}
    assert sts["split_note"] == "" and sts["splits"]["dev"]["rows"] == 30
    for name, value in sts["metrics"].items():
        assert value is None and name in sts["undefined_metrics"] or -1 <= value <= 1

    qa = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), str(files["qa"]),
                                      None, str(tmp_path / "qa"), doc_stride=6,
                                      **{**common, "epochs": 1})
    assert set(qa["metrics"]) == {"exact_match", "f1"}
    assert 0 <= qa["metrics"]["exact_match"] <= qa["metrics"]["f1"] <= 1
    assert qa["fine_tune"]["doc_stride"] == 6
    assert json.loads((tmp_path / "qa" / "metrics.json").read_text()) == qa

    # a bad task file: one line naming the key, nothing trained
    (tmp_path / "bad.yaml").write_text("name: x\ntype: classification\nformat: tsv\n"
                                       "columns: {text: 1, lable: 0}\ntrain: a\ntest: b\n")
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", checkpoint, "--tokenizer", str(tokenizer_dir),
                 "--task", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and "columns.lable: not a column role" in err and err.count("\n") == 1
