"""Re-run one step of an earlier run with changed settings (ablations).

``korlm pipeline run-step vocab --from-run runs/20261122-211645 --set vocab.pre_tokenizer=morpheme``
builds a one-step pipeline whose inputs are the earlier run's artifacts, brought in with
``dsl.importer``, and runs it with kfp.local into a new ``runs/<run-id>/`` (or compiles
it for a cluster with ``--compile-only FILE``). The new run's ``outputs.json`` lists the
re-run step's outputs and the reused upstream artifacts, so run-steps chain:
vocab -> pretrain-data -> pretrain, each from the run before.

``evaluate`` re-runs the whole evaluation fan-out (every checkpoint of the earlier
pretraining, plus the random-init baseline) and its report; ``clean`` needs no earlier
run. The same re-run without KFP is the step's own CLI command on the same folders
(``korlm vocab --corpus runs/<id>/clean ...``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from kfp import dsl

from korlm import storage
from korlm.config import Config, config_hash
from korlm.config import validate as validate_config
from korlm.errors import KorlmError
from korlm.modeling.checkpoints import CHECKPOINTS_JSON
from pipelines.korlm_pipeline import (
    Target,
    evaluate_and_report,
    mount_cluster_volumes,
    place_task,
    step_env,
    step_ops,
    target_params,
)

# step -> {component input: (earlier run's output folder, artifact class)}
STEP_INPUTS: dict[str, dict[str, tuple[str, type]]] = {
    "clean": {},
    "vocab": {"corpus": ("clean", dsl.Dataset)},
    "pretrain-data": {"corpus": ("clean", dsl.Dataset), "tokenizer": ("vocab", dsl.Artifact)},
    "pretrain": {"examples": ("pretrain-data", dsl.Dataset), "tokenizer": ("vocab", dsl.Artifact)},
    "evaluate": {"run": ("pretrain", dsl.Model), "tokenizer": ("vocab", dsl.Artifact)},
    "tune": {"run": ("pretrain", dsl.Model), "tokenizer": ("vocab", dsl.Artifact)},
    "finetune": {"run": ("pretrain", dsl.Model), "tokenizer": ("vocab", dsl.Artifact)},
    "export": {"run": ("pretrain", dsl.Model), "tokenizer": ("vocab", dsl.Artifact),
               "report": ("report", dsl.Artifact)},
    "push": {"hf_model": ("export", dsl.Model)},
}
STEPS = tuple(STEP_INPUTS)
# what each re-run step produces, as (output folder, kfp.local task dir, artifact name)
STEP_OUTPUTS = {
    "clean": [("clean", "clean", "corpus")],
    "vocab": [("vocab", "vocab", "tokenizer")],
    "pretrain-data": [("pretrain-data", "pretrain-data", "examples")],
    "pretrain": [("pretrain", "pretrain", "run")],
    "evaluate": [("report", "report", "report")],
    "tune": [("tune", "tune", "study")],
    "finetune": [("finetune", "finetune", "model")],
    "export": [("export", "export", "hf_model")],
    "push": [("push", "push", "plan")],
}


def earlier_run(run: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(step folder -> artifact URI, config dict) of an earlier run directory or URI."""
    manifest = storage.join(run, "outputs.json")
    if not storage.exists(manifest):
        raise KorlmError(f"{run} is not a korlm run: it has no outputs.json (run `korlm pipeline run` first)")
    try:
        outputs = json.loads(storage.read_text(manifest))["outputs"]
        if not isinstance(outputs, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()):
            raise TypeError("'outputs' is not a mapping of step folder to path")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        what = "no 'outputs' entry" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
        raise KorlmError(f"{manifest} is corrupt ({what}); re-run from another run folder") from None
    config_path = storage.join(run, "config.yaml")
    if not storage.exists(config_path):
        raise KorlmError(f"{run} has no config.yaml")
    try:
        config = yaml.safe_load(storage.read_text(config_path)) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KorlmError(f"{config_path} is corrupt ({type(exc).__name__}); re-run from another "
                         "run folder") from None
    if not isinstance(config, dict):
        raise KorlmError(f"{config_path} is corrupt (not a mapping of sections)")
    return outputs, config


def checkpoint_steps(pretrain_dir: str) -> list[int]:
    path = storage.join(pretrain_dir, CHECKPOINTS_JSON)
    if not storage.exists(path):
        raise KorlmError(f"{pretrain_dir} has no {CHECKPOINTS_JSON}: its pretraining did not finish")
    steps = [int(c["step"]) for c in json.loads(storage.read_text(path))]
    if not steps:
        raise KorlmError(f"{path} lists no checkpoints")
    return steps


def build_step_pipeline(conf: Config, step: str, upstream: dict[str, str], *, target: Target = "local",
                        clean_inputs: list[dict[str, Any]] | None = None, eval_data_dir: str | None = None):
    """A one-step @dsl.pipeline: ``step`` with its inputs imported from ``upstream``."""
    if step not in STEP_INPUTS:
        raise KorlmError(f"unknown step {step!r}; choose one of {', '.join(STEPS)}")
    missing = [folder for folder, _ in STEP_INPUTS[step].values() if folder not in upstream]
    if missing:
        raise KorlmError(f"the earlier run has no {missing[0]} output, which {step} needs")
    op = step_ops(conf, target)
    params = target_params(conf, target)
    resources = conf.pipeline.resources if target != "local" else {}
    steps = checkpoint_steps(upstream["pretrain"]) if step == "evaluate" else []
    data_dir = eval_data_dir or conf.evaluate.data_dir
    inputs = clean_inputs if clean_inputs is not None else [
        i.model_dump(exclude_none=True) for i in conf.clean.inputs]

    @dsl.pipeline(name=f"{conf.pipeline.name}-{step}", description=f"korlm: re-run {step} from an earlier run")
    def one_step():
        art = {name: dsl.importer(artifact_uri=upstream[folder], artifact_class=cls, reimport=False).output
               for name, (folder, cls) in STEP_INPUTS[step].items()}
        placed: list[tuple[str, Any]] = []
        if step == "clean":
            placed.append(("clean", op["clean"](inputs=inputs, params=params["clean"])))
        elif step == "vocab":
            placed.append(("vocab", op["vocab"](corpus=art["corpus"], params=params["vocab"])))
        elif step == "pretrain-data":
            placed.append(("pretrain_data", op["pretrain_data"](
                corpus=art["corpus"], tokenizer=art["tokenizer"],
                params=params["pretrain_data"]).set_display_name("pretrain-data")))
        elif step == "pretrain":
            placed.append(("pretrain", op["pretrain"](examples=art["examples"], tokenizer=art["tokenizer"],
                                                      params=params["pretrain"]).set_retry(num_retries=2)))
        elif step == "evaluate":
            rep, evaluations = evaluate_and_report(op, conf, params, art["run"], art["tokenizer"], steps,
                                                   list(conf.evaluate.tasks), data_dir)
            placed += [("evaluate", ev) for ev in evaluations] + [("report", rep)]
        elif step == "tune":
            placed += tune_workers(op, conf, params, art["run"], art["tokenizer"], data_dir)
        elif step == "finetune":
            placed.append(("finetune", op["finetune"](
                run=art["run"], tokenizer=art["tokenizer"], step=conf.finetune.step,
                task=conf.finetune.task, data_dir=data_dir, params=params["evaluate"])))
        elif step == "export":
            placed.append(("export", op["export"](run=art["run"], tokenizer=art["tokenizer"], report=art["report"],
                                                  params=params["export"])))
        else:  # push
            task = op["push"](hf_model=art["hf_model"], params=params["push"],
                              run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_hash=config_hash(conf))
            task.set_caching_options(False)
            placed.append(("push", task))
        for name, task in placed:
            place_task(task, resources.get(name), step_env(conf, name) if resources else None)
        if target == "kfp":  # the Hub token Secret on push, the data volume on clean/evaluate/tune/finetune
            by_step = dict(placed)
            data_tasks = [t for n, t in placed if n in ("clean", "evaluate", "tune", "finetune")]
            if "push" in by_step:
                mount_cluster_volumes(conf, by_step["push"], data_tasks)
            elif data_tasks and conf.kfp.data_pvc:
                mount_cluster_volumes(conf, None, data_tasks)

    return one_step


def tune_workers(op: dict[str, Any], conf: Config, params: dict[str, dict[str, Any]], run, tokenizer,
                 data_dir: str) -> list[tuple[str, Any]]:
    """Inside a pipeline: the hyperparameter search on the run's last checkpoint. With
    tune.workers > 1, that many workers share tune.storage in a ParallelFor, then one
    report-only task (named tune, like the one-worker task) summarises the whole study."""
    def tune_task(worker: Any, report_only: bool):
        return op["tune"](run=run, tokenizer=tokenizer, step=0, task=conf.tune.task, data_dir=data_dir,
                          tune_params=params["tune"], evaluate_params=params["evaluate"],
                          worker_index=worker, report_only=report_only)

    if conf.tune.workers == 1:
        return [("tune", tune_task(0, False).set_display_name("tune"))]
    with dsl.ParallelFor(list(range(conf.tune.workers)), name="tune-workers",
                         parallelism=conf.tune.workers) as worker:
        search = tune_task(worker, False).set_display_name("tune-worker")
    summary = tune_task(0, True).set_display_name("tune").after(search)
    return [("tune", search), ("tune", summary)]


def run_step(step: str, from_run: str, *, overrides: dict[str, Any] | None = None,
             config_file: str | None = None, run_id: str | None = None,
             compile_only: str | None = None, submit: str | None = None, dry_run: bool = False,
             wait: bool = False) -> dict[str, Any]:
    """Re-run ``step`` of ``from_run`` with the earlier config plus ``config_file`` and
    ``overrides``: locally (kfp.local), or with ``compile_only`` write the one-step pipeline
    for a cluster, or with ``submit`` (``vertex`` or ``kfp``) send it there (``dry_run``
    describes it only). Returns the new run's summary."""
    from korlm import config as cfg

    upstream, earlier_config = earlier_run(from_run)
    data = earlier_config
    if config_file:
        data = _merge(data, cfg.load(config_file).model_dump(exclude_unset=True))
    data.setdefault("run", {})["id"] = run_id
    conf = cfg.apply_overrides(validate_config(data, source=f"{from_run}/config.yaml"), overrides or {})
    def factory(conf_: Config, *, clean_inputs=None, eval_data_dir=None, target: Target = "local"):
        return build_step_pipeline(conf_, step, upstream, target=target, clean_inputs=clean_inputs,
                                   eval_data_dir=eval_data_dir)

    if submit:
        local = sorted(f for folder, f in upstream.items() if _upstream_of(step, folder) and not storage.is_remote(f))
        if local:
            raise KorlmError(f"run-step --submit {submit}: the earlier run's artifacts must be in a bucket the "
                             f"cluster reads (gs://...), but {local[0]} is a local path")
        if submit == "vertex":
            from pipelines import vertex

            return vertex.submit(conf, dry_run=dry_run, pipeline_factory=factory)
        from pipelines import kfp_submit

        return kfp_submit.submit(conf, dry_run=dry_run, wait=wait, pipeline_factory=factory)
    if compile_only:
        from pipelines.compile import compile_pipeline

        compile_pipeline(conf, compile_only, "kfp", factory)
        return {"compiled": compile_only, "step": step, "from_run": from_run}

    from pipelines import local_run

    outputs = STEP_OUTPUTS[step]
    if step == "tune" and conf.tune.workers > 1:  # the summary task follows the workers: tune-2
        outputs = [("tune", "tune-2", "study")]
    summary = local_run.run_local(conf, pipeline_factory=factory, outputs=outputs,
                                  check_clean_inputs=step == "clean",
                                  reused={k: v for k, v in upstream.items() if _upstream_of(step, k)},
                                  provenance={"from_run": from_run if storage.is_remote(from_run)
                                              else os.path.abspath(from_run), "step": step})
    return summary


def _upstream_of(step: str, folder: str) -> bool:
    """Whether an earlier run's output ``folder`` comes before ``step`` in the DAG, so the
    re-run leaves it valid (everything downstream was made from the replaced output)."""
    step_of = {"report": "evaluate"}.get(folder.split("/", 1)[0], folder.split("/", 1)[0])
    return step_of in STEPS and STEPS.index(step_of) < STEPS.index(step)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
