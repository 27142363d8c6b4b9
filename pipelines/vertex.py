"""Submit the compiled pipeline to Vertex AI Pipelines as an ``aiplatform.PipelineJob``.

``korlm pipeline submit --target vertex --config configs/vertex-<preset>.yaml`` compiles
the DAG for Vertex (CustomJob for steps with a machine type, Dataflow for the Beam steps
when enabled), builds the PipelineJob (template, gs:// pipeline root, labels, caching)
and submits it with the run's service account and network. ``--dry-run`` builds the
same job request without credentials and prints it with each task's resources, env and
CustomJob settings (timeout, scheduling, TensorBoard) and a cost estimate
(pipelines/cost.py); nothing is sent. Before any of it, pipelines/coherence.py refuses an
image/backend/strategy/accelerator/precision combination that cannot run.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml
from google.protobuf import json_format

from korlm.config import Config, config_hash
from korlm.errors import KorlmError
from pipelines.compile import compile_pipeline
from pipelines.cost import estimate

# CustomJob settings shown by --dry-run (GCPC create_custom_training_job_from_component
# parameters; "strategy" is the scheduling strategy: STANDARD, SPOT or FLEX_START).
CUSTOM_JOB_SETTINGS = ("timeout", "restart_job_on_worker_restart", "strategy", "max_wait_duration",
                       "tensorboard", "base_output_directory", "service_account")


def check_vertex_config(conf: Config) -> None:
    """One-line errors for what a Vertex run cannot do without."""
    vx = conf.vertex
    if not vx.project:
        raise KorlmError("vertex.project is not set: name the Google Cloud project to run in")
    if not vx.pipeline_root:
        raise KorlmError("vertex.pipeline_root is not set: give a gs:// folder for the run's artifacts")
    image = conf.pipeline.image
    if "/" not in image:
        raise KorlmError(f"pipeline.image {image!r} is a local image; Vertex AI pulls from a registry "
                         "(e.g. us-docker.pkg.dev/PROJECT/REPO/korlm:TAG; see `make push-images`)")
    local = [i.path for i in conf.clean.inputs if not i.path.startswith("gs://")]
    if local:
        raise KorlmError(f"clean.inputs: {local[0]} is a local path; Vertex tasks read gs:// URIs")
    if not conf.evaluate.data_dir.startswith("gs://"):
        raise KorlmError(f"evaluate.data_dir {conf.evaluate.data_dir!r} is local; upload the task data to gs://")


def run_labels(conf: Config) -> dict[str, str]:
    return {"korlm-config": config_hash(conf)[:12], "korlm-model": f"{conf.pretrain.model}-{conf.pretrain.size}",
            **conf.vertex.labels}


def build_job(conf: Config, template_path: str, *, credentials=None, job_id: str | None = None,
              parameter_values: dict[str, Any] | None = None):
    """The ``aiplatform.PipelineJob`` for this run (constructing it sends nothing);
    ``parameter_values`` replace pipeline parameters' compiled defaults for this run."""
    from google.cloud import aiplatform

    vx = conf.vertex
    return aiplatform.PipelineJob(
        display_name=conf.pipeline.name,
        template_path=template_path,
        job_id=job_id,
        pipeline_root=vx.pipeline_root,
        parameter_values=dict(parameter_values or {}),
        # None keeps each task's compiled caching option; True/False here would override
        # them all, caching the push (a side effect) too.
        enable_caching=None,
        labels=run_labels(conf),
        project=vx.project,
        location=vx.region,
        credentials=credentials,
    )


def task_resources(compiled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per component of a compiled pipeline: its image and what it asks for (container
    resources, or a CustomJob's machine spec), and the Beam runner of Beam steps, for
    people to review before a run."""
    executors = compiled["deploymentSpec"]["executors"]
    out: dict[str, dict[str, Any]] = {}
    for comp_name, comp in compiled["components"].items():
        executor = executors.get(comp.get("executorLabel", ""))
        if executor is None:  # a sub-DAG (the checkpoint loop)
            continue
        if "importer" in executor:  # an earlier run's artifact brought into a one-step re-run
            uri = executor["importer"].get("artifactUri", {})
            out[comp_name.removeprefix("comp-")] = {"imports": uri.get("constant") or uri.get("runtimeParameter")}
            continue
        container = executor["container"]
        entry: dict[str, Any] = {"image": container["image"]}
        if container.get("resources"):
            entry["resources"] = container["resources"]
        params = comp.get("inputDefinitions", {}).get("parameters", {})
        pools = params.get("worker_pool_specs")
        if pools and "custom_job" in " ".join(container.get("command", [])):
            spec = pools["defaultValue"][0]
            entry = {"vertex_custom_job": True, "image": spec["container_spec"]["image_uri"],
                     "machine_spec": {k: (int(v) if isinstance(v, float) else v)
                                      for k, v in spec["machine_spec"].items()},
                     "env": {e["name"]: e["value"] for e in spec["container_spec"].get("env", [])},
                     **{k: params[k].get("defaultValue") for k in CUSTOM_JOB_SETTINGS if k in params}}
        elif container.get("env"):
            entry["env"] = {e["name"]: e["value"] for e in container["env"]}
        out[comp_name.removeprefix("comp-")] = entry
    for task, spec in compiled["root"]["dag"]["tasks"].items():
        params = spec.get("inputs", {}).get("parameters", {}).get("params", {})
        options = params.get("runtimeValue", {}).get("constant", {}).get("beam_options")
        if options is not None:
            runner = next((o.split("=", 1)[1] for o in options if o.startswith("--runner=")), "DirectRunner")
            out.setdefault(task, {})["beam_runner"] = runner
    return out


def describe(conf: Config, job, compiled: dict[str, Any]) -> dict[str, Any]:
    """What the submission would send: the PipelineJob request and each task's resources."""
    request = job._gca_resource  # the PipelineJob proto the client sends to CreatePipelineJob
    return {
        "parent": f"projects/{conf.vertex.project}/locations/{conf.vertex.region}",
        "display_name": request.display_name,
        "pipeline_root": request.runtime_config.gcs_output_directory,
        "labels": dict(request.labels),
        "enable_caching": conf.pipeline.enable_caching,
        "service_account": conf.vertex.service_account,
        "network": conf.vertex.network,
        "pipeline_name": request.pipeline_spec["pipelineInfo"]["name"],
        # the run's values of pipeline parameters (the rest keep their compiled defaults)
        "parameter_values": json_format.MessageToDict(request._pb.runtime_config).get("parameterValues", {}),
        "tasks": task_resources(compiled),
    }


def submit(conf: Config, *, dry_run: bool = False, template_dir: str | None = None,
           pipeline_factory=None, parameter_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile and submit (or, with ``dry_run``, only describe) the run on Vertex AI.
    ``pipeline_factory`` builds another pipeline (a one-step re-run); ``parameter_values``
    (pipeline parameter -> value, see pipelines/korlm_pipeline.py PIPELINE_PARAMETERS) go
    in the job's ``parameter_values`` instead of being compiled in."""
    run_conf = conf
    if parameter_values:
        from pipelines.coherence import check_coherence
        from pipelines.korlm_pipeline import apply_parameters

        run_conf = apply_parameters(conf, parameter_values)  # what the run will do, validated
        check_coherence(run_conf)
    check_vertex_config(run_conf)
    template_dir = template_dir or tempfile.mkdtemp(prefix="korlm-vertex-")
    template = compile_pipeline(conf, os.path.join(template_dir, f"{conf.pipeline.name}.yaml"), "vertex",
                                pipeline_factory)
    with open(template, encoding="utf-8") as f:
        compiled = yaml.safe_load(f)
    credentials = None
    if dry_run:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()  # building the request needs none; nothing is sent
    # labels (model, config hash) name what the run does, parameter values included
    job = build_job(run_conf, template, credentials=credentials, parameter_values=parameter_values)
    summary = describe(conf, job, compiled)
    summary["template"] = template
    summary["dry_run"] = dry_run
    summary["cost_estimate"] = estimate(run_conf)
    if dry_run:
        return summary
    job.submit(service_account=conf.vertex.service_account, network=conf.vertex.network)
    summary["job_name"] = job.resource_name
    summary["console_url"] = job._dashboard_uri()
    return summary
