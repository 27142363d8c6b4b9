"""Fine-tuning heads and dropout settings (issue 21 items 1-2): `evaluate.pooling` picks the
sentence representation (cls / mean / BERT's pooler), `auto` avoids a pooler no objective
trained, the choice is recorded and rebuilt by the fine-tuned model loader; dropout is set
for pretraining and fine-tuning independently. Real tiny KerasHub models throughout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from korlm import cli
from korlm import config as cfg
from korlm.errors import KorlmError
from korlm.evaluation import evaluate, finetune, heads, tasks
from korlm.modeling import build
from korlm.modeling.checkpoints import load_backbone
from tests.test_evaluate import setup  # noqa: F401  (module fixture: tiny BERT checkpoint, NSMC slice)

COMMON = dict(max_seq_length=32, batch_size=16, epochs=1, seed=3, max_train_examples=64,
              max_eval_examples=50)


def dropout_rates(model) -> set[float]:
    """Every dropout rate inside ``model``: Dropout layers and attention dropout."""
    import keras

    rates = set()
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            rates.add(round(float(layer.rate), 6))
        if isinstance(layer, keras.layers.MultiHeadAttention):
            rates.add(round(float(layer.dropout), 6))
    return rates


def _inputs(batch: int = 4, length: int = 12):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, size=(batch, length)).astype("int32")
    mask = np.ones((batch, length), dtype="int32")
    mask[0, 7:] = 0  # a padded row: mean pooling must ignore its tail
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def _head(pooling: str, dropout: float = 0.1, num_classes: int = 2):
    spec = tasks.TaskSpec(name="t", description="", type="classification",
                          metrics=("accuracy",), label_names=tuple(str(i) for i in range(num_classes)))
    head = heads.Head(spec)
    head.pooling, head.dropout = pooling, dropout
    return head


# --------------------------------------------------------------------------- auto


def test_auto_pooling_follows_what_trained_the_pooler():
    resolve = heads.resolve_pooling
    assert resolve("auto", {"model": "bert", "nsp": False})[0] == heads.AUTO_POOLING
    assert heads.AUTO_POOLING in ("cls", "mean")
    assert resolve("auto", {"model": "bert", "nsp": True}) == (
        "pooler", "auto: next-sentence prediction trained the pooler")
    assert resolve("auto", {"model": "roberta"})[0] == "cls"
    assert resolve("auto", {"model": "bart"})[0] == "cls"
    assert resolve("mean", {"model": "bart"}) == ("mean", "requested")
    assert resolve("pooler", {"model": "bert", "nsp": True}) == ("pooler", "requested")
    for family in ("roberta", "bart"):
        with pytest.raises(KorlmError, match=f"a {family} model has no pooler; use cls"):
            resolve("pooler", {"model": family})
    with pytest.raises(KorlmError, match="pooling 'first' is unknown"):
        resolve("first", {"model": "bert"})


def test_pooler_on_an_mlm_only_checkpoint_is_warned_about(capsys):
    assert heads.resolve_pooling("pooler", {"model": "bert", "nsp": False})[0] == "pooler"
    assert "pooler weights are the random initialisation's" in capsys.readouterr().out


# --------------------------------------------------------------------------- heads


def test_cls_and_mean_heads_never_read_the_pooler(setup):  # noqa: F811
    import keras

    _, checkpoint, _ = setup
    x = _inputs()
    for pooling in ("cls", "mean", "pooler"):
        keras.utils.set_random_seed(1)
        backbone = load_backbone(checkpoint)
        model, _ = _head(pooling).build(backbone)
        pooled = backbone.get_layer("pooled_dense")
        trainable = {id(v) for v in model.trainable_weights}
        before = np.asarray(model(x, training=False))
        pooled.kernel.assign(pooled.kernel.numpy() + 1.0)  # what an untrained pooler holds
        after = np.asarray(model(x, training=False))
        if pooling == "pooler":
            assert id(pooled.kernel) in trainable and not np.allclose(before, after)
            continue
        assert id(pooled.kernel) not in trainable and id(pooled.bias) not in trainable
        np.testing.assert_array_equal(before, after)
        # the head is dropout + one dense layer on the pooled token states
        sequence = np.asarray(backbone(x, training=False)["sequence_output"])
        mask = x["padding_mask"][:, :, None].astype("float32")
        features = (sequence[:, 0] if pooling == "cls"
                    else (sequence * mask).sum(axis=1) / mask.sum(axis=1))
        dense = model.get_layer("logits")
        expected = features @ dense.kernel.numpy() + dense.bias.numpy()
        np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-5)


def test_roberta_and_bart_heads_per_pooling():
    import keras_hub

    roberta = build.build_backbone("roberta", "tiny", 300, 32)
    assert isinstance(_head("cls").build(roberta)[0], keras_hub.models.RobertaTextClassifier)
    mean = _head("mean").build(roberta)[0]
    assert mean.name == "mean_sequence_classifier"
    with pytest.raises(KorlmError, match="has no pooler"):
        _head("pooler").build(roberta)
    bart = build.build_backbone("bart", "tiny", 300, 32)
    x = heads.bart_inputs(_inputs(), decoder_start_id=3)
    last, averaged = (_head(p).build(bart)[0] for p in ("cls", "mean"))
    assert last(x).shape == averaged(x).shape == (4, 2)
    # None (a fine-tuned model written before pooling was recorded): each family's old head
    old = heads.Head(_head("cls").spec)
    assert isinstance(old.build(build.build_backbone("bert", "tiny", 300, 32))[0],
                      keras_hub.models.BertTextClassifier)


# --------------------------------------------------------------------------- dropout


def test_dropout_settings_reach_the_models(setup):  # noqa: F811
    _, checkpoint, _ = setup
    assert dropout_rates(build.build_pretraining_task("bert", "tiny", 300, 32, dropout=0.0)) == {0.0}
    assert dropout_rates(build.build_pretraining_task("bart", "tiny", 300, 32, dropout=0.25)) == {0.25}
    # the checkpoint records its pretraining dropout (run_pretrain's default: 0) ...
    with open(f"{checkpoint}/config.json", encoding="utf-8") as f:
        assert json.load(f)["config"]["dropout"] == cfg.PretrainSection().dropout == 0.0
    assert dropout_rates(load_backbone(checkpoint)) == {0.0}
    # ... and fine-tuning sets its own, on the same weights
    recorded, changed = load_backbone(checkpoint), load_backbone(checkpoint, dropout=0.3)
    assert dropout_rates(changed) == {0.3}
    for a, b in zip(recorded.get_weights(), changed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model, _ = _head("mean", dropout=0.3).build(changed)
    assert dropout_rates(model) == {0.3}
    with pytest.raises(KorlmError, match=r"dropout must be in \[0, 1\)"):
        load_backbone(checkpoint, dropout=1.0)


def test_fine_tune_records_pooling_and_dropout_and_the_served_model_rebuilds_the_head(
        setup, tmp_path):  # noqa: F811
    _, checkpoint, nsmc_dir = setup
    out = tmp_path / "cls"
    record = finetune.finetune(checkpoint, None, "nsmc", str(nsmc_dir), str(out), pooling="cls",
                               dropout=0.2, **COMMON)
    assert record["pooling"] == record["fine_tune"]["pooling"] == "cls"
    assert (record["fine_tune"]["pooling_requested"], record["fine_tune"]["dropout"]) == ("cls", 0.2)
    assert json.loads((out / finetune.FINETUNED_JSON).read_text())["pooling"] == "cls"
    served = finetune.load_finetuned(str(out))
    assert served.model.name == "cls_sequence_classifier"
    texts = ["정말 재미있는 영화", "최악이다 돈 아깝다", "그냥 그랬다"]
    first = served.classify(texts)
    # a file written before pooling was recorded loads as the pooler head it was made with
    old = tmp_path / "old"
    finetune.finetune(checkpoint, None, "nsmc", str(nsmc_dir), str(old), pooling="pooler", **COMMON)
    meta = json.loads((old / finetune.FINETUNED_JSON).read_text())
    expected = finetune.load_finetuned(str(old)).classify(texts)
    del meta["pooling"]
    (old / finetune.FINETUNED_JSON).write_text(json.dumps(meta))
    reloaded = finetune.load_finetuned(str(old))
    assert reloaded.pooling is None and reloaded.model.name != "cls_sequence_classifier"
    assert reloaded.classify(texts) == expected
    assert [r["label"] for r in first] == [r["label"] for r in served.classify(texts)]


def test_auto_is_recorded_in_metrics_json(setup, tmp_path):  # noqa: F811
    _, checkpoint, nsmc_dir = setup
    record = evaluate.evaluate_checkpoint(checkpoint, None, "nsmc", str(nsmc_dir),
                                          str(tmp_path / "out"), **COMMON)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["pooling"] == record["pooling"] == heads.AUTO_POOLING
    assert saved["fine_tune"]["pooling_requested"] == "auto"
    assert saved["fine_tune"]["pooling_note"].startswith("auto: no objective trained the pooler")
    assert saved["fine_tune"]["dropout"] == 0.1
    # the report names the head, and draws the checkpoints' pretraining figures when recorded
    # (a second checkpoint's record: this one's, at another step, with held-out figures)
    from korlm.evaluation.report import build_report

    later = dict(saved, step=int(saved["step"]) + 10, checkpoint="step-later",
                 pretraining={"train_loss": 6.9, "heldout_loss": 6.95, "heldout_accuracy": 0.12,
                              "unigram_entropy": 7.6174})
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "metrics.json").write_text(json.dumps(later), encoding="utf-8")
    summary = build_report([str(tmp_path / "out"), str(tmp_path / "later")], str(tmp_path / "report"),
                           references=[])
    assert f"- nsmc: pooling {heads.AUTO_POOLING} (auto: no objective trained" in summary["markdown"]
    assert "unigram floor 7.6174 nats" in summary["markdown"]
    assert f"| {later['step']} | 6.9000 | 6.9500 | 0.1200 |" in summary["markdown"]
    assert "pretraining_loss.png" in summary["plots"]
    assert (tmp_path / "report" / "pretraining_loss.png").stat().st_size > 1000
    assert "Fine-tuning heads" in (tmp_path / "report" / "results.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- config / CLI


def test_config_and_flags_carry_pooling_and_dropout(tmp_path):
    conf = cfg.validate({"evaluate": {"pooling": "cls", "dropout": 0.05,
                                      "per_task": {"korsts": {"pooling": "mean", "dropout": 0.2}}},
                         "pretrain": {"dropout": 0.1}})
    assert conf.pretrain.dropout == 0.1 and cfg.EvaluateSection().pooling == "auto"
    params = evaluate.settings_for_task(conf.evaluate.model_dump(), "korsts")
    assert (params["pooling"], params["dropout"]) == ("mean", 0.2)
    with pytest.raises(cfg.ConfigError, match="evaluate.pooling"):
        cfg.validate({"evaluate": {"pooling": "max"}})
    with pytest.raises(cfg.ConfigError, match="pretrain.dropout"):
        cfg.validate({"pretrain": {"dropout": 1.5}})
    path = tmp_path / "c.yaml"
    path.write_text("evaluate:\n  pooling: cls\n", encoding="utf-8")
    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "--config", str(path), "--checkpoint", "c", "--task", "nsmc",
                              "--output", "o", "--dropout", "0.3"])
    params = cli._fine_tune_params(args, cli._load(args, {}))
    assert (params["pooling"], params["dropout"]) == ("cls", 0.3)
    args = parser.parse_args(["finetune", "--checkpoint", "c", "--task", "nsmc", "--output", "o",
                              "--pooling", "pooler"])
    assert cli._fine_tune_params(args, cli._load(args, {}))["pooling"] == "pooler"
    args = parser.parse_args(["pretrain", "--data", "d", "--tokenizer", "t", "--output", "o",
                              "--dropout", "0.05"])
    assert args.dropout == 0.05
