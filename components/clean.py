"""KFP component: clean raw corpora with Apache Beam (korlm clean)."""

from kfp.dsl import Dataset, Metrics, Output


def clean(inputs: list, params: dict, corpus: Output[Dataset], stats: Output[Metrics]):
    """Read, normalize, split and deduplicate raw text; write the corpus artifact."""
    from korlm.config import section_params

    params = section_params("clean", params)
    import json
    import os

    from korlm.clean.beam import run_clean
    from korlm.storage import beam_artifact_path

    # Dataflow workers write to the gs:// URI, not to this task's /gcs mount
    # KFP owns the output path: a retried task replaces its own earlier artifact
    result = run_clean(inputs, beam_artifact_path(corpus.path, corpus.uri, params.get("beam_options")),
                       overwrite=True, **params)
    corpus.metadata.update({k: result[k] for k in
                            ("input_records", "kept_records", "rejected_records", "sentences")})
    for key in ("input_records", "kept_records", "rejected_records", "sentences",
                "input_bytes", "output_bytes"):
        stats.log_metric(key, result[key])
    for reason, n in result.get("rejected_by_reason", {}).items():
        stats.log_metric(f"rejected_{reason}", n)
    for kind, n in result.get("pii_replaced", {}).items():
        stats.log_metric(f"pii_{kind}", n)
    print(json.dumps({"clean": corpus.path, "files": sorted(os.listdir(corpus.path))}))
