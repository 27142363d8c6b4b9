"""KFP component: export a checkpoint to Hugging Face format (korlm export)."""

from kfp.dsl import Artifact, Input, Model, Output


def export(run: Input[Model], tokenizer: Input[Artifact], report: Input[Artifact],
           params: dict, hf_model: Output[Model]):
    """Write config.json, model.safetensors, tokenizer files and a model card."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import section_params

    params = section_params("export", params)
    import os

    from korlm.hub.export import export_checkpoint
    from korlm.modeling.checkpoints import select_checkpoint

    checkpoint = select_checkpoint(run.path, params.get("checkpoint", "last"))
    # the report's results.md/.json and PNGs: the card's tables, model-index and images
    summary = export_checkpoint(checkpoint, tokenizer.path, hf_model.path,
                                report_dir=report.path if os.path.isdir(report.path) else None,
                                model_name=params.get("model_name"),  # None: korlm-<family>
                                overwrite=True)  # KFP owns the path: a retry replaces it
    hf_model.metadata.update({"checkpoint": checkpoint, "framework": "transformers",
                              "files": summary.get("files")})
