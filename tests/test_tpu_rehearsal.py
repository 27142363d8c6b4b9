"""Issue 18 item 3: the Vertex pretrain CustomJob of the TPU presets, rehearsed here.

For ``configs/vertex-bert-base.yaml`` and ``configs/vertex-bart-base.yaml``, scaled down
(tiny model, 4 steps, global batch 16, checkpoints every 2 steps, deterministic) and
compiled for Vertex exactly as ``korlm pipeline compile --target vertex`` does, the
pretrain step's CustomJob container (its command, args and env, read back from
``worker_pool_specs`` by ``pipelines.rehearse``) runs here as a subprocess on the JAX
backend with 8 virtual CPU devices, its executor input pointing at local folders:

* the global batch splits over the 8 devices (8 x 2 per device: the run's own log line);
* a checkpoint and the resume state are written in the normal run layout;
* the same command killed by SIGKILL after step 3 (``KORLM_PREEMPT_AT_STEP``, the fault
  injection the TF preemption test uses: a real signal 9, no cleanup) and started again
  resumes from the step-2 state and ends bit for bit on the uninterrupted run's weights;
* the last checkpoint exports (``korlm export``) and transformers (PyTorch) logits match
  the Keras checkpoint's.

The env is the job's own, with what this machine changes (``rehearse.local_env``: JAX on
the CPU with 8 virtual devices where the job names the TPU) and, while the compiled job
does not set it, ``KERAS_BACKEND=jax``: the fixture prints which came from the spec. The
precision is the spec's: float32 for ``auto`` on a CPU, mixed_bfloat16 where the preset
asks for bf16. XLA's CPU compile is made cheap and cached between a family's runs (local
flags; the TPU compiler is another one).

Not rehearsed (only real hardware can): the image, the TPU and libtpu, XLA's TPU
compiler, bf16 numerics on a TPU, ``/gcs/`` mounts, the Vertex API call GCPC's launcher
makes, multi-host. Wall time on this 2-core machine: see the fixture's printed line (the
rehearsal tests are marked slow: `make test` runs them, `make test-fast` does not).
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from korlm import config
from korlm.errors import KorlmError
from korlm.hub.export import export_checkpoint
from korlm.modeling.checkpoints import checkpoint_info, load_masked_lm, load_pretraining_task
from korlm.pretrain.monitor import PREEMPT_ENV
from pipelines import rehearse
from pipelines.compile import compile_pipeline
from tests.test_export import SENTENCES, _keras_logits, bart_logits
from tests.test_pretrain import build_tokenizer, write_pretraining_data

REPO = Path(__file__).resolve().parents[1]
DEVICES = 8
GLOBAL_BATCH = 16  # 2 examples per device
STEPS = 4
KILL_AFTER = 3  # past the step-2 checkpoint: the resume redoes step 3
# What this machine changes in the job's env: pipelines.rehearse.local_env (JAX on the
# CPU with 8 virtual devices for the 8 chips); KERAS_BACKEND checked against the job's own
# env, and added where the job does not set it yet. The test reports which came from where.
BACKEND = "jax"
DEVICE_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
# Local only: no GPU probing, quiet TF; XLA's CPU compile made cheap (the TPU's compiler
# is another one) and cached across the three runs of a family.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
LOCAL_ENV = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
PRESETS = {"bert": "configs/vertex-bert-base.yaml", "bart": "configs/vertex-bart-base.yaml"}
FAMILIES = sorted(PRESETS)


def scaled_down(preset: str) -> config.Config:
    """The preset with a tiny model, 4 steps, a global batch of 16 (divisible by the 8
    devices), checkpoints every 2 steps and deterministic mode; its placement (image,
    machine, accelerator), strategy and precision stay as they are."""
    data = config.load(preset).model_dump(mode="json")
    data["pretrain"].update(size="tiny", steps=STEPS, phases=[], max_seq_length=None, checkpoint_every=2,
                            batch_size=GLOBAL_BATCH, grad_accum_steps=1, keep_checkpoints=None,
                            keep_checkpoint_every=None, learning_rate=2e-3, warmup_steps=1, log_every=1,
                            deterministic=True, progress="lines", seed=7)
    return config.validate(data, source=f"{preset} scaled down")


def rehearsal_env(job: rehearse.CustomJob, cache_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(env added on top of the job's, where each setting the rehearsal needs came from)."""
    changes, notes = rehearse.local_env(job, devices=DEVICES)
    extra = {**LOCAL_ENV, "JAX_PLATFORMS": "cpu", **changes, "JAX_COMPILATION_CACHE_DIR": str(cache_dir)}
    assert DEVICE_FLAG in extra["XLA_FLAGS"].split()
    source = {"KERAS_BACKEND": "spec" if "KERAS_BACKEND" in job.env else "test", **notes}
    if "KERAS_BACKEND" in job.env:
        assert job.env["KERAS_BACKEND"] == BACKEND, job.env
    else:
        extra["KERAS_BACKEND"] = BACKEND
    extra["XLA_FLAGS"] += " " + FAST_XLA
    return extra, source


def _compiled_job(family: str, root: Path) -> dict:
    """The scaled-down preset compiled for Vertex, and its pretrain CustomJob."""
    conf = scaled_down(PRESETS[family])
    compiled = root / f"{family}-pipeline.yaml"
    compile_pipeline(conf, str(compiled), target="vertex")
    return {"family": family, "conf": conf,
            "job": rehearse.custom_job(rehearse.load_compiled(str(compiled)), "pretrain")}


def _rehearse(compiled: dict, root: Path, inputs: dict[str, str]) -> dict:
    """The job's command run three times: uninterrupted, killed after step 3, resumed."""
    family, job = compiled["family"], compiled["job"]
    extra, source = rehearsal_env(job, root / f"{family}-xla-cache")
    runs = {}
    for name, env in (("whole", {}), ("killed", {PREEMPT_ENV: str(KILL_AFTER)}), ("resumed", {})):
        folder = root / family / ("killed" if name == "resumed" else name)
        begin = time.perf_counter()
        proc = rehearse.run(job, inputs, str(folder), extra_env={**extra, **env}, cwd=str(REPO), timeout=600)
        runs[name] = {"proc": proc, "dir": folder, "run": folder / "run",
                      "seconds": round(time.perf_counter() - begin, 1),
                      # what the run folder held when the process ended
                      "held": {sub: sorted(p.name for p in (folder / "run" / sub).glob("step-*"))
                               for sub in ("checkpoints", "state")}}
    return {**compiled, "source": source, "runs": runs}


@pytest.fixture(scope="module")
def rehearsals(tmp_path_factory):
    """Both presets rehearsed: per family the uninterrupted run, the killed run and its
    resume, one after another; the two families side by side (two processes at a time)."""
    pytest.importorskip("jax")
    root = tmp_path_factory.mktemp("rehearsal")
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    data_dir = write_pretraining_data(root / "examples", tokenizer_dir, num_examples=128, contract=True)
    inputs = {"examples": str(data_dir), "tokenizer": str(tokenizer_dir)}
    begin = time.perf_counter()
    jobs = [_compiled_job(family, root) for family in FAMILIES]  # KFP's compiler is not thread-safe
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        done = dict(zip(FAMILIES, pool.map(lambda c: _rehearse(c, root, inputs), jobs), strict=True))
    print(f"\nrehearsal of {', '.join(FAMILIES)}: {time.perf_counter() - begin:.1f} s wall")
    for family, r in done.items():
        print(f"{family}: env {r['source']} (spec: {r['job'].env or 'none'}); image {r['job'].image}; "
              f"machine {r['job'].machine_spec}; runs "
              + ", ".join(f"{n} rc {v['proc'].returncode} {v['seconds']} s" for n, v in r["runs"].items()))
        r["tokenizer"] = tokenizer_dir
    return done


def _ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> list[np.ndarray]:
    return [np.asarray(w.numpy()) for w in load_pretraining_task(str(checkpoint)).weights]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_the_rehearsed_command_is_the_compiled_tpu_custom_job(rehearsals, family):
    r = rehearsals[family]
    job, resources = r["job"], r["conf"].pipeline.resources["pretrain"]
    assert job.task == "pretrain" and job.replica_count == 1
    assert job.image == resources.image and "tpu" in job.image
    assert job.machine_spec["machine_type"] == resources.machine_type
    assert job.machine_spec["accelerator_type"] == resources.accelerator_type
    assert job.machine_spec["accelerator_count"] == resources.accelerator_count == DEVICES
    assert job.command[:2] == ["sh", "-ec"] and "kfp.dsl.executor_main" in job.command[2]
    assert "run_pretrain(examples.path, tokenizer.path, run.path" in job.command[3]
    assert job.args == ["--executor_input", "{{$.json_escape[1]}}", "--function_to_execute", "pretrain"]
    params = job.parameters["params"]
    assert params["model"] == family and params["size"] == "tiny" and params["deterministic"] is True
    assert params["batch_size"] == GLOBAL_BATCH and params["steps"] == STEPS
    assert (params["strategy"], params["precision"]) == (r["conf"].pretrain.strategy, r["conf"].pretrain.precision)
    assert job.input_artifacts == {"examples": "system.Dataset", "tokenizer": "system.Artifact"}
    assert job.output_artifacts == {"run": "system.Model", "metrics": "system.Metrics"} and job.output_parameters == ["Output"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_the_global_batch_splits_over_eight_devices_and_checkpoints_are_written(rehearsals, family):
    r = rehearsals[family]
    whole = r["runs"]["whole"]
    _ok(whole["proc"])
    out = whole["proc"].stdout
    assert f"jax-data-parallel (jax): {DEVICES} x cpu" in out, out[-2000:]
    assert f"batch {GLOBAL_BATCH} ({GLOBAL_BATCH // DEVICES} per device x {DEVICES})" in out
    # the spec's precision on this CPU: auto is float32 for the tiny model (mixed_bfloat16
    # on the TPU)
    precision = r["job"].parameters["params"].get("precision", "auto")
    assert f"{'float32' if precision == 'auto' else precision} (" in out
    log = _log(whole["run"])
    assert [x["step"] for x in log] == list(range(1, STEPS + 1))
    assert all(np.isfinite(x["loss"]) for x in log)
    assert {(x["devices"], x["per_device_batch"]) for x in log} == {(DEVICES, GLOBAL_BATCH // DEVICES)}
    # the component's outputs, where KFP's executor puts them
    reported = rehearse.executor_output(str(whole["dir"]))
    assert reported["parameterValues"]["Output"] == [2, STEPS]  # the evaluation fan-out's list
    run_artifact = reported["artifacts"]["run"]["artifacts"][0]
    assert run_artifact["uri"] == str(whole["run"]) and run_artifact["metadata"]["model"] == family
    assert [c["step"] for c in json.loads((whole["run"] / "checkpoints.json").read_text())] == [2, STEPS]
    info = checkpoint_info(str(whole["run"] / "checkpoints" / "step-000004"))
    assert (info["model"], info["size"], info["step"]) == (family, "tiny", STEPS)
    state = json.loads((whole["run"] / "state" / "step-000004" / "state.json").read_text())
    assert state["step"] == STEPS and state["examples_seen"] == STEPS * GLOBAL_BATCH


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_killed_job_resumes_to_bit_identical_weights(rehearsals, family):
    runs = rehearsals[family]["runs"]
    killed, resumed = runs["killed"], runs["resumed"]
    # the container command is `sh -ec ...`: its python child dies by signal 9, sh exits 128 + 9
    assert killed["proc"].returncode == 137, killed["proc"].stderr[-3000:]
    assert f"killing the process after step {KILL_AFTER}" in killed["proc"].stdout
    assert killed["held"] == {"checkpoints": ["step-000002"], "state": ["step-000002"]}
    _ok(resumed["proc"])
    assert "resuming" in resumed["proc"].stdout and "from step 2" in resumed["proc"].stdout
    assert f"{DEVICES} x cpu" in resumed["proc"].stdout
    for step in ("step-000002", "step-000004"):
        a = _weights(runs["whole"]["run"] / "checkpoints" / step)
        b = _weights(killed["run"] / "checkpoints" / step)
        assert len(a) == len(b) > 10
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), step
    # the log reads as one run: the killed process's step 3 was dropped and redone
    assert [x["loss"] for x in _log(runs["whole"]["run"])] == [x["loss"] for x in _log(killed["run"])]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_checkpoint_exports_and_transformers_matches_keras(rehearsals, family, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    r = rehearsals[family]
    checkpoint = r["runs"]["resumed"]["run"] / "checkpoints" / "step-000004"
    out = tmp_path / "hf"
    export_checkpoint(str(checkpoint), None, str(out))  # korlm export: the tokenizer travels in it
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    enc = tokenizer(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype="int64")
    mask = np.asarray(enc["attention_mask"], dtype="int64")
    real = mask.astype(bool)
    assert (~real).any() and ids.shape[1] > 8
    task = load_pretraining_task(str(checkpoint))
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForSeq2SeqLM
    model, loading = auto.from_pretrained(str(out), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    model.eval()
    with torch.no_grad():
        if family == "bert":
            assert type(model).__name__ == "BertForMaskedLM"
            types = np.asarray(enc["token_type_ids"], dtype="int64")
            hf = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(types)).logits.numpy()
            keras_logits = _keras_logits(load_masked_lm(str(checkpoint)), {
                "input_ids": ids, "token_type_ids": types, "attention_mask": mask})
        else:
            assert type(model).__name__ == "BartForConditionalGeneration"
            hf, keras_logits = bart_logits(model, task, tokenizer, ids, mask)
    assert keras_logits.shape == hf.shape
    assert np.abs(keras_logits[real]).max() > 0.1
    diff = float(np.abs(keras_logits - hf)[real].max())
    print(f"{family}: max |logit diff| keras vs transformers: {diff:.3g}")
    assert diff <= 1e-4


def test_a_checkpoint_trained_in_bfloat16_loads_as_float32(tmp_path):
    """A TPU trains under mixed_bfloat16 (float32 variables): its checkpoints must load
    for evaluate and export, which KerasHub 0.32 refuses for a saved mixed policy. Found
    by this rehearsal once the presets asked for bf16."""
    import keras

    from korlm.modeling.build import build_pretraining_task
    from korlm.modeling.checkpoints import save_checkpoint

    before = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        task = build_pretraining_task("bart", "tiny", 300, 16)
        save_checkpoint(task, str(tmp_path / "step-000001"), {
            "step": 1, "model": "bart", "size": "tiny", "vocab_size": 300, "max_seq_length": 16,
            "objective": "bart"})
    finally:
        keras.mixed_precision.set_global_policy(before)
    saved = json.loads((tmp_path / "step-000001" / "config.json").read_text())
    assert saved["config"]["dtype"]["config"]["name"] == "float32"
    loaded = load_pretraining_task(str(tmp_path / "step-000001"))
    assert loaded.backbone.dtype_policy.name == "float32"
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(task.weights, loaded.weights, strict=True))


def _job(**env) -> rehearse.CustomJob:
    return rehearse.CustomJob(task="pretrain", image="img", command=["python3"], args=["{{$.json_escape[1]}}"],
                              env=env, machine_spec={"accelerator_count": 8}, replica_count=1,
                              input_artifacts={"examples": "system.Dataset"}, output_artifacts={"run": "system.Model"})


def test_local_env_runs_a_tpu_job_on_virtual_cpu_devices(tmp_path):
    extra, notes = rehearse.local_env(_job(JAX_PLATFORMS="tpu,cpu", XLA_FLAGS="--xla_dump_to=/x", KERAS_BACKEND="jax"))
    assert extra == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_dump_to=/x {DEVICE_FLAG}"}
    assert "'tpu,cpu' replaced by 'cpu'" in notes["JAX_PLATFORMS"]
    assert rehearse.local_env(_job(KERAS_BACKEND="tensorflow")) == ({}, {})  # nothing to change
    assert rehearse.local_env(_job(), devices=2)[0] == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    # the executor input fills the job's one placeholder; the env goes on top of this process's
    job = _job(KERAS_BACKEND="jax")
    argv = rehearse.command_line(job, rehearse.executor_input(job, {"examples": str(tmp_path)}, str(tmp_path / "o")))
    executor = json.loads(argv[1])
    assert executor["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"] == str(tmp_path)
    assert executor["outputs"]["outputFile"] == str(tmp_path / "o" / "executor_output.json")
    env = rehearse.job_env(job, base={"PATH": "/bin", "KERAS_BACKEND": "tensorflow"}, python="/venv/bin/python")
    assert env["KERAS_BACKEND"] == "jax" and env["PATH"] == "/venv/bin:/bin"
    with pytest.raises(KorlmError, match="placeholder this rehearsal cannot fill"):
        rehearse.command_line(dataclasses.replace(job, args=["{{$.inputs.parameters['x']}}"]), {})


def test_pipeline_rehearse_errors_are_one_line(tmp_path, capsys):
    from korlm.cli import main

    def base(step):
        return ["pipeline", "rehearse", step, "--config", PRESETS["bert"], "--output", str(tmp_path / "out")]

    assert main(base("vocab")) == 2  # a plain container task on Vertex
    assert "error: step vocab is not a Vertex AI CustomJob" in capsys.readouterr().err
    assert main([*base("pretrain"), "--input", f"examples={tmp_path}"]) == 2
    assert "error: step pretrain needs the input artifact(s) tokenizer" in capsys.readouterr().err
    assert main([*base("pretrain"), "--input", f"examples={tmp_path}", "--input", "tokenizer=gs://b/t"]) == 2
    assert "a rehearsal reads local folders" in capsys.readouterr().err
    assert main(["pipeline", "rehearse", "--config", PRESETS["bert"]]) == 2
    assert "rehearse needs a STEP, --output DIR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
