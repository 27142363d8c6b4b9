"""Unit tests of korlm.evaluation.tasks and korlm.evaluation.evaluate on a tiny NSMC slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from korlm.errors import KorlmError
from korlm.evaluation import evaluate, heads, tasks
from korlm.pretrain.dataset import tokenizer_vocab_hash
from korlm.pretrain.train import run_pretrain
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
    checkpoints = run_pretrain(str(data_dir), str(tokenizer_dir), str(root / "run"),
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
    x = heads.encode(tokenizer, data)
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
    # what the report needs to tell a score from noise: SEs and the constant predictor
    acc = record["metrics"]["accuracy"]
    assert record["standard_errors"]["accuracy"] == pytest.approx((acc * (1 - acc) / 100) ** 0.5)
    const = record["constant_baseline"]
    assert const["metrics"]["accuracy"] == record["majority_class_accuracy"]

    baseline = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), "nsmc",
                                            str(nsmc_dir), str(tmp_path / "random"),
                                            random_init=True, **common)
    assert baseline["checkpoint"] == "random-init" and baseline["step"] is None
    assert baseline["random_init"] is True
    assert 0.0 <= baseline["metrics"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "random" / "metrics.json").read_text()) == baseline
    assert baseline["fine_tune"] == record["fine_tune"]


def test_random_init_has_the_checkpoints_architecture(setup):
    from korlm.modeling.checkpoints import load_backbone

    _, checkpoint, _ = setup
    trained = load_backbone(checkpoint)
    fresh = load_backbone(checkpoint, load_weights=False)
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
    with pytest.raises(KorlmError, match="is not the vocabulary checkpoint"):
        run(tokenizer_dir=str(other_tokenizer))
    assert not (tmp_path / "out").exists()


def test_a_mismatched_tokenizer_is_refused_in_one_line(setup, tmp_path, capsys):
    """evaluate, finetune and export: --tokenizer overrides the checkpoint's own copy
    only with the same vocabulary; another one is one line naming both hashes, exit 2,
    before anything is trained or written."""
    from korlm.cli import main
    from korlm.tokenizer.files import short_hash

    tokenizer_dir, checkpoint, nsmc_dir = setup
    other = build_tokenizer(tmp_path / "other", num_sentences=200, vocab_size=300)
    given = short_hash(tokenizer_vocab_hash(str(other)))
    recorded = short_hash(tokenizer_vocab_hash(str(tokenizer_dir)))
    assert given != recorded
    for command in (["evaluate", "--task", "nsmc", "--data-dir", str(nsmc_dir)],
                    ["finetune", "--task", "nsmc", "--data-dir", str(nsmc_dir)],
                    ["export"]):
        out = tmp_path / command[0]
        capsys.readouterr()
        code = main([*command, "--checkpoint", checkpoint, "--tokenizer", str(other),
                     "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert (f"korlm {command[0]}: error: tokenizer {other} is not the vocabulary checkpoint "
                f"{checkpoint} was trained with (vocab hash {given}, checkpoint {recorded}); "
                "leave out --tokenizer to use the checkpoint's own") in err
        assert not out.exists()


def test_roberta_checkpoint_fine_tunes(setup, tmp_path):
    tokenizer_dir, _, nsmc_dir = setup
    data_dir = write_pretraining_data(tmp_path / "examples", tokenizer_dir, max_seq_length=48)
    roberta = run_pretrain(str(data_dir), str(tokenizer_dir), str(tmp_path / "roberta"),
                                    model="roberta", steps=2, checkpoint_every=2, batch_size=8)
    record = evaluate.evaluate_checkpoint(
        roberta[-1]["uri"], str(tokenizer_dir), "nsmc", str(nsmc_dir), str(tmp_path / "out"),
        max_seq_length=32, epochs=1, batch_size=16)
    assert record["model"]["model"] == "roberta"
    assert 0 <= record["metrics"]["accuracy"] <= 1 and record["num_eval"] == 100


@pytest.fixture(scope="module")
def bart_checkpoint(setup, tmp_path_factory):
    tokenizer_dir = setup[0]
    root = tmp_path_factory.mktemp("bart")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, max_seq_length=48)
    checkpoints = run_pretrain(str(data_dir), str(tokenizer_dir), str(root / "run"),
                                        model="bart", steps=2, checkpoint_every=2, batch_size=8)
    return checkpoints[-1]["uri"]


def test_bart_inputs_shift_the_ids_right_behind_the_decoder_start():
    import numpy as np

    x = {"token_ids": np.array([[2, 7, 8, 3, 0, 0], [2, 9, 3, 5, 6, 3]]),
         "padding_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    bart = heads.bart_inputs(x, decoder_start_id=3)
    assert bart["encoder_token_ids"].tolist() == x["token_ids"].tolist()
    assert bart["decoder_token_ids"].tolist() == [[3, 2, 7, 8, 3, 0], [3, 2, 9, 3, 5, 6]]
    assert bart["encoder_padding_mask"].tolist() == x["padding_mask"].tolist()
    assert bart["decoder_padding_mask"].tolist() == x["padding_mask"].tolist()
    assert all(v.dtype == np.int32 for v in bart.values())


def _padded_examples(rng, n: int, width: int, max_length: int | None = None):
    """``n`` rows padded to ``width``: random lengths 2..max_length, ids 5.. in the real
    positions, 0 in the padding."""
    import numpy as np

    lengths = rng.integers(2, (max_length or width) + 1, size=n)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype("int32")
    ids = np.where(mask, rng.integers(5, 60, size=(n, width)), 0).astype("int32")
    return lengths, ids, mask


@pytest.mark.parametrize("width,batch_size,tags", [(64, 32, False), (40, 8, True), (16, 5, False)])
def test_length_grouped_batches_keep_every_example_once_and_cut_only_padding(width, batch_size, tags):
    import numpy as np

    rng = np.random.default_rng(width)
    n = 203
    lengths, ids, mask = _padded_examples(rng, n, width)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask,
         "row": np.arange(n, dtype="int32")[:, None]}  # a column of another width stays whole
    y = np.where(mask, ids + 100, -100).astype("int32") if tags else np.arange(n, dtype="int32")
    ds, steps = evaluate.length_grouped_batches(x, y, batch_size, seed=3)

    epochs = []
    for _ in range(2):
        order, batches = [], 0
        for xb, yb in ds:
            xb = {k: v.numpy() for k, v in xb.items()}
            rows = xb["row"][:, 0]
            keep = xb["token_ids"].shape[1]
            assert keep == min(width, -(-int(lengths[rows].max()) // 16) * 16)
            assert len(rows) <= batch_size
            for k in ("token_ids", "segment_ids", "padding_mask"):
                assert xb[k].shape == (len(rows), keep)
                np.testing.assert_array_equal(xb[k], x[k][rows, :keep])
            assert mask[rows, keep:].sum() == 0  # what was cut is padding only
            if tags:
                np.testing.assert_array_equal(yb.numpy(), y[rows, :keep])
            else:
                np.testing.assert_array_equal(yb.numpy(), rows)
            order.extend(rows.tolist())
            batches += 1
        assert sorted(order) == list(range(n))  # every example once: nothing dropped
        assert batches == steps
        epochs.append(order)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    again, _ = evaluate.length_grouped_batches(x, y, batch_size, seed=3)
    # the same seed, the same batches in the same order
    assert [r for xb, _ in again for r in xb["row"][:, 0].numpy().tolist()] == epochs[0]


def test_a_batch_cut_to_its_longest_example_computes_what_the_padded_batch_computes():
    import keras
    import numpy as np

    from korlm.modeling.build import build_backbone

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    lengths, ids, mask = _padded_examples(rng, 6, 48, max_length=20)
    keep = 32
    bert = build_backbone("bert", "tiny", vocab_size=60, max_seq_length=48)
    full = bert({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask})
    cut = bert({"token_ids": ids[:, :keep], "segment_ids": np.zeros_like(ids[:, :keep]),
                "padding_mask": mask[:, :keep]})
    real = mask[:, :keep].astype(bool)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cut["sequence_output"])[real],
                               keras.ops.convert_to_numpy(full["sequence_output"])[:, :keep][real],
                               rtol=1e-4, atol=1e-5)
    bart = build_backbone("bart", "tiny", vocab_size=60, max_seq_length=48)
    model = heads.build_bart_classifier(bart, num_outputs=3)
    x = heads.bart_inputs({"token_ids": ids, "padding_mask": mask}, 3)
    x_cut = {k: v[:, :keep] for k, v in x.items()}
    np.testing.assert_allclose(model.predict(x_cut, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_bart_classifier_reads_the_decoder_state_at_the_last_real_token():
    import keras
    import numpy as np

    from korlm.modeling.build import build_backbone

    keras.utils.set_random_seed(0)
    backbone = build_backbone("bart", "tiny", vocab_size=60, max_seq_length=16)
    model = heads.build_bart_classifier(backbone, num_outputs=3)
    rng = np.random.default_rng(0)
    lengths = np.array([5, 9, 16, 2])
    ids = rng.integers(5, 60, size=(4, 16)).astype("int32")
    ids[:, 0] = 2
    ids[np.arange(4), lengths - 1] = 3  # [CLS] ... [SEP]
    mask = (np.arange(16)[None, :] < lengths[:, None]).astype("int32")
    x = heads.bart_inputs({"token_ids": np.where(mask, ids, 0), "padding_mask": mask}, 3)
    logits = model.predict(x, verbose=0)

    # the logits are the head applied to decoder_sequence_output at position length - 1
    decoder = backbone(x, training=False)["decoder_sequence_output"].numpy()
    state = decoder[np.arange(4), lengths - 1]
    head = model.get_layer("classifier_logits")(model.get_layer("classifier_dense")(state))
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(head), rtol=1e-4, atol=1e-5)

    # other ids at the padded positions (encoder and decoder) change nothing
    x_other = heads.bart_inputs({"token_ids": np.where(mask, ids, 41), "padding_mask": mask}, 3)
    assert (x_other["decoder_token_ids"] != x["decoder_token_ids"]).any()
    np.testing.assert_allclose(model.predict(x_other, verbose=0), logits, rtol=1e-5, atol=1e-6)
    # a real token does change them (the check above can fail)
    x_real = {k: v.copy() for k, v in x.items()}
    x_real["encoder_token_ids"][:, 1] = 50
    assert np.abs(model.predict(x_real, verbose=0) - logits).max() > 1e-4


def test_bart_heads_compute_what_transformers_bart_heads_compute():
    """The Keras BART classifier and span extractor, with their weights copied into
    Hugging Face's ``BartForSequenceClassification`` / ``BartForQuestionAnswering`` (which
    shift the ids right behind ``decoder_start_token_id`` and pick the last EOS
    themselves), give the same logits on a padded batch."""
    import keras
    import numpy as np
    import torch
    from transformers import BartConfig, BartForQuestionAnswering, BartForSequenceClassification

    from korlm.modeling.build import build_pretraining_task
    from korlm.modeling.hf_mapping import bart_config, bart_state_dict

    keras.utils.set_random_seed(0)
    task = build_pretraining_task("bart", "tiny", vocab_size=60, max_seq_length=16)
    special = {"pad": 0, "cls": 2, "sep": 3}
    config = bart_config(task, special)
    body = {k: torch.tensor(v) for k, v in bart_state_dict(task).items()
            if k.startswith("model.")}
    lengths = np.array([5, 9, 16, 3])
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 60, size=(4, 16))
    ids[:, 0], ids[np.arange(4), lengths - 1] = special["cls"], special["sep"]
    mask = (np.arange(16)[None, :] < lengths[:, None]).astype("int32")
    ids = np.where(mask, ids, special["pad"]).astype("int32")
    x = heads.bart_inputs({"token_ids": ids, "padding_mask": mask}, special["sep"])
    hf_inputs = {"input_ids": torch.tensor(ids, dtype=torch.long),
                 "attention_mask": torch.tensor(mask, dtype=torch.long)}

    def dense(layer):
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        return torch.tensor(kernel.T), torch.tensor(bias)

    classifier = heads.build_bart_classifier(task.backbone, num_outputs=3)
    hf = BartForSequenceClassification(BartConfig(**config, num_labels=3)).eval()
    head = {}
    for keras_name, hf_name in (("classifier_dense", "dense"), ("classifier_logits", "out_proj")):
        head[f"classification_head.{hf_name}.weight"], \
            head[f"classification_head.{hf_name}.bias"] = dense(classifier.get_layer(keras_name))
    loading = hf.load_state_dict({**body, **head}, strict=False)
    assert not loading.unexpected_keys
    assert all("embed_tokens" in k for k in loading.missing_keys)  # tied to model.shared
    with torch.no_grad():
        expected = hf(**hf_inputs).logits.numpy()
    np.testing.assert_allclose(classifier.predict(x, verbose=0), expected, atol=1e-5)

    spans = heads.build_span_extractor(task.backbone)
    hf_qa = BartForQuestionAnswering(BartConfig(**config)).eval()
    kernel, bias = dense(spans.get_layer("span_logits"))
    loading = hf_qa.load_state_dict({**body, "qa_outputs.weight": kernel,
                                     "qa_outputs.bias": bias}, strict=False)
    assert not loading.unexpected_keys
    with torch.no_grad():
        out = hf_qa(**hf_inputs)
    logits = spans.predict(x, verbose=0)
    real = mask.astype(bool)  # padded positions are never scored
    np.testing.assert_allclose(logits[..., 0][real], out.start_logits.numpy()[real], atol=1e-5)
    np.testing.assert_allclose(logits[..., 1][real], out.end_logits.numpy()[real], atol=1e-5)


@pytest.mark.slow  # three BART fine-tunes (~15 s each idle, ~45 s on a loaded machine: tracing)
def test_bart_checkpoint_fine_tunes_classification_regression_and_qa(setup, bart_checkpoint,
                                                                    tmp_path):
    from korlm.modeling.checkpoints import load_backbone

    tokenizer_dir, _, nsmc_dir = setup
    common = dict(max_seq_length=32, batch_size=16, epochs=1, seed=1)
    record = evaluate.evaluate_checkpoint(bart_checkpoint, str(tokenizer_dir), "nsmc",
                                          str(nsmc_dir), str(tmp_path / "nsmc"), **common)
    assert record["model"]["model"] == "bart" and record["step"] == 2
    assert 0 <= record["metrics"]["accuracy"] <= 1 and record["num_eval"] == 100
    assert json.loads((tmp_path / "nsmc" / "metrics.json").read_text()) == record

    # regression on the random-init baseline: the same architecture freshly initialised
    files = _write_user_tasks(tmp_path / "tasks")
    sts = evaluate.evaluate_checkpoint(bart_checkpoint, str(tokenizer_dir), str(files["sts"]),
                                       None, str(tmp_path / "sts"), random_init=True, **common)
    assert sts["task_type"] == "regression" and sts["checkpoint"] == "random-init"
    assert set(sts["metrics"]) == {"pearson", "spearman", "f1_at_threshold"}
    for name, value in sts["metrics"].items():
        assert value is None and name in sts["undefined_metrics"] or -1 <= value <= 1
    trained = load_backbone(bart_checkpoint)
    fresh = load_backbone(bart_checkpoint, load_weights=False)
    assert type(fresh).__name__ == "BartBackbone" and trained.get_config() == fresh.get_config()
    assert any((a.numpy() != b.numpy()).any()
               for a, b in zip(trained.weights, fresh.weights, strict=True))

    qa = evaluate.evaluate_checkpoint(bart_checkpoint, str(tokenizer_dir), str(files["qa"]),
                                      None, str(tmp_path / "qa"), doc_stride=6, **common)
    assert qa["model"]["model"] == "bart" and set(qa["metrics"]) == {"exact_match", "f1"}
    assert 0 <= qa["metrics"]["exact_match"] <= qa["metrics"]["f1"] <= 1


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
    # pair classification through the CLI (korlm evaluate --task FILE.yaml), without
    # --tokenizer: the checkpoint carries its own
    code = main(["evaluate", "--checkpoint", checkpoint, "--task", str(files["pairs"]),
                 "--output", str(tmp_path / "pairs"), "--max-seq-length", "32",
                 "--batch-size", "16", "--epochs", "2"])
    assert code == 0
    pairs = json.loads((tmp_path / "pairs" / "metrics.json").read_text())
    assert pairs["tokenizer_uri"] == str(Path(checkpoint) / "tokenizer")
    assert pairs["task"] == "my-pairs" and pairs["task_type"] == "pair-classification"
    assert set(pairs["metrics"]) == {"accuracy", "macro_f1"}
    assert pairs["label_names"] == ["other", "same"]
    assert "dev (early stopping) = 12 of 120 rows of pairs_train.tsv" in pairs["split_note"]
    assert pairs["num_train"] == 108 and pairs["num_eval"] == 78
    assert 0 < pairs["standard_errors"]["macro_f1"] < 0.5
    majority = pairs["constant_baseline"]["metrics"]
    assert majority["accuracy"] == pairs["majority_class_accuracy"]
    assert majority["macro_f1"] == pytest.approx(majority["accuracy"] / (1 + majority["accuracy"]))
    assert 1 <= pairs["best_epoch"] <= 2 and pairs["dev_history"][0]["epoch"] == 1

    common = dict(max_seq_length=32, batch_size=16, epochs=2, seed=3)
    sts = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), str(files["sts"]),
                                       None, str(tmp_path / "sts"), **{**common, "epochs": 1})
    assert set(sts["metrics"]) == {"pearson", "spearman", "f1_at_threshold"}
    assert sts["split_note"] == "" and sts["splits"]["dev"]["rows"] == 30
    for name, value in sts["metrics"].items():
        assert value is None and name in sts["undefined_metrics"] or -1 <= value <= 1
    # a constant (the mean train score) has no correlation; its F1@3.0 is defined
    assert sts["constant_baseline"]["metrics"]["pearson"] is None
    assert sts["constant_baseline"]["metrics"]["f1_at_threshold"] is not None
    assert set(sts["standard_errors"]) == {"pearson", "spearman", "f1_at_threshold"}

    qa = evaluate.evaluate_checkpoint(checkpoint, str(tokenizer_dir), str(files["qa"]),
                                      None, str(tmp_path / "qa"), doc_stride=6,
                                      **{**common, "epochs": 1})
    assert set(qa["metrics"]) == {"exact_match", "f1"}
    assert 0 <= qa["metrics"]["exact_match"] <= qa["metrics"]["f1"] <= 1
    assert qa["fine_tune"]["doc_stride"] == 6
    assert qa["constant_baseline"] is None and qa["standard_errors"]["f1"] is not None
    assert json.loads((tmp_path / "qa" / "metrics.json").read_text()) == qa

    # a bad task file: one line naming the key, nothing trained
    (tmp_path / "bad.yaml").write_text("name: x\ntype: classification\nformat: tsv\n"
                                       "columns: {text: 1, lable: 0}\ntrain: a\ntest: b\n")
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", checkpoint, "--tokenizer", str(tokenizer_dir),
                 "--task", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and "columns.lable: not a column role" in err and err.count("\n") == 1
