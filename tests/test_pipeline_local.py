"""End to end: the whole DAG through kfp.local with the tiniest config, then single
steps re-run from the CLI on that run's artifacts."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SENTINEL_TOKEN = "hf_korlmTestSentinelToken0123456789"


def korlm(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "korlm.cli", *args], capture_output=True,
                          text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "HF_TOKEN": SENTINEL_TOKEN}
    proc = korlm("pipeline", "run", "--config", "configs/tiny.yaml",
                 "--set", f"run.output_root={root}", "--set", "run.id=e2e", env=env)
    return root / "e2e", proc.stdout + proc.stderr


def test_every_step_has_its_folder(run_dir):
    path, _ = run_dir
    for step in ("clean", "vocab", "pretrain-data", "pretrain", "report", "export", "push"):
        assert (path / step).is_dir(), step
    stats = json.loads((path / "clean" / "stats.json").read_text())
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    assert (path / "vocab" / "tokenizer.json").exists()
    assert json.loads((path / "pretrain-data" / "metadata.json").read_text())["num_examples"] > 0
    ckpts = json.loads((path / "pretrain" / "checkpoints.json").read_text())
    assert [c["step"] for c in ckpts] == [10, 20]
    assert (path / "export" / "model.safetensors").exists()
    assert json.loads((path / "push" / "push_plan.json").read_text())["dry_run"] is True
    # the pipeline's own manifest (what a Vertex/KFP run leaves for run-step) points at the same artifacts
    manifest = json.loads((path / "manifest" / "outputs.json").read_text())["outputs"]
    for step in ("clean", "vocab", "pretrain-data", "pretrain", "report", "export"):
        assert os.path.realpath(manifest[step]) == os.path.realpath(path / step), step
    assert (path / "manifest" / "config.yaml").exists()


def test_report_has_checkpoints_and_baseline(run_dir):
    path, output = run_dir
    md = (path / "report" / "results.md").read_text()
    for row in ("| step-000010 |", "| step-000020 |", "| random-init |", "| bag-of-words |"):
        assert row in md
    assert "nsmc/accuracy" in md
    assert "nsmc/accuracy" in output  # the table is printed at the end
    assert sorted(os.listdir(path / "evaluate")) == ["random-init", "step-000010", "step-000020"]


def test_token_never_leaks(run_dir):
    path, output = run_dir
    assert SENTINEL_TOKEN not in output
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert SENTINEL_TOKEN.encode() not in f.read(), os.path.join(dirpath, name)


def test_single_steps_rerun_from_cli(run_dir, tmp_path):
    path, _ = run_dir
    # vocab from the run's corpus: same size and stats; the token set agrees up to the
    # HF trainer's hash-order tie-breaking at the cutoff (huggingface/tokenizers#1794)
    korlm("vocab", "--config", "configs/tiny.yaml", "--corpus", str(path / "clean"),
          "--output", str(tmp_path / "vocab"))
    again = (tmp_path / "vocab" / "vocab.txt").read_text().splitlines()
    first = (path / "vocab" / "vocab.txt").read_text().splitlines()
    assert len(again) == len(first) and again[:5] == first[:5]
    assert len(set(again) & set(first)) >= 0.99 * len(first)
    s1 = json.loads((tmp_path / "vocab" / "vocab_stats.json").read_text())
    s2 = json.loads((path / "vocab" / "vocab_stats.json").read_text())
    assert s1["num_training_sentences"] == s2["num_training_sentences"]
    # pretrain-data from the run's corpus and tokenizer reproduces the run's shards
    korlm("pretrain-data", "--config", "configs/tiny.yaml", "--corpus", str(path / "clean"),
          "--tokenizer", str(path / "vocab"), "--output", str(tmp_path / "examples"))
    m1 = json.loads((tmp_path / "examples" / "metadata.json").read_text())
    m2 = json.loads((path / "pretrain-data" / "metadata.json").read_text())
    assert m1["num_examples"] == m2["num_examples"] and m1["num_tokens"] == m2["num_tokens"]
    # clean from the config's inputs reproduces the run's stats
    korlm("clean", "--config", "configs/tiny.yaml", "--output", str(tmp_path / "clean"))
    a = json.loads((tmp_path / "clean" / "stats.json").read_text())
    b = json.loads((path / "clean" / "stats.json").read_text())
    for key in ("input_records", "kept_records", "rejected_records", "sentences"):
        assert a[key] == b[key], key
    # report from the run's evaluations
    korlm("report", "--results", str(path / "evaluate"), "--output", str(tmp_path / "report"))
    assert "random-init" in (tmp_path / "report" / "results.md").read_text()


def test_existing_run_id_is_refused(run_dir):
    path, _ = run_dir
    proc = korlm("pipeline", "run", "--config", "configs/tiny.yaml",
                 "--set", f"run.output_root={path.parent}", "--set", "run.id=e2e", check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr


def test_evaluate_export_push_from_cli(run_dir, tmp_path):
    path, _ = run_dir
    korlm("evaluate", "--config", "configs/tiny.yaml", "--checkpoint",
          str(path / "pretrain" / "checkpoints" / "step-000020"), "--tokenizer", str(path / "vocab"),
          "--task", "nsmc", "--output", str(tmp_path / "ev"), "--max-train-examples", "50")
    rec = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rec["checkpoint"] == "step-000020" and rec["num_train"] == 50
    assert 0.0 <= rec["metrics"]["accuracy"] <= 1.0
    korlm("export", "--checkpoint", str(path / "pretrain"), "--tokenizer", str(path / "vocab"),
          "--output", str(tmp_path / "hf"), "--results", str(path / "report" / "results.md"))
    assert "random-init" in (tmp_path / "hf" / "README.md").read_text()
    korlm("push", "--model", str(tmp_path / "hf"), "--repo-id", "me/model",
          "--output", str(tmp_path / "plan"))
    plan = json.loads((tmp_path / "plan" / "push_plan.json").read_text())
    assert plan["dry_run"] is True and {f["path"] for f in plan["files"]} >= {
        "config.json", "model.safetensors", "tokenizer.json", "README.md"}


def test_run_step_reruns_one_component_from_an_earlier_run_and_chains(run_dir):
    path, _ = run_dir
    root = path.parent
    # ablation: a smaller vocab from the same corpus, as its own run
    korlm("pipeline", "run-step", "vocab", "--from-run", str(path), "--run-id", "vocab-1500",
          "--set", "vocab.vocab_size=1500", "--set", f"run.output_root={root}")
    rerun = root / "vocab-1500"
    stats = json.loads((rerun / "vocab" / "vocab_stats.json").read_text())
    assert stats["vocab_size"] == 1500
    summary = json.loads((rerun / "outputs.json").read_text())
    assert summary["from_run"] == str(path) and summary["step"] == "vocab"
    assert summary["outputs"]["clean"] == str(path / "clean")  # reused, not re-run
    assert summary["outputs"]["vocab"] == str(rerun / "vocab")
    # chained: pretraining data from the re-run's vocab and the first run's corpus
    korlm("pipeline", "run-step", "pretrain-data", "--from-run", str(rerun), "--run-id", "data-1500",
          "--set", f"run.output_root={root}")
    meta = json.loads((root / "data-1500" / "pretrain-data" / "metadata.json").read_text())
    assert meta["vocab_size"] == 1500 and meta["num_examples"] > 0
    # the same one-step pipeline compiles for a cluster
    korlm("pipeline", "run-step", "pretrain", "--from-run", str(root / "data-1500"),
          "--compile-only", str(root / "pretrain-step.yaml"))
    spec = (root / "pretrain-step.yaml").read_text()
    assert "importer" in spec and str(root / "data-1500" / "pretrain-data") in spec
