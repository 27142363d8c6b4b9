"""Each KFP component's function called directly, as a task would run it: temporary
artifact paths for its Inputs and Outputs, small real inputs (a slice of the bundled
reviews, a tiny BERT trained for two steps), the parameters as the pipeline passes them
(a section's dict through ``section_params``). The kfp.local tests run the same functions
inside the whole DAG; these fail closer to the step that broke, in seconds.

One chain (clean -> vocab -> pretrain-data -> pretrain) is built once for the module and
the later components read its artifacts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REVIEWS = REPO / "data" / "sample" / "raw" / "movie_reviews.tsv"
EVAL_DIR = str(REPO / "data" / "sample" / "eval")
FINE_TUNE = {"max_train_examples": 24, "max_eval_examples": 8, "epochs": 1, "batch_size": 8,
             "max_seq_length": 32}


class Artifact:
    """What KFP hands a component: a local ``path``, its ``uri``, a ``metadata`` dict, and
    for Metrics ``log_metric``."""

    def __init__(self, path: Path, uri: str | None = None):
        self.path = str(path)
        self.uri = uri or str(path)
        self.metadata: dict = {}
        self.metrics: dict = {}

    def log_metric(self, key: str, value) -> None:
        self.metrics[key] = value


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from components.clean import clean
    from components.pretrain import pretrain
    from components.pretrain_data import pretrain_data
    from components.vocab import vocab

    root = tmp_path_factory.mktemp("components")
    with open(REVIEWS, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:400]
    raw = root / "reviews.tsv"
    with open(raw, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    art = {name: Artifact(root / name) for name in
           ("corpus", "clean_stats", "tokenizer", "vocab_stats", "examples", "run")}
    from kfp.dsl import Metrics

    # KFP's own Metrics class: its metadata is what the Vertex AI / KFP UIs read
    art["train_metrics"] = Metrics(name="metrics", uri=str(root / "train_metrics"), metadata={})
    clean([{"path": str(raw), "field": "review"}], {"sentence_splitter": "regex"},
          art["corpus"], art["clean_stats"])
    vocab(art["corpus"], {"vocab_size": 1000}, art["tokenizer"], art["vocab_stats"])
    pretrain_data(art["corpus"], art["tokenizer"], {"max_seq_length": 32, "num_shards": 1},
                  art["examples"])
    art["steps"] = pretrain(art["examples"], art["tokenizer"],
                            {"size": "tiny", "steps": 2, "checkpoint_every": 1, "batch_size": 8,
                             "warmup_steps": 0, "log_every": 1, "progress": "lines"}, art["run"],
                            art["train_metrics"])
    art["root"] = root
    return art


def test_clean_writes_the_corpus_and_logs_its_counts(chain):
    corpus, stats = chain["corpus"], chain["clean_stats"]
    assert any(name.startswith("part-") for name in os.listdir(corpus.path))
    assert stats.metrics["input_records"] == 400
    assert stats.metrics["input_records"] == stats.metrics["kept_records"] + stats.metrics["rejected_records"]
    assert corpus.metadata["kept_records"] == stats.metrics["kept_records"] > 0


def test_vocab_writes_the_tokenizer_and_its_statistics(chain):
    tokenizer, stats = chain["tokenizer"], chain["vocab_stats"]
    assert {"tokenizer.json", "vocab.txt", "vocab_stats.json"} <= set(os.listdir(tokenizer.path))
    assert tokenizer.metadata == {"vocab_size": 1000, "algorithm": "wordpiece", "pre_tokenizer": "none"}
    assert 0 <= stats.metrics["unk_rate"] < 0.05 and stats.metrics["vocab_size"] == 1000


def test_pretrain_data_writes_shards_and_metadata(chain):
    examples = chain["examples"]
    meta = json.loads((Path(examples.path) / "metadata.json").read_text(encoding="utf-8"))
    assert examples.metadata["num_examples"] == meta["num_examples"] > 8
    assert examples.metadata["max_seq_length"] == 32 and examples.metadata["objective"] == "mlm"
    assert [n for n in os.listdir(examples.path) if n.endswith(".tfrecord")]


def test_pretrain_returns_the_checkpoint_steps_it_wrote(chain):
    from korlm.modeling.checkpoints import checkpoint_path

    assert chain["steps"] == [1, 2]
    assert chain["run"].metadata == {"checkpoints": [1, 2], "model": None, "size": "tiny"}
    for step in chain["steps"]:
        assert (Path(checkpoint_path(chain["run"].path, step)) / "korlm_checkpoint.json").exists()
    log = [json.loads(line) for line in
           (Path(chain["run"].path) / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    figures = chain["train_metrics"].metadata
    assert figures["steps"] == 2 and figures["final_loss"] == log[-1]["loss"]
    assert figures["final_mlm_accuracy"] == log[-1]["mlm_accuracy"]
    assert figures["final_tokens_per_second"] == log[-1]["tokens_per_second"] > 0
    assert figures["mean_tokens_per_second"] == log[1]["tokens_per_second"]  # first window dropped


@pytest.mark.parametrize("random_init", [False, True])
def test_evaluate_scores_a_checkpoint_or_random_init(chain, random_init, tmp_path):
    from kfp.dsl import ClassificationMetrics, Metrics

    from components.evaluate import evaluate

    results = Artifact(tmp_path / "results")
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    matrix = ClassificationMetrics(name="confusion_matrix", uri=str(tmp_path / "cm"), metadata={})
    evaluate(chain["run"], chain["tokenizer"], 2, ["nsmc"], EVAL_DIR, random_init,
             FINE_TUNE, results, metrics, matrix)
    record = json.loads((tmp_path / "results" / "nsmc" / "metrics.json").read_text(encoding="utf-8"))
    assert record["random_init"] is random_init
    assert results.metadata == {"checkpoint": "random-init" if random_init else "step-000002",
                                "step": None if random_init else 2}
    assert 0 <= metrics.metadata["nsmc/accuracy"] <= 1
    # the confusion matrix as the UIs read it: label names, gold rows, counts summing to
    # the scored examples, its diagonal the accuracy
    assert record["confusion_matrix"]["labels"] == ["0", "1"]
    drawn = matrix.metadata["confusionMatrix"]
    assert matrix.metadata["task"] == "nsmc"
    assert [spec["displayName"] for spec in drawn["annotationSpecs"]] == ["0", "1"]
    rows = [row["row"] for row in drawn["rows"]]
    assert rows == record["confusion_matrix"]["matrix"]
    assert sum(map(sum, rows)) == record["num_eval"] == 8
    assert (rows[0][0] + rows[1][1]) / 8 == pytest.approx(record["metrics"]["accuracy"])
    # random init brings the bag-of-words baseline (evaluate.baselines, on by default)
    bow = tmp_path / "results" / "nsmc" / "bag-of-words" / "metrics.json"
    assert bow.exists() is random_init
    assert ("bag-of-words/nsmc/accuracy" in metrics.metadata) is random_init


def test_evaluate_component_fine_tunes_every_seed(chain, tmp_path):
    from kfp.dsl import ClassificationMetrics, Metrics

    from components.evaluate import evaluate

    results = Artifact(tmp_path / "results")
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    matrix = ClassificationMetrics(name="confusion_matrix", uri=str(tmp_path / "cm"), metadata={})
    evaluate(chain["run"], chain["tokenizer"], 2, ["nsmc"], EVAL_DIR, False,
             {**FINE_TUNE, "seeds": 2.0, "seed": 4}, results, metrics, matrix)  # KFP: doubles
    records = [json.loads((tmp_path / "results" / "nsmc" / f"seed-{s}" / "metrics.json").read_text())
               for s in (4, 5)]
    assert [r["fine_tune"]["seed"] for r in records] == [4, 5]
    assert metrics.metadata["nsmc/accuracy"] == pytest.approx(
        sum(r["metrics"]["accuracy"] for r in records) / 2)
    assert not (tmp_path / "results" / "nsmc" / "bag-of-words").exists()  # with random init only


def test_finetune_keeps_a_servable_model_and_its_card(chain, tmp_path):
    from components.finetune import finetune
    from korlm.evaluation.finetune import load_finetuned

    model, metrics, card = Artifact(tmp_path / "model"), Artifact(tmp_path / "m"), Artifact(tmp_path / "card.md")
    finetune(chain["run"], chain["tokenizer"], 0, "nsmc", EVAL_DIR, FINE_TUNE, model, metrics, card)
    assert model.metadata["task"] == "nsmc" and model.metadata["step"] == 2  # step 0: the last
    assert "nsmc/accuracy" in metrics.metrics
    assert "| accuracy |" in Path(card.path).read_text(encoding="utf-8")
    labels = load_finetuned(model.path).classify(["정말 재밌어요"])
    assert len(labels) == 1


def test_export_then_push_plan(chain, tmp_path):
    import re

    from huggingface_hub import ModelCard

    from components.export import export
    from components.push import push
    from korlm.evaluation.report import build_report

    # a real report over what evaluate writes for the exported checkpoint
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text(json.dumps(
        {"task": "nsmc", "task_type": "classification", "checkpoint": "step-000002", "step": 2,
         "random_init": False, "metrics": {"accuracy": 0.5}, "split_note": "",
         "splits": {"test": {"file": f"{EVAL_DIR}/nsmc/ratings_test.txt"}}}), encoding="utf-8")
    report = tmp_path / "report"
    build_report([str(tmp_path / "results")], str(report), references=[])
    hf_model = Artifact(tmp_path / "hf")
    export(chain["run"], chain["tokenizer"], Artifact(report), {"model_name": "korlm-test"}, hf_model)
    assert hf_model.metadata["checkpoint"].endswith("step-000002")
    assert {"config.json", "model.safetensors", "README.md", "report/nsmc_accuracy.png"} \
        <= set(hf_model.metadata["files"])
    text = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "| step-000002 | 0.5000 |" in text  # the report's own table
    assert "| **step-000002** (this model) | 50.00 |" in text  # as Korean papers print it
    card = ModelCard(text)  # huggingface_hub's own parser and model-index reader
    assert card.data.datasets == ["e9t/nsmc"]
    [result] = card.data.eval_results
    assert (result.dataset_type, result.dataset_split, result.metric_type, result.metric_value) \
        == ("e9t/nsmc", "test", "accuracy", 50.0)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["report/nsmc_accuracy.png"]
    assert all((tmp_path / "hf" / link).is_file() for link in links)  # they resolve

    plan = Artifact(tmp_path / "plan")
    push(hf_model, {"repo_id": "korlm/korlm-test", "dry_run": True}, "run-1", "abc123", plan)
    assert plan.metadata["dry_run"] is True and plan.metadata["repo_id"] == "korlm/korlm-test"
    saved = json.loads((tmp_path / "plan" / "push_plan.json").read_text(encoding="utf-8"))
    assert "model.safetensors" in json.dumps(saved)


def test_tune_runs_one_trial_and_summarises_it(chain, tmp_path):
    from components.tune import tune

    study, summary, metrics = Artifact(tmp_path / "study"), Artifact(tmp_path / "s.md"), Artifact(tmp_path / "m")
    tune_params = {"n_trials": 1, "pruner": "none", "search_space": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}
    tune(chain["run"], chain["tokenizer"], 0, "nsmc", EVAL_DIR, tune_params, FINE_TUNE, 0, False,
         study, summary, metrics)
    assert metrics.metrics["trials_complete"] == 1 and "nsmc/best_dev_accuracy" in metrics.metrics
    assert "learning_rate" in study.metadata["best_params"]
    assert (tmp_path / "study" / "best_params.yaml").exists()
    assert "learning_rate" in Path(summary.path).read_text(encoding="utf-8")


def test_ablation_merge_folds_arms_into_one_comparison(chain, tmp_path):
    from components.ablation import ablation_merge
    from korlm.evaluation.report import build_report

    for name, acc in (("a", 0.6), ("b", 0.7)):
        results = tmp_path / f"eval-{name}" / "nsmc"
        results.mkdir(parents=True)
        (results / "metrics.json").write_text(json.dumps(
            {"task": "nsmc", "checkpoint": "step-000002", "step": 2, "random_init": False,
             "metrics": {"accuracy": acc}}), encoding="utf-8")
        build_report([str(tmp_path / f"eval-{name}")], str(tmp_path / f"report-{name}"), references=[])
    first, second = Artifact(tmp_path / "c1"), Artifact(tmp_path / "c2")
    ablation_merge(Artifact(tmp_path / "report-a"), chain["tokenizer"], "wp-a", first)
    ablation_merge(Artifact(tmp_path / "report-b"), chain["tokenizer"], "wp-b", second, previous=first)
    assert second.metadata == {"arms": ["wp-a", "wp-b"], "rows": 2}
    assert "wp-b" in (tmp_path / "c2" / "results.md").read_text(encoding="utf-8")


def test_run_manifest_names_every_output(tmp_path):
    from components.manifest import run_manifest

    ins = {name: Artifact(tmp_path / name, uri=f"gs://bucket/root/{name}") for name in
           ("corpus", "tokenizer", "examples", "run", "report", "hf_model")}
    manifest = Artifact(tmp_path / "manifest")
    run_manifest(ins["corpus"], ins["tokenizer"], ins["examples"], ins["run"], ins["report"],
                 ins["hf_model"], "run-7", "pretrain:\n  steps: 2\n", manifest)
    outputs = json.loads((tmp_path / "manifest" / "outputs.json").read_text(encoding="utf-8"))
    assert outputs == {"run_id": "run-7", "outputs": {
        "clean": "gs://bucket/root/corpus", "vocab": "gs://bucket/root/tokenizer",
        "pretrain-data": "gs://bucket/root/examples", "pretrain": "gs://bucket/root/run",
        "report": "gs://bucket/root/report", "export": "gs://bucket/root/hf_model"}}
    assert (tmp_path / "manifest" / "config.yaml").read_text(encoding="utf-8") == "pretrain:\n  steps: 2\n"
    assert manifest.metadata["run_id"] == "run-7"
