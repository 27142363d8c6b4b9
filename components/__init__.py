"""KFP components, one module per step, thin over the korlm library.

Each module holds a plain function whose body imports the heavy libraries; `build`
turns them into lightweight components on the configured image, so the image URI
comes from the run config and compiling needs only `kfp`.
"""

from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from components import (
    ablation,
    clean,
    evaluate,
    export,
    finetune,
    manifest,
    pretrain,
    pretrain_data,
    push,
    report,
    tune,
    vocab,
)

STEPS = {
    "clean": clean.clean,
    "vocab": vocab.vocab,
    "pretrain_data": pretrain_data.pretrain_data,
    "pretrain": pretrain.pretrain,
    "evaluate": evaluate.evaluate,
    "report": report.report,
    "finetune": finetune.finetune,
    "export": export.export,
    "push": push.push,
    "tune": tune.tune,
    "ablation_merge": ablation.ablation_merge,
    "run_manifest": manifest.run_manifest,
}


def build(image: str, step_images: dict[str, str] | None = None) -> SimpleNamespace:
    """Lightweight components for every step, running on `image` (korlm preinstalled,
    so no pip install at task start); `step_images` gives some steps another image
    (a TPU or GPU build for pretrain)."""
    step_images = step_images or {}
    return SimpleNamespace(**{
        name: dsl.component(func, base_image=step_images.get(name, image), install_kfp_package=False)
        for name, func in STEPS.items()
    })
