"""KFP component: tokenize and pack the corpus into TFRecords (korlm pretrain-data)."""

from kfp.dsl import Artifact, Dataset, Input, Output


def pretrain_data(corpus: Input[Dataset], tokenizer: Input[Artifact], params: dict,
                  examples: Output[Dataset]):
    """Tokenize with the vocab artifact and pack into sharded TFRecords."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import section_params

    params = section_params("pretrain_data", params)
    from korlm.pretrain_data.beam import run_pretrain_data
    from korlm.storage import beam_artifact_path

    options = params.get("beam_options")  # Dataflow workers use gs:// URIs, not this task's /gcs mount
    meta = run_pretrain_data(beam_artifact_path(corpus.path, corpus.uri, options), tokenizer.path,
                             beam_artifact_path(examples.path, examples.uri, options),
                             overwrite=True, **params)  # KFP owns the path: a retry replaces it
    examples.metadata.update({k: meta[k] for k in ("num_examples", "max_seq_length", "objective", "packing",
                                                   "masking", "nsp", "padding_fraction")})
