"""Image variant x KERAS_BACKEND x pretrain.strategy x accelerator x precision: refuse,
before anything is compiled or submitted, a combination that cannot run, and write the
environment each task gets into the compiled job spec (never left to image defaults).

How korlm knows an image's variant (docker/Dockerfile ``VARIANT``): the step's
``pipeline.resources.<step>.image_variant`` when set, else the image's repository name as
``make build`` tags it (``korlm-tpu`` -> tpu, ``korlm-gpu`` -> gpu, anything else -> cpu).
An image named otherwise sets ``image_variant`` explicitly.

What each variant holds (docker/requirements-*.txt on top of requirements.lock):
cpu: TensorFlow and JAX for the CPU only; gpu: TensorFlow's CUDA libraries and JAX for
CUDA 12; tpu: JAX with libtpu (Vertex AI runs TPU v2, v3, v5e and v6e as TPU VMs, where
only the JAX backend sees the chips; TensorFlow stays the host input pipeline).
"""

from __future__ import annotations

import dataclasses
import re

from korlm.config import Config, StepResources
from korlm.errors import KorlmError
from korlm.pretrain.distribute import gpu_supports_bf16

TPU_ACCELERATORS = ("TPU_V2", "TPU_V3", "TPU_V4_POD", "TPU_V5_LITEPOD")
# Steps whose code runs on the JAX backend (rehearsed under 8 virtual devices); the others
# (evaluate, finetune, export, ...) set KERAS_BACKEND=tensorflow themselves.
JAX_STEPS = ("pretrain",)
# v5e machine types and their chips per VM (Vertex "Configure compute resources for
# custom training", https://cloud.google.com/vertex-ai/docs/training/configure-compute#tpu;
# Cloud TPU v5e slice shapes: https://cloud.google.com/tpu/docs/v5e).
V5E_MACHINES = {"ct5lp-hightpu-1t": (1, "1x1"), "ct5lp-hightpu-4t": (4, "2x2"), "ct5lp-hightpu-8t": (8, "2x4")}


class IncoherentConfig(KorlmError):
    """A combination of image, backend, strategy, accelerator and precision that cannot run."""


@dataclasses.dataclass(frozen=True)
class StepPlacement:
    """What one step runs on and with, as resolved from the config."""

    step: str
    image: str
    variant: str
    backend: str
    accelerator: str  # none | gpu | tpu
    env: dict[str, str]


def image_variant(image: str, res: StepResources | None) -> str:
    if res is not None and res.image_variant:
        return res.image_variant
    repo = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    for variant in ("tpu", "gpu"):
        if repo.endswith(f"-{variant}"):
            return variant
    return "cpu"


def accelerator_kind(res: StepResources | None) -> str:
    if res is None or not res.accelerator_type:
        return "none"
    return "tpu" if res.accelerator_type in TPU_ACCELERATORS else "gpu"


def _backend(conf: Config, step: str, variant: str, res: StepResources | None) -> str:
    if res is not None and res.backend:
        return res.backend
    if step in JAX_STEPS and (variant == "tpu" or conf.pretrain.strategy == "jax-data-parallel"):
        return "jax"
    return "tensorflow"


def task_env(variant: str, backend: str, accelerator: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a task gets, written into the compiled pipeline.

    ``KERAS_BACKEND`` always. Under JAX, ``JAX_PLATFORMS`` names the accelerator's
    platform first, so a TPU or GPU that fails to initialise is an error on the first
    step instead of a run that silently trains on the host CPU. On a GPU under JAX,
    ``TF_FORCE_GPU_ALLOW_GROWTH`` keeps TensorFlow (imported for tf.data) from reserving
    the GPU memory JAX needs."""
    env = {"KERAS_BACKEND": backend, "KORLM_IMAGE_VARIANT": variant}
    if backend == "jax":
        if accelerator == "tpu":
            env["JAX_PLATFORMS"] = "tpu,cpu"
        elif accelerator == "gpu":
            env["JAX_PLATFORMS"] = "cuda,cpu"
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        else:
            env["JAX_PLATFORMS"] = "cpu"
    env.update(extra or {})
    return env


def placement(conf: Config, step: str) -> StepPlacement:
    res = conf.pipeline.resources.get(step)
    image = (res.image if res is not None and res.image else None) or conf.pipeline.image
    variant = image_variant(image, res)
    backend = _backend(conf, step, variant, res)
    accelerator = accelerator_kind(res)
    return StepPlacement(step, image, variant, backend, accelerator,
                         task_env(variant, backend, accelerator, res.env if res is not None else None))


def _problems(conf: Config, step: str, p: StepPlacement) -> list[str]:
    key = f"pipeline.resources.{step}"
    res = conf.pipeline.resources.get(step)
    image_keys = f"{key}.image / {key}.image_variant" if res is not None and res.image else \
        f"pipeline.image / {key}.image_variant"
    acc = f"{key}.accelerator_type {res.accelerator_type}" if res is not None and res.accelerator_type else ""
    out = []
    if p.backend == "jax" and step not in JAX_STEPS:
        out.append(f"{key}.backend jax: only {', '.join(JAX_STEPS)} runs on the JAX backend; "
                   f"{step} runs TensorFlow")
    if p.accelerator == "tpu" and step not in JAX_STEPS:
        out.append(f"{acc}: only {', '.join(JAX_STEPS)} runs on a TPU ({step} runs TensorFlow, which a "
                   "TPU VM's JAX image cannot drive)")
    if p.accelerator == "tpu" and p.variant != "tpu":
        out.append(f"{acc} needs the tpu image ({image_keys} is {p.variant}: no libtpu)")
    if p.accelerator == "gpu" and p.variant != "gpu":
        out.append(f"{acc} needs the gpu image ({image_keys} is {p.variant}: no CUDA libraries)")
    if p.variant == "tpu" and p.accelerator != "tpu":
        out.append(f"{image_keys} is the tpu image, for TPU VMs only; {key}.accelerator_type is "
                   f"{res.accelerator_type if res is not None and res.accelerator_type else 'unset'}")
    if p.backend == "tensorflow" and (p.accelerator == "tpu" or p.variant == "tpu"):
        out.append(f"{key}.backend tensorflow on a TPU VM: TensorFlow there needs the TPU-VM TensorFlow "
                   "build, which the tpu image does not hold; use backend jax")
    if res is not None and res.machine_type and res.accelerator_type:
        out += _machine_problems(key, res)
    if step == "pretrain":
        out += _pretrain_problems(conf, key, p, res)
    return out


def _machine_problems(key: str, res: StepResources) -> list[str]:
    machine, acc, count = res.machine_type, res.accelerator_type, res.accelerator_count
    out = []
    if machine.startswith("ct5lp-"):
        if acc != "TPU_V5_LITEPOD":
            out.append(f"{key}.machine_type {machine} is a TPU v5e VM: accelerator_type must be TPU_V5_LITEPOD")
        chips, topology = V5E_MACHINES.get(machine, (None, None))
        if chips is None:
            out.append(f"{key}.machine_type {machine}: unknown v5e machine; use one of {', '.join(V5E_MACHINES)}")
        elif count != chips:
            out.append(f"{key}.accelerator_count {count} but {machine} has {chips} chips")
        elif res.tpu_topology != topology:
            out.append(f"{key}.tpu_topology must be {topology} for {machine} (got {res.tpu_topology or 'unset'}; "
                       "Vertex requires the topology for TPU v5e)")
    elif acc == "TPU_V5_LITEPOD":
        out.append(f"{key}.accelerator_type TPU_V5_LITEPOD runs on ct5lp-hightpu-* machines, not {machine}")
    elif acc in ("TPU_V2", "TPU_V3") and machine != "cloud-tpu":
        out.append(f"{key}.accelerator_type {acc} runs on machine_type cloud-tpu, not {machine}")
    elif machine == "cloud-tpu" and acc not in ("TPU_V2", "TPU_V3"):
        out.append(f"{key}.machine_type cloud-tpu takes TPU_V2 or TPU_V3, not {acc}")
    return out


def _pretrain_problems(conf: Config, key: str, p: StepPlacement, res: StepResources | None) -> list[str]:
    strategy, precision = conf.pretrain.strategy, conf.pretrain.precision
    acc_name = res.accelerator_type if res is not None and res.accelerator_type else "none"
    where = f"{key}.accelerator_type {acc_name}"
    out = []
    if strategy == "jax-data-parallel" and p.backend != "jax":
        out.append(f"pretrain.strategy jax-data-parallel needs {key}.backend jax (it is {p.backend})")
    if strategy == "tpu" and p.backend == "tensorflow":
        out.append(f"pretrain.strategy tpu with {key}.backend tensorflow is TensorFlow's TPUStrategy, which "
                   "cannot drive a Vertex TPU VM; use jax-data-parallel with backend jax")
    if strategy == "tpu" and p.accelerator != "tpu":
        out.append(f"pretrain.strategy tpu but {where} is not a TPU")
    if strategy == "gpu" and p.accelerator != "gpu":
        out.append(f"pretrain.strategy gpu but {where} is not a GPU")
    if strategy == "cpu" and p.accelerator != "none":
        out.append(f"pretrain.strategy cpu would leave {where} idle")
    # GPUs without bfloat16 arithmetic (before Ampere): the same table pretraining picks
    # its precision by (Vertex names such as NVIDIA_TESLA_T4 match it lower-cased)
    if precision == "mixed_bfloat16" and p.accelerator == "gpu" and gpu_supports_bf16(acc_name) is False:
        out.append(f"pretrain.precision mixed_bfloat16 on {where}: no bfloat16 hardware before Ampere; "
                   "use mixed_float16 or auto")
    if precision == "mixed_float16" and p.accelerator == "tpu":
        out.append(f"pretrain.precision mixed_float16 on {where}: TPUs compute in bfloat16; "
                   "use mixed_bfloat16 or auto")
    return out


def check_coherence(conf: Config, steps=None) -> dict[str, StepPlacement]:
    """Every step with resources (or ``steps``): its placement, or one
    :class:`IncoherentConfig` line naming the keys of the first problem found."""
    steps = list(steps if steps is not None else conf.pipeline.resources)
    if "pretrain" not in steps:
        steps.append("pretrain")  # strategy/precision of a pretrain on the default image
    placements = {}
    for step in steps:
        p = placement(conf, step)
        problems = _problems(conf, step, p)
        if problems:
            raise IncoherentConfig(problems[0])
        placements[step] = p
    return placements


def tensorboard_region(name: str) -> str:
    return re.match(r"projects/[^/]+/locations/([^/]+)/", name).group(1)


def check_vertex_job_settings(conf: Config) -> None:
    """What Vertex would refuse about a CustomJob's TensorBoard, checked here."""
    for step, res in conf.pipeline.resources.items():
        if not res.tensorboard:
            continue
        key = f"pipeline.resources.{step}.tensorboard"
        if not conf.vertex.service_account:
            raise IncoherentConfig(f"{key} needs vertex.service_account: Vertex AI TensorBoard uploads run "
                                   "as a service account, not the default Custom Code agent")
        region = tensorboard_region(res.tensorboard)
        if region != conf.vertex.region:
            raise IncoherentConfig(f"{key} is in {region}, vertex.region is {conf.vertex.region}: "
                                   "the TensorBoard instance must be in the job's region")
        if not res.base_output_directory:
            raise IncoherentConfig(f"{key} needs pipeline.resources.{step}.base_output_directory (gs://): "
                                   "Vertex writes AIP_TENSORBOARD_LOG_DIR under it")
