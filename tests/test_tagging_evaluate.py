"""Token classification end to end on tiny real checkpoints: ``korlm evaluate --task
klue-ner`` (a KLUE-format file written from the hand-made sample, since the shared data
kit is not on a fresh clone) on a checkpoint and its random-init twin, ``korlm report``
with the two F1 columns and the external KLUE rows, a YAML-declared CoNLL tagger with
all-subword labelling, and the RoBERTa and BART heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from korlm.errors import KorlmError
from korlm.evaluation import evaluate, heads, tagging
from tests.test_pretrain import build_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "ner"
FT = dict(max_train_examples=16, max_eval_examples=8, epochs=1, batch_size=8,
          max_seq_length=32, learning_rate=1e-3, seed=0)
# Naver NER types -> KLUE-NER types (the rest become O)
TO_KLUE = {"PER": "PS", "LOC": "LC", "ORG": "OG", "DAT": "DT", "TIM": "TI", "NUM": "QT"}


def write_klue_ner(path: Path) -> Path:
    """The hand-made Naver-style sample in KLUE-NER's character format: ``##`` header
    comments, ``## guid<TAB>tagged sentence``, one ``character<TAB>tag`` per line."""
    spec = tagging.TaggingSpec(outside="-", tag_position="suffix")
    out = ["## 토큰, 띄어쓰기 구분자 : \\t", "## 주석 : ##", "## 컬럼명 : CHAR\tNE_TAG", ""]
    for n, name in enumerate(("naver_style_train.txt", "naver_style_test.txt")):
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        texts, labels, _ = tagging.read_conll(lines, name, spec, 1, 2)
        for k, (text, label) in enumerate(zip(texts, labels, strict=True)):
            tags = ["O"] * len(text)
            for (s, e), tag in zip(label["units"], label["tags"], strict=True):
                prefix, kind = tagging.split_tag(tag)
                tag = f"{prefix}-{TO_KLUE[kind]}" if kind in TO_KLUE else "O"
                tags[s:e] = tagging.expand(tag, e - s, "BIO")
            out.append(f"## klue-ner-test_{n}{k:03d}\t{text}")
            out += [f"{c}\t{t}" for c, t in zip(text, tags, strict=True)]
            out.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tokenizer and tiny BERT, RoBERTa and BART checkpoints (fresh weights: these
    tests check plumbing and scoring, not learning)."""
    from tokenizers import Tokenizer

    from korlm.modeling.build import build_pretraining_task
    from korlm.modeling.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("tagging")
    tokenizer_dir = build_tokenizer(root / "tokenizer", num_sentences=300, vocab_size=600)
    vocab_size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    checkpoints = {}
    for model in ("bert", "roberta", "bart"):
        task = build_pretraining_task(model, "tiny", vocab_size, 32)
        checkpoints[model] = root / model
        save_checkpoint(task, str(checkpoints[model]), {
            "model": model, "size": "tiny", "vocab_size": vocab_size, "max_seq_length": 32,
            "step": 5})
    write_klue_ner(root / "data" / "klue" / "klue-ner-v1.1_dev.tsv")
    return root, tokenizer_dir, checkpoints


def test_klue_ner_checkpoint_random_init_and_report(base, tmp_path, capsys):
    from korlm.cli import main

    root, tokenizer_dir, checkpoints = base
    flags = ["--max-train-examples", "16", "--max-eval-examples", "8", "--epochs", "1",
             "--batch-size", "8", "--max-seq-length", "32"]
    for name, extra in (("ckpt", []), ("random", ["--random-init"])):
        code = main(["evaluate", "--checkpoint", str(checkpoints["bert"]), "--tokenizer",
                     str(tokenizer_dir), "--task", "klue-ner", "--data-dir",
                     str(root / "data"), "--output", str(tmp_path / name), *flags, *extra])
        assert code == 0
    record = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert record["task"] == "klue-ner" and record["task_type"] == "token-classification"
    assert set(record["metrics"]) == {"entity_f1", "char_f1"}
    assert all(0 <= v <= 1 for v in record["metrics"].values() if v is not None)
    assert record["label_names"] == list(tagging.KLUE_LABELS)
    assert record["tagging"]["level"] == "char" and record["tagging"]["scheme"] == "BIO"
    assert record["fine_tune"]["label_all_subwords"] is False
    ceiling = record["tagging"]["alignment_ceiling"]
    assert 0 < ceiling["entity_f1"] <= 1 and set(ceiling) == {"entity_f1", "char_f1"}
    assert "derived from klue-ner-v1.1_dev.tsv (24 rows) by a fixed permutation: 17/2/5" in \
        record["split_note"]
    assert "not comparable to published KLUE-NER numbers" in record["split_note"]
    const = record["constant_baseline"]
    assert const["metrics"]["entity_f1"] == 0.0 and const["prediction"] == "O"
    assert set(record["standard_errors"]) == {"entity_f1", "char_f1"}
    assert record["standard_error_methods"]["char_f1"].startswith("bootstrap over test sentences")
    random = json.loads((tmp_path / "random" / "metrics.json").read_text())
    assert random["random_init"] is True and random["checkpoint"] == "random-init"

    capsys.readouterr()
    assert main(["report", "--results", str(tmp_path / "ckpt"), str(tmp_path / "random"),
                 "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {"klue-ner/entity_f1", "klue-ner/char_f1"} <= set(summary["columns"])
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| KLUE-BERT-base (external) |" in md and "| mBERT-base (external) |" in md
    row = next(line for line in md.splitlines() if line.startswith("| KLUE-RoBERTa-large"))
    assert "0.9186" in row and "0.8500" in row  # char F1 91.86, entity F1 85.00
    assert "github.com/KLUE-benchmark/KLUE" in md


def test_yaml_conll_tagger_with_all_subword_labelling(base, tmp_path):
    root, tokenizer_dir, checkpoints = base
    record = evaluate.evaluate_checkpoint(
        str(checkpoints["bert"]), str(tokenizer_dir), str(DATA / "naver_style.yaml"), None,
        str(tmp_path / "out"), label_all_subwords=True, **FT)
    assert record["task"] == "naver-style-ner" and record["tagging"]["level"] == "word"
    assert record["fine_tune"]["label_all_subwords"] is True
    assert set(record["metrics"]) == {"entity_f1", "entity_micro_f1", "char_f1"}
    assert record["num_train"] == 16 and record["num_eval"] == 6
    assert record["tagging"]["test_coverage"]["sentences"] == 6
    # words never share a token: perfect token predictions score 1 (unless truncated)
    assert record["tagging"]["alignment_ceiling"]["entity_f1"] == 1.0
    assert "O" in record["label_names"] and "B-PER" in record["label_names"]
    with pytest.raises(KorlmError, match="augmentation does not apply to token classification"):
        evaluate.fine_tune(str(checkpoints["bert"]), str(tokenizer_dir),
                           str(DATA / "naver_style.yaml"), None, augment={"num_aug": 1}, **FT)


@pytest.mark.parametrize("family", ["roberta", "bart"])
def test_roberta_and_bart_taggers(base, tmp_path, family):
    """RoBERTa: a linear layer over the backbone's token states; BART: over every decoder
    state (Hugging Face has no BartForTokenClassification; BartForQuestionAnswering
    reads the decoder states the same way)."""
    root, tokenizer_dir, checkpoints = base
    tuned = evaluate.fine_tune(str(checkpoints[family]), str(tokenizer_dir),
                               str(DATA / "naver_style.yaml"), None, **FT)
    assert tuned.record["model"]["model"] == family
    assert tuned.model.output_shape[-1] == len(tuned.spec.label_names)
    assert "token_logits" in [layer.name for layer in tuned.model.layers]
    assert 0 <= tuned.record["metrics"]["char_f1"] <= 1


def test_the_token_classifier_takes_any_backbone_with_token_states():
    """KerasHub's ELECTRA backbone (a dict with ``sequence_output`` and a pooler, like
    BERT's) gets the same head, its pooler frozen: a family added later needs no new
    tagger code."""
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.ElectraBackbone(
        vocab_size=50, num_layers=1, num_heads=2, hidden_dim=8, embedding_dim=8,
        intermediate_dim=16, max_sequence_length=16)
    model = heads.build_token_classifier(backbone, num_labels=5)
    x = {"token_ids": np.ones((2, 7), "int32"), "segment_ids": np.zeros((2, 7), "int32"),
         "padding_mask": np.ones((2, 7), "int32")}
    assert model.predict(x, verbose=0).shape == (2, 7, 5)
    assert not backbone.get_layer("pooled_dense").trainable
