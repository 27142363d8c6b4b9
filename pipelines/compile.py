"""Compile the pipeline for a config into KFP IR YAML (Vertex AI and KFP both run it).

Every pipeline builder takes ``(conf, *, clean_inputs=None, eval_data_dir=None, target)``
(the main DAG, the ablation DAG, a one-step re-run), so local runs, compiling and both
submissions accept any of them.
"""

from __future__ import annotations

import os
from typing import Any

from kfp import compiler

from korlm.config import Config
from korlm.errors import KorlmError
from pipelines.korlm_pipeline import Target, build_pipeline

# Every KFP IR YAML the compiler writes has this key (korlm's and any other's).
PIPELINE_SIGNATURE = "pipelineInfo:"


def pipeline_builder(conf: Config):
    """The builder for a config: the ablation DAG when it has an ``ablation`` section
    (vocab variants x sizes, one comparison), else the main DAG."""
    if conf.ablation.vocab_variants:
        from pipelines.ablation import build_ablation_pipeline

        return build_ablation_pipeline
    return build_pipeline


def compile_pipeline(conf: Config, output: str, target: Target = "kfp", pipeline_factory=None,
                     **inputs: Any) -> str:
    """Write the compiled pipeline for ``target`` (kfp or vertex: how tasks are placed).
    ``pipeline_factory`` (default :func:`pipeline_builder`) and ``inputs``
    (``clean_inputs``, ``eval_data_dir``) as the builders take them. An existing
    ``output`` is replaced only when it is a compiled pipeline itself."""
    from korlm import storage

    if pipeline_factory is None and not conf.clean.inputs and not inputs.get("clean_inputs"):
        raise KorlmError("clean.inputs is empty: list the raw corpora to clean in the config "
                         "(a pipeline with no inputs would fail on its first step)")
    storage.check_output_file(output, signature=PIPELINE_SIGNATURE, what="compiled pipeline")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    build = pipeline_factory or pipeline_builder(conf)
    compiler.Compiler().compile(build(conf, target=target, **inputs), package_path=output)
    return output
