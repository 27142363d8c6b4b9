"""KFP component: pretrain from scratch with checkpoints every N steps (korlm pretrain)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def pretrain(examples: Input[Dataset], tokenizer: Input[Artifact], params: dict,
             run: Output[Model], model: str = None, size: str = None,
             steps: int = 0, batch_size: int = 0,
             learning_rate: float = None, checkpoint_every: int = 0) -> list:
    """Train; return the checkpoint steps (the evaluation fan-out iterates over them)."""
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
    return [c["step"] for c in checkpoints]
