"""The Hub card's metadata: model-index written and read back through huggingface_hub's
own classes, the Korean-paper table, and report image links that resolve."""

from __future__ import annotations

import json
import re

import pytest

from korlm.evaluation.report import build_report
from korlm.hub.model_card import model_card, percent

BERT_CONFIG = {"model_type": "bert", "vocab_size": 1000, "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
               "max_position_embeddings": 64, "hidden_act": "gelu"}


def _record(task, task_type, checkpoint, metrics, test_file, split_note="", rows=(100, 100)):
    return {"task": task, "task_type": task_type, "checkpoint": checkpoint,
            "step": None if checkpoint == "random-init" else 2,
            "random_init": checkpoint == "random-init", "metrics": metrics,
            "split_note": split_note, "fine_tune": {"seed": 0},
            "splits": {"test": {"file": f"/data/{test_file}", "used": rows[0], "rows": rows[1]}}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A real ``korlm report`` folder over the metrics.json files evaluate writes."""
    root = tmp_path_factory.mktemp("card")
    records = [
        _record("nsmc", "classification", "step-000002", {"accuracy": 0.896149}, "nsmc/ratings_test.txt"),
        _record("nsmc", "classification", "random-init", {"accuracy": 0.5}, "nsmc/ratings_test.txt"),
        _record("klue-sts", "regression", "step-000002",
                {"pearson": 0.81234, "spearman": None, "f1_at_threshold": 0.7},
                "klue/klue-sts-v1.1_dev.json", "scored on the official dev set"),
        _record("korsts", "regression", "step-000002", {"spearman": 0.5, "pearson": 0.51},
                "korsts/sts-test.tsv", rows=(1000, 1379)),
        _record("chatbot", "pair-classification", "step-000002", {"accuracy": 0.75},
                "chatbot-data/ChatbotData.csv", "train/dev/test derived from ChatbotData.csv"),
    ]
    for i, rec in enumerate(records):
        folder = root / "results" / f"{i}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(rec), encoding="utf-8")
    build_report([str(root / "results")], str(root / "report"))
    return root / "report"


def _card(report, images):
    return model_card(model_name="korlm-test", license="apache-2.0", config=BERT_CONFIG,
                      info={"size": "tiny", "step": 2}, num_parameters=1234, mask_token="[MASK]",
                      results_markdown=(report / "results.md").read_text(encoding="utf-8"),
                      corpus_stats=None, family="bert",
                      results=json.loads((report / "results.json").read_text(encoding="utf-8")),
                      checkpoint="step-000002", images=images)


def test_model_index_reads_back_through_huggingface_hub(report):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text = _card(report, {})
    card = ModelCard(text)
    assert card.data.datasets == ["e9t/nsmc", "klue/klue"]  # KorSTS: no confirmed Hub id
    got = {(r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
           for r in card.data.eval_results}
    assert got == {("e9t/nsmc", None, "test", "accuracy"): 89.61,
                   ("klue/klue", "sts", "validation", "pearsonr"): 81.23,
                   ("klue/klue", "sts", "validation", "f1"): 70.0,  # spearman undefined: left out
                   ("korsts", None, "test (korlm sample: 1000 of 1379 rows)", "spearmanr"): 50.0,
                   ("korsts", None, "test (korlm sample: 1000 of 1379 rows)", "pearsonr"): 51.0,
                   ("chatbot", None, "ChatbotData.csv (korlm-derived part)", "accuracy"): 75.0}
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}
    name, again = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "korlm-test" and len(again) == 6
    # the Korean-paper table: x100, two decimals, the baseline beside it
    assert "| **step-000002** (this model) | 75.00 | 70.00 | 81.23 | n/a | 51.00 | 50.00 | 89.61 |" in text
    assert "| random-init | — | — | — | — | — | — | 50.00 |" in text
    assert "| KoBERT (external) | — | — | — | — | — | 81.59 | 89.59 |" in text
    assert "- klue-sts: validation; scored on the official dev set\n" in text
    assert percent(0.896149) == "89.61"


def test_report_images_are_linked_only_where_the_export_ships_them(report):
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "nsmc_accuracy.png" in pngs
    without = _card(report, {})
    assert ".png" not in without
    shipped = _card(report, {name: f"report/{name}" for name in pngs})
    assert set(re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", shipped)) == {(n, f"report/{n}") for n in pngs}


def test_a_card_without_a_report_row_for_the_checkpoint_has_no_model_index(report):
    from huggingface_hub import ModelCard

    text = model_card(model_name="korlm-test", license="apache-2.0", config=BERT_CONFIG,
                      info={}, num_parameters=1, mask_token="[MASK]", results_markdown=None,
                      corpus_stats=None, family="bert",
                      results=json.loads((report / "results.json").read_text(encoding="utf-8")),
                      checkpoint="step-000009")
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index" not in text
    assert card.data.language == ["ko"] and card.data.pipeline_tag == "fill-mask"
