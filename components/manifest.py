"""KFP component: the run's manifest (outputs.json + config.yaml), so any run, local or
on Vertex AI or a KFP cluster, can be the --from-run of `korlm pipeline run-step`."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def run_manifest(corpus: Input[Dataset], tokenizer: Input[Artifact], examples: Input[Dataset],
                 run: Input[Model], report: Input[Artifact], hf_model: Input[Model], run_id: str,
                 config_yaml: str, manifest: Output[Artifact], clean_inputs: list = None,
                 vocab_size: int = 0, vocab_algorithm: str = None, model: str = None,
                 model_size: str = None, steps: int = 0, batch_size: int = 0,
                 learning_rate: float = None, checkpoint_every: int = 0, eval_tasks: list = None,
                 push_repo_id: str = None, push_dry_run: bool = None):
    """Write outputs.json (each step's artifact URI: gs:// on Vertex AI, minio:// on KFP)
    and the run's config.yaml into the manifest artifact: the compiled config with the
    pipeline parameter values this run was given (pipelines/korlm_pipeline.py)."""
    import json
    import os

    import yaml

    from pipelines.korlm_pipeline import PIPELINE_PARAMETERS

    given = locals()  # 0/None: not given (kfp.local cannot pass a null int)
    conf = yaml.safe_load(config_yaml)
    for key, (name, _) in PIPELINE_PARAMETERS.items():
        value = given[name]
        if value is not None and not (type(value) is int and value == 0):
            section, field = key.split(".")
            conf.setdefault(section, {})[field] = value
    config_yaml = yaml.safe_dump(conf, allow_unicode=True, sort_keys=False)

    outputs = {"clean": corpus.uri, "vocab": tokenizer.uri, "pretrain-data": examples.uri,
               "pretrain": run.uri, "report": report.uri, "export": hf_model.uri}
    os.makedirs(manifest.path, exist_ok=True)
    with open(os.path.join(manifest.path, "outputs.json"), "w", encoding="utf-8") as f:
        json.dump({"run_id": run_id, "outputs": outputs}, f, indent=2)
    with open(os.path.join(manifest.path, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(config_yaml)
    manifest.metadata.update({"run_id": run_id, **outputs})
