"""Run the whole DAG on this machine through kfp.local (SubprocessRunner, no venv per task).

Outputs land under ``runs/<run-id>/``: the kfp.local pipeline root in ``kfp/``, and one
folder (a link into it) per step: ``clean/``, ``vocab/``, ``pretrain-data/``,
``pretrain/``, ``evaluate/<checkpoint>/``, ``report/``, ``export/``, ``push/``.
"""

from __future__ import annotations

import builtins
import datetime as dt
import glob
import json
import os
import sys
import time
import warnings
from typing import Any

import yaml

from korlm.config import Config
from korlm.errors import KorlmError

# kfp.local task directory name -> (step folder, artifact output name)
STEP_OUTPUTS = [
    ("clean", "clean", "corpus"),
    ("vocab", "vocab", "tokenizer"),
    ("pretrain-data", "pretrain-data", "examples"),
    ("pretrain", "pretrain", "run"),
    ("report", "report", "report"),
    ("export", "export", "hf_model"),
    ("push", "push", "plan"),
    ("run-manifest", "manifest", "manifest"),
]


# What a run folder holds: the kfp.local root, the config, outputs.json and one link per step.
RUN_ENTRIES = ("kfp", "config.yaml", "outputs.json", "evaluate", "ablation", "tune", "finetune",
               *(folder for _, folder, _ in STEP_OUTPUTS))


def _absolute_inputs(conf: Config) -> list[dict[str, Any]]:
    out = []
    for item in conf.clean.inputs:
        spec = item.model_dump(exclude_none=True)
        if "://" not in spec["path"]:
            spec["path"] = os.path.abspath(spec["path"])
        out.append(spec)
    return out


def _check_inputs(conf: Config, clean: bool = True) -> None:
    """Fail in one line before any task starts when a local input is missing."""
    import glob

    if clean and not conf.clean.inputs:
        raise KorlmError("clean.inputs is empty: list the raw corpora to clean in the config")
    for item in conf.clean.inputs if clean else []:
        if "://" not in item.path and not glob.glob(item.path):
            raise KorlmError(f"clean.inputs: {item.path} matches no file")
    from korlm.evaluation.tasks import find_layout, get_task

    for task in conf.evaluate.tasks:  # the task's files (or YAML file) exist, or one line says which
        spec = get_task(task)
        if "://" not in conf.evaluate.data_dir:
            find_layout(spec, conf.evaluate.data_dir)


def _find_task_dirs(root: str) -> dict[str, str]:
    """Map kfp.local task directory names to their paths (one pipeline run under root)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            found.setdefault(d, os.path.join(dirpath, d))
    return found


def _evaluation_dirs(root: str) -> dict[str, str]:
    """Each evaluate task's `results` artifact, keyed by the checkpoint it scored."""
    found = {}
    for dirpath, dirnames, _ in os.walk(root):
        if os.path.basename(dirpath).startswith("evaluate") and "results" in dirnames:
            res = os.path.join(dirpath, "results")
            # <task>/metrics.json, or <task>/seed-<s>/metrics.json with several seeds;
            # <task>/bag-of-words/ (random init's baselines) names no checkpoint
            for metrics in sorted(glob.glob(os.path.join(res, "*", "metrics.json"))
                                  + glob.glob(os.path.join(res, "*", "seed-*", "metrics.json"))):
                with open(metrics, encoding="utf-8") as f:
                    record = json.load(f)
                if not record.get("baseline"):
                    found[record["checkpoint"]] = res
                    break
    return found


def _link_step_outputs(run_dir: str, kfp_root: str, step_outputs=None, evaluations: bool = True) -> dict[str, str]:
    outputs: dict[str, str] = {}
    task_dirs = _find_task_dirs(kfp_root)
    for folder, task_name, artifact in step_outputs or [(f, t, a) for t, f, a in STEP_OUTPUTS]:
        src = task_dirs.get(task_name)
        if src and os.path.exists(os.path.join(src, artifact)):
            outputs[folder] = os.path.join(src, artifact)
    for checkpoint, res in sorted(_evaluation_dirs(kfp_root).items() if evaluations else []):
        outputs[f"evaluate/{checkpoint}"] = res
    for key, target in outputs.items():
        link = os.path.join(run_dir, key)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.islink(link):
            os.remove(link)
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
    return outputs


def _link_ablation(run_dir: str, kfp_root: str) -> dict[str, str]:
    """Link ``ablation/`` to the last comparison (the one holding every arm)."""
    best, rows = None, -1
    for dirpath, dirnames, _ in os.walk(kfp_root):
        if os.path.basename(dirpath).startswith("ablation-merge") and "comparison" in dirnames:
            path = os.path.join(dirpath, "comparison", "comparison.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    n = len(json.load(f)["rows"])
                if n > rows:
                    best, rows = os.path.join(dirpath, "comparison"), n
    if best is None:
        return {}
    link = os.path.join(run_dir, "ablation")
    if os.path.islink(link):
        os.remove(link)
    os.symlink(os.path.relpath(best, run_dir), link)
    return {"ablation": best}


def run_local(conf: Config, config_path: str | None = None, *, pipeline_factory=None, outputs=None,
              check_clean_inputs: bool = True, reused: dict[str, str] | None = None,
              provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the config's DAG (or ``pipeline_factory``'s pipeline, such as a one-step re-run;
    see :mod:`pipelines.compile`) with kfp.local into ``runs/<run-id>/``.
    ``outputs`` lists the (folder, task dir, artifact) to link; ``reused`` adds earlier
    runs' artifacts to outputs.json so later re-runs can start from this run."""
    _check_inputs(conf, clean=check_clean_inputs)
    # task YAML files are read inside the tasks, whose working directory differs
    yaml_tasks = [os.path.abspath(t) if t.endswith((".yaml", ".yml")) and "://" not in t else t
                  for t in conf.evaluate.tasks]
    if yaml_tasks != list(conf.evaluate.tasks):
        conf = conf.model_copy(update={"evaluate": conf.evaluate.model_copy(update={"tasks": yaml_tasks})})
    from kfp import local

    from pipelines.compile import pipeline_builder

    ablation = pipeline_factory is None and bool(conf.ablation.vocab_variants)
    if ablation:
        outputs = outputs or [("clean", "clean", "corpus")]
    pipeline_factory = pipeline_factory or pipeline_builder(conf)

    run_id = conf.run.id or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(os.path.join(conf.run.output_root, run_id))
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise KorlmError(f"run directory {run_dir} already exists: set another run.id "
                         "(or --set run.id=NEW) or remove it")
    from korlm import storage

    # a run folder is never resumed or replaced: the marker only tells it apart as korlm's
    storage.claim_run_dir(run_dir, "pipeline-run", RUN_ENTRIES)
    kfp_root = os.path.join(run_dir, "kfp")
    os.makedirs(kfp_root, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf.model_dump(), f, allow_unicode=True, sort_keys=False)

    # Tasks inherit this environment (korlm is installed in it); keep TF quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    # task names shown in a KFP or Vertex AI UI: nothing to show here
    warnings.filterwarnings("ignore", message=r"Task '.*': settings \['display_name'\] have no effect")

    print(f"korlm: run {run_id} -> {run_dir} (kfp.local, SubprocessRunner, "
          f"config {config_path or 'defaults'})", flush=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=kfp_root,
               raise_on_error=True, enable_caching=False)
    pipeline = pipeline_factory(conf, clean_inputs=_absolute_inputs(conf), target="local",
                                eval_data_dir=os.path.abspath(conf.evaluate.data_dir)
                                if "://" not in conf.evaluate.data_dir else conf.evaluate.data_dir)
    start = time.time()
    # kfp.local indents task logs by swapping builtins.print; parallel loop iterations
    # can restore each other's swapped function and leave it indented for good.
    original_print = builtins.print
    try:
        pipeline()
    except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
        raise KorlmError(f"pipeline run {run_id} failed: {exc}") from exc
    finally:
        builtins.print = original_print
    seconds = time.time() - start

    # an ablation has one evaluation per arm and checkpoint: its comparison links them all
    linked = _link_step_outputs(run_dir, kfp_root, outputs, evaluations=not ablation)
    if ablation:
        linked.update(_link_ablation(run_dir, kfp_root))
    summary = {"run_id": run_id, "run_dir": run_dir, "seconds": round(seconds, 1),
               **(provenance or {}),
               "outputs": {**(reused or {}), **{k: os.path.join(run_dir, k) for k in linked}}}
    with open(os.path.join(run_dir, "outputs.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)

    results_md = os.path.join(run_dir, "ablation" if "ablation" in linked else "report", "results.md")
    print("\n" + "=" * 72)
    print(f"korlm run {run_id} finished in {seconds / 60:.1f} min")
    if os.path.exists(results_md):
        with open(results_md, encoding="utf-8") as f:
            print(f.read())
    print("Outputs:")
    for key in linked:
        print(f"  {key:<28} {os.path.join(run_dir, key)}")
    sys.stdout.flush()
    return summary
