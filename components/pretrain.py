"""KFP component: pretrain from scratch with checkpoints every N steps (korlm pretrain)."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def pretrain(examples: Input[Dataset], tokenizer: Input[Artifact], params: dict,
             run: Output[Model], metrics: Output[Metrics], model: str = None, size: str = None,
             steps: int = 0, batch_size: int = 0,
             learning_rate: float = None, checkpoint_every: int = 0) -> list:
    """Train; return the checkpoint steps (the evaluation fan-out iterates over them).
    `metrics` gets the run's closing figures from train_log.jsonl (final_loss,
    final_mlm_accuracy or final_token_accuracy, final/mean_tokens_per_second, steps)."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import section_params

    # the pipeline parameters; 0/None: not given (kfp.local cannot pass a null int)
    params = section_params("pretrain", params, {
        "model": model, "size": size, "steps": steps or None, "batch_size": batch_size or None,
        "learning_rate": learning_rate, "checkpoint_every": checkpoint_every or None})
    from korlm.pretrain.train import run_pretrain

    # a retried or restarted (preempted) task resumes its own run folder
    checkpoints = run_pretrain(examples.path, tokenizer.path, run.path, **params)
    run.metadata.update({"checkpoints": [c["step"] for c in checkpoints],
                         "model": params.get("model"), "size": params.get("size")})
    from korlm.pretrain.state import final_metrics

    for name, value in final_metrics(run.path).items():
        metrics.log_metric(name, value)
    return [c["step"] for c in checkpoints]
