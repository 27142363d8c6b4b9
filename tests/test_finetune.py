"""korlm finetune: the servable model directory, loading it back, and fine-tuning from a
Hugging Face export. Real tiny checkpoints, real fine-tuning, real Keras weights files."""

from __future__ import annotations

import json
import os

import pytest

from korlm.errors import KorlmError
from korlm.evaluation import finetune, metrics, tasks
from tests.test_evaluate import _write_user_tasks, setup  # noqa: F401  (module fixture)

COMMON = dict(max_seq_length=32, batch_size=16, epochs=1, seed=2)


@pytest.fixture(scope="module")
def nsmc_model(setup, tmp_path_factory):  # noqa: F811
    tokenizer_dir, checkpoint, nsmc_dir = setup
    out = tmp_path_factory.mktemp("finetuned") / "nsmc"
    # No tokenizer: the checkpoint's own copy goes into the model directory.
    record = finetune.finetune(checkpoint, None, "nsmc", str(nsmc_dir), str(out), **COMMON)
    return out, record


def test_model_directory_and_its_predictions_reproduce_the_test_score(setup, nsmc_model):  # noqa: F811
    _, _, nsmc_dir = setup
    out, record = nsmc_model
    for name in (finetune.FINETUNED_JSON, finetune.LABEL_MAP_JSON, finetune.WEIGHTS_FILE,
                 "metrics.json", "backbone/config.json", "backbone/korlm_checkpoint.json",
                 "tokenizer/tokenizer.json"):
        assert (out / name).exists(), name
    assert (out / "tokenizer" / "vocab.txt").read_bytes() == (
        setup[0] / "vocab.txt").read_bytes()
    assert not (out / "backbone" / "model.weights.h5").exists()  # architecture only
    assert json.loads((out / "metrics.json").read_text()) == record
    # NSMC's labels are the file's values; what they mean travels with them
    assert json.loads((out / finetune.LABEL_MAP_JSON).read_text()) == {
        "0": {"label": "0", "description": "negative"},
        "1": {"label": "1", "description": "positive"}}
    model = finetune.load_finetuned(str(out))
    assert (model.task_name, model.task_type) == ("nsmc", "classification")
    assert model.label_names == ["0", "1"] and model.max_seq_length == 32
    # the reloaded model scores the same test rows exactly as the fine-tuned one did
    splits = tasks.load_task(tasks.get_task("nsmc"), str(nsmc_dir), max_train_examples=2000,
                             max_eval_examples=1000)
    out_rows = model.classify(splits.test.texts)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in out_rows)
    assert all(r["label"] == model.label_names[r["label_id"]] for r in out_rows)
    assert {r["description"] for r in out_rows} <= {"negative", "positive"}
    accuracy = metrics.compute(["accuracy"], splits.test.labels,
                               [r["label_id"] for r in out_rows], 2)["accuracy"]
    assert accuracy == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)


def test_wrong_calls_and_bad_inputs_are_clear_errors(nsmc_model, tmp_path):
    out, _ = nsmc_model
    model = finetune.load_finetuned(str(out))
    with pytest.raises(KorlmError, match="is a classification model; this call needs regression"):
        model.regress(["a"], ["b"])
    with pytest.raises(KorlmError, match="takes single texts, not pairs"):
        model.classify(["a"], ["b"])
    with pytest.raises(KorlmError, match=r"texts\[1\] must be a string, got int"):
        model.classify(["좋다", 3])
    with pytest.raises(KorlmError, match="no inputs"):
        model.classify([])
    with pytest.raises(KorlmError, match="not a fine-tuned korlm model"):
        finetune.load_finetuned(str(tmp_path))
    with pytest.raises(KorlmError, match="random_init is for evaluation"):
        finetune.finetune("x", "y", "nsmc", None, str(tmp_path / "o"), random_init=True)


def test_regression_and_qa_models(setup, tmp_path):  # noqa: F811
    tokenizer_dir, checkpoint, _ = setup
    files = _write_user_tasks(tmp_path / "tasks")
    sts = finetune.finetune(checkpoint, str(tokenizer_dir), str(files["sts"]), None,
                            str(tmp_path / "sts"), **COMMON)
    model = finetune.load_finetuned(str(tmp_path / "sts"))
    assert model.task_type == "regression" and model.label_names is None
    test = tasks.load_task(tasks.get_task(str(files["sts"])), None).test
    scores = model.regress(test.texts, test.texts_b)
    pearson = metrics.compute(["pearson"], test.labels, scores)["pearson"]
    if sts["metrics"]["pearson"] is None:
        assert pearson is None
    else:
        # another batch size than evaluation's 128: float32 sums differ in the 7th digit
        assert pearson == pytest.approx(sts["metrics"]["pearson"], abs=1e-5)

    qa = finetune.finetune(checkpoint, str(tokenizer_dir), str(files["qa"]), None,
                           str(tmp_path / "qa"), doc_stride=6, **COMMON)
    reader = finetune.load_finetuned(str(tmp_path / "qa"))
    data = tasks.load_task(tasks.get_task(str(files["qa"])), None).test
    answers = reader.answer(data.texts, data.texts_b)
    assert len(answers) == len(data) and not reader.head.features  # no bookkeeping left
    for found, context in zip(answers, data.texts_b, strict=True):
        assert context[found["start"]:found["end"]] == found["answer"]
    em = metrics.compute(["exact_match"], [[a["text"] for a in ans] for ans in data.labels],
                         [a["answer"] for a in answers])["exact_match"]
    assert em == pytest.approx(qa["metrics"]["exact_match"], abs=1e-9)


def test_finetune_from_a_hugging_face_export_through_the_cli(setup, tmp_path):  # noqa: F811
    from korlm.cli import main

    tokenizer_dir, checkpoint, nsmc_dir = setup
    hf = tmp_path / "hf"
    # no --tokenizer: the checkpoint carries its own, and the export then too
    assert main(["export", "--checkpoint", checkpoint, "--output", str(hf)]) == 0
    assert (hf / "vocab.txt").read_bytes() == (tokenizer_dir / "vocab.txt").read_bytes()
    code = main(["finetune", "--checkpoint", str(hf), "--task", "nsmc", "--data-dir",
                 str(nsmc_dir), "--output", str(tmp_path / "model"), "--max-seq-length", "32",
                 "--batch-size", "16", "--epochs", "1", "--learning-rate", "1e-4"])
    assert code == 0
    meta = json.loads((tmp_path / "model" / finetune.FINETUNED_JSON).read_text())
    assert meta["model"]["source"] == "huggingface-export" and meta["model"]["model"] == "bert"
    assert meta["fine_tune"]["learning_rate"] == 1e-4
    assert os.path.exists(tmp_path / "model" / "backbone" / "config.json")
    model = finetune.load_finetuned(str(tmp_path / "model"))
    assert model.classify(["정말 재밌어요"])[0]["label"] in ("0", "1")


def test_run_step_finetune_pipeline_compiles(tmp_path):
    """`korlm pipeline run-step finetune`: one finetune task on the earlier run's
    pretraining and vocab, the evaluate section's settings, the data volume on KFP."""
    import yaml
    from kfp import compiler

    from korlm import config
    from pipelines.run_step import build_step_pipeline

    conf = config.validate({"finetune": {"task": "korsts", "step": 400},
                            "evaluate": {"learning_rate": 3e-5, "weight_decay": 0.02},
                            "kfp": {"data_pvc": "korlm-data"}})
    pipeline = build_step_pipeline(conf, "finetune", {"pretrain": "/runs/a/pretrain",
                                                      "vocab": "/runs/a/vocab"}, target="kfp")
    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text(encoding="utf-8"))
    params = spec["root"]["dag"]["tasks"]["finetune"]["inputs"]["parameters"]
    assert params["task"]["runtimeValue"]["constant"] == "korsts"
    assert params["step"]["runtimeValue"]["constant"] == 400
    assert params["params"]["runtimeValue"]["constant"]["weight_decay"] == 0.02
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [m["pvcMount"][0]["constant"] for m in mounts.values()] == ["korlm-data"]
    with pytest.raises(config.ConfigError, match="finetune.step"):
        config.validate({"finetune": {"step": -1}})
