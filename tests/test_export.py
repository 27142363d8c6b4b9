"""Export: a korlm checkpoint loads in transformers and computes the same logits."""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.hub.export import _tokenizer_config, export_checkpoint
from korlm.modeling.build import build_masked_lm, build_pretraining_task
from korlm.modeling.checkpoints import (
    CHECKPOINT_INFO,
    NSP_HEAD,
    checkpoint_info,
    load_backbone,
    load_masked_lm,
    load_pretraining_task,
    resolve_tokenizer,
    save_checkpoint,
    select_checkpoint,
)
from korlm.modeling.hf_mapping import (
    FAMILY_EXPORTS,
    _block_layer_norms,
    bart_config,
    roberta_config,
)

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
    task = build_masked_lm("bert", "tiny", vocab, MAX_SEQ)
    _perturb(task)
    ckpt = root / "run" / "checkpoints" / "step-000040"
    info = {"step": 40, "model": "bert", "size": "tiny", "vocab_size": vocab,
            "max_seq_length": MAX_SEQ, "objective": "mlm"}
    save_checkpoint(task, str(ckpt), info)
    out = root / "hf"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        summary = export_checkpoint(
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

    task = load_masked_lm(exported["ckpt"])
    keras_logits = _keras_logits(task, enc)
    assert keras_logits.shape == hf.shape == (len(SENTENCES), enc["input_ids"].shape[1], exported["vocab"])
    assert np.abs(keras_logits).max() > 1.0  # not trivially near-zero logits

    # The model exactly as pretrain/evaluate load it (korlm.modeling.checkpoints matches the MLM
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


def test_export_without_tokenizer_configs(exported, tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(os.path.join(exported["tok"], name), tok_dir / name)
    capsys.readouterr()
    summary = export_checkpoint(exported["ckpt"], str(tok_dir), str(tmp_path / "hf"))
    # A checkpoint from before they carried a tokenizer records no hash: taken, with a word.
    assert (f"WARNING: checkpoint {exported['ckpt']} records no vocab hash: cannot check that "
            f"tokenizer {tok_dir} is the one it was trained with") in capsys.readouterr().out
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
    summary = export_checkpoint(exported["ckpt"], str(tok_dir), str(tmp_path / "hf"))
    assert "spm.model" in summary["files"]
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "## Morpheme pre-tokenization" in card and "from korlm.tokenizer.morpheme import segment" in card
    plain = open(os.path.join(exported["out"], "README.md"), encoding="utf-8").read()
    assert "Morpheme pre-tokenization" not in plain


def test_checkpoint_of_another_family_or_unknown_family(exported, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported["ckpt"], ckpt)
    info_path = ckpt / CHECKPOINT_INFO
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "model": "roberta"}))  # BERT weights inside
    with pytest.raises(KorlmError, match="cannot be loaded"):
        export_checkpoint(str(ckpt), exported["tok"], str(tmp_path / "hf"))
    info_path.write_text(json.dumps({**info, "model": "gpt2"}))
    with pytest.raises(KorlmError, match="unknown model 'gpt2'"):
        export_checkpoint(str(ckpt), exported["tok"], str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_vocab_mismatch_writes_nothing(exported, tmp_path):
    other = tmp_path / "other_tok"
    other_vocab = _write_tokenizer(other, _reviews(5000, 60))
    assert other_vocab != exported["vocab"]
    with pytest.raises(KorlmError, match="vocab"):
        export_checkpoint(exported["ckpt"], str(other), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
    assert os.listdir(tmp_path) == ["other_tok"]


def test_missing_inputs(exported, tmp_path):
    with pytest.raises(KorlmError, match="not a korlm checkpoint"):
        export_checkpoint(str(tmp_path), exported["tok"], str(tmp_path / "hf"))
    with pytest.raises(KorlmError, match="tokenizer.json"):
        export_checkpoint(exported["ckpt"], str(tmp_path), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_checkpoint_without_a_tokenizer_needs_one_and_an_export_carries_its_own(
        exported, tmp_path, capsys):
    from korlm.cli import main
    from korlm.tokenizer.files import short_hash, vocab_hash

    # Written before checkpoints carried their tokenizer: --tokenizer is needed, one line.
    with pytest.raises(KorlmError, match="carries no tokenizer .*; pass --tokenizer DIR"):
        export_checkpoint(exported["ckpt"], None, str(tmp_path / "hf"))
    capsys.readouterr()
    assert main(["export", "--checkpoint", exported["ckpt"], "--output", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "carries no tokenizer" in err
    assert not (tmp_path / "hf").exists()
    # A Hugging Face export's own tokenizer files are its copy, with their hash.
    assert resolve_tokenizer(exported["out"]) == exported["out"]
    assert resolve_tokenizer(exported["out"], exported["tok"]) == exported["tok"]
    other = tmp_path / "other"
    _write_tokenizer(other, _reviews(5000, 60))
    with pytest.raises(KorlmError, match=rf"vocab hash {short_hash(vocab_hash(str(other)))}, "
                                         rf"checkpoint {short_hash(vocab_hash(exported['tok']))}\); "
                                         "leave out --tokenizer"):
        resolve_tokenizer(exported["out"], str(other))


def test_select_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(KorlmError, match="checkpoints.json"):
        select_checkpoint(str(run))
    entries = [{"step": 100, "uri": "checkpoints/step-000100"},
               {"step": 300, "uri": "/abs/step-000300"},
               {"step": 200, "uri": "gs://bucket/run/checkpoints/step-000200"}]
    (run / "checkpoints.json").write_text(json.dumps(entries))
    assert select_checkpoint(str(run)) == "/abs/step-000300"
    assert select_checkpoint(str(run), "first") == str(run / "checkpoints" / "step-000100")
    assert select_checkpoint(str(run), "step:200") == "gs://bucket/run/checkpoints/step-000200"
    with pytest.raises(KorlmError, match="no checkpoint at step 250"):
        select_checkpoint(str(run), "step:250")
    with pytest.raises(KorlmError, match="unknown checkpoint strategy"):
        select_checkpoint(str(run), "best")
    (run / "checkpoints.json").write_text("[]")
    with pytest.raises(KorlmError, match="no checkpoints"):
        select_checkpoint(str(run))


# --------------------------------------------------------------------------- RoBERTa and BART
#
# Four checkpoints: a RoBERTa and a BART really pretrained (2 steps) by korlm.pretrain on
# a BERT-family vocab ([PAD] = 0, [SEP] = 3), and a RoBERTa and a BART on a vocab built by
# `korlm vocab --special-tokens bart` (<pad> = 1, </s> = 2), with every weight moved off
# its initial value so that a LayerNorm or bias mapped to the wrong place cannot hide.

FAMILY_SEQ = 32
CASES = ("roberta-trained", "bart-trained", "roberta-bartvocab", "bart-bartvocab")


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    from korlm.pretrain.train import run_pretrain
    from korlm.tokenizer import vocab
    from tests.test_pretrain import build_tokenizer, sample_reviews, write_pretraining_data

    root = tmp_path_factory.mktemp("families")
    bert_tok = build_tokenizer(root / "bert-vocab")
    data = write_pretraining_data(root / "data", bert_tok, num_examples=64, max_seq_length=FAMILY_SEQ,
                                  contract=True)
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "part-00000.txt").write_text("\n".join(sample_reviews(800)) + "\n", encoding="utf-8")
    bart_tok = root / "bart-vocab"
    vocab.build_vocab(str(corpus), str(bart_tok), vocab_size=3000, special_tokens="bart",
                      coverage="corpus", min_frequency=1)
    cases = {}
    for family in ("roberta", "bart"):
        checkpoints = run_pretrain(
            str(data), str(bert_tok), str(root / f"run-{family}"), model=family, steps=2,
            checkpoint_every=2, batch_size=8, log_every=1, progress="lines")
        cases[f"{family}-trained"] = (checkpoints[-1]["uri"], str(bert_tok))
    import keras

    keras.utils.set_random_seed(1)
    tok_config = json.loads((bart_tok / "tokenizer_config.json").read_text())  # written by korlm vocab
    assert tok_config["korlm_special_tokens"] == "bart"
    vocab_size = len(json.loads((bart_tok / "tokenizer.json").read_text())["model"]["vocab"])
    for family in ("roberta", "bart"):
        task = build_pretraining_task(family, "tiny", vocab_size, FAMILY_SEQ)
        _perturb(task, seed=3)
        ckpt = root / f"{family}-bartvocab" / "step-000007"
        save_checkpoint(task, str(ckpt), {
            "step": 7, "model": family, "size": "tiny", "vocab_size": vocab_size,
            "max_seq_length": FAMILY_SEQ, "objective": "bart" if family == "bart" else "mlm"})
        cases[f"{family}-bartvocab"] = (str(ckpt), str(bart_tok))
    out = {}
    for name, (ckpt, tok) in cases.items():
        summary = export_checkpoint(ckpt, tok, str(root / "hf" / name),
                                           results_markdown="| task | x |\n|---|---|\n| nsmc | 0.5 |")
        out[name] = {"ckpt": ckpt, "tok": tok, "out": str(root / "hf" / name), "summary": summary}
    return out


def _padded_batch(hf_tokenizer) -> dict[str, np.ndarray]:
    enc = hf_tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="np")
    assert set(enc) == {"input_ids", "attention_mask"}  # no token type ids for RoBERTa/BART
    assert (enc["attention_mask"] == 0).any() and enc["input_ids"].shape[1] > 8
    return {k: np.asarray(v, dtype="int64") for k, v in enc.items()}


def bart_logits(model, task, tokenizer, ids, mask):
    """transformers' and Keras' logits of an exported BART on the same batch (inside
    ``torch.no_grad()``): korlm's decoder input is </s> then the target shifted right
    (korlm.pretrain.noising), padded where the encoder input is."""
    import torch

    dec = np.concatenate([np.full((ids.shape[0], 1), tokenizer.sep_token_id), ids[:, :-1]], axis=1)
    dec[~mask.astype(bool)] = tokenizer.pad_token_id
    hf = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(mask)).logits.numpy()
    keras_logits = np.asarray(task({
        "encoder_token_ids": ids.astype("int32"), "encoder_padding_mask": mask.astype("int32"),
        "decoder_token_ids": dec.astype("int32"), "decoder_padding_mask": mask.astype("int32")},
        training=False))
    return hf, keras_logits

@pytest.mark.parametrize("case", CASES)
def test_roberta_and_bart_logits_match_keras_with_padding(families, case):
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    exp = families[case]
    family = case.split("-")[0]
    tokenizer = AutoTokenizer.from_pretrained(exp["out"])
    enc = _padded_batch(tokenizer)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    task = load_pretraining_task(exp["ckpt"])  # the checkpoint as written to disk
    auto = AutoModelForMaskedLM if family == "roberta" else AutoModelForSeq2SeqLM
    model, loading = auto.from_pretrained(exp["out"], output_loading_info=True)
    assert type(model).__name__ == FAMILY_EXPORTS[family]["architecture"]
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    model.eval()
    real = mask.astype(bool)
    with torch.no_grad():
        if family == "roberta":
            assert model.lm_head.decoder.weight.data_ptr() == \
                model.roberta.embeddings.word_embeddings.weight.data_ptr()
            hf = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
            positions = np.tile(np.arange(ids.shape[1], dtype="int32"), (ids.shape[0], 1))
            keras_logits = np.asarray(task({"token_ids": ids.astype("int32"), "padding_mask": mask.astype("int32"),
                                            "mask_positions": positions}, training=False))
        else:
            assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()
            hf, keras_logits = bart_logits(model, task, tokenizer, ids, mask)
    assert keras_logits.shape == hf.shape == (*ids.shape, exp["summary"]["config"]["vocab_size"])
    assert np.abs(keras_logits[real]).max() > 0.1  # not trivially near-zero logits
    # Logits at padded positions are meaningless (RoBERTa gives them the padding position
    # row); every real token must match.
    diff = float(np.abs(keras_logits - hf)[real].max())
    print(f"{case}: max |logit diff| keras vs transformers over {int(real.sum())} real tokens: {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_roberta_and_bart_config_and_tensors(families, case):
    from safetensors.numpy import load_file

    exp = families[case]
    family = case.split("-")[0]
    config = json.load(open(os.path.join(exp["out"], "config.json")))
    assert config == exp["summary"]["config"]
    assert (exp["summary"]["model"], exp["summary"]["architecture"]) == \
        (family, FAMILY_EXPORTS[family]["architecture"])
    bart_vocab = case.endswith("bartvocab")
    pad, bos, eos = (1, 0, 2) if bart_vocab else (0, 2, 3)
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (pad, bos, eos)
    state = load_file(os.path.join(exp["out"], "model.safetensors"))
    hidden = 128
    if family == "roberta":
        assert config["model_type"] == "roberta" and config["architectures"] == ["RobertaForMaskedLM"]
        assert config["max_position_embeddings"] == FAMILY_SEQ + pad + 1
        assert (config["type_vocab_size"], config["layer_norm_eps"], config["hidden_act"]) == (1, 1e-5, "gelu")
        positions = state["roberta.embeddings.position_embeddings.weight"]
        assert positions.shape == (FAMILY_SEQ + pad + 1, hidden)
        assert not positions[: pad + 1].any() and positions[pad + 1:].any(axis=1).all()
        assert not state["roberta.embeddings.token_type_embeddings.weight"].any()
        assert state["roberta.embeddings.token_type_embeddings.weight"].shape == (1, hidden)
        assert "lm_head.bias" in state and not [k for k in state if k.startswith("lm_head.decoder")]
        assert len(state) == 5 + 2 * 16 + 5
    else:
        assert config["model_type"] == "bart" and config["architectures"] == ["BartForConditionalGeneration"]
        assert config["max_position_embeddings"] == FAMILY_SEQ
        assert config["scale_embedding"] is False and config["activation_function"] == "gelu"
        assert config["decoder_start_token_id"] == config["forced_eos_token_id"] == eos
        generation = json.load(open(os.path.join(exp["out"], "generation_config.json")))
        assert generation["decoder_start_token_id"] == eos and generation["forced_bos_token_id"] == bos
        for stack in ("encoder", "decoder"):
            positions = state[f"model.{stack}.embed_positions.weight"]
            assert positions.shape == (FAMILY_SEQ + 2, hidden) and not positions[:2].any()
        assert state["final_logits_bias"].shape == (1, config["vocab_size"])
        assert not state["final_logits_bias"].any()
        assert "lm_head.weight" not in state and "model.shared.weight" in state
        # korlm's BART tiny: 1 encoder + 1 decoder layer (presets.model_config)
        assert config["encoder_layers"] == config["decoder_layers"] == 1
        assert len(state) == 1 + 2 * 3 + 1 * 16 + 1 * 26 + 1
    num = exp["summary"]["num_parameters"]
    assert num == sum(a.size for k, a in state.items() if k != "final_logits_bias")


@pytest.mark.parametrize("case", ["roberta-trained", "bart-bartvocab"])
def test_roberta_and_bart_tokenizer_and_card(families, case):
    import yaml
    from transformers import AutoTokenizer

    from korlm.tokenizer import tokenization

    exp = families[case]
    family = case.split("-")[0]
    hf = AutoTokenizer.from_pretrained(exp["out"])
    pipeline_tok = tokenization.load(exp["tok"])
    held_out = _reviews(3000, 20)
    assert [hf(s)["input_ids"] for s in held_out] == pipeline_tok.encode_ids(held_out, add_special_tokens=True)
    cls, sep = pipeline_tok.special_token_ids()["cls"], pipeline_tok.special_token_ids()["sep"]
    assert hf(SENTENCES[0])["input_ids"][0] == cls and hf(SENTENCES[0])["input_ids"][-1] == sep
    assert (hf.bos_token_id, hf.eos_token_id) == (cls, sep)
    assert hf.model_max_length == FAMILY_SEQ

    card = open(os.path.join(exp["out"], "README.md"), encoding="utf-8").read()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["pipeline_tag"] == ("fill-mask" if family == "roberta" else "text2text-generation")
    assert family in meta["tags"] and "korean" in meta["tags"]
    assert meta["widget"][0]["text"].endswith(f"{hf.mask_token}.")
    body = card.split("---\n", 2)[2]
    name = FAMILY_EXPORTS[family]["name"]
    assert f"# korlm-{family}\n" in body and f"A Korean {name}" in body
    assert FAMILY_EXPORTS[family]["architecture"] in body and "| nsmc | 0.5 |" in body
    assert ("AutoModelForSeq2SeqLM" in body) == (family == "bart")


def test_bart_export_generates_from_sep_then_cls(families):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    exp = families["bart-trained"]
    tokenizer = AutoTokenizer.from_pretrained(exp["out"])
    model = AutoModelForSeq2SeqLM.from_pretrained(exp["out"]).eval()
    enc = tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out[:, 0].tolist() == [tokenizer.sep_token_id] * 2  # decoder_start_token_id
    assert out[:, 1].tolist() == [tokenizer.cls_token_id] * 2  # forced_bos_token_id


def test_settings_transformers_cannot_express_are_refused(families, tmp_path):
    from keras_hub.src.models.bert.bert_backbone import gelu_approximate

    roberta = load_pretraining_task(families["roberta-trained"]["ckpt"])
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    roberta.masked_lm_head.intermediate_activation = gelu_approximate
    with pytest.raises(KorlmError, match="RobertaLMHead applies exact GELU"):
        roberta_config(roberta, special)
    roberta.masked_lm_head.intermediate_activation = roberta.backbone.transformer_layers[0].activation
    roberta.backbone.embeddings_layer_norm.epsilon = 1e-12
    with pytest.raises(KorlmError, match="different epsilons"):
        roberta_config(roberta, special)

    bart = load_pretraining_task(families["bart-trained"]["ckpt"])
    for norm in (bart.backbone.encoder_embeddings_layer_norm, bart.backbone.decoder_embeddings_layer_norm,
                 *(layer._feedforward_layer_norm for layer in bart.backbone.encoder_transformer_layers)):
        norm.epsilon = 1e-6
    with pytest.raises(KorlmError, match="different epsilons"):
        bart_config(bart, special)
    for block in (*bart.backbone.encoder_transformer_layers, *bart.backbone.decoder_transformer_layers):
        for norm in _block_layer_norms(block):
            norm.epsilon = 1e-6
    with pytest.raises(KorlmError, match="fixes it at 1e-05"):
        bart_config(bart, special)


def test_family_tokenizer_without_special_tokens_writes_nothing(families, tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    exp = families["roberta-trained"]
    vocab_size = exp["summary"]["config"]["vocab_size"]
    tok = Tokenizer(tok_models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bad = tmp_path / "tok"
    bad.mkdir()
    tok.save(str(bad / "tokenizer.json"))
    # the checkpoint records its vocabulary's hash: another vocabulary is refused by it
    with pytest.raises(KorlmError, match="is not the vocabulary checkpoint"):
        export_checkpoint(exp["ckpt"], str(bad), str(tmp_path / "hf"))
    # a checkpoint from before hashes were recorded: the special tokens are checked
    import shutil

    old = tmp_path / "old-ckpt"
    shutil.copytree(exp["ckpt"], old)
    info = json.loads((old / CHECKPOINT_INFO).read_text())
    for key in ("tokenizer_vocab_hash", "tokenizer", "vocab_hash"):
        info.pop(key, None)
    (old / CHECKPOINT_INFO).write_text(json.dumps(info))
    shutil.rmtree(old / "tokenizer")
    with pytest.raises(KorlmError, match=r"lacks the special tokens \[PAD\]"):
        export_checkpoint(str(old), str(bad), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_tokenizer_config_of_a_bert_vocab_for_roberta_and_bart(tmp_path):
    # `korlm vocab` (BERT family) lists token_type_ids; RoBERTa/BART exports drop them
    # (BartForConditionalGeneration.forward rejects them) and name bos/eos from cls/sep.
    written = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
               "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
               "cls_token": "[CLS]", "sep_token": "[SEP]", "korlm_special_tokens": "bert"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(written))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    for family in ("roberta", "bart"):
        config = _tokenizer_config(str(tmp_path), 64, special, family, "bert")
        assert config["model_input_names"] == ["input_ids", "attention_mask"]
        assert (config["bos_token"], config["eos_token"], config["model_max_length"]) == ("[CLS]", "[SEP]", 64)
    assert _tokenizer_config(str(tmp_path), 64, special, "bert", "bert")["model_input_names"] == \
        written["model_input_names"]


def test_bert_with_next_sentence_head_exports_bert_for_pretraining(tmp_path):
    """A BERT run on next-sentence-labelled pairs exports as BertForPreTraining: the MLM
    weights as before plus cls.seq_relationship, whose logits match the Keras head."""
    import torch
    from transformers import AutoModelForPreTraining

    from korlm.pretrain.train import run_pretrain
    from tests.test_pretrain import build_tokenizer, write_pretraining_data

    tok = build_tokenizer(tmp_path / "tok")
    pairs = write_pretraining_data(tmp_path / "pairs", tok, num_examples=64, max_seq_length=32,
                                   pairs=True)
    checkpoints = run_pretrain(str(pairs), str(tok), str(tmp_path / "run"), steps=2,
                                        checkpoint_every=2, batch_size=8, learning_rate=5e-3,
                                        warmup_steps=0, progress="lines")
    ckpt = checkpoints[-1]["uri"]
    summary = export_checkpoint(ckpt, str(tok), str(tmp_path / "hf"))
    assert summary["architecture"] == "BertForPreTraining"
    assert summary["config"]["architectures"] == ["BertForPreTraining"]

    model = AutoModelForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(model).__name__ == "BertForPreTraining"
    task = load_pretraining_task(ckpt)
    head = np.load(os.path.join(ckpt, NSP_HEAD))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, task.backbone.vocabulary_size, size=(3, 16)).astype("int32")
    ids[:, 0], ids[:, -1] = 2, 3
    segments = np.zeros_like(ids)
    segments[:, 8:] = 1
    pooled = task.backbone({"token_ids": ids, "segment_ids": segments,
                            "padding_mask": np.ones_like(ids)})["pooled_output"].numpy()
    keras_nsp = pooled @ head["kernel"] + head["bias"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    token_type_ids=torch.tensor(segments, dtype=torch.long),
                    attention_mask=torch.ones(ids.shape, dtype=torch.long))
    assert np.abs(out.seq_relationship_logits.numpy() - keras_nsp).max() < 1e-4
    assert np.abs(keras_nsp).max() > 1e-3  # a real head, not zeros


def _same_weights(a, b) -> None:
    want = {w.path: w.numpy() for w in a.weights}
    got = {w.path: w.numpy() for w in b.weights}
    assert want.keys() == got.keys()
    for path, value in want.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


@pytest.mark.parametrize("case", ["bert", "roberta-trained", "bart-trained",
                                  "roberta-bartvocab", "bart-bartvocab"])
def test_export_reads_back_into_the_same_keras_backbone(exported, families, case):
    """korlm.modeling.hf_import inverts the export mapping: every backbone weight comes back bit
    for bit (both position offsets: [PAD]=0 and <pad>=1), and the export dir serves as a
    checkpoint (checkpoint_info)."""
    from korlm.modeling import hf_import

    paths = ({"ckpt": exported["ckpt"], "out": exported["out"]} if case == "bert"
             else families[case])
    info = checkpoint_info(paths["out"])
    original = checkpoint_info(paths["ckpt"])
    assert info["source"] == hf_import.SOURCE and info["model"] == original["model"]
    assert (info["vocab_size"], info["max_seq_length"]) == (original["vocab_size"],
                                                            original["max_seq_length"])
    _same_weights(load_backbone(paths["ckpt"]), load_backbone(paths["out"]))
    fresh = load_backbone(paths["out"], load_weights=False)
    assert fresh.get_config()["num_layers"] == load_backbone(paths["ckpt"]).num_layers


def test_export_that_keras_hub_cannot_compute_exactly_is_refused(exported, tmp_path):
    from korlm.modeling import hf_import

    out = tmp_path / "hf"
    shutil.copytree(exported["out"], out)
    config = json.loads((out / "config.json").read_text())
    config["hidden_act"] = "relu"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(KorlmError, match="hidden_act = 'relu'"):
        load_backbone(str(out))
    with open(os.path.join(exported["out"], "config.json"), encoding="utf-8") as f:
        config["hidden_act"] = json.load(f)["hidden_act"]
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(KorlmError, match="model.safetensors cannot be read"):
        load_backbone(str(out))
    with pytest.raises(KorlmError, match="neither a korlm checkpoint nor"):
        hf_import.export_info(str(tmp_path))


def test_exporting_an_export_is_refused(exported, tmp_path):
    with pytest.raises(KorlmError, match="is a Hugging Face export"):
        export_checkpoint(exported["out"], exported["out"], str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()


def test_cli_export_with_a_report_ships_model_index_and_images(exported, tmp_path, capsys):
    """`korlm export --results report/results.md`: results.json beside it gives the
    card's model-index (read back by huggingface_hub), the PNGs travel under report/."""
    import re

    from huggingface_hub import ModelCard

    from korlm.cli import main
    from korlm.evaluation.report import build_report

    results = tmp_path / "results" / "nsmc"
    results.mkdir(parents=True)
    (results / "metrics.json").write_text(json.dumps(
        {"task": "nsmc", "task_type": "classification", "checkpoint": "step-000040", "step": 40,
         "random_init": False, "metrics": {"accuracy": 0.61234}, "split_note": "",
         "splits": {"test": {"file": "data/nsmc/ratings_test.txt"}}}), encoding="utf-8")
    build_report([str(tmp_path / "results")], str(tmp_path / "report"), references=[])
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", exported["ckpt"], "--tokenizer", exported["tok"],
                 "--output", str(out),
                 "--results", str(tmp_path / "report" / "results.md")]) in (0, None)
    text = (out / "README.md").read_text(encoding="utf-8")
    [result] = ModelCard(text).data.eval_results
    assert (result.dataset_type, result.dataset_split, result.metric_value) == ("e9t/nsmc", "test", 61.23)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["report/nsmc_accuracy.png"] and (out / links[0]).is_file()
