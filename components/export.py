"""KFP component: export a checkpoint to Hugging Face format (korlm export)."""

from kfp.dsl import Artifact, Input, Model, Output


def export(run: Input[Model], tokenizer: Input[Artifact], report: Input[Artifact],
           params: dict, hf_model: Output[Model]):
    """Write config.json, model.safetensors, tokenizer files and a model card."""
    from korlm.config import section_params

    params = section_params("export", params)
    import os

    from korlm.hub.export import export_checkpoint
    from korlm.modeling.checkpoints import select_checkpoint

    checkpoint = select_checkpoint(run.path, params.get("checkpoint", "last"))
    results_md = None
    md = os.path.join(report.path, "results.md")
    if os.path.exists(md):
        with open(md, encoding="utf-8") as f:
            results_md = f.read()
    summary = export_checkpoint(checkpoint, tokenizer.path, hf_model.path,
                                results_markdown=results_md,
                                model_name=params.get("model_name"),  # None: korlm-<family>
                                overwrite=True)  # KFP owns the path: a retry replaces it
    hf_model.metadata.update({"checkpoint": checkpoint, "framework": "transformers",
                              "files": summary.get("files")})
