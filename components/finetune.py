"""KFP component: fine-tune a checkpoint on one task and keep the servable model
(korlm finetune)."""

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output


def finetune(run: Input[Model], tokenizer: Input[Artifact], step: int, task: str,
             data_dir: str, params: dict, model: Output[Model], metrics: Output[Metrics],
             card: Output[Markdown]):
    """Fine-tune checkpoint `step` of the pretraining `run` (0: its last checkpoint) on
    `task` (a built-in name or a task YAML file) with early stopping on dev; `model` is
    the servable directory `korlm serve` loads, its test scores go to `metrics` and a
    short Markdown summary to the pipeline UI."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import section_params

    params = section_params("evaluate", params)
    from korlm.evaluation.evaluate import settings_for_task
    from korlm.evaluation.finetune import finetune as run_finetune
    from korlm.modeling.checkpoints import run_checkpoint

    # params: the evaluate section without tasks/data_dir/parallelism (step_params)
    record = run_finetune(run_checkpoint(run.path, step), tokenizer.path, task, data_dir,
                          model.path, overwrite=True,  # KFP owns the path: a retry replaces it
                          **settings_for_task(params, task))
    for metric, value in record["metrics"].items():
        if value is not None:
            metrics.log_metric(f"{record['task']}/{metric}", value)
    model.metadata.update({"task": record["task"], "task_type": record["task_type"],
                           "checkpoint": record["checkpoint"], "step": record["step"],
                           "best_epoch": record["best_epoch"]})
    rows = "\n".join(f"| {k} | {'undefined' if v is None else f'{v:.4f}'} |"
                     for k, v in record["metrics"].items())
    with open(card.path, "w", encoding="utf-8") as f:
        f.write(f"## Fine-tuned {record['task']} ({record['task_type']}) from "
                f"{record['checkpoint']}\n\n| metric (test) | value |\n|---|---|\n{rows}\n\n"
                f"Best dev epoch {record['best_epoch']}; serve it with "
                f"`korlm serve {model.uri}`.\n")
