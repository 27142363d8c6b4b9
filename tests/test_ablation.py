"""Ablations: the comparison fold, the unrolled DAG, and (slow) a real tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from korlm import config
from korlm.errors import KorlmError
from korlm.evaluation.ablation import merge_comparison
from pipelines.compile import compile_pipeline


def _report(tmp_path, name, scores: dict[str, float], baseline: float):
    d = tmp_path / name
    d.mkdir()
    rows = [*scores, "random-init"]
    values = {row: {"nsmc/accuracy": v} for row, v in scores.items()} | {"random-init": {"nsmc/accuracy": baseline}}
    records = [{"task": "nsmc", "checkpoint": row, "step": int(row.split("-")[1]), "random_init": False,
                "metrics": {"accuracy": v}} for row, v in scores.items()]
    records.append({"task": "nsmc", "checkpoint": "random-init", "step": None, "random_init": True,
                    "metrics": {"accuracy": baseline}})
    (d / "results.json").write_text(json.dumps({
        "rows": rows + ["KLUE-RoBERTa-base (external)"], "columns": ["nsmc/accuracy"],
        "values": {**values, "KLUE-RoBERTa-base (external)": {"nsmc/accuracy": 0.9}},
        "external_rows": ["KLUE-RoBERTa-base (external)"], "records": records}))
    return d


def _vocab(tmp_path, name, unk):
    d = tmp_path / name
    d.mkdir()
    (d / "vocab_stats.json").write_text(json.dumps({
        "algorithm": "wordpiece", "pre_tokenizer": "morpheme" if "morph" in name else "none",
        "vocab_size": 2000, "unk_rate": unk, "tokens_per_eojeol": 2.3, "coverage": 0.99}))
    return d


def test_merge_folds_arms_into_one_table_with_vocab_stats_and_plots(tmp_path):
    a = merge_comparison(None, str(_report(tmp_path, "r1", {"step-000010": 0.61, "step-000020": 0.66}, 0.55)),
                         str(_vocab(tmp_path, "v1", 0.001)), "wordpiece-tiny", str(tmp_path / "c1"))
    assert [r["checkpoint"] for r in a["rows"]] == ["step-000010", "step-000020", "random-init"]
    b = merge_comparison(str(tmp_path / "c1"), str(_report(tmp_path, "r2", {"step-000010": 0.70}, 0.52)),
                         str(_vocab(tmp_path, "v2-morph", 0.0004)), "morpheme-tiny", str(tmp_path / "c2"))
    assert [(r["arm"], r["checkpoint"]) for r in b["rows"]] == [
        ("wordpiece-tiny", "step-000010"), ("wordpiece-tiny", "step-000020"), ("wordpiece-tiny", "random-init"),
        ("morpheme-tiny", "step-000010"), ("morpheme-tiny", "random-init")]
    md = (tmp_path / "c2" / "results.md").read_text()
    assert "| morpheme-tiny @ step-000010 | **0.7000** |" in md  # best score in bold
    assert "external" not in md  # reference rows stay in the per-arm reports
    assert "| morpheme-tiny | wordpiece | morpheme | 2000 | 0.0004 |" in md
    assert sorted(os.listdir(tmp_path / "c2")) == ["_SUCCESS", "comparison.json", "korlm_artifact.json",
                                                  "nsmc_accuracy.png", "results.html", "results.md"]
    with pytest.raises(KorlmError, match="appears twice"):
        merge_comparison(str(tmp_path / "c2"), str(tmp_path / "r2"), str(tmp_path / "v2-morph"),
                         "morpheme-tiny", str(tmp_path / "c3"))


def test_ablation_dag_unrolls_variants_and_sizes(tmp_path):
    conf = config.load("configs/ablation-local.yaml")
    conf = config.apply_overrides(conf, {"ablation.sizes": ["tiny", "mini"]})
    out = tmp_path / "a.yaml"
    compile_pipeline(conf, str(out))
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    pretrain = {n: t for n, t in tasks.items() if n.startswith("pretrain") and "data" not in n}
    sizes = sorted(t["inputs"]["parameters"]["params"]["runtimeValue"]["constant"]["size"] for t in pretrain.values())
    assert sizes == ["mini", "mini", "tiny", "tiny"]
    vocabs = [t["inputs"]["parameters"]["params"]["runtimeValue"]["constant"]["pre_tokenizer"]
              for n, t in tasks.items() if n.startswith("vocab")]
    assert sorted(vocabs) == ["morpheme", "none"]
    merges = [t for n, t in tasks.items() if n.startswith("ablation-merge")]
    assert len(merges) == 4
    assert sum("previous" in t["inputs"].get("artifacts", {}) for t in merges) == 3  # a fold, one chain


def test_bad_ablation_configs_are_one_line_errors():
    with pytest.raises(config.ConfigError, match="names must be unique"):
        config.validate({"ablation": {"vocab_variants": [{"name": "a"}, {"name": "a"}]}})
    with pytest.raises(config.ConfigError, match="sizes needs vocab_variants"):
        config.validate({"ablation": {"sizes": ["tiny"]}})
    with pytest.raises(config.ConfigError, match="vocab_variants.0.name"):
        config.validate({"ablation": {"vocab_variants": [{"name": "Bad Name"}]}})


@pytest.mark.slow
def test_tiny_ablation_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "korlm.cli", "pipeline", "run", "--config", "configs/ablation-local.yaml",
         "--set", f"run.output_root={tmp_path}", "--set", "run.id=abl",
         "--set", "pretrain.checkpoint_every=20"],  # one checkpoint per arm keeps CI short
        capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    comparison = json.loads((tmp_path / "abl" / "ablation" / "comparison.json").read_text())
    arms = {r["arm"] for r in comparison["rows"]}
    assert arms == {"wordpiece-tiny", "morpheme-tiny"}
    # each arm's bag-of-words row: a linear model on that arm's own tokens
    assert {(r["arm"], r["checkpoint"]) for r in comparison["rows"]} == {
        ("wordpiece-tiny", "step-000020"), ("wordpiece-tiny", "random-init"),
        ("wordpiece-tiny", "bag-of-words"), ("morpheme-tiny", "step-000020"),
        ("morpheme-tiny", "random-init"), ("morpheme-tiny", "bag-of-words")}
    assert [v["pre_tokenizer"] for v in comparison["vocab"]] == ["none", "morpheme"]
    assert (tmp_path / "abl" / "ablation" / "nsmc_accuracy.png").exists()
    assert "morpheme-tiny @ step-000020" in proc.stdout  # the comparison is printed at the end
