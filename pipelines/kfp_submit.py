"""Submit the compiled pipeline to a Kubeflow Pipelines 2 cluster (KFP standalone on
kind/minikube from `make run-local`, or any KFP 2.17 installation) with ``kfp.Client``.

``korlm pipeline submit --target kfp --config FILE [--host URL] [--dry-run] [--wait]``
compiles the DAG for a cluster (the push task gets the Hub token from the Secret
``kfp.hf_token_secret``; local input paths are read from the PVC ``kfp.data_pvc``),
creates or reuses the experiment ``kfp.experiment`` and starts a run from the compiled
package. ``--wait`` follows the run to its end and says where the report is;
``--dry-run`` compiles and prints what would be sent, without a cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import posixpath
import sys
import tempfile
import time
import warnings
from typing import Any

import yaml

from korlm.config import Config, apply_overrides
from korlm.errors import KorlmError

# Where KFP 2 standalone keeps artifacts when the run names no pipeline root
# (SeaweedFS behind the S3 API of the minio-service Service in namespace kubeflow).
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
LOCAL_DATA_DIR = "data"  # the repository folder make run-local mounts as kfp.data_pvc
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


def _cluster_path(path: str, key: str, conf: Config) -> str:
    """A path as the cluster's tasks see it: URIs unchanged, local paths under data/ on
    the data PVC, anything else a one-line error naming the key."""
    if "://" in path:
        return path
    pvc = conf.kfp.data_pvc
    rel = posixpath.normpath(path.replace(os.sep, "/"))
    if pvc is None:
        raise KorlmError(f"{key}: {path} is a path on this machine, which KFP tasks cannot read; set "
                         f"kfp.data_pvc to a PVC holding {LOCAL_DATA_DIR}/ (make run-local creates korlm-data) "
                         "or use gs:// URIs")
    if posixpath.isabs(rel) or not (rel == LOCAL_DATA_DIR or rel.startswith(LOCAL_DATA_DIR + "/")):
        raise KorlmError(f"{key}: {path} is not under {LOCAL_DATA_DIR}/, the folder the PVC {pvc} holds; "
                         f"move it there or use a gs:// URI")
    return posixpath.normpath(posixpath.join(conf.kfp.data_mount_path, posixpath.relpath(rel, LOCAL_DATA_DIR)))


def cluster_inputs(conf: Config) -> tuple[list[dict[str, Any]], str]:
    """clean.inputs and evaluate.data_dir with paths the cluster's tasks can open."""
    inputs = []
    for i, item in enumerate(conf.clean.inputs):
        d = item.model_dump(exclude_none=True)
        d["path"] = _cluster_path(item.path, f"clean.inputs[{i}].path", conf)
        inputs.append(d)
    return inputs, _cluster_path(conf.evaluate.data_dir, "evaluate.data_dir", conf)


def compile_for_cluster(conf: Config, output: str, pipeline_factory=None) -> str:
    """Compile the pipeline for target kfp with the cluster's input paths.
    ``pipeline_factory`` builds another pipeline (a one-step re-run); default:
    :func:`pipelines.compile.pipeline_builder`."""
    from pipelines.compile import compile_pipeline

    inputs, data_dir = cluster_inputs(conf)
    return compile_pipeline(conf, output, "kfp", pipeline_factory, clean_inputs=inputs, eval_data_dir=data_dir)


def describe(conf: Config, host: str, package: str) -> dict[str, Any]:
    """What a submission sends: where to, the experiment, and per task its image, resources
    and Kubernetes mounts (secrets by name only; a token is never in the package)."""
    from pipelines.vertex import task_resources

    with open(package, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    tasks = task_resources(spec)
    executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    for comp_name, comp in spec["components"].items():
        k8s = executors.get(comp.get("executorLabel", ""))
        if not k8s:
            continue
        entry = tasks.setdefault(comp_name.removeprefix("comp-"), {})
        for s in k8s.get("secretAsEnv", []):
            entry.setdefault("secret_env", []).extend(
                f"{m['envVar']} <- secret {s['secretName']}/{m['secretKey']}" for m in s["keyToEnv"])
        for m in k8s.get("pvcMount", []):
            entry.setdefault("pvc_mounts", []).append(f"{m['constant']} -> {m['mountPath']}")
    return {"host": host, "namespace": conf.kfp.namespace, "experiment": conf.kfp.experiment,
            "pipeline_name": spec["pipelineInfo"]["name"], "package": package,
            "service_account": conf.kfp.service_account, "tasks": tasks}


def run_name(conf: Config) -> str:
    stamp = conf.run.id or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{conf.pipeline.name}-{stamp}"


def _state(run) -> str:
    return str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()


def wait_for_run(client, run_id: str, timeout_s: float, poll_s: float = 10.0, log=None):
    """Poll the run until it reaches a final state (including CANCELED, which
    ``kfp.Client.wait_for_run_completion`` does not count); print each state change."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        run = client.get_run(run_id)
        state = _state(run)
        if state != last:
            log(f"run {run_id}: {state}")
            last = state
        if state in FINAL_STATES:
            return run
        if time.monotonic() > deadline:
            raise KorlmError(f"run {run_id} is still {state} after {timeout_s:.0f} s (kfp.wait_timeout_s); "
                             "it goes on in the cluster")
        time.sleep(poll_s)


def _tasks(run) -> list:
    details = getattr(run, "run_details", None)
    return list(getattr(details, "task_details", None) or [])


def report_location(conf: Config, run, pipeline_name: str) -> dict[str, Any]:
    """Where the report task's ``report`` artifact is: the run's artifact folder in the
    pipeline root, the report task's pod and the artifact's id in the UI."""
    root = (run.runtime_config.pipeline_root if run.runtime_config and run.runtime_config.pipeline_root
            else DEFAULT_PIPELINE_ROOT)
    where: dict[str, Any] = {"artifacts": f"{root.rstrip('/')}/{pipeline_name}/{run.run_id}/",
                             "task": "report", "output": "report"}
    for task in _tasks(run):
        if task.display_name == "report":
            where["task_state"] = task.state
            ids = (task.outputs or {}).get("report")
            if ids is not None and getattr(ids, "artifact_ids", None):
                where["artifact_ids"] = list(ids.artifact_ids)
            pods = [c.pod_name for c in (task.child_tasks or []) if c.pod_name] or [task.pod_name]
            where["pods"] = [p for p in pods if p]
    return where


def _failure(run) -> str:
    failed = [t for t in _tasks(run) if str(t.state or "").upper() == "FAILED"]
    parts = [f"{t.display_name} ({t.error.message})" if t.error and t.error.message else t.display_name
             for t in failed]
    msg = run.error.message if run.error and run.error.message else ""
    return "; ".join(filter(None, [msg, f"failed tasks: {', '.join(parts)}" if parts else ""]))


def make_client(conf: Config, host: str):
    import kfp
    import urllib3

    warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline",
                            category=FutureWarning)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return kfp.Client(host=host, namespace=conf.kfp.namespace or "kubeflow")
        except (TimeoutError, urllib3.exceptions.HTTPError) as exc:
            raise KorlmError(f"no KFP API at {host}: {type(exc).__name__} (is `kubectl port-forward -n kubeflow "
                             "svc/ml-pipeline-ui 8080:80` running?)") from None


def submit(conf: Config, *, host: str | None = None, dry_run: bool = False, wait: bool = False,
           package_dir: str | None = None, pipeline_factory=None,
           parameter_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile, then start the run on the cluster (and with ``wait`` follow it). With
    ``dry_run`` only compile and describe. ``parameter_values`` (pipeline parameter ->
    value) are the run's arguments instead of compiled-in values. Raises KorlmError when
    a waited-for run does not succeed, naming its state and failed tasks."""
    arguments = dict(parameter_values or {})
    if arguments:
        from pipelines.korlm_pipeline import apply_parameters

        run_conf = apply_parameters(conf, arguments)  # validated: one line naming a bad value
        if "clean_inputs" in arguments:  # paths as the cluster's tasks see them
            arguments["clean_inputs"] = cluster_inputs(run_conf)[0]
    if host:
        conf = apply_overrides(conf, {"kfp.host": host})  # validated like the config's kfp.host
    host = conf.kfp.host.rstrip("/")
    package_dir = package_dir or tempfile.mkdtemp(prefix="korlm-kfp-")
    package = compile_for_cluster(conf, os.path.join(package_dir, f"{conf.pipeline.name}.yaml"), pipeline_factory)
    summary = describe(conf, host, package)
    summary["dry_run"] = dry_run
    summary["arguments"] = arguments
    if dry_run:
        return summary

    import kfp_server_api
    import urllib3

    client = make_client(conf, host)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the client prints its UI links
            result = client.create_run_from_pipeline_package(
                package, arguments=arguments, run_name=run_name(conf), experiment_name=conf.kfp.experiment,
                namespace=conf.kfp.namespace, service_account=conf.kfp.service_account)
        run_id = result.run_id
        summary.update(run_id=run_id, run_name=result.run_info.display_name,
                       experiment_id=result.run_info.experiment_id, state=_state(result.run_info),
                       ui=f"{host}/#/runs/details/{run_id}")
        if not wait:
            return summary
        run = wait_for_run(client, run_id, conf.kfp.wait_timeout_s, conf.kfp.poll_interval_s)
    except kfp_server_api.ApiException as exc:
        raise KorlmError(f"KFP API at {host} answered {exc.status} {exc.reason}: "
                         f"{(exc.body or '').strip()[:300]}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KorlmError(f"cannot reach the KFP API at {host}: {exc}") from None
    summary["state"] = _state(run)
    if summary["state"] != "SUCCEEDED":
        why = _failure(run)
        raise KorlmError(f"run {run_id} ended {summary['state']}" + (f": {why}" if why else "")
                         + f" (see {summary['ui']})")
    summary["report"] = where = report_location(conf, run, summary["pipeline_name"])
    print(f"run {run_id} SUCCEEDED; report: output 'report' of task 'report' under {where['artifacts']} "
          f"(artifact ids {', '.join(where.get('artifact_ids', [])) or 'unknown'}); UI: {summary['ui']}",
          file=sys.stderr, flush=True)
    return summary
