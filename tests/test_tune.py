"""korlm tune: Optuna studies over real fine-tuning of a tiny checkpoint, pruning, config
errors, the outputs and the KFP component."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from korlm import config
from korlm.cli import main
from korlm.errors import KorlmError
from korlm.evaluation import tune
from korlm.modeling.checkpoints import select_checkpoint
from korlm.pretrain.train import run_pretrain
from tests.test_evaluate import write_nsmc_slice
from tests.test_pretrain import build_tokenizer, write_pretraining_data

ROOT = Path(__file__).resolve().parents[1]
# Small fine-tuning budget: every trial takes a few seconds on CPU.
EVALUATE = {"max_train_examples": 64, "max_eval_examples": 32, "max_seq_length": 32,
            "batch_size": 16, "patience": 3}
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    "epochs": {"type": "int", "low": 1, "high": 2},
    "batch_size": {"type": "categorical", "choices": [8, 16]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "dropout": {"type": "float", "low": 0.0, "high": 0.2},
    "pooling": {"type": "categorical", "choices": ["cls", "mean"]},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, max_seq_length=48)
    run_pretrain(str(data_dir), str(tokenizer_dir), str(root / "run"),
                          steps=6, checkpoint_every=6, batch_size=8)
    nsmc_dir = write_nsmc_slice(root / "nsmc")
    return tokenizer_dir, root / "run", nsmc_dir


def _cli_config(tmp_path: Path, tune_section: dict) -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"evaluate": EVALUATE, "tune": tune_section}), encoding="utf-8")
    return str(path)


def test_three_trial_study_writes_every_output(setup, tmp_path, capsys):
    tokenizer_dir, run_dir, nsmc_dir = setup
    conf = _cli_config(tmp_path, {"sampler": "random", "pruner": "none", "search_space": SPACE})
    out = tmp_path / "study"
    # the run folder resolves to its last checkpoint, as `korlm export` does
    assert main(["tune", "--config", conf, "--checkpoint", str(run_dir), "--tokenizer",
                 str(tokenizer_dir), "--task", "nsmc", "--data-dir", str(nsmc_dir),
                 "--output", str(out), "--n-trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| trial | state | dev accuracy |" in printed and f"tune -> {out}" in printed

    study = json.loads((out / tune.STUDY_JSON).read_text(encoding="utf-8"))
    assert study["counts"] == {"complete": 3} and len(study["trials"]) == 3
    assert "test split is never used" in study["objective"]
    for trial in study["trials"]:
        assert set(trial["params"]) == set(SPACE)
        assert trial["state"] == "complete" and trial["duration_s"] > 0
        dev = [h["accuracy"] for h in trial["dev_history"]]
        # every epoch ran (patience 3 > epochs) and the objective is the best dev epoch
        assert len(dev) == trial["params"]["epochs"]
        assert trial["value"] == max(dev) and 0 <= trial["value"] <= 1
        assert trial["best_epoch"] == dev.index(max(dev)) + 1
    values = [t["value"] for t in study["trials"]]
    assert study["best_value"] == max(values)
    best = study["trials"][values.index(max(values))]
    assert study["best_params"] == best["params"] and study["best_trial"] == best["number"]
    # fixed settings come from the evaluate section
    assert study["fixed_settings"]["max_train_examples"] == 64
    assert "learning_rate" not in study["fixed_settings"]

    # best_params.yaml is a valid config whose evaluate section reproduces the best trial
    loaded = config.load(str(out / tune.BEST_PARAMS_YAML))
    for name, value in study["best_params"].items():
        assert getattr(loaded.evaluate, name) == (value if isinstance(value, str)
                                                  else pytest.approx(value))
    assert loaded.evaluate.max_seq_length == 32

    summary = (out / tune.SUMMARY_MD).read_text(encoding="utf-8")
    assert summary.count("| complete |") == 3 and f"**{study['best_value']:.4f}**" in summary
    importance = (out / tune.IMPORTANCE_MD).read_text(encoding="utf-8")
    assert "PED-ANOVA" in importance
    if study["importance"] is not None:  # 3 trials with different values
        assert set(study["importance"]) == set(SPACE)
        assert math.isclose(sum(study["importance"].values()), 1.0, rel_tol=1e-6)
        assert "| learning_rate |" in importance
    for png in (tune.HISTORY_PNG, tune.IMPORTANCE_PNG):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_pruner_stops_trials_after_their_first_bad_epoch(setup, tmp_path):
    tokenizer_dir, run_dir, nsmc_dir = setup
    checkpoint = select_checkpoint(str(run_dir), "last")
    # Accuracy never exceeds 1, so prune_below 1.01 marks every epoch-1 value as bad.
    settings = {"n_trials": 1, "sampler": "random", "pruner": "threshold", "prune_below": 1.01,
                "search_space": {"learning_rate": SPACE["learning_rate"],
                                 "epochs": {"type": "categorical", "choices": [3]}}}
    summary = tune.run_tuning(checkpoint, str(tokenizer_dir), str(nsmc_dir), str(tmp_path / "out"),
                              tune=settings, evaluate_params=EVALUATE, task="nsmc")
    assert summary["counts"] == {"pruned": 1} and summary["best_params"] is None
    for trial in summary["trials"]:
        assert trial["pruned_at_epoch"] == 1 and len(trial["dev_history"]) == 1  # not 3 epochs
        assert trial["value"] is None
    assert not (tmp_path / "out" / tune.BEST_PARAMS_YAML).exists()
    text = (tmp_path / "out" / tune.SUMMARY_MD).read_text(encoding="utf-8")
    assert "No trial completed." in text and text.count("pruned at epoch 1") == 1
    assert "Not computed" in (tmp_path / "out" / tune.IMPORTANCE_MD).read_text(encoding="utf-8")


def test_median_pruner_stops_a_trial_below_earlier_trials(monkeypatch, tmp_path):
    """The reporting/pruning wiring with scripted dev curves: two good trials, then a bad
    one that the median pruner stops at its first epoch."""
    from korlm.evaluation import evaluate

    curves = iter([[0.8, 0.85, 0.9], [0.7, 0.8, 0.88], [0.3, 0.9, 0.95]])
    calls = []

    def scripted_fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, *, epoch_callback,
                           epochs=1, batch_size=32, learning_rate=2e-4):
        calls.append({"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate})
        history = []
        for epoch, value in enumerate(next(curves), start=1):
            history.append({"epoch": epoch, "dev": {"accuracy": value}})
            epoch_callback(epoch, {"accuracy": value}, value)

        class Result:
            record = {"dev_history": history}
        return Result()

    monkeypatch.setattr(evaluate, "fine_tune", scripted_fine_tune)
    monkeypatch.setattr("korlm.modeling.checkpoints.checkpoint_info", lambda path: {})
    monkeypatch.setattr("korlm.modeling.checkpoints.resolve_tokenizer", lambda path, tokenizer, info=None: tokenizer)
    settings = {"n_trials": 3, "pruner": "median", "pruner_startup_trials": 2,
                "search_space": {"learning_rate": SPACE["learning_rate"]}}
    summary = tune.run_tuning("ckpt", "tok", "data", str(tmp_path / "out"), tune=settings,
                              evaluate_params={"epochs": 3, "batch_size": 4}, task="nsmc")
    states = [t["state"] for t in summary["trials"]]
    assert states == ["complete", "complete", "pruned"]
    assert summary["trials"][2]["pruned_at_epoch"] == 1
    assert summary["trials"][2]["dev_history"] == [{"epoch": 1, "accuracy": 0.3}]
    assert summary["best_value"] == 0.9 and summary["best_trial"] == 0
    assert all(c["epochs"] == 3 and c["batch_size"] == 4 for c in calls)


@pytest.mark.parametrize("section, message", [
    ({"search_space": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}},
     "unknown hyperparameter 'lr'"),
    ({"search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 2.0}}},
     "search_space.learning_rate: 2 is outside (0, 1)"),
    ({"search_space": {"warmup_ratio": {"type": "float", "low": 0.3, "high": 0.1}}},
     "low (0.3) is greater than high (0.1)"),
    ({"search_space": {"learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
     "log scale needs low > 0"),
    ({"search_space": {"epochs": {"type": "float", "low": 1, "high": 3}}},
     "search_space.epochs: is a whole number"),
    ({"search_space": {"batch_size": {"type": "categorical"}}}, "categorical needs choices"),
    ({"search_space": {"batch_size": {"type": "categorical", "choices": [16, 12.5]}}},
     "12.5 is not a valid int value"),
    ({"search_space": {}}, "needs at least one hyperparameter"),
    ({"search_space": {"pooling": {"type": "categorical", "choices": ["cls", "max"]}}},
     "search_space.pooling: 'max' is not one of auto, cls, mean, pooler"),
    ({"search_space": {"pooling": {"type": "float", "low": 0, "high": 1}}},
     "search_space.pooling: takes names"),
    ({"search_space": {"dropout": {"type": "float", "low": 0.0, "high": 1.0}}},
     "search_space.dropout: 1 is outside [0, 1)"),
    ({"pruner": "threshold"}, "pruner threshold needs prune_below"),
    ({"sampler": "grid"}, "tune.sampler"),
    ({"n_trials": 0}, "tune.n_trials"),
])
def test_config_errors_name_the_key(section, message):
    with pytest.raises(config.ConfigError, match="tune") as err:
        config.validate({"tune": section})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    tokenizer_dir, run_dir, nsmc_dir = setup
    base = ["tune", "--checkpoint", str(run_dir), "--tokenizer", str(tokenizer_dir),
            "--data-dir", str(nsmc_dir), "--output", str(tmp_path / "o")]
    cases = [(["--set", "tune.search_space={weight_decays: {type: float, low: 0, high: 1}}"],
              "unknown hyperparameter 'weight_decays'"),
             (["--task", "sst2"], "unknown task 'sst2'"),
             (["--set", "tune.metric=f1"], "tune.metric 'f1' is not a metric of task nsmc"),
             (["--storage", "nosuchdb://x"], "tune.storage 'nosuchdb://x' cannot be opened"),
             (["--report-only"], "--report-only needs tune.storage")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_parallel_workers_share_one_sqlite_study(setup, tmp_path):
    """Two processes with the same storage and study name add their trials to one study;
    --report-only then summarises all of them."""
    tokenizer_dir, run_dir, nsmc_dir = setup
    conf = _cli_config(tmp_path, {"sampler": "random", "pruner": "none", "n_trials": 1,
                                  "storage": f"sqlite:///{tmp_path / 'study.db'}",
                                  "study_name": "shared",
                                  "search_space": {"learning_rate": SPACE["learning_rate"]}})
    common = ["--config", conf, "--checkpoint", str(run_dir), "--tokenizer", str(tokenizer_dir),
              "--task", "nsmc", "--data-dir", str(nsmc_dir)]
    # both start on a database that does not exist yet: they race to create its schema
    workers = [subprocess.Popen([sys.executable, "-m", "korlm.cli", "tune", *common,
                                 "--output", str(tmp_path / f"worker{k}"), "--worker-index", str(k)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for k in range(2)]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out
    assert main(["tune", "--config", conf, "--output", str(tmp_path / "all"), "--report-only"]) == 0
    study = json.loads((tmp_path / "all" / tune.STUDY_JSON).read_text(encoding="utf-8"))
    assert study["counts"] == {"complete": 2} and study["worker"]["report_only"]
    rates = [t["params"]["learning_rate"] for t in study["trials"]]
    assert rates[0] != rates[1]  # worker seeds differ, so they sampled different points


def test_component_compiles(tmp_path):
    from kfp import compiler, dsl

    from components.tune import tune as tune_component

    component = dsl.component(tune_component, base_image="korlm:0.1.0", install_kfp_package=False)
    path = tmp_path / "tune.yaml"
    compiler.Compiler().compile(component, str(path))
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    inputs = spec["root"]["inputDefinitions"]
    assert {"run", "tokenizer"} <= set(inputs["artifacts"])
    assert {"step", "task", "data_dir", "tune_params", "evaluate_params", "worker_index",
            "report_only"} <= set(inputs["parameters"])
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_report_only_summarises_a_journal_study(tmp_path):
    """A study in Optuna's journal file (as parallel workers leave it): --report-only
    writes every output without running a trial; importances come from PED-ANOVA."""
    settings = config.validate({"tune": {
        "storage": f"journal:///{tmp_path / 'study.log'}", "study_name": "journal",
        "search_space": {"learning_rate": SPACE["learning_rate"], "epochs": SPACE["epochs"]}}}).tune
    study = tune.open_study(settings)
    # dev accuracy that depends on the learning rate only
    study.optimize(lambda t: 0.9 - abs(math.log10(tune.suggest(t, settings.search_space)
                                                  ["learning_rate"]) + 3.5) / 10, n_trials=12)
    summary = tune.run_tuning("unused", "unused", None, str(tmp_path / "out"), tune=settings,
                              task="nsmc", report_only=True)
    assert summary["counts"] == {"complete": 12} and summary["worker"]["report_only"]
    assert summary["best_value"] == max(t["value"] for t in summary["trials"])
    assert set(summary["importance"]) == {"learning_rate", "epochs"}
    assert summary["importance"]["learning_rate"] > summary["importance"]["epochs"]
    assert "journal:" in summary["storage"]
    loaded = config.load(str(tmp_path / "out" / tune.BEST_PARAMS_YAML))
    assert loaded.evaluate.learning_rate == pytest.approx(summary["best_params"]["learning_rate"])
    # a study name that is not in the storage is an error, not an empty summary
    missing = settings.model_copy(update={"study_name": "other"})
    with pytest.raises(KorlmError, match="no study 'other'"):
        tune.run_tuning("unused", "unused", None, str(tmp_path / "out2"), tune=missing,
                        task="nsmc", report_only=True)


def test_storage_password_is_redacted():
    assert tune.redact_storage("postgresql://optuna:s3cret@db:5432/optuna") == \
        "postgresql://optuna:***@db:5432/optuna"


@pytest.mark.parametrize("workers", [1, 3])
def test_run_step_tune_pipeline_compiles(tmp_path, workers):
    """`korlm pipeline run-step tune`: one tune task, or a ParallelFor of workers sharing the
    storage followed by one report-only task."""
    from kfp import compiler

    from pipelines.run_step import build_step_pipeline

    conf = config.validate({"tune": {"workers": workers, "storage": "sqlite:////data/study.db",
                                     "n_trials": 2}, "kfp": {"data_pvc": "korlm-data"}})
    pipeline = build_step_pipeline(conf, "tune", {"pretrain": "/runs/a/pretrain", "vocab": "/runs/a/vocab"},
                                   target="kfp")
    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text(encoding="utf-8"))
    tasks = spec["root"]["dag"]["tasks"]
    # the task data (evaluate.data_dir) is on the cluster's data volume
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(m["pvcMount"][0]["constant"] == "korlm-data" for m in mounts.values()) and len(mounts) == min(workers, 2)
    if workers == 1:
        assert "tune" in tasks and not any(k.startswith("for-loop") for k in tasks)
        params = tasks["tune"]["inputs"]["parameters"]
    else:
        loop = next(k for k in tasks if k.startswith("for-loop"))
        assert loop in tasks["tune-2"]["dependentTasks"]  # the summary waits for every worker
        params = tasks["tune-2"]["inputs"]["parameters"]
        assert params["report_only"]["runtimeValue"]["constant"] is True
    assert params["tune_params"]["runtimeValue"]["constant"]["storage"] == "sqlite:////data/study.db"
    assert config.validate({"tune": {"workers": 2, "storage": "journal:///d/s.log"}}).tune.workers == 2
    with pytest.raises(config.ConfigError, match="parallel workers need a shared storage"):
        config.validate({"tune": {"workers": 2}})


def test_a_failed_trial_is_recorded_and_the_study_goes_on(monkeypatch, tmp_path):
    from korlm.evaluation import evaluate

    outcomes = iter(["diverged", 0.7, "diverged", "diverged"])

    def scripted_fine_tune(checkpoint_dir, tokenizer_dir, task, data_dir, *, epoch_callback,
                           learning_rate=2e-4):
        outcome = next(outcomes)
        if outcome == "diverged":
            raise KorlmError("nsmc: training diverged; lower learning_rate")
        epoch_callback(1, {"accuracy": outcome}, outcome)

        class Result:
            record = {"dev_history": [{"epoch": 1, "dev": {"accuracy": outcome}}]}
        return Result()

    monkeypatch.setattr(evaluate, "fine_tune", scripted_fine_tune)
    monkeypatch.setattr("korlm.modeling.checkpoints.checkpoint_info", lambda path: {})
    monkeypatch.setattr("korlm.modeling.checkpoints.resolve_tokenizer", lambda path, tokenizer, info=None: tokenizer)
    settings = {"n_trials": 2, "pruner": "none", "search_space": {"learning_rate": SPACE["learning_rate"]}}
    summary = tune.run_tuning("ckpt", "tok", "data", str(tmp_path / "out"), tune=settings, task="nsmc")
    assert summary["counts"] == {"fail": 1, "complete": 1} and summary["best_value"] == 0.7
    assert summary["trials"][0]["error"] == "nsmc: training diverged; lower learning_rate"
    assert "- trial 0: nsmc: training diverged" in (tmp_path / "out" / tune.SUMMARY_MD).read_text()
    with pytest.raises(KorlmError, match="no trial completed; first error: nsmc: training diverged"):
        tune.run_tuning("ckpt", "tok", "data", str(tmp_path / "out2"), tune=settings, task="nsmc")
    assert not (tmp_path / "out2").exists()
