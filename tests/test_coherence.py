"""Image variant x KERAS_BACKEND x pretrain.strategy x accelerator x precision, checked
before anything is compiled or submitted (pipelines/coherence.py). Pure config-level: no
pipeline is compiled except in the last test, which stops before compiling."""

from __future__ import annotations

import pytest

from korlm import config
from korlm.errors import KorlmError
from pipelines.coherence import (
    IncoherentConfig,
    check_coherence,
    check_vertex_job_settings,
    placement,
)
from pipelines.compile import compile_pipeline

TPU_IMAGE = "us-docker.pkg.dev/p/korlm/korlm-tpu:abc"
GPU_IMAGE = "us-docker.pkg.dev/p/korlm/korlm-gpu:abc"
CPU_IMAGE = "us-docker.pkg.dev/p/korlm/korlm:abc"
V5E = {"machine_type": "ct5lp-hightpu-8t", "accelerator_type": "TPU_V5_LITEPOD", "accelerator_count": 8,
       "tpu_topology": "2x4", "image": TPU_IMAGE}
L4 = {"accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
T4 = {"accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
V100 = {"accelerator_type": "NVIDIA_TESLA_V100", "accelerator_count": 1}


def conf(pretrain_res=None, *, image=GPU_IMAGE, strategy="auto", precision="auto", evaluate_res=None,
         vertex=None):
    resources = {}
    if pretrain_res is not None:
        resources["pretrain"] = pretrain_res
    if evaluate_res is not None:
        resources["evaluate"] = evaluate_res
    return config.validate({"pretrain": {"strategy": strategy, "precision": precision},
                            "pipeline": {"image": image, "resources": resources},
                            "vertex": vertex or {}})


RUNS = {
    "v5e, jax data parallel, bf16": conf(V5E, strategy="jax-data-parallel", precision="mixed_bfloat16"),
    "v5e, auto strategy and precision": conf(V5E),
    "v5e, strategy tpu under jax": conf(V5E, strategy="tpu"),
    "v3-8 on cloud-tpu, jax": conf({**V5E, "machine_type": "cloud-tpu", "accelerator_type": "TPU_V3",
                                    "tpu_topology": None}, strategy="jax-data-parallel"),
    "L4, jax, bf16": conf({**L4, "backend": "jax"}, strategy="jax-data-parallel", precision="mixed_bfloat16"),
    "L4, tensorflow kept as an option": conf(L4, strategy="gpu", precision="mixed_bfloat16"),
    "A100 on a2, jax": conf({"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
                             "accelerator_count": 1, "backend": "jax"}, strategy="jax-data-parallel"),
    "T4, float16": conf(T4, precision="mixed_float16"),
    "CPU image, jax on the CPU": conf(None, image=CPU_IMAGE, strategy="jax-data-parallel"),
    "custom image name, variant given": conf({**V5E, "image": "r.example/team/trainer:1", "image_variant": "tpu"}),
}


@pytest.mark.parametrize("name", RUNS)
def test_runnable_combinations_pass(name):
    check_coherence(RUNS[name])


@pytest.mark.parametrize("preset", ["vertex-bert-base", "vertex-bart-base", "vertex-small-gpu"])
def test_presets_are_coherent(preset):
    placements = check_coherence(config.load(f"configs/{preset}.yaml"))
    pretrain = placements["pretrain"]
    assert pretrain.backend == "jax" and pretrain.env["KERAS_BACKEND"] == "jax"
    assert pretrain.variant == ("gpu" if preset == "vertex-small-gpu" else "tpu")
    assert placements["evaluate"].backend == "tensorflow" and placements["evaluate"].variant == "gpu"


BAD = {
    "tensorflow backend on a TPU VM": (
        conf({**V5E, "backend": "tensorflow"}), r"pipeline.resources.pretrain.backend tensorflow on a TPU VM"),
    "GPU strategy on a TPU": (conf(V5E, strategy="gpu"), r"pretrain.strategy gpu but .*TPU_V5_LITEPOD is not a GPU"),
    "TPUStrategy (tensorflow) asked for": (
        conf(L4, strategy="tpu"), r"pretrain.strategy tpu with pipeline.resources.pretrain.backend tensorflow"),
    "bf16 on a T4": (conf(T4, precision="mixed_bfloat16"), r"mixed_bfloat16 on .*NVIDIA_TESLA_T4: no bfloat16"),
    "bf16 on a V100": (conf(V100, precision="mixed_bfloat16"), r"NVIDIA_TESLA_V100: no bfloat16"),
    "float16 on a TPU": (conf(V5E, precision="mixed_float16"), r"mixed_float16 on .*TPUs compute in bfloat16"),
    "JAX strategy on the tensorflow backend": (
        conf({**L4, "backend": "tensorflow"}, strategy="jax-data-parallel"),
        r"jax-data-parallel needs pipeline.resources.pretrain.backend jax"),
    "TPU without the tpu image": (
        conf({**V5E, "image": CPU_IMAGE}), r"TPU_V5_LITEPOD needs the tpu image .*image_variant is cpu"),
    "GPU without the gpu image": (conf(L4, image=CPU_IMAGE), r"NVIDIA_L4 needs the gpu image"),
    "tpu image without a TPU": (conf({"cpu": "8", "image": TPU_IMAGE}), r"is the tpu image, for TPU VMs only"),
    "v5e chips and machine disagree": (conf({**V5E, "accelerator_count": 4}),
                                       r"accelerator_count 4 but ct5lp-hightpu-8t has 8 chips"),
    "v5e without its topology": (conf({**V5E, "tpu_topology": None}), r"tpu_topology must be 2x4"),
    "v5e on the v2/v3 machine": (conf({**V5E, "machine_type": "cloud-tpu", "tpu_topology": None}),
                                 r"TPU_V5_LITEPOD runs on ct5lp-hightpu-\* machines"),
    "evaluate on a TPU": (conf(V5E, evaluate_res={**V5E}), r"only pretrain runs on a TPU"),
    "evaluate on jax": (conf(L4, evaluate_res={**L4, "backend": "jax"}), r"only pretrain runs on the JAX backend"),
    "CPU strategy with a GPU attached": (conf(L4, strategy="cpu"), r"pretrain.strategy cpu would leave"),
}


@pytest.mark.parametrize("name", BAD)
def test_incoherent_combinations_are_one_line_errors_naming_the_keys(name):
    bad, message = BAD[name]
    with pytest.raises(IncoherentConfig, match=message) as err:
        check_coherence(bad)
    assert "\n" not in str(err.value)


def test_variant_from_image_name_and_env_written_per_variant():
    assert placement(conf(V5E), "pretrain").env == {"KERAS_BACKEND": "jax", "KORLM_IMAGE_VARIANT": "tpu",
                                                    "JAX_PLATFORMS": "tpu,cpu"}
    gpu_jax = placement(conf({**L4, "backend": "jax", "env": {"XLA_FLAGS": "--xla_gpu_x"}}), "pretrain").env
    assert gpu_jax == {"KERAS_BACKEND": "jax", "KORLM_IMAGE_VARIANT": "gpu", "JAX_PLATFORMS": "cuda,cpu",
                       "TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_FLAGS": "--xla_gpu_x"}
    assert placement(conf(L4), "pretrain").env == {"KERAS_BACKEND": "tensorflow", "KORLM_IMAGE_VARIANT": "gpu"}
    assert placement(conf(None, image="r/x/korlm:1@sha256:ab"), "pretrain").variant == "cpu"


def test_tensorboard_needs_a_service_account_the_region_and_an_output_directory():
    tb = "projects/p/locations/us-central1/tensorboards/123"
    good = {**V5E, "tensorboard": tb, "base_output_directory": "gs://b/out"}
    check_vertex_job_settings(conf(good, vertex={"service_account": "sa@p.iam.gserviceaccount.com"}))
    with pytest.raises(IncoherentConfig, match="tensorboard needs vertex.service_account"):
        check_vertex_job_settings(conf(good))
    with pytest.raises(IncoherentConfig, match="is in europe-west4, vertex.region is us-central1"):
        check_vertex_job_settings(conf({**good, "tensorboard": tb.replace("us-central1", "europe-west4")},
                                       vertex={"service_account": "sa@p.iam.gserviceaccount.com"}))
    with pytest.raises(IncoherentConfig, match="needs pipeline.resources.pretrain.base_output_directory"):
        check_vertex_job_settings(conf({**good, "base_output_directory": None},
                                       vertex={"service_account": "sa@p.iam.gserviceaccount.com"}))


def test_custom_job_settings_without_a_machine_type_are_config_errors():
    with pytest.raises(config.ConfigError, match="timeout is a Vertex CustomJob setting: it needs machine_type"):
        conf({**L4, "timeout": "3d"})
    with pytest.raises(config.ConfigError, match="max_wait_duration applies to scheduling: FLEX_START"):
        conf({**V5E, "max_wait_duration": "2h"})
    with pytest.raises(config.ConfigError, match="timeout: string should match"):
        conf({**V5E, "timeout": "3 days"})


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_compile_refuses_before_compiling(tmp_path, target):
    bad = config.validate({"clean": {"inputs": [{"path": "gs://b/raw.txt"}]},
                           "pretrain": {"precision": "mixed_bfloat16"},
                           "pipeline": {"image": GPU_IMAGE, "resources": {"pretrain": T4}}})
    with pytest.raises(KorlmError, match="no bfloat16 hardware"):
        compile_pipeline(bad, str(tmp_path / "p.yaml"), target=target)
    assert not (tmp_path / "p.yaml").exists()


def test_the_tpu_image_defaults_to_jax():
    """docker/Dockerfile: one stage per variant sets KERAS_BACKEND, picked by VARIANT."""
    import re

    text = open("docker/Dockerfile", encoding="utf-8").read()
    stages = dict(re.findall(r"^FROM \S+ AS base-(\w+)\nENV KERAS_BACKEND=(\w+)$", text, flags=re.M))
    assert stages == {"cpu": "tensorflow", "gpu": "tensorflow", "tpu": "jax"}
    assert re.search(r"^FROM base-\$\{VARIANT\} AS component$", text, flags=re.M)
    assert len(re.findall(r"^ENV .*KERAS_BACKEND=", text, flags=re.M)) == 3  # no later override
