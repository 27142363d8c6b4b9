"""KFP component: hyperparameter search over fine-tuning with Optuna (korlm tune)."""

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output


def tune(run: Input[Model], tokenizer: Input[Artifact], step: int, task: str, data_dir: str,
         tune_params: dict, evaluate_params: dict, worker_index: int, report_only: bool,
         study: Output[Artifact], summary: Output[Markdown], metrics: Output[Metrics]):
    """Run the tune section's trials on checkpoint `step` of `run` (0: its last
    checkpoint) for `task` (empty: tune.task). `study` gets study.json, best_params.yaml,
    importance.md, summary.md and the plots; the summary table also goes to a Markdown
    artifact and the best dev value to the KFP Metrics artifact. Parallel workers: run
    this component in a ParallelFor with the same tune_params (a shared `storage` and
    `study_name`) and the loop index as `worker_index`, then once with `report_only`
    (no trial: the summary of the whole study)."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import section_params

    tune_params = section_params("tune", tune_params)
    evaluate_params = section_params("evaluate", evaluate_params)
    from korlm.evaluation.tune import run_tuning, summary_markdown
    from korlm.modeling.checkpoints import run_checkpoint

    result = run_tuning(run_checkpoint(run.path, step), tokenizer.path, data_dir or None, study.path,
                        tune=tune_params, evaluate_params=evaluate_params, task=task or None,
                        worker_index=worker_index, report_only=report_only,
                        overwrite=True)  # KFP owns the path: a retry replaces it
    with open(summary.path, "w", encoding="utf-8") as f:
        f.write(summary_markdown(result))
    if result["best_value"] is not None:
        metrics.log_metric(f"{result['task']}/best_dev_{result['metric']}", result["best_value"])
    for state, count in result["counts"].items():
        metrics.log_metric(f"trials_{state}", count)
    study.metadata.update({"best_params": result["best_params"], "best_value": result["best_value"],
                           "study_name": result["study_name"]})
