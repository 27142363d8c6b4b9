"""Rehearse a compiled Vertex AI CustomJob step on this machine.

A step whose resources name a machine type (the pretrain step on a TPU) compiles into a
GCPC CustomJob (``google_cloud_pipeline_components.v1.custom_job``): the pipeline task
runs GCPC's launcher, whose ``--payload`` carries the job's ``worker_pool_specs``; the
first pool's ``container_spec`` (``image_uri``, ``command``, ``args``, ``env``) is what
Vertex AI starts on the accelerator VM. :func:`custom_job` reads that container back out
of the compiled pipeline YAML, and :func:`rehearse` runs its command and arguments here
as a subprocess, with the job's env on top of this process's, the executor input that
Vertex would pass built for local folders (the ``{{$.json_escape[1]}}`` placeholder, in
the payload escaped once because the payload is itself JSON, is the executor input
after the launcher parses the payload: here it is that JSON text unescaped).

What is not rehearsed: the image itself (the command runs with this machine's Python and
packages, ``python3`` resolving to ``python``'s folder first on PATH), the accelerator, the
launcher's call to the Vertex API, ``/gcs/`` mounts (artifacts are local folders) and more
than one worker pool (multi-host), which is refused.

GCPC's container layout: ``v1/custom_job/utils.py`` (``create_custom_training_job_from_component``:
``container_spec`` with ``image_uri``, ``command``, ``args``, ``env`` as ``[{name, value}]``,
and ``{{$}}`` replaced by ``{{$.json_escape[1]}}``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from korlm.errors import KorlmError

LAUNCHER = "google_cloud_pipeline_components.container.v1.custom_job.launcher"
# The executor input as GCPC writes it into a CustomJob's args (inside a JSON payload).
EXECUTOR_PLACEHOLDERS = ("{{$.json_escape[1]}}", "{{$}}")


@dataclass
class CustomJob:
    """The first worker pool of a compiled CustomJob step, as Vertex AI would start it."""

    task: str
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    machine_spec: dict[str, Any]
    replica_count: int
    parameters: dict[str, Any] = field(default_factory=dict)
    input_artifacts: dict[str, str] = field(default_factory=dict)  # name -> schemaTitle
    output_artifacts: dict[str, str] = field(default_factory=dict)
    output_parameters: list[str] = field(default_factory=list)


def load_compiled(path: str) -> dict[str, Any]:
    """The pipeline spec of a compiled KFP IR YAML (its first document)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = next(yaml.safe_load_all(f), None)
    except (OSError, yaml.YAMLError) as exc:
        raise KorlmError(f"{path}: cannot read a compiled pipeline ({type(exc).__name__})") from None
    if not isinstance(spec, dict) or "root" not in spec or "deploymentSpec" not in spec:
        raise KorlmError(f"{path} is not a compiled KFP pipeline (no root/deploymentSpec)")
    return spec


def _constant(value: dict[str, Any]) -> Any:
    if "runtimeValue" in value:
        return value["runtimeValue"].get("constant")
    return None


def custom_job(compiled: dict[str, Any], step: str) -> CustomJob:
    """The CustomJob that ``step`` (``pretrain``, ``pretrain_data``...) compiled into."""
    tasks = compiled["root"]["dag"]["tasks"]
    name = next((n for n in (step, step.replace("_", "-")) if n in tasks), None)
    if name is None:
        raise KorlmError(f"the compiled pipeline has no step {step!r} (it has {', '.join(sorted(tasks))})")
    task = tasks[name]
    component = compiled["components"][task["componentRef"]["name"]]
    executor = compiled["deploymentSpec"]["executors"][component["executorLabel"]].get("container", {})
    launcher_args = executor.get("args", [])
    if LAUNCHER not in " ".join(executor.get("command", [])) or "CustomJob" not in launcher_args:
        raise KorlmError(f"step {name} is not a Vertex AI CustomJob in this pipeline (compile with "
                         "--target vertex and give the step a machine_type in pipeline.resources)")
    definitions = component.get("inputDefinitions", {})
    task_params = task.get("inputs", {}).get("parameters", {})
    pools = _constant(task_params["worker_pool_specs"]) if "worker_pool_specs" in task_params else \
        definitions["parameters"]["worker_pool_specs"].get("defaultValue")
    if not pools:
        raise KorlmError(f"step {name}: the CustomJob has no worker_pool_specs")
    if len(pools) > 1 or int(pools[0].get("replica_count", 1)) > 1:
        raise KorlmError(f"step {name}: a CustomJob of {len(pools)} worker pools / "
                         f"{pools[0].get('replica_count')} replicas is multi-host, which this rehearsal "
                         "does not run")
    pool = pools[0]
    container = pool["container_spec"]
    params = {}
    for key, value in task_params.items():
        constant = _constant(value)
        if constant is not None and key != "worker_pool_specs":
            params[key] = constant
    outputs = component.get("outputDefinitions", {})
    return CustomJob(
        task=name, image=container.get("image_uri", ""), command=list(container.get("command", [])),
        args=list(container.get("args", [])),
        env={e["name"]: str(e.get("value", "")) for e in container.get("env") or []},
        machine_spec=dict(pool.get("machine_spec", {})), replica_count=int(pool.get("replica_count", 1)),
        parameters=params,
        input_artifacts={k: v["artifactType"]["schemaTitle"]
                         for k, v in definitions.get("artifacts", {}).items()},
        output_artifacts={k: v["artifactType"]["schemaTitle"]
                          for k, v in outputs.get("artifacts", {}).items()},
        # gcp_resources is the launcher's own output, not the container's
        output_parameters=[k for k in outputs.get("parameters", {}) if k != "gcp_resources"])


def executor_input(job: CustomJob, inputs: dict[str, str], output_dir: str) -> dict[str, Any]:
    """The executor input Vertex would give the job's container, for local folders:
    ``inputs`` maps each input artifact to a path; outputs go under ``output_dir``
    (``<artifact>/`` each and ``executor_output.json``, which holds the returned parameters)."""
    missing = sorted(set(job.input_artifacts) - set(inputs))
    if missing:
        raise KorlmError(f"step {job.task} needs the input artifact(s) {', '.join(missing)}")
    unknown = sorted(set(inputs) - set(job.input_artifacts))
    if unknown:
        raise KorlmError(f"step {job.task} has no input artifact {unknown[0]!r} "
                         f"(it takes {', '.join(sorted(job.input_artifacts))})")
    output_dir = os.path.abspath(output_dir)

    def artifact(name: str, schema: str, path: str) -> dict[str, Any]:
        return {"artifacts": [{"name": name, "uri": os.path.abspath(path), "metadata": {},
                               "type": {"schemaTitle": schema}}]}

    return {
        "inputs": {"parameterValues": dict(job.parameters),
                   "artifacts": {k: artifact(k, s, inputs[k]) for k, s in job.input_artifacts.items()}},
        "outputs": {
            "artifacts": {k: artifact(k, s, os.path.join(output_dir, k)) for k, s in job.output_artifacts.items()},
            "parameters": {k: {"outputFile": os.path.join(output_dir, f"{k}.json")} for k in job.output_parameters},
            "outputFile": os.path.join(output_dir, "executor_output.json"),
        },
    }


def command_line(job: CustomJob, executor: dict[str, Any]) -> list[str]:
    """The container's command and args with the executor input filled in."""
    text = json.dumps(executor)
    args = [text if a in EXECUTOR_PLACEHOLDERS else a for a in job.args]
    left = [a for a in args if a.startswith("{{$")]
    if left:
        raise KorlmError(f"step {job.task}: the CustomJob's args hold a placeholder this rehearsal "
                         f"cannot fill: {left[0]}")
    return job.command + args


def job_env(job: CustomJob, base: dict[str, str] | None = None, python: str | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's env (or ``base``), then the job's ``container_spec.env``, then
    ``extra``; ``python``'s folder first on PATH so the command's ``python3`` is it."""
    env = dict(os.environ if base is None else base)
    env.update(job.env)
    env.update(extra or {})
    bindir = os.path.dirname(python or sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def local_env(job: CustomJob, devices: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """What this machine changes in the job's env, and why (name -> note).

    A job whose ``JAX_PLATFORMS`` names an accelerator (``tpu``, ``cuda``) runs JAX on
    the CPU here instead, with ``devices`` virtual CPU devices (default: the job's
    ``accelerator_count``) through ``XLA_FLAGS``, so the global batch splits as it would
    over the chips. Everything else in the job's env is kept."""
    extra: dict[str, str] = {}
    notes: dict[str, str] = {}
    platforms = job.env.get("JAX_PLATFORMS", "")
    if any(p in platforms.split(",") for p in ("tpu", "cuda", "gpu", "rocm")):
        extra["JAX_PLATFORMS"] = "cpu"
        notes["JAX_PLATFORMS"] = f"the job's {platforms!r} replaced by 'cpu' (no accelerator here)"
        count = int(devices or job.machine_spec.get("accelerator_count") or 1)
        flag = f"--xla_force_host_platform_device_count={count}"
        extra["XLA_FLAGS"] = " ".join(f for f in (job.env.get("XLA_FLAGS"), flag) if f)
        notes["XLA_FLAGS"] = f"{flag} added: {count} virtual CPU devices for the job's accelerators"
    elif devices:
        flag = f"--xla_force_host_platform_device_count={int(devices)}"
        extra["XLA_FLAGS"] = " ".join(f for f in (job.env.get("XLA_FLAGS"), flag) if f)
        notes["XLA_FLAGS"] = f"{flag} added"
    return extra, notes


def start(job: CustomJob, inputs: dict[str, str], output_dir: str, *, extra_env: dict[str, str] | None = None,
          cwd: str | None = None, python: str | None = None, **popen: Any) -> subprocess.Popen:
    """Start the job's container command here (a :class:`subprocess.Popen`)."""
    argv = command_line(job, executor_input(job, inputs, output_dir))
    os.makedirs(output_dir, exist_ok=True)
    return subprocess.Popen(argv, env=job_env(job, python=python, extra=extra_env), cwd=cwd, **popen)


def run(job: CustomJob, inputs: dict[str, str], output_dir: str, *, extra_env: dict[str, str] | None = None,
        cwd: str | None = None, python: str | None = None, timeout: float | None = None
        ) -> subprocess.CompletedProcess:
    """Run the job's container command to its end; stdout and stderr are captured."""
    proc = start(job, inputs, output_dir, extra_env=extra_env, cwd=cwd, python=python,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise KorlmError(f"step {job.task}: the rehearsal ran past {timeout} s\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def executor_output(output_dir: str) -> dict[str, Any]:
    """What the job's container reported (KFP's ``executor_output.json``: the returned
    ``parameterValues`` and the output ``artifacts`` with their metadata)."""
    path = os.path.join(output_dir, "executor_output.json")
    if not os.path.exists(path):
        raise KorlmError(f"{path} does not exist: the job did not finish")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rehearse_step(conf, step: str, inputs: dict[str, str], output_dir: str, *, devices: int | None = None,
                  extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Compile ``conf`` for Vertex AI, take ``step``'s CustomJob and run its container
    command here (output to this terminal), with :func:`local_env`'s changes and
    ``extra_env``. Returns what ran and what the job reported; a failed job is an error."""
    import tempfile

    from pipelines.compile import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="korlm-rehearse-") as tmp:
        compiled = compile_pipeline(conf, os.path.join(tmp, "pipeline.yaml"), target="vertex")
        job = custom_job(load_compiled(compiled), step)
    for name, path in inputs.items():
        if "://" in path or not os.path.exists(path):
            raise KorlmError(f"--input {name}={path}: a rehearsal reads local folders; {path} does not exist here")
    env, notes = local_env(job, devices)
    env.update(extra_env or {})
    print(f"rehearsing {job.task}: image {job.image} (not run: this machine's Python runs its command), "
          f"machine {job.machine_spec}; env from the job {job.env or '{}'}"
          + "".join(f"; {k}: {v}" for k, v in notes.items()), flush=True)
    proc = start(job, inputs, output_dir, extra_env=env)
    code = proc.wait()
    if code != 0:
        raise KorlmError(f"the rehearsed {job.task} job exited with status {code}")
    return {"step": job.task, "image": job.image, "machine_spec": job.machine_spec, "job_env": job.env,
            "local_env": notes, "output_dir": os.path.abspath(output_dir),
            "executor_output": executor_output(output_dir)}
