"""Issue 6: RoBERTa and BART pretraining, optimizer settings, gradient accumulation,
keep-last-K checkpoints, two-phase schedules, preemption (a real SIGKILL) with a
deterministic resume, and the errors raised before training starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.modeling.checkpoints import checkpoint_info, load_pretraining_task
from korlm.pretrain.dataset import DEFAULT_SPECIAL_IDS, data_features, inspect_data, make_dataset
from korlm.pretrain.monitor import PREEMPT_ENV
from korlm.pretrain.state import STATE_JSON, STATE_WEIGHTS
from korlm.pretrain.train import run_pretrain
from tests.test_pretrain import build_tokenizer, write_pretraining_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain-models")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, contract=True)
    return tokenizer_dir, data_dir


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _weights(checkpoint: str) -> list[np.ndarray]:
    return [w.numpy() for w in load_pretraining_task(checkpoint).weights]


@pytest.mark.parametrize("family,task_class,accuracy", [
    ("roberta", "RobertaMaskedLM", "mlm_accuracy"),
    ("bart", "BartSeq2SeqLM", "token_accuracy"),
])
def test_roberta_and_bart_pretrain_and_reload(corpus, tmp_path, family, task_class, accuracy):
    tokenizer_dir, data_dir = corpus
    out = tmp_path / family
    checkpoints = run_pretrain(
        str(data_dir), str(tokenizer_dir), str(out), model=family, steps=6, checkpoint_every=3,
        batch_size=8, learning_rate=2e-3, warmup_steps=1, log_every=1, seed=1,
        permute_sentences=family == "bart")
    assert [c["step"] for c in checkpoints] == [3, 6]
    info = checkpoint_info(checkpoints[-1]["uri"])
    assert info["model"] == family and info["objective"] == ("bart" if family == "bart" else "mlm")
    task = load_pretraining_task(checkpoints[-1]["uri"])
    assert type(task).__name__ == task_class
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(accuracy in r and np.isfinite(r["loss"]) for r in log)
    # A 1,200-token vocab starts near ln(1200) = 7.09 and learns from the first steps.
    assert log[0]["loss"] == pytest.approx(np.log(1200), abs=0.6)
    assert min(r["loss"] for r in log[3:]) < log[0]["loss"]
    assert all(r["model_tflops_per_second"] > 0 for r in log)
    assert "mfu" not in log[0]  # a CPU has no peak figure unless peak_tflops is set
    if family == "roberta":  # no token types: the inputs carry no segment_ids
        assert "segment_ids" not in task.input


def test_grad_accumulation_lamb_keep_last_and_mfu(corpus, tmp_path, capsys):
    tokenizer_dir, data_dir = corpus
    out = tmp_path / "run"
    checkpoints = run_pretrain(
        str(data_dir), str(tokenizer_dir), str(out), steps=6, checkpoint_every=1, batch_size=8,
        grad_accum_steps=4, optimizer="lamb", clip_norm=0.5, keep_checkpoints=2,
        keep_checkpoint_every=3, log_every=2, peak_tflops=0.5, learning_rate=1e-3,
        warmup_steps=2, progress="bar")
    err = capsys.readouterr().err
    assert "6/6" in err and "step/s" in err  # the tqdm bar, counting updates
    # Last 2 (5, 6) plus every 3rd (3): the others are deleted from disk too.
    assert [c["step"] for c in checkpoints] == [3, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000003", "step-000005", "step-000006"]
    assert json.loads((out / "checkpoints.json").read_text()) == checkpoints
    state = json.loads((out / "state" / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["examples_seen"] == 48 and state["grad_accum_steps"] == 4
    task = load_pretraining_task(checkpoints[-1]["uri"])
    assert task.backbone.vocabulary_size == state["vocab_size"]
    log = _log(out)
    assert [r["step"] for r in log] == [2, 4, 6]
    # The learning rate is per update, not per micro-batch: warmup 2 updates, decay to 0 at 6.
    assert log[0]["learning_rate"] == pytest.approx(1e-3 * 1 / 2)
    assert log[1]["learning_rate"] == pytest.approx(1e-3 * 3 / 4)
    assert all(0 < r["mfu"] < 1 for r in log)
    assert log[0]["mfu"] == pytest.approx(
        log[0]["model_tflops_per_second"] / 0.5, rel=0.01)
    # TensorBoard events hold the same scalars.
    import tensorflow as tf

    tags = {v.tag for f in (out / "tensorboard").iterdir()
            for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value}
    assert {"loss", "mlm_accuracy", "learning_rate", "tokens_per_second", "mfu"} <= tags

    # A resumed run must keep the accumulation it was trained with.
    with pytest.raises(KorlmError, match="grad_accum_steps=4"):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=8,
                              checkpoint_every=2, batch_size=8, grad_accum_steps=2)


def test_bad_settings_fail_before_training(corpus, tmp_path):
    tokenizer_dir, data_dir = corpus
    run = lambda **kw: run_pretrain(  # noqa: E731
        str(data_dir), str(tokenizer_dir), str(tmp_path / "out"),
        **{"steps": 4, "checkpoint_every": 2, "batch_size": 8, **kw})
    with pytest.raises(KorlmError, match="does not split into grad_accum_steps=3"):
        run(grad_accum_steps=3)
    with pytest.raises(KorlmError, match="optimizer 'sgd' is unknown"):
        run(optimizer="sgd")
    with pytest.raises(KorlmError, match="longer than the data's 32"):
        run(max_seq_length=64)
    with pytest.raises(KorlmError, match="phases add up to 3 steps but pretrain.steps is 4"):
        run(phases=[{"steps": 3, "max_seq_length": 16}])
    with pytest.raises(KorlmError, match="no GPU"):
        run(strategy="gpu")
    assert not (tmp_path / "out").exists()

    # A corrupt state (a torn copy from another disk) is named, not a stack trace; with
    # checkpoints listed, starting over instead would throw their training away.
    out = tmp_path / "corrupt"
    run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=2,
                          checkpoint_every=2, batch_size=8)
    state = out / "state" / "step-000002"
    weights = state / STATE_WEIGHTS
    whole = weights.read_bytes()
    weights.write_bytes(whole[:1000])
    with pytest.raises(KorlmError, match=r"cannot resume .*checkpoints up to step 2 but no complete "
                                         r"training state .*has 1000 bytes.*truncated or torn"):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=4,
                              checkpoint_every=2, batch_size=8)
    # The same size but other bytes: found when it is read.
    weights.write_bytes(whole[:1000] + b"\0" * (len(whole) - 1000))
    with pytest.raises(KorlmError, match="cannot resume from .*corrupt or incompatible"):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=4,
                              checkpoint_every=2, batch_size=8)
    (state / STATE_JSON).write_text("{not json")
    with pytest.raises(KorlmError, match="state.json is corrupt"):
        run_pretrain(str(data_dir), str(tokenizer_dir), str(out), steps=4,
                              checkpoint_every=2, batch_size=8)


def test_two_phase_schedule_reads_each_phase_data(corpus, tmp_path, capsys):
    tokenizer_dir, _ = corpus
    data = write_pretraining_data(tmp_path / "data", tokenizer_dir, max_seq_length=48)
    write_pretraining_data(data / "seq16", tokenizer_dir, max_seq_length=16)
    meta = json.loads((data / "metadata.json").read_text())
    (data / "metadata.json").write_text(json.dumps({**meta, "seq_length_variants": {"16": "seq16"}}))
    out = tmp_path / "run"
    checkpoints = run_pretrain(
        str(data), str(tokenizer_dir), str(out), steps=6, checkpoint_every=3, batch_size=8,
        log_every=1, phases=[{"steps": 4, "max_seq_length": 16},
                             {"steps": 2, "max_seq_length": 48, "batch_size": 4}])
    printed = capsys.readouterr().out
    assert f"steps 1..4 at seq 16 from {data / 'seq16'}" in printed
    assert f"steps 5..6 at seq 48 from {data} " in printed
    assert "WARNING" not in printed  # each phase had data at its own length
    log = _log(out)
    assert [r["max_seq_length"] for r in log] == [16, 16, 16, 16, 48, 48]
    # One learning-rate schedule across both phases (warmup 30 > 6 steps: still rising).
    assert [r["learning_rate"] for r in log] == sorted(r["learning_rate"] for r in log)
    info = checkpoint_info(checkpoints[-1]["uri"])
    assert info["max_seq_length"] == 48  # the model is built for the longest phase
    state = json.loads((out / "state" / "step-000006" / "state.json").read_text())
    assert state["examples_seen"] == 4 * 8 + 2 * 4


def _cli_pretrain(data_dir, tokenizer_dir, out, *extra, env=None):
    conf = out.parent / "det.yaml"
    conf.write_text("pretrain:\n  seed: 7\n  log_every: 1\n  warmup_steps: 2\n"
                    "  learning_rate: 0.002\n  progress: lines\n")
    return subprocess.run(
        [sys.executable, "-m", "korlm.cli", "pretrain", "--config", str(conf), "--data",
         str(data_dir), "--tokenizer", str(tokenizer_dir), "--output", str(out), "--steps", "6",
         "--checkpoint-every", "2", "--batch-size", "8", "--deterministic", *extra],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, timeout=600)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(corpus, tmp_path):
    """A real preemption: the process SIGKILLs itself after step 3 (past the step-2
    checkpoint), a new process resumes, and the final weights equal those of an
    uninterrupted run, bit for bit (deterministic mode, CPU)."""
    tokenizer_dir, data_dir = corpus
    whole = _cli_pretrain(data_dir, tokenizer_dir, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = _cli_pretrain(data_dir, tokenizer_dir, tmp_path / "killed",
                           env={PREEMPT_ENV: "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "killed" / "state" / "step-000002" / "state.json")
                      .read_text())["step"] == 2
    # As if the kill had come after the step-4 checkpoint was published but before its
    # state: the newer checkpoint has no optimizer state, so steps 3-4 are retrained (and
    # the checkpoint rewritten) from the step-2 state.
    newer = tmp_path / "killed" / "checkpoints" / "step-000004"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-000004", newer)
    copied = newer.stat().st_ino
    resumed = _cli_pretrain(data_dir, tokenizer_dir, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "from step 2" in resumed.stdout
    assert ("checkpoint step-000004 is newer but holds no optimizer state, so steps 3-4 are "
            "retrained") in resumed.stdout
    assert newer.stat().st_ino != copied  # written again by the resumed run

    for step in ("step-000004", "step-000006"):  # bit for bit as the uninterrupted run
        a = _weights(str(tmp_path / "whole" / "checkpoints" / step))
        b = _weights(str(tmp_path / "killed" / "checkpoints" / step))
        assert len(a) == len(b)
        assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) == 0.0
    # The log reads as one run: step 3 of the killed process was dropped and redone.
    assert [r["loss"] for r in _log(tmp_path / "whole")] == [r["loss"] for r in _log(tmp_path / "killed")]


@pytest.mark.slow
def test_jax_backend_trains_and_resumes_bart(corpus, tmp_path):
    """KERAS_BACKEND=jax with keras.distribution.DataParallel over two (virtual) CPU
    devices: the same command trains BART, and re-run with more steps resumes."""
    tokenizer_dir, data_dir = corpus
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = tmp_path / "run"

    def run(steps):
        return subprocess.run(
            [sys.executable, "-m", "korlm.cli", "pretrain", "--data", str(data_dir), "--tokenizer",
             str(tokenizer_dir), "--output", str(out), "--model", "bart", "--steps", str(steps),
             "--checkpoint-every", "2", "--batch-size", "8", "--strategy", "jax-data-parallel"],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)

    first = run(2)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "jax-data-parallel (jax): 2 x cpu" in first.stdout
    second = run(4)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stdout and "from step 2" in second.stdout
    assert [c["step"] for c in json.loads((out / "checkpoints.json").read_text())] == [2, 4]
    assert np.isfinite(_log(out)[-1]["loss"])
    assert checkpoint_info(str(out / "checkpoints" / "step-000004"))["model"] == "bart"


@pytest.mark.parametrize("objective", ["mlm", "bart"])
def test_seeded_batches_resume_exactly_however_iterated(corpus, objective):
    """Deterministic mode draws each batch's masks/noise from stateless ops seeded by
    (seed, batch index): a dataset resumed at a data position yields exactly the tail of
    the full one, and a second iterator drawing in between changes nothing."""
    tokenizer_dir, data_dir = corpus
    meta, files = inspect_data(str(data_dir), str(tokenizer_dir))
    make = lambda **kw: make_dataset(  # noqa: E731
        files, batch_size=8, max_seq_length=32, vocab_size=meta["vocab_size"],
        special_ids=DEFAULT_SPECIAL_IDS, seed=3, data_max_seq_length=32,
        features=data_features(meta, files), objective=objective,
        whole_word="eojeol" if objective == "mlm" else "none",
        permute_sentences=objective == "bart", sequential=True, **kw)

    def flat(batch):
        return np.concatenate([np.asarray(t).ravel().astype("float64")
                               for t in __import__("tensorflow").nest.flatten(batch)])

    full = make()
    other = iter(full)  # a second reader of the same dataset, as Keras opens
    reference = []
    for batch in full.take(5):
        next(other)
        reference.append(flat(batch))
    resumed = [flat(b) for b in make(skip_examples=2 * 8).take(3)]
    for a, b in zip(reference[2:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(reference[0], reference[1])
    other_seed = flat(next(iter(make_dataset(
        files, batch_size=8, max_seq_length=32, vocab_size=meta["vocab_size"],
        special_ids=DEFAULT_SPECIAL_IDS, seed=4, data_max_seq_length=32,
        features=data_features(meta, files), objective=objective,
        permute_sentences=objective == "bart", sequential=True))))
    assert not np.array_equal(reference[0], other_seed)
