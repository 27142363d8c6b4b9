"""KFP component: the run's manifest (outputs.json + config.yaml), so any run, local or
on Vertex AI or a KFP cluster, can be the --from-run of `korlm pipeline run-step`."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def run_manifest(corpus: Input[Dataset], tokenizer: Input[Artifact], examples: Input[Dataset],
                 run: Input[Model], report: Input[Artifact], hf_model: Input[Model], run_id: str,
                 config_yaml: str, manifest: Output[Artifact]):
    """Write outputs.json (each step's artifact URI: gs:// on Vertex AI, minio:// on KFP)
    and the run's config.yaml into the manifest artifact."""
    import json
    import os

    outputs = {"clean": corpus.uri, "vocab": tokenizer.uri, "pretrain-data": examples.uri,
               "pretrain": run.uri, "report": report.uri, "export": hf_model.uri}
    os.makedirs(manifest.path, exist_ok=True)
    with open(os.path.join(manifest.path, "outputs.json"), "w", encoding="utf-8") as f:
        json.dump({"run_id": run_id, "outputs": outputs}, f, indent=2)
    with open(os.path.join(manifest.path, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(config_yaml)
    manifest.metadata.update({"run_id": run_id, **outputs})
