"""Compile the pipeline for a config into KFP IR YAML (Vertex AI and KFP both run it)."""

from __future__ import annotations

import os

from kfp import compiler

from korlm.config import Config
from pipelines.korlm_pipeline import Target, build_pipeline


def compile_pipeline(conf: Config, output: str, target: Target = "kfp") -> str:
    """Write the compiled pipeline for ``target`` (kfp or vertex: how tasks are placed)."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(conf, target=target), package_path=output)
    return output
