"""vocab special-token families: BERT ([PAD] [UNK] [CLS] [SEP] [MASK]) and BART/RoBERTa
(<s> <pad> </s> <unk> <mask>, fairseq order)."""

from __future__ import annotations

import json

import pytest

from korlm.config import load as load_config
from korlm.errors import KorlmError
from korlm.tokenizer import tokenization
from korlm.tokenizer.vocab import build_vocab
from tests.conftest import write_review_corpus

BART = {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": 4}
BERT = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_review_corpus(tmp_path_factory.mktemp("families") / "corpus", 1500)


@pytest.fixture(scope="module", params=["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe"])
def bart(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    stats = build_vocab(str(corpus), str(out), algorithm=request.param, vocab_size=2500, special_tokens="bart")
    return out, stats


def test_bart_family_ids_and_files(bart):
    out, stats = bart
    tok = tokenization.load(str(out))
    assert [tok.hf.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tok.special_tokens == "bart" and tok.special_token_ids() == BART
    assert stats["special_tokens_family"] == "bart" and stats["special_tokens"] == BART
    assert stats["vocab_size"] == 2500
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["korlm_special_tokens"] == "bart"
    assert (config["bos_token"], config["cls_token"], config["eos_token"], config["sep_token"]) == (
        "<s>", "<s>", "</s>", "</s>")
    assert "token_type_ids" not in config["model_input_names"]
    # the family survives the Beam round trip and is found from the vocab when not stored
    assert tokenization.KorlmTokenizer.from_json(tok.to_json()).special_token_ids() == BART
    assert tokenization.KorlmTokenizer(tok.hf).special_token_ids() == BART


def test_bart_post_processor_and_transformers(bart):
    from transformers import AutoTokenizer

    out, _ = bart
    tok = tokenization.load(str(out))
    a, b = "이 영화 정말 최고예요", "배우들이 멋져요"
    ids_a, ids_b = tok.encode_ids([a, b])
    assert tok.encode_batch([a])[0].ids == [0, *ids_a, 2]
    pair = tok.encode_batch([(a, b)])[0]
    assert pair.ids == [0, *ids_a, 2, 2, *ids_b, 2] and set(pair.type_ids) == {0}
    auto = AutoTokenizer.from_pretrained(str(out))
    assert auto(a)["input_ids"] == [0, *ids_a, 2]
    assert (auto.cls_token_id, auto.pad_token_id, auto.sep_token_id, auto.unk_token_id, auto.mask_token_id,
            auto.bos_token_id, auto.eos_token_id) == (0, 1, 2, 3, 4, 0, 2)
    assert tok.decode([0, *ids_a, 2, 1]) == a


def test_default_family_is_bert(corpus, tmp_path):
    stats = build_vocab(str(corpus), str(tmp_path / "tok"), algorithm="sentencepiece-bpe", vocab_size=2500)
    assert stats["special_tokens_family"] == "bert" and stats["special_tokens"] == BERT
    assert tokenization.load(str(tmp_path / "tok")).special_token_ids() == BERT


def test_config_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("vocab:\n  special_tokens: bart\n", encoding="utf-8")
    assert load_config(str(path)).vocab.special_tokens == "bart"
    path.write_text("vocab:\n  special_tokens: gpt2\n", encoding="utf-8")
    with pytest.raises(KorlmError, match="special_tokens"):
        load_config(str(path))


def test_cli_flag(corpus, tmp_path):
    from korlm.cli import main

    out = tmp_path / "cli"
    assert main(["vocab", "--corpus", str(corpus), "--output", str(out), "--algorithm", "sentencepiece-bpe",
                 "--vocab-size", "2500", "--special-tokens", "bart"]) == 0
    stats = json.loads((out / "vocab_stats.json").read_text())
    assert stats["special_tokens_family"] == "bart" and stats["special_tokens"] == BART
