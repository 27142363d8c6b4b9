"""Export: a korlm checkpoint loads in transformers and computes the same logits."""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from korlm import export, models
from korlm.errors import KorlmError, NotBuiltError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVIEWS = os.path.join(REPO, "data", "sample", "raw", "movie_reviews.tsv")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_SEQ = 128
SENTENCES = [
    "전체관람가는 아닌것 같아요",
    "디렉터스컷으로봐서 거의 3시간짜리인데 참 흡인력있다",
    "배우들의 연기가 정말 좋았고 음악도 훌륭했다!",
    "기대 안 했는데 생각보다 재밌네요 ㅋㅋ",
    "2시간이 아깝다... 비추천",
]


def _reviews(start: int, count: int) -> list[str]:
    with open(REVIEWS, encoding="utf-8") as f:
        rows = [row["review"] for row in csv.DictReader(f, delimiter="\t") if row["review"]]
    return rows[start : start + count]


def _write_tokenizer(path, lines: list[str], with_configs: bool = True) -> int:
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tok.train_from_iterator(lines, vocab_size=2000, special_tokens=SPECIAL, show_progress=False)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    tok.save_model(str(path))
    if with_configs:
        special = dict(zip(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"],
                           SPECIAL, strict=True))
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": False, **special}, f)
        with open(os.path.join(path, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump(special, f)
    return tok.get_vocab_size()


def _perturb(task, seed: int = 0) -> None:
    """Move every weight off its initial value (LayerNorm and biases included)."""
    rng = np.random.default_rng(seed)
    for w in task.weights:
        v = w.numpy()
        if w.path.endswith("gamma"):
            v = 1.0 + rng.normal(0.0, 0.2, v.shape)
        elif w.path.endswith(("beta", "bias")):
            v = rng.normal(0.0, 0.2, v.shape)
        else:
            v = v + rng.normal(0.0, 0.05, v.shape)
        w.assign(v.astype("float32"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok_dir = root / "tokenizer"
    vocab = _write_tokenizer(tok_dir, _reviews(0, 400))
    import keras

    keras.utils.set_random_seed(0)
    task = models.build_masked_lm("bert", "tiny", vocab, MAX_SEQ)
    _perturb(task)
    ckpt = root / "run" / "checkpoints" / "step-000040"
    info = {"step": 40, "model": "bert", "size": "tiny", "vocab_size": vocab,
            "max_seq_length": MAX_SEQ, "objective": "mlm"}
    models.save_checkpoint(task, str(ckpt), info)
    out = root / "hf"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        summary = export.export_checkpoint(
            str(ckpt), str(tok_dir), str(out),
            results_markdown="| task | step | accuracy |\n|---|---|---|\n| nsmc | 40 | 0.612 |",
            model_name="korlm-bert-tiny-test",
            corpus_stats={"kept_records": 1234, "sentences": 5678,
                          "rejected_by_reason": {"too_short": 3}},
        )
    return {"root": root, "tok": str(tok_dir), "ckpt": str(ckpt), "out": str(out),
            "summary": summary, "vocab": vocab}


def _keras_logits(task, enc) -> np.ndarray:
    ids = np.asarray(enc["input_ids"], dtype="int32")
    batch, length = ids.shape
    seq = task.backbone(
        {"token_ids": ids,
         "segment_ids": np.asarray(enc["token_type_ids"], dtype="int32"),
         "padding_mask": np.asarray(enc["attention_mask"], dtype="int32")},
        training=False,
    )["sequence_output"]
    positions = np.tile(np.arange(length, dtype="int32"), (batch, 1))
    return np.asarray(task.masked_lm_head(seq, mask_positions=positions, training=False))


def _hf_logits(model, enc) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(**{k: torch.tensor(np.asarray(v)) for k, v in enc.items()})
    return out.logits.numpy()


def test_output_files_and_config(exported):
    out = exported["out"]
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt", "README.md"} <= names
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".hf.tmp")]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == ["BertForMaskedLM"]
    assert config["model_type"] == "bert"
    assert config["vocab_size"] == exported["vocab"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"]) == (128, 2, 2, 512)
    assert config["max_position_embeddings"] == MAX_SEQ
    assert config["type_vocab_size"] == 2
    assert config["layer_norm_eps"] == 1e-12
    assert config["hidden_act"] == "gelu_pytorch_tanh"
    assert config["pad_token_id"] == 0
    assert exported["summary"]["config"] == config
    assert exported["summary"]["step"] == 40

    from safetensors import safe_open
    from transformers.activations import ACT2FN

    assert config["hidden_act"] in ACT2FN
    with safe_open(os.path.join(out, "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
        assert f.get_tensor("bert.encoder.layer.0.attention.self.query.weight").shape == (128, 128)
        assert f.get_tensor("bert.encoder.layer.1.intermediate.dense.weight").shape == (512, 128)
        assert f.get_tensor("cls.predictions.bias").shape == (exported["vocab"],)
    assert "cls.predictions.transform.LayerNorm.weight" in keys
    assert "bert.pooler.dense.weight" in keys
    assert len(keys) == 5 + 2 * 16 + 2 + 5


def test_transformers_logits_match_keras(exported):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    out = exported["out"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    assert enc["input_ids"].shape[1] > 8 and (enc["attention_mask"] == 0).any()

    model, loading = BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    assert set(loading["unexpected_keys"]) <= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert model.cls.predictions.decoder.weight.data_ptr() == \
        model.bert.embeddings.word_embeddings.weight.data_ptr()
    auto = AutoModelForMaskedLM.from_pretrained(out)
    assert type(auto).__name__ == "BertForMaskedLM"
    hf = _hf_logits(model.eval(), enc)
    np.testing.assert_array_equal(hf, _hf_logits(auto.eval(), enc))

    task = models.load_masked_lm(exported["ckpt"])
    keras_logits = _keras_logits(task, enc)
    assert keras_logits.shape == hf.shape == (len(SENTENCES), enc["input_ids"].shape[1], exported["vocab"])
    assert np.abs(keras_logits).max() > 1.0  # not trivially near-zero logits

    # The model exactly as pretrain/evaluate load it (korlm.models matches the MLM
    # head's activation and LayerNorm epsilon to HF BERT's single settings).
    diff = float(np.abs(keras_logits - hf).max())
    print(f"max |logit diff| keras vs transformers: {diff:.3g}")
    assert diff <= 1e-4


def test_tokenizer_roundtrip(exported):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original = Tokenizer.from_file(os.path.join(exported["tok"], "tokenizer.json"))
    shipped = Tokenizer.from_file(os.path.join(exported["out"], "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(exported["out"])
    for sentence in SENTENCES + _reviews(2000, 20):
        pieces = original.encode(sentence, add_special_tokens=False).ids
        assert pieces, sentence
        assert hf(sentence, add_special_tokens=False)["input_ids"] == pieces, sentence
        assert hf(sentence)["input_ids"] == [2, *pieces, 3], sentence
        # tokenizer.json on its own (tokenizers, TEI, transformers.js) gives the same ids.
        assert shipped.encode(sentence).ids == [2, *pieces, 3], sentence
    pair = hf(SENTENCES[0], SENTENCES[1])
    shipped_pair = shipped.encode(SENTENCES[0], SENTENCES[1])
    assert pair["input_ids"] == shipped_pair.ids
    assert pair["token_type_ids"] == shipped_pair.type_ids
    assert [hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id] \
        == [0, 1, 2, 3, 4]
    assert hf.model_max_length == MAX_SEQ


def test_model_card(exported):
    import yaml

    card = open(os.path.join(exported["out"], "README.md"), encoding="utf-8").read()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["language"] == ["ko"]
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "fill-mask"
    assert "korean" in meta["tags"]
    body = card.split("---\n", 2)[2]
    assert "# korlm-bert-tiny-test" in body
    assert "| step | 40 |" in body and "| size | tiny |" in body
    assert "| nsmc | 40 | 0.612 |" in body
    assert "| kept_records | 1234 |" in body and "too_short" in body


def test_export_without_tokenizer_configs(exported, tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(os.path.join(exported["tok"], name), tok_dir / name)
    summary = export.export_checkpoint(exported["ckpt"], str(tok_dir), str(tmp_path / "hf"))
    assert "tokenizer_config.json" in summary["files"] and "special_tokens_map.json" not in summary["files"]
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf(SENTENCES[0])["input_ids"] == AutoTokenizer.from_pretrained(exported["out"])(SENTENCES[0])["input_ids"]
    assert hf.mask_token == "[MASK]"


def test_morpheme_vocab_card_and_spm_model_travel(exported, tmp_path):
    tok_dir = tmp_path / "tok"
    shutil.copytree(exported["tok"], tok_dir)
    cfg_path = tok_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["korlm_pre_tokenizer"] = "morpheme"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    (tok_dir / "spm.model").write_bytes(b"sentencepiece model bytes")
    summary = export.export_checkpoint(exported["ckpt"], str(tok_dir), str(tmp_path / "hf"))
    assert "spm.model" in summary["files"]
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "## Morpheme pre-tokenization" in card and "from korlm.morpheme import segment" in card
    plain = open(os.path.join(exported["out"], "README.md"), encoding="utf-8").read()
    assert "Morpheme pre-tokenization" not in plain


def test_non_bert_checkpoint_is_not_built(exported, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported["ckpt"], ckpt)
    info_path = ckpt / models.CHECKPOINT_INFO
    info = json.loads(info_path.read_text())
    info["model"] = "roberta"
    info_path.write_text(json.dumps(info))
    with pytest.raises(NotBuiltError, match="#8"):
        export.export_checkpoint(str(ckpt), exported["tok"], str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_vocab_mismatch_writes_nothing(exported, tmp_path):
    other = tmp_path / "other_tok"
    other_vocab = _write_tokenizer(other, _reviews(5000, 60))
    assert other_vocab != exported["vocab"]
    with pytest.raises(KorlmError, match="vocab"):
        export.export_checkpoint(exported["ckpt"], str(other), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
    assert os.listdir(tmp_path) == ["other_tok"]


def test_missing_inputs(exported, tmp_path):
    with pytest.raises(KorlmError, match="not a korlm checkpoint"):
        export.export_checkpoint(str(tmp_path), exported["tok"], str(tmp_path / "hf"))
    with pytest.raises(KorlmError, match="tokenizer.json"):
        export.export_checkpoint(exported["ckpt"], str(tmp_path), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_select_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(KorlmError, match="checkpoints.json"):
        export.select_checkpoint(str(run))
    entries = [{"step": 100, "uri": "checkpoints/step-000100"},
               {"step": 300, "uri": "/abs/step-000300"},
               {"step": 200, "uri": "gs://bucket/run/checkpoints/step-000200"}]
    (run / "checkpoints.json").write_text(json.dumps(entries))
    assert export.select_checkpoint(str(run)) == "/abs/step-000300"
    assert export.select_checkpoint(str(run), "first") == str(run / "checkpoints" / "step-000100")
    assert export.select_checkpoint(str(run), "step:200") == "gs://bucket/run/checkpoints/step-000200"
    with pytest.raises(KorlmError, match="no checkpoint at step 250"):
        export.select_checkpoint(str(run), "step:250")
    with pytest.raises(KorlmError, match="unknown checkpoint strategy"):
        export.select_checkpoint(str(run), "best")
    (run / "checkpoints.json").write_text("[]")
    with pytest.raises(KorlmError, match="no checkpoints"):
        export.select_checkpoint(str(run))
