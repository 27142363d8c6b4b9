"""The main DAG: clean -> vocab -> pretrain-data -> pretrain -> evaluate (ParallelFor over
checkpoints, plus the random-init baseline) -> report -> export -> push.

Step parameters are compiled in from the run config, so one config file describes one
run on every target (kfp.local, KFP on kind/minikube, Vertex AI). The settings users
change between runs (:data:`PIPELINE_PARAMETERS`) are typed pipeline parameters whose
defaults are the config's values: one compiled package runs with other values given as
``parameter_values`` (Vertex AI) or run arguments (KFP, kfp.local); each task merges them
into its compiled section and validates the result with the config schema. The target decides
only how tasks are placed: ``pipeline.resources`` become CPU/memory/accelerator requests
(Vertex AI and KFP), a step with a ``machine_type`` or a TPU becomes a Vertex AI
CustomJob, and with ``vertex.dataflow.enabled`` the Beam steps run on Dataflow.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import yaml
from kfp import dsl

import components
from korlm.config import Config, apply_overrides, config_hash
from korlm.errors import KorlmError
from pipelines.coherence import check_coherence, check_vertex_job_settings, placement


def step_params(conf: Config) -> dict[str, dict[str, Any]]:
    """The keyword arguments each library step receives, from the config sections.

    Unset (None) values and empty Beam options are left out: KFP parameters cannot be
    null, and the library's defaults apply."""

    def section(model, exclude=()):
        d = model.model_dump(exclude=set(exclude), exclude_none=True)
        if not d.get("beam_options", True):
            del d["beam_options"]
        return d

    return {
        "clean": section(conf.clean, {"inputs"}),
        "vocab": section(conf.vocab),
        "pretrain_data": section(conf.pretrain_data),
        "pretrain": section(conf.pretrain),
        "evaluate": section(conf.evaluate, {"tasks", "data_dir", "parallelism"}),
        "export": section(conf.export),
        "push": section(conf.push),
        "tune": section(conf.tune),
    }


# config key -> (pipeline parameter, its type). A parameter's default is the config's value;
# a run may pass another (Vertex parameter_values, KFP run arguments) without recompiling.
PIPELINE_PARAMETERS: dict[str, tuple[str, type]] = {
    "clean.inputs": ("clean_inputs", list),
    "vocab.vocab_size": ("vocab_size", int),
    "vocab.algorithm": ("vocab_algorithm", str),
    "pretrain.model": ("model", str),
    "pretrain.size": ("model_size", str),
    "pretrain.steps": ("steps", int),
    "pretrain.batch_size": ("batch_size", int),
    "pretrain.learning_rate": ("learning_rate", float),
    "pretrain.checkpoint_every": ("checkpoint_every", int),
    "evaluate.tasks": ("eval_tasks", list),
    "push.repo_id": ("push_repo_id", str),
    "push.dry_run": ("push_dry_run", bool),
}


def parameter_defaults(conf: Config, clean_inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every pipeline parameter's value in this config (its compiled default)."""
    values = {}
    for key, (name, kind) in PIPELINE_PARAMETERS.items():
        section, field = key.split(".")
        value = getattr(getattr(conf, section), field)
        if key == "clean.inputs":
            value = clean_inputs if clean_inputs is not None else [i.model_dump(exclude_none=True) for i in value]
        values[name] = list(value) if kind is list else kind(value)
    return values


def parameter_values(conf: Config, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline parameters among ``--set`` overrides, with their validated values
    from ``conf`` (the config with the overrides applied): what a run passes instead of
    recompiling. Keys that are not parameters are left out (they are compiled in)."""
    values = parameter_defaults(conf)
    return {PIPELINE_PARAMETERS[k][0]: values[PIPELINE_PARAMETERS[k][0]]
            for k in overrides if k in PIPELINE_PARAMETERS}


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(overrides of pipeline parameters, overrides compiled into the package)."""
    return ({k: v for k, v in overrides.items() if k in PIPELINE_PARAMETERS},
            {k: v for k, v in overrides.items() if k not in PIPELINE_PARAMETERS})


def apply_parameters(conf: Config, values: dict[str, Any]) -> Config:
    """``conf`` with pipeline parameter values applied (what a run with these values does),
    validated: a bad value or an unknown parameter is one line naming it."""
    keys = {name: key for key, (name, _) in PIPELINE_PARAMETERS.items()}
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise KorlmError(f"{unknown[0]} is not a pipeline parameter (parameters: {', '.join(keys)})")
    return apply_overrides(conf, {keys[name]: value for name, value in values.items()})


def run_settings(base: Config, overrides: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """For ``korlm pipeline submit --set ...``: the config to compile (``base`` with the
    overrides that are not pipeline parameters; those are compiled in) and the
    ``parameter_values`` the run passes for the others. Every override is validated first
    (one line naming the key). The ablation DAG has no parameters: all are compiled in."""
    full = apply_overrides(base, overrides)
    if full.ablation.vocab_variants:
        return full, {}
    params, compiled = split_overrides(overrides)
    return apply_overrides(base, compiled), parameter_values(full, params)


def with_parameters(func, defaults: dict[str, Any]):
    """Give ``func(*values)`` the typed signature of the pipeline parameters (KFP reads a
    pipeline's inputs, their types and defaults from its signature)."""
    kinds = dict(PIPELINE_PARAMETERS.values())
    func.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value, annotation=kinds[name])
        for name, value in defaults.items()])
    return func


Target = Literal["local", "kfp", "vertex"]
# Long steps are retried on failure (a preempted VM, a transient GCS error); each writes its
# artifact atomically, and pretrain resumes from its last checkpoint.
RETRIES = 2
BEAM_STEPS = ("clean", "pretrain_data")


def dataflow_options(conf: Config) -> list[str]:
    """Beam arguments that send a Beam step to Dataflow (vertex.dataflow), or []."""
    df, vx = conf.vertex.dataflow, conf.vertex
    if not df.enabled:
        return []
    options = ["--runner=DataflowRunner", f"--project={vx.project}", f"--region={vx.region}",
               f"--temp_location={df.temp_location}",
               f"--sdk_container_image={df.sdk_container_image or conf.pipeline.image}",
               f"--machine_type={df.machine_type}", f"--max_num_workers={df.max_num_workers}",
               "--experiments=use_runner_v2", "--sdk_location=container"]
    if df.service_account:
        options.append(f"--service_account_email={df.service_account}")
    if df.subnetwork:
        options.append(f"--subnetwork={df.subnetwork}")
    return options


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> str:
    """``72h`` -> ``259200s``: the protobuf Duration string a CustomJob takes."""
    return f"{int(value[:-1]) * _SECONDS[value[-1]]}s"


def custom_job_kwargs(conf: Config, step: str, res, env: dict[str, str]) -> dict[str, Any]:
    """The arguments of GCPC's ``create_custom_training_job_from_component`` for a step."""
    kwargs: dict[str, Any] = {"display_name": f"{conf.pipeline.name}-{step.replace('_', '-')}",
                              "machine_type": res.machine_type,
                              "env": [{"name": k, "value": v} for k, v in sorted(env.items())]}
    if res.accelerator_type:
        kwargs.update(accelerator_type=res.accelerator_type, accelerator_count=res.accelerator_count)
    if res.boot_disk_size_gb:
        kwargs["boot_disk_size_gb"] = res.boot_disk_size_gb
    if conf.vertex.service_account:
        kwargs["service_account"] = conf.vertex.service_account
    if conf.vertex.network:
        kwargs["network"] = conf.vertex.network
    if res.timeout:
        kwargs["timeout"] = duration_seconds(res.timeout)
    if res.restart_job_on_worker_restart:
        kwargs["restart_job_on_worker_restart"] = True
    if res.scheduling:
        kwargs["strategy"] = res.scheduling
    if res.max_wait_duration:
        kwargs["max_wait_duration"] = duration_seconds(res.max_wait_duration)
    if res.tensorboard:
        kwargs["tensorboard"] = res.tensorboard
    if res.base_output_directory:
        kwargs["base_output_directory"] = res.base_output_directory
    return kwargs


def _custom_job_ops(conf: Config, ops, placements) -> dict[str, Any]:
    """Vertex CustomJob versions of the steps whose resources name a machine type."""
    wrapped = {}
    for step, res in conf.pipeline.resources.items():
        if not res.machine_type:
            continue
        from google_cloud_pipeline_components.v1.custom_job import (
            create_custom_training_job_from_component,
        )

        op = create_custom_training_job_from_component(
            getattr(ops, step), **custom_job_kwargs(conf, step, res, placements[step].env))
        if res.tpu_topology:
            # GCPC 2.22 has no tpu_topology argument; the CustomJob API's MachineSpec has
            # (required for TPU v5e), so it is added to the compiled worker pool spec.
            for pool in op.component_spec.inputs["worker_pool_specs"].default:
                pool["machine_spec"]["tpu_topology"] = res.tpu_topology
        wrapped[step] = op
    return wrapped


def step_env(conf: Config, step: str) -> dict[str, str] | None:
    """The env a step's task gets (pipelines/coherence.py) when it has resources."""
    return placement(conf, step).env if step in conf.pipeline.resources else None


def place_task(task, res, env: dict[str, str] | None = None) -> None:
    """CPU, memory and accelerator requests and the environment of a task (Vertex AI and
    KFP). A CustomJob carries its own machine spec and env."""
    if res is None or res.machine_type:
        return
    if res.cpu:
        task.set_cpu_limit(res.cpu)
    if res.memory:
        task.set_memory_limit(res.memory)
    if res.accelerator_type:
        task.set_accelerator_type(res.accelerator_type).set_accelerator_limit(res.accelerator_count)
    for name, value in sorted((env or {}).items()):
        task.set_env_variable(name, value)


def evaluate_and_report(op: dict[str, Any], conf: Config, params: dict[str, dict[str, Any]], run, tokenizer,
                        steps, tasks: list[str], data_dir: str, last_step=None):
    """Inside a pipeline: fine-tune every checkpoint in ``steps`` (a task output or a list)
    on every task, plus the random-init baseline (the architecture at ``last_step``,
    default pretrain.steps; a pipeline parameter), and collect them into a report.
    Returns the report task and the evaluation tasks."""
    with dsl.ParallelFor(steps, name="checkpoints", parallelism=conf.evaluate.parallelism) as step:
        ev = op["evaluate"](run=run, tokenizer=tokenizer, step=step, tasks=tasks, data_dir=data_dir,
                            random_init=False, params=params["evaluate"]).set_display_name("evaluate-checkpoint")
    baseline = op["evaluate"](run=run, tokenizer=tokenizer,
                              step=conf.pretrain.steps if last_step is None else last_step, tasks=tasks,
                              data_dir=data_dir, random_init=True,
                              params=params["evaluate"]).set_display_name("evaluate-random-init")
    for task in (ev, baseline):  # fine-tuning is long and rewrites its output whole: safe to retry
        task.set_retry(num_retries=RETRIES, backoff_duration="60s")
    rep = op["report"](results=dsl.Collected(ev.outputs["results"]), baseline=baseline.outputs["results"])
    rep.set_caching_options(conf.pipeline.enable_caching)
    return rep, (ev, baseline)


def step_ops(conf: Config, target: Target) -> dict[str, Any]:
    """The components of every step for this target (custom images, Vertex CustomJobs)."""
    resources = conf.pipeline.resources if target != "local" else {}
    ops = components.build(conf.pipeline.image,
                           {step: r.image for step, r in resources.items() if r.image})
    if target == "kfp" and any(r.machine_type for r in resources.values()):
        bad = next(s for s, r in resources.items() if r.machine_type)
        raise KorlmError(f"pipeline.resources.{bad}.machine_type is a Vertex AI setting; "
                         "on a KFP cluster use cpu/memory/accelerator_type")
    placements = check_coherence(conf) if target != "local" else {}
    if target == "vertex":
        check_vertex_job_settings(conf)
    custom = _custom_job_ops(conf, ops, placements) if target == "vertex" else {}
    return {step: custom.get(step, getattr(ops, step)) for step in components.STEPS}


def target_params(conf: Config, target: Target) -> dict[str, dict[str, Any]]:
    """step_params, with the Beam steps sent to Dataflow on Vertex when configured."""
    params = step_params(conf)
    if target == "vertex":
        for step in BEAM_STEPS:
            extra = dataflow_options(conf)
            if extra:
                params[step]["beam_options"] = extra + params[step].get("beam_options", [])
    return params


def build_pipeline(conf: Config, clean_inputs: list[dict[str, Any]] | None = None,
                   eval_data_dir: str | None = None, target: Target = "local"):
    """A @dsl.pipeline function for this config. `clean_inputs` / `eval_data_dir`
    override the config's paths (the local runner passes absolute paths)."""
    resources = conf.pipeline.resources if target != "local" else {}
    op = step_ops(conf, target)
    params = target_params(conf, target)
    data_dir = eval_data_dir or conf.evaluate.data_dir
    defaults = parameter_defaults(conf, clean_inputs)
    config_yaml = yaml.safe_dump(conf.model_dump(mode="json"), allow_unicode=True, sort_keys=False)

    def korlm_pipeline(*values):
        p = dict(zip(defaults, values, strict=True))  # pipeline parameter channels by name
        clean = op["clean"](inputs=p["clean_inputs"], params=params["clean"]).set_display_name("clean")
        clean.set_retry(num_retries=RETRIES, backoff_duration="60s")
        vocab = op["vocab"](corpus=clean.outputs["corpus"], params=params["vocab"],
                            vocab_size=p["vocab_size"], algorithm=p["vocab_algorithm"])
        data = op["pretrain_data"](corpus=clean.outputs["corpus"],
                                   tokenizer=vocab.outputs["tokenizer"],
                                   params=params["pretrain_data"]).set_display_name("pretrain-data")
        data.set_retry(num_retries=RETRIES, backoff_duration="60s")
        train = op["pretrain"](examples=data.outputs["examples"],
                               tokenizer=vocab.outputs["tokenizer"], params=params["pretrain"],
                               model=p["model"], size=p["model_size"], steps=p["steps"],
                               batch_size=p["batch_size"], learning_rate=p["learning_rate"],
                               checkpoint_every=p["checkpoint_every"])
        train.set_retry(num_retries=RETRIES)  # resumes from its last checkpoint after preemption

        rep, evaluations = evaluate_and_report(op, conf, params, train.outputs["run"], vocab.outputs["tokenizer"],
                                               train.outputs["Output"], p["eval_tasks"], data_dir,
                                               last_step=p["steps"])
        exp = op["export"](run=train.outputs["run"], tokenizer=vocab.outputs["tokenizer"],
                           report=rep.outputs["report"], params=params["export"])
        pushed = op["push"](hf_model=exp.outputs["hf_model"], params=params["push"],
                            repo_id=p["push_repo_id"], dry_run=p["push_dry_run"],
                            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_hash=config_hash(conf))
        pushed.set_caching_options(False)  # a push is a side effect, never cached
        # outputs.json + config.yaml: this run can be the --from-run of `korlm pipeline run-step`
        manifest = op["run_manifest"](corpus=clean.outputs["corpus"], tokenizer=vocab.outputs["tokenizer"],
                                      examples=data.outputs["examples"], run=train.outputs["run"],
                                      report=rep.outputs["report"], hf_model=exp.outputs["hf_model"],
                                      run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_yaml=config_yaml,
                                      **p)  # the run's parameter values go into its config.yaml
        manifest.set_caching_options(False)
        for task in (clean, vocab, data, train, exp):
            task.set_caching_options(conf.pipeline.enable_caching)
        for step, task in (("clean", clean), ("vocab", vocab), ("pretrain_data", data), ("pretrain", train),
                           *(("evaluate", ev) for ev in evaluations), ("report", rep), ("export", exp),
                           ("push", pushed)):
            place_task(task, resources.get(step), step_env(conf, step))
        if target == "kfp":
            mount_cluster_volumes(conf, pushed, (clean, *evaluations))

    return dsl.pipeline(with_parameters(korlm_pipeline, defaults), name=conf.pipeline.name,
                        description="Raw Korean text to a pretrained, evaluated and exported LM")


def mount_cluster_volumes(conf: Config, push_task, data_tasks) -> None:
    """KFP cluster only: the Hub token Secret (key ``token``) becomes the push task's
    ``push.token_env`` (optional, so a dry-run push runs without it; the token never enters
    the compiled pipeline), and ``kfp.data_pvc`` is mounted where the input readers look."""
    from kfp import kubernetes

    if push_task is not None:
        kubernetes.use_secret_as_env(push_task, secret_name=conf.kfp.hf_token_secret,
                                     secret_key_to_env={"token": conf.push.token_env}, optional=True)
    if conf.kfp.data_pvc:
        for task in data_tasks:
            kubernetes.mount_pvc(task, pvc_name=conf.kfp.data_pvc, mount_path=conf.kfp.data_mount_path)
