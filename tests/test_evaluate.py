"""Unit tests of korlm.tasks and korlm.evaluate on a tiny NSMC slice."""

from __future__ import annotations

import json
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
    train = tasks.load_split(spec, str(NSMC), "train")
    assert len(train) == 4000 and set(train.labels) == {0, 1}
    frame = pd.read_csv(NSMC / "ratings_test.txt", sep="\t")
    test = tasks.load_split(spec, str(NSMC), "test", max_examples=10)
    assert test.labels == frame["label"][:10].tolist()
    assert test.texts == frame["document"].fillna("")[:10].tolist()


def test_nsmc_reader_empty_and_quoted_documents(tmp_path):
    nsmc = write_nsmc_slice(tmp_path / "nsmc", num_train=5, num_test=5)
    data = tasks.load_split(tasks.get_task("nsmc"), str(nsmc), "train")
    assert data.texts[-2:] == ["", '"최고" 라는 말밖에']
    assert data.labels[-2:] == [0, 1]
    # The task folder may also be given as its parent (<data_dir>/<task>/).
    assert len(tasks.load_split(tasks.get_task("nsmc"), str(tmp_path), "test")) == 5


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
                 "korquad"):
        with pytest.raises(NotBuiltError, match="issue #7"):
            tasks.get_task(name)
    with pytest.raises(KorlmError, match="ratings_train.txt"):
        tasks.load_split(tasks.get_task("nsmc"), str(tmp_path), "train")


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
    assert record["num_train"] == 200 and record["num_eval"] == 100
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
    with pytest.raises(NotBuiltError, match="issue #7"):
        run(task="korquad")
    with pytest.raises(KorlmError, match="known tasks"):
        run(task="nope")
    with pytest.raises(KorlmError, match="ratings_train.txt"):
        run(data_dir=str(tmp_path))
    with pytest.raises(KorlmError, match="not a korlm checkpoint"):
        run(checkpoint_dir=str(tmp_path))
    with pytest.raises(KorlmError, match="max_seq_length"):
        run(max_seq_length=512)
    other_tokenizer = build_tokenizer(tmp_path / "tok", num_sentences=200, vocab_size=300)
    with pytest.raises(KorlmError, match="tokens, checkpoint"):
        run(tokenizer_dir=str(other_tokenizer))
    assert not (tmp_path / "out").exists()
