"""Compile the pipeline for a config into KFP IR YAML (Vertex AI and KFP both run it)."""

from __future__ import annotations

import os

from kfp import compiler

from korlm.config import Config
from pipelines.korlm_pipeline import Target, build_pipeline


def compile_pipeline(conf: Config, output: str, target: Target = "kfp") -> str:
    """Write the compiled pipeline for ``target`` (kfp or vertex: how tasks are placed)."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if conf.ablation.vocab_variants:  # vocab variants x sizes, one comparison
        from pipelines.ablation import build_ablation_pipeline

        pipeline = build_ablation_pipeline(conf, target=target)
    else:
        pipeline = build_pipeline(conf, target=target)
    compiler.Compiler().compile(pipeline, package_path=output)
    return output
