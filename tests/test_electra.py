"""ELECTRA (issue 21, item 4): a generator + discriminator pretrained jointly on the MLM
batches, checkpointed and resumed bit for bit, fine-tuned from its discriminator, and
exported as transformers' ElectraForPreTraining (+ ElectraForMaskedLM in generator/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.modeling.checkpoints import (
    checkpoint_info,
    load_backbone,
    load_pretraining_task,
    save_checkpoint,
)
from korlm.modeling.presets import generator_config, model_config
from korlm.pretrain.train import run_pretrain
from tests.test_pretrain import build_tokenizer, write_pretraining_data

SEQ = 32


@pytest.fixture(scope="module", autouse=True)
def _op_determinism_restored():
    """The deterministic runs here switch on TensorFlow's process-wide op determinism; the
    tests after this module run as they would without it."""
    from tensorflow.python.framework import config as tf_config  # the switch-off is not public

    before = tf_config.is_op_determinism_enabled()
    yield
    if not before:
        tf_config.disable_op_determinism()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("electra")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, max_seq_length=SEQ,
                                      num_examples=160, contract=True)
    return tokenizer_dir, data_dir


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _weights(checkpoint: str) -> list[np.ndarray]:
    model = load_pretraining_task(checkpoint)
    return [w.numpy() for w in model.weights]


def test_presets_follow_electra_and_koelectra():
    small, base = model_config("electra", "small"), model_config("electra", "base")
    assert small == {"num_layers": 12, "hidden_dim": 256, "num_heads": 4,
                     "intermediate_dim": 1024, "embedding_dim": 128}  # ELECTRA/KoELECTRA-Small
    assert generator_config("small") == {"num_layers": 12, "hidden_dim": 64, "num_heads": 1,
                                         "intermediate_dim": 256}
    assert base["embedding_dim"] == base["hidden_dim"] == 768
    # KoELECTRA-Base's generator: 12 layers, hidden 256, 4 heads
    assert generator_config("base") == {"num_layers": 12, "hidden_dim": 256, "num_heads": 4,
                                        "intermediate_dim": 1024}
    assert generator_config("tiny")["hidden_dim"] == 32


RUN = dict(model="electra", steps=4, checkpoint_every=2, batch_size=8, learning_rate=2e-3,
           warmup_steps=1, log_every=1, seed=5, deterministic=True, progress="lines")


@pytest.fixture(scope="module")
def whole(corpus, tmp_path_factory):
    """An uninterrupted deterministic ELECTRA-tiny run: 4 steps, checkpoints at 2 and 4."""
    tokenizer_dir, data_dir = corpus
    out = tmp_path_factory.mktemp("electra-run") / "whole"
    checkpoints = run_pretrain(str(data_dir), str(tokenizer_dir), str(out), **RUN)
    return out, checkpoints


def test_electra_pretrains_logs_both_losses_and_reloads(whole):
    out, checkpoints = whole
    assert [c["step"] for c in checkpoints] == [2, 4]
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for r in log:
        assert {"loss", "mlm_loss", "mlm_accuracy", "disc_loss", "disc_accuracy", "replaced_rate",
                "tokens_per_second", "model_tflops_per_second"} <= set(r)
        assert all(np.isfinite(r[k]) for k in ("loss", "mlm_loss", "disc_loss"))
        # the total is the generator's loss + 50 x the discriminator's
        assert r["loss"] == pytest.approx(r["mlm_loss"] + 50 * r["disc_loss"], rel=1e-3)
        assert 0 < r["replaced_rate"] < 0.2  # ~15% masked, some samples equal the original
    assert log[-1]["loss"] < log[0]["loss"]

    info = checkpoint_info(checkpoints[-1]["uri"])
    assert info["model"] == "electra" and info["objective"] == "mlm" and info["step"] == 4
    model = load_pretraining_task(checkpoints[-1]["uri"])
    assert type(model).__name__ == "ElectraPretraining"
    # one embedding block: the generator's output layer is the discriminator's token table
    assert model.generator_head.token_embedding is model.backbone.token_embedding
    assert model.generator_dims == generator_config("tiny")
    assert float(np.abs(model.generator_head._bias.numpy()).max()) > 0  # trained, not fresh
    backbone = load_backbone(checkpoints[-1]["uri"])
    assert type(backbone).__name__ == "ElectraBackbone" and backbone.embedding_dim == 128
    for a, b in zip(backbone.weights, model.backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_damaged_electra_checkpoint_is_one_clear_error(whole, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(whole[1][0]["uri"], ckpt)
    (ckpt / "electra_heads.npz").unlink()
    with pytest.raises(KorlmError, match="lacks electra_heads.npz"):
        load_pretraining_task(str(ckpt))


def test_killed_electra_run_resumes_bit_identically(corpus, whole, tmp_path, monkeypatch, capsys):
    """Deterministic mode: a run killed after its step-2 state (before the step-4
    checkpoint) and resumed ends with the uninterrupted run's weights, generator, heads and
    sampler included, bit for bit, and the same logged losses."""
    tokenizer_dir, data_dir = corpus
    from korlm.modeling import checkpoints

    real_save = checkpoints.save_checkpoint

    def killed_at_4(task, checkpoint_dir, info, **kwargs):
        if info["step"] == 4:
            raise KeyboardInterrupt("preempted")
        real_save(task, checkpoint_dir, info, **kwargs)

    monkeypatch.setattr("korlm.modeling.checkpoints.save_checkpoint", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(tmp_path / "killed"), **RUN)
    monkeypatch.setattr("korlm.modeling.checkpoints.save_checkpoint", real_save)
    assert [p.name for p in (tmp_path / "killed" / "state").iterdir()] == ["step-000002"]
    capsys.readouterr()
    run_pretrain(str(data_dir), str(tokenizer_dir), str(tmp_path / "killed"), **RUN)
    printed = capsys.readouterr().out
    assert "resuming" in printed and "from step 2" in printed and "disc_loss" in printed

    a = _weights(str(whole[0] / "checkpoints" / "step-000004"))
    b = _weights(str(tmp_path / "killed" / "checkpoints" / "step-000004"))
    assert len(a) == len(b) and max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) == 0.0
    keys = ("loss", "mlm_loss", "disc_loss", "disc_accuracy")
    assert ([[r[k] for k in keys] for r in _log(whole[0])]
            == [[r[k] for k in keys] for r in _log(tmp_path / "killed")])


def test_discriminator_fine_tunes_classification_and_qa(whole, tmp_path):
    from korlm.evaluation import evaluate, finetune, heads, metrics
    from tests.test_evaluate import _write_user_tasks, write_nsmc_slice

    ckpt = whole[1][-1]["uri"]
    nsmc = write_nsmc_slice(tmp_path / "nsmc", num_train=120, num_test=60)
    common = dict(max_seq_length=SEQ, batch_size=16, epochs=1, seed=1)
    # korlm finetune: evaluate's fine-tuning, written as a servable model directory
    record = finetune.finetune(ckpt, None, "nsmc", str(nsmc), str(tmp_path / "out"), **common)
    assert record["model"]["model"] == "electra" and record["step"] == 4
    assert 0 <= record["metrics"]["accuracy"] <= 1 and record["num_eval"] == 60
    served = finetune.load_finetuned(str(tmp_path / "out"))  # what korlm serve loads
    test = evaluate.tasks.load_task(evaluate.tasks.get_task("nsmc"), str(nsmc)).test
    predicted = [r["label_id"] for r in served.classify(test.texts)]
    assert metrics.compute(["accuracy"], test.labels, predicted, 2)["accuracy"] == pytest.approx(
        record["metrics"]["accuracy"], abs=1e-9)

    # ElectraClassificationHead: first token, dropout, dense + GELU, dropout, out_proj;
    # the backbone's untrained pooler is not on the path.
    spec = evaluate.tasks.get_task("nsmc")
    model, _ = heads.Head(spec).build(load_backbone(ckpt))
    names = [layer.name for layer in model.layers]
    assert names[-4:] == ["classifier_input_dropout", "classifier_dense",
                          "classifier_output_dropout", "classifier_logits"]
    assert model.get_layer("classifier_dense").activation.__name__ == "gelu"
    assert not model.layers[3].get_layer("pooled_dense").trainable

    files = _write_user_tasks(tmp_path / "tasks")
    qa = evaluate.evaluate_checkpoint(ckpt, None, str(files["qa"]), None, str(tmp_path / "qa"),
                                      doc_stride=6, **common)
    assert qa["model"]["model"] == "electra" and 0 <= qa["metrics"]["exact_match"] <= 1


# --------------------------------------------------------------------------- export

PAIRS = [("전체관람가는 아닌것 같아요", "디렉터스컷으로봐서 거의 3시간짜리인데 참 흡인력있다"),
         ("배우들의 연기가 정말 좋았고 음악도 훌륭했다!", "기대 안 했는데 생각보다 재밌네요 ㅋㅋ"),
         ("2시간이 아깝다... 비추천", "최고")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A perturbed ELECTRA-mini (both models project their 128-wide embeddings: 256 and
    64 hidden) saved as a checkpoint and exported."""
    import keras

    from korlm.hub.export import export_checkpoint
    from korlm.modeling.build import build_pretraining_task
    from tests.test_export import _perturb, _reviews, _write_tokenizer

    root = tmp_path_factory.mktemp("electra-export")
    tok = root / "tokenizer"
    vocab = _write_tokenizer(tok, _reviews(0, 400))
    keras.utils.set_random_seed(2)
    model = build_pretraining_task("electra", "mini", vocab, 64)
    _perturb(model, seed=4)
    ckpt = root / "run" / "checkpoints" / "step-000005"
    save_checkpoint(model, str(ckpt), {"step": 5, "model": "electra", "size": "mini",
                                       "vocab_size": vocab, "max_seq_length": 64,
                                       "objective": "mlm"})
    summary = export_checkpoint(str(ckpt), str(tok), str(root / "hf"))
    return {"ckpt": str(ckpt), "out": root / "hf", "summary": summary, "vocab": vocab}


def _batch(out: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="np")
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
    assert (enc["attention_mask"] == 0).any() and (enc["token_type_ids"] == 1).any()
    return {k: np.asarray(v, dtype="int64") for k, v in enc.items()}


def _keras_inputs(enc) -> dict[str, np.ndarray]:
    return {"token_ids": enc["input_ids"].astype("int32"),
            "segment_ids": enc["token_type_ids"].astype("int32"),
            "padding_mask": enc["attention_mask"].astype("int32")}


def test_export_writes_the_discriminator_and_the_generator(exported):
    out, summary = exported["out"], exported["summary"]
    assert summary["architecture"] == "ElectraForPreTraining" and summary["model"] == "electra"
    config = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generator" / "config.json").read_text())
    assert config["architectures"] == ["ElectraForPreTraining"]
    assert gen["architectures"] == ["ElectraForMaskedLM"]
    assert (config["embedding_size"], config["hidden_size"], gen["hidden_size"]) == (128, 256, 64)
    assert gen["num_hidden_layers"] == config["num_hidden_layers"] == 4
    assert config["hidden_act"] == gen["hidden_act"] == "gelu_pytorch_tanh"
    for name in ("tokenizer.json", "vocab.txt", "model.safetensors"):
        assert (out / "generator" / name).is_file()
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "model_input_names" not in tok_config  # ELECTRA takes token type ids
    card = (out / "README.md").read_text()
    assert "ELECTRA" in card and "widget" not in card and "subfolder" in card


def test_transformers_logits_match_keras_on_padded_korean_pairs(exported):
    import torch
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    out = exported["out"]
    enc = _batch(out)
    real = enc["attention_mask"].astype(bool)
    model = load_pretraining_task(exported["ckpt"])  # the checkpoint as written to disk
    x = _keras_inputs(enc)

    disc, info = ElectraForPreTraining.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    disc.eval()
    with torch.no_grad():
        hf = disc(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    keras_logits = np.asarray(model.discriminator_logits(x, training=False))
    assert keras_logits.shape == hf.shape == enc["input_ids"].shape
    assert np.abs(keras_logits[real]).max() > 0.1
    diff = float(np.abs(keras_logits - hf)[real].max())
    print(f"discriminator: max |logit diff| {diff:.3g}")
    assert diff <= 1e-4

    gen, info = ElectraForMaskedLM.from_pretrained(str(out / "generator"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gen.eval()
    assert gen.generator_lm_head.weight.data_ptr() == gen.electra.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        hf = gen(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    positions = np.tile(np.arange(enc["input_ids"].shape[1], dtype="int32"), (len(PAIRS), 1))
    keras_logits = np.asarray(model.generator_logits(x, positions, training=False))
    assert keras_logits.shape == hf.shape == (*enc["input_ids"].shape, exported["vocab"])
    diff = float(np.abs(keras_logits - hf)[real].max())
    print(f"generator: max |logit diff| {diff:.3g}")
    assert diff <= 1e-4
    # the two share the embedding block
    np.testing.assert_array_equal(gen.electra.embeddings.word_embeddings.weight.detach().numpy(),
                                  disc.electra.embeddings.word_embeddings.weight.detach().numpy())


def test_export_reads_back_into_the_same_discriminator_backbone(exported, tmp_path):
    from korlm.evaluation import tasks
    from korlm.evaluation.heads import Head

    ours = load_backbone(exported["ckpt"])
    back = load_backbone(str(exported["out"]))  # hf_import: ElectraForPreTraining -> backbone
    assert checkpoint_info(str(exported["out"]))["model"] == "electra"
    config = lambda b: {k: v for k, v in b.get_config().items() if k != "name"}  # noqa: E731
    assert type(back).__name__ == "ElectraBackbone" and config(back) == config(ours)
    for a, b in zip(ours.weights, back.weights, strict=True):
        if "pooled_dense" not in a.path:  # Hugging Face ELECTRA has no pooler
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    model, _ = Head(tasks.get_task("nsmc")).build(back)  # fine-tunable as it stands
    assert model.get_layer("classifier_logits").units == 2


# --------------------------------------------------------------------------- FLOPs, config


def test_flops_per_token_counts_generator_and_discriminator():
    from korlm.pretrain.distribute import model_flops_per_token
    from korlm.pretrain.electra import flops_per_token

    v, s, p = 32000, 128, 20
    disc, gen = model_config("electra", "small"), generator_config("small")
    # by hand: both encoders (6N + 12 L d s per token), the generator head on p slots
    # (64 -> 128 dense, tied 128 x V output), the discriminator head (256 x 256 + 256 x 1)
    # and the two 128 -> hidden embedding projections
    def encoder(d):
        n = d["num_layers"] * (4 * d["hidden_dim"] ** 2 + 2 * d["hidden_dim"] * d["intermediate_dim"])
        return 6 * n + 12 * d["num_layers"] * d["hidden_dim"] * s
    heads = 6 * (s * 256 * 257 + p * (64 * 128 + 128 * v) + s * 128 * (256 + 64)) / s
    assert flops_per_token("small", v, s, p) == pytest.approx(encoder(disc) + encoder(gen) + heads)
    assert flops_per_token("base", v, s, p) > model_flops_per_token("bert", "base", v, s,
                                                                     mlm_predictions=p)


def test_the_config_and_the_cost_estimate_take_electra():
    from korlm import config
    from pipelines import cost

    data = config.load("configs/vertex-bert-base.yaml").model_dump()
    data["pretrain"]["model"] = "electra"
    conf = config.validate(data)
    hours, basis = cost.pretrain_hours(conf, conf.pipeline.resources["pretrain"])
    assert hours > 0 and "MFU" in basis
    data["pretrain"]["model"] = "electro"
    with pytest.raises(KorlmError, match="electra"):
        config.validate(data)


def test_the_ablation_dag_pretrains_electra_arms(tmp_path):
    import yaml

    from korlm import config
    from pipelines.compile import compile_pipeline

    conf = config.load("configs/ablation-local.yaml")
    conf = config.apply_overrides(conf, {"pretrain.model": "electra", "ablation.sizes": ["tiny", "small"]})
    out = tmp_path / "a.yaml"
    compile_pipeline(conf, str(out))
    tasks = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]
    arms = [t["inputs"]["parameters"]["params"]["runtimeValue"]["constant"]
            for n, t in tasks.items() if n.startswith("pretrain") and "data" not in n]
    assert len(arms) == 4 and {(a["model"], a["size"]) for a in arms} == {("electra", "tiny"),
                                                                          ("electra", "small")}


def test_electra_trains_under_mixed_bfloat16(corpus, tmp_path):
    """The precision policy (pretrain.precision) reaches ELECTRA's step: bf16 compute,
    float32 losses, a float32 checkpoint."""
    tokenizer_dir, data_dir = corpus
    out = tmp_path / "bf16"
    checkpoints = run_pretrain(str(data_dir), str(tokenizer_dir), str(out), model="electra",
                               steps=2, checkpoint_every=2, batch_size=8, log_every=1,
                               precision="mixed_bfloat16", progress="lines")
    assert all(np.isfinite(r[k]) for r in _log(out) for k in ("loss", "mlm_loss", "disc_loss"))
    config = json.loads((Path(checkpoints[-1]["uri"]) / "config.json").read_text())
    assert "bfloat16" not in json.dumps(config)
    model = load_pretraining_task(checkpoints[-1]["uri"])
    assert model.backbone.dtype_policy.name == "float32"


def test_classifier_computes_what_electra_for_sequence_classification_computes(exported):
    """The fine-tuning head on an ELECTRA backbone, every weight moved off its
    initialisation and copied into transformers' ElectraForSequenceClassification: the
    same logits on a padded batch of Korean pairs."""
    from types import SimpleNamespace

    import torch
    from transformers import ElectraForSequenceClassification

    from korlm.evaluation import tasks
    from korlm.evaluation.heads import Head
    from korlm.modeling.hf_mapping import electra_state_dict
    from tests.test_export import _perturb

    enc = _batch(exported["out"])
    model, _ = Head(tasks.get_task("nsmc")).build(load_backbone(exported["ckpt"]))
    _perturb(model, seed=7)
    dense, logits = model.get_layer("classifier_dense"), model.get_layer("classifier_logits")
    # the export's mapping for the backbone (its head slots filled by the classifier's)
    backbone = next(layer for layer in model.layers if type(layer).__name__ == "ElectraBackbone")
    parts = SimpleNamespace(backbone=backbone,
                            discriminator_dense=dense, discriminator_prediction=logits)
    state = {k: torch.tensor(v) for k, v in electra_state_dict(parts).items()
             if k.startswith("electra.")}
    for name, layer in (("dense", dense), ("out_proj", logits)):
        state[f"classifier.{name}.weight"] = torch.tensor(layer.kernel.numpy().T)
        state[f"classifier.{name}.bias"] = torch.tensor(layer.bias.numpy())
    hf = ElectraForSequenceClassification.from_pretrained(str(exported["out"]), num_labels=2)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    hf.eval()
    with torch.no_grad():
        expected = hf(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    got = np.asarray(model(_keras_inputs(enc), training=False))
    assert np.abs(got).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-5)
