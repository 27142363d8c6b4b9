"""Vertex AI submission: the compiled placement (CustomJob/TPU, Dataflow, resources) and
the CreatePipelineJob request the client would send.

Mocked, because it cannot run here: the Vertex AI API itself. `test_submit_sends_...`
replaces only the PipelineService client's create call, capturing the request proto
that aiplatform built, the Resource Manager project-number lookup, and credentials
(none exist on this machine). The pipeline
root's bucket check that `PipelineJob.submit` makes goes to a real GCS emulator.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from korlm import config
from korlm.errors import KorlmError
from korlm.storage import beam_artifact_path
from pipelines import vertex
from pipelines.compile import compile_pipeline
from tests import gcs_emulator

SECRET = "hf_vertex_compile_secret_0123456789"


@pytest.fixture(scope="module")
def bert_base():
    return config.load("configs/vertex-bert-base.yaml")


@pytest.fixture(scope="module")
def compiled(bert_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("vx") / "p.yaml"
    compile_pipeline(bert_base, str(out), target="vertex")
    return yaml.safe_load(out.read_text())


def test_pretrain_is_a_tpu_custom_job_and_beam_steps_go_to_dataflow(compiled):
    tasks = vertex.task_resources(compiled)
    assert tasks["pretrain"] == {
        "vertex_custom_job": True, "image": "us-docker.pkg.dev/your-project/korlm/korlm-tpu:COMMIT",
        "machine_spec": {"accelerator_count": 8, "accelerator_type": "TPU_V5_LITEPOD",
                         "machine_type": "ct5lp-hightpu-8t", "tpu_topology": "2x4"},
        "env": {"KERAS_BACKEND": "jax", "KORLM_IMAGE_VARIANT": "tpu", "JAX_PLATFORMS": "tpu,cpu"},
        "timeout": "604800s", "restart_job_on_worker_restart": True, "strategy": "STANDARD",
        "max_wait_duration": "86400s", "tensorboard": "", "base_output_directory": "",
        "service_account": "korlm-runner@your-project.iam.gserviceaccount.com"}
    pools = compiled["components"]["comp-pretrain"]["inputDefinitions"]["parameters"]
    assert pools["service_account"]["defaultValue"] == "korlm-runner@your-project.iam.gserviceaccount.com"
    # the standard GCPC worker pool shape: the container's command/args and env, one replica
    (pool,) = pools["worker_pool_specs"]["defaultValue"]
    assert pool["replica_count"] == 1 and pool["container_spec"]["command"][:2] == ["sh", "-ec"]
    assert {"name": "KERAS_BACKEND", "value": "jax"} in pool["container_spec"]["env"]
    params = compiled["root"]["dag"]["tasks"]["pretrain"]["inputs"]["parameters"]["params"]["runtimeValue"]
    assert params["constant"]["strategy"] == "jax-data-parallel"
    assert params["constant"]["precision"] == "mixed_bfloat16"
    assert tasks["evaluate"]["env"] == {"KERAS_BACKEND": "tensorflow", "KORLM_IMAGE_VARIANT": "gpu"}
    assert tasks["evaluate"]["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert tasks["vocab"]["resources"]["resourceMemoryLimit"] == "64G"
    assert tasks["clean"]["beam_runner"] == tasks["pretrain-data"]["beam_runner"] == "DataflowRunner"
    options = compiled["root"]["dag"]["tasks"]["clean"]["inputs"]["parameters"]["params"][
        "runtimeValue"]["constant"]["beam_options"]
    assert {"--project=your-project", "--region=us-central1",
            "--temp_location=gs://your-bucket/korlm/dataflow-tmp",
            "--sdk_container_image=us-docker.pkg.dev/your-project/korlm/korlm-dataflow:COMMIT",
            "--max_num_workers=50"} <= set(options)
    # steps without resources keep the component image and ask for nothing special
    assert tasks["report"] == {"image": "us-docker.pkg.dev/your-project/korlm/korlm:COMMIT"}


def test_bart_and_gpu_presets_compile_with_their_env(tmp_path):
    bart = config.load("configs/vertex-bart-base.yaml")
    compile_pipeline(bart, str(tmp_path / "bart.yaml"), target="vertex")
    tasks = vertex.task_resources(yaml.safe_load((tmp_path / "bart.yaml").read_text()))
    assert tasks["pretrain"]["machine_spec"]["tpu_topology"] == "2x4"
    assert tasks["pretrain"]["env"]["KERAS_BACKEND"] == "jax"
    gpu = config.load("configs/vertex-small-gpu.yaml")
    compile_pipeline(gpu, str(tmp_path / "gpu.yaml"), target="vertex")
    tasks = vertex.task_resources(yaml.safe_load((tmp_path / "gpu.yaml").read_text()))
    assert tasks["pretrain"]["env"] == {"KERAS_BACKEND": "jax", "KORLM_IMAGE_VARIANT": "gpu",
                                        "JAX_PLATFORMS": "cuda,cpu", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert tasks["pretrain"]["resources"]["accelerator"]["resourceType"] == "NVIDIA_L4"


def test_job_hygiene_options_reach_the_request(bert_base, tmp_path):
    """timeout, restart, Spot scheduling, TensorBoard and base_output_directory, as the
    PipelineJob proto the client would send carries them (nothing is sent)."""
    from google.auth.credentials import AnonymousCredentials

    data = bert_base.model_dump()
    data["pipeline"]["resources"]["pretrain"].update(
        timeout="3d", scheduling="SPOT", restart_job_on_worker_restart=True,
        tensorboard="projects/your-project/locations/us-central1/tensorboards/42",
        base_output_directory="gs://your-bucket/korlm/custom-jobs")
    conf = config.validate(data)
    summary = vertex.submit(conf, dry_run=True, template_dir=str(tmp_path))
    shown = summary["tasks"]["pretrain"]
    assert (shown["timeout"], shown["strategy"], shown["restart_job_on_worker_restart"]) == ("259200s", "SPOT", True)
    job = vertex.build_job(conf, summary["template"], credentials=AnonymousCredentials())
    params = job._gca_resource.pipeline_spec["components"]["comp-pretrain"]["inputDefinitions"]["parameters"]
    sent = {k: params[k]["defaultValue"] for k in ("timeout", "strategy", "restart_job_on_worker_restart",
                                                   "tensorboard", "base_output_directory")}
    assert sent == {"timeout": "259200s", "strategy": "SPOT", "restart_job_on_worker_restart": True,
                    "tensorboard": "projects/your-project/locations/us-central1/tensorboards/42",
                    "base_output_directory": "gs://your-bucket/korlm/custom-jobs"}
    pool = params["worker_pool_specs"]["defaultValue"][0]
    assert pool["machine_spec"]["tpu_topology"] == "2x4"
    no_sa = config.validate({**conf.model_dump(), "vertex": {**conf.vertex.model_dump(), "service_account": None}})
    with pytest.raises(KorlmError, match="tensorboard needs vertex.service_account"):
        vertex.submit(no_sa, dry_run=True, template_dir=str(tmp_path / "2"))


def _price_table(tmp_path, **extra):
    table = {"read_on": "2026-12-02", "region": "us-central1", "currency": "USD", "checked": True,
             "source": "https://example.test/prices", "pipeline_run": 0.03,
             "machines": {"ct5lp-hightpu-8t": 0.0, "n1-standard-8": 0.5},
             "accelerators": {"TPU_V5_LITEPOD": 1.5, "NVIDIA_TESLA_T4": 0.25}, **extra}
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(table))
    return str(path)


def test_cost_estimate_arithmetic(bert_base, tmp_path):
    from pipelines import cost

    data = bert_base.model_dump()
    data["vertex"]["price_table"] = _price_table(tmp_path)
    data["pipeline"]["resources"]["pretrain"]["tokens_per_second"] = 1_000_000
    data["pipeline"]["resources"]["evaluate"] = {"machine_type": "n1-standard-8", "expected_hours": 3,
                                                 "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2}
    est = cost.estimate(config.validate(data))
    rows = {r["step"]: r for r in est["steps"]}
    tokens = 900_000 * 256 * 128 + 100_000 * 256 * 512  # the two phases
    assert cost.pretrain_tokens(config.validate(data)) == tokens
    assert rows["pretrain"]["hours"] == pytest.approx(tokens / 1e6 / 3600)
    assert rows["pretrain"]["usd_per_hour"] == pytest.approx(8 * 1.5)
    assert rows["evaluate"]["usd"] == pytest.approx(3 * (0.5 + 2 * 0.25))
    assert est["total_usd"] == pytest.approx(rows["pretrain"]["usd"] + rows["evaluate"]["usd"] + 0.03)
    assert est["unpriced_steps"] == ["clean", "vocab", "pretrain_data"]
    assert rows["clean"]["basis"] == "runs on Dataflow: not estimated"


def test_cost_estimate_from_the_assumed_mfu(bert_base):
    from korlm.pretrain.distribute import PEAK_FLOPS, model_flops_per_token
    from pipelines import cost

    hours, basis = cost.pretrain_hours(bert_base, bert_base.pipeline.resources["pretrain"])
    flops = sum(steps * 256 * seq * model_flops_per_token("bert", "base", 32000, seq,
                                                          mlm_predictions=-(-seq * 15 // 100))
                for steps, seq in ((900_000, 128), (100_000, 512)))
    assert hours == pytest.approx(flops / (0.35 * PEAK_FLOPS["TPU v5e"]["bfloat16"] * 8) / 3600)
    assert "ASSUMED 35% MFU of 8 x TPU v5e bfloat16 peak" in basis


def test_cost_table_printing_and_price_table_errors(bert_base, tmp_path):
    from pipelines import cost

    est = cost.estimate(bert_base, cost.load_price_table(_price_table(tmp_path, checked=False)))
    text = cost.format_table(est)
    lines = text.splitlines()
    assert lines[0].startswith("ESTIMATED cost of this run: an estimate, not a quote (USD, us-central1)")
    assert "read 2026-12-02; NOT checked against https://example.test/prices" in lines[1]
    pretrain = next(ln for ln in lines if ln.startswith("pretrain "))
    assert "ct5lp-hightpu-8t + 8 x TPU_V5_LITEPOD (2x4)" in pretrain and "12.00" in pretrain
    assert f"{est['steps'][3]['usd']:,.2f}" in pretrain
    assert lines[-1] == f"total: USD {est['total_usd']:,.2f} (not counted: clean, vocab, pretrain_data, evaluate)"
    default = cost.load_price_table(None)
    assert default["read_on"] and default["checked"] is False and "TPU_V5_LITEPOD" in default["accelerators"]
    with pytest.raises(KorlmError, match="vertex.price_table .*nope.yaml: cannot be read"):
        cost.load_price_table(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("machines: {}\n")
    with pytest.raises(KorlmError, match="needs read_on, machines and accelerators"):
        cost.load_price_table(str(tmp_path / "bad.yaml"))


def test_same_config_for_kfp_and_local_has_no_vertex_specifics(bert_base, tmp_path):
    with pytest.raises(KorlmError, match="machine_type is a Vertex AI setting"):
        compile_pipeline(bert_base, str(tmp_path / "k.yaml"), target="kfp")
    gpu = config.load("configs/vertex-small-gpu.yaml")
    compile_pipeline(gpu, str(tmp_path / "k.yaml"), target="kfp")
    tasks = vertex.task_resources(next(yaml.safe_load_all((tmp_path / "k.yaml").read_text())))
    assert tasks["pretrain"]["resources"]["accelerator"]["resourceType"] == "NVIDIA_L4"
    assert "beam_runner" not in tasks.get("clean", {}) or tasks["clean"]["beam_runner"] == "DirectRunner"


def test_dry_run_prints_the_job_and_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    proc = subprocess.run(
        [sys.executable, "-m", "korlm.cli", "pipeline", "submit", "--target", "vertex",
         "--config", "configs/vertex-bert-base.yaml", "--dry-run",
         # pipeline parameters go in the request's parameter_values; other keys are compiled in
         "--set", "vocab.vocab_size=48000", "--set", "push.dry_run=true", "--set", "vertex.labels={team: nlp}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["dry_run"] is True
    assert summary["parent"] == "projects/your-project/locations/us-central1"
    assert summary["pipeline_root"] == "gs://your-bucket/korlm/pipeline-root"
    assert summary["labels"]["team"] == "nlp" and summary["labels"]["korlm-model"] == "bert-base"
    assert summary["parameter_values"] == {"vocab_size": 48000, "push_dry_run": True}
    with open(summary["template"], encoding="utf-8") as f:  # compiled once, from the config's values
        defaults = yaml.safe_load(f)["root"]["inputDefinitions"]["parameters"]
    assert defaults["vocab_size"]["defaultValue"] == config.load("configs/vertex-bert-base.yaml").vocab.vocab_size
    assert defaults["push_dry_run"]["defaultValue"] is False
    assert summary["tasks"]["pretrain"]["machine_spec"]["accelerator_type"] == "TPU_V5_LITEPOD"
    assert summary["tasks"]["pretrain"]["timeout"] == "604800s"
    assert summary["cost_estimate"]["estimate"] is True and summary["cost_estimate"]["total_usd"] > 0
    assert "ESTIMATED cost of this run" in proc.stderr and "ct5lp-hightpu-8t + 8 x TPU_V5_LITEPOD" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    with open(summary["template"], encoding="utf-8") as f:
        assert SECRET not in f.read()


def test_submit_sends_the_pipeline_job_request(bert_base, tmp_path, monkeypatch):
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
    from google.cloud.aiplatform_v1.types import pipeline_job as gca_pipeline_job

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "your-project"))
    sent = {}

    def create_pipeline_job(self, *, parent, pipeline_job, pipeline_job_id=None, **kwargs):
        sent.update(parent=parent, job=pipeline_job, job_id=pipeline_job_id)
        created = gca_pipeline_job.PipelineJob(pipeline_job)
        created.name = f"{parent}/pipelineJobs/{pipeline_job_id}"
        return created

    monkeypatch.setattr(PipelineServiceClient, "create_pipeline_job", create_pipeline_job)
    # The bucket-ownership check asks Resource Manager for the project number (no network
    # here); answer with the number the emulator gives its buckets.
    from google.cloud.aiplatform.utils import resource_manager_utils

    monkeypatch.setattr(resource_manager_utils, "get_project_number", lambda project, **kw: 1234)
    # submit() first checks the pipeline root's bucket: a real GCS emulator answers
    with gcs_emulator.running("your-bucket"):
        summary = vertex.submit(bert_base, template_dir=str(tmp_path),
                                parameter_values={"vocab_size": 48000, "learning_rate": 3e-4,
                                                  "eval_tasks": ["nsmc"]})
    job = sent["job"]
    # the run's values travel as runtime parameter values, not in a recompiled template
    values = job.runtime_config.parameter_values
    assert dict(values) == {"vocab_size": 48000, "learning_rate": 3e-4, "eval_tasks": ["nsmc"]}
    assert summary["parameter_values"] == {"vocab_size": 48000, "learning_rate": 3e-4, "eval_tasks": ["nsmc"]}
    root = job.pipeline_spec["root"]["inputDefinitions"]["parameters"]
    assert root["vocab_size"]["defaultValue"] == bert_base.vocab.vocab_size
    assert sent["parent"] == "projects/your-project/locations/us-central1"
    assert job.display_name == "korlm-bert-base"
    assert job.service_account == "korlm-runner@your-project.iam.gserviceaccount.com"
    assert job.runtime_config.gcs_output_directory == "gs://your-bucket/korlm/pipeline-root"
    # the label names the config the run does: the compiled one with its parameter values
    from pipelines.korlm_pipeline import apply_parameters

    run_conf = apply_parameters(bert_base, {"vocab_size": 48000, "learning_rate": 3e-4, "eval_tasks": ["nsmc"]})
    assert job.labels["korlm-config"] == config.config_hash(run_conf)[:12] != config.config_hash(bert_base)[:12]
    tasks = job.pipeline_spec["root"]["dag"]["tasks"]
    assert {"clean", "vocab", "pretrain-data", "pretrain", "report", "export", "push"} <= set(tasks)
    cached = ("clean", "vocab", "pretrain-data", "pretrain", "evaluate-2", "report", "export")
    assert all(tasks[name]["cachingOptions"]["enableCache"] for name in cached)
    assert not tasks["push"].get("cachingOptions", {}).get("enableCache")
    assert summary["job_name"] == f"{sent['parent']}/pipelineJobs/{sent['job_id']}"


@pytest.mark.parametrize("override, message", [
    ({"vertex.project": None}, "vertex.project is not set"),
    ({"vertex.pipeline_root": None}, "vertex.pipeline_root is not set"),
    ({"pipeline.image": "korlm:0.1.0"}, "is a local image"),
    ({"evaluate.data_dir": "data/sample/eval"}, "evaluate.data_dir 'data/sample/eval' is local"),
])
def test_vertex_config_gaps_are_one_line_errors(bert_base, override, message):
    data = bert_base.model_dump()
    for dotted, value in override.items():
        section, key = dotted.split(".")
        data[section][key] = value
    conf = config.validate(data)
    with pytest.raises(KorlmError, match=message):
        vertex.check_vertex_config(conf)
    local_input = config.apply_overrides(bert_base, {"clean.inputs": [{"path": "data/sample/raw/x.txt"}]})
    with pytest.raises(KorlmError, match="is a local path"):
        vertex.check_vertex_config(local_input)


def test_bad_resources_are_config_errors():
    with pytest.raises(config.ConfigError, match="a TPU needs machine_type"):
        config.validate({"pipeline": {"resources": {"pretrain": {"accelerator_type": "TPU_V5_LITEPOD",
                                                                 "accelerator_count": 8}}}})
    with pytest.raises(config.ConfigError, match="unknown step 'pretrian'"):
        config.validate({"pipeline": {"resources": {"pretrian": {"cpu": "4"}}}})
    with pytest.raises(config.ConfigError, match="dataflow.temp_location"):
        config.validate({"vertex": {"dataflow": {"enabled": True}}})


def test_beam_steps_use_gs_uris_only_for_remote_workers():
    mount, uri = "/gcs/bucket/root/clean/corpus", "gs://bucket/root/clean/corpus"
    assert beam_artifact_path(mount, uri, ["--runner=DataflowRunner"]) == uri
    assert beam_artifact_path(mount, uri, []) == mount
    assert beam_artifact_path(mount, uri, ["--runner=DirectRunner"]) == mount
    assert beam_artifact_path("/tmp/x", "minio://b/x", ["--runner=FlinkRunner"]) == "/tmp/x"


def _earlier_run(tmp_path, conf, outputs):
    run = tmp_path / "earlier"
    run.mkdir()
    (run / "outputs.json").write_text(json.dumps({"run_id": "earlier", "outputs": outputs}))
    (run / "config.yaml").write_text(yaml.safe_dump(conf.model_dump(mode="json")))
    return run


def test_run_step_submits_a_one_step_pipeline_importing_gs_artifacts(bert_base, tmp_path):
    from pipelines.run_step import run_step

    run = _earlier_run(tmp_path, bert_base, {"clean": "gs://your-bucket/runs/1/clean",
                                             "vocab": "gs://your-bucket/runs/1/vocab",
                                             "pretrain": "gs://your-bucket/runs/1/pretrain"})
    summary = run_step("pretrain-data", str(run), submit="vertex", dry_run=True,
                       overrides={"pretrain_data.max_seq_length": 512})
    tasks = summary["tasks"]
    imported = sorted(t["imports"] for t in tasks.values() if "imports" in t)
    assert imported == ["gs://your-bucket/runs/1/clean", "gs://your-bucket/runs/1/vocab"]
    assert tasks["pretrain-data"]["beam_runner"] == "DataflowRunner"
    assert "pretrain" not in tasks and summary["display_name"] == "korlm-bert-base"
    with open(summary["template"], encoding="utf-8") as f:
        template = yaml.safe_load(f)
    params = template["root"]["dag"]["tasks"]["pretrain-data"]["inputs"]["parameters"]["params"]
    assert params["runtimeValue"]["constant"]["max_seq_length"] == 512


def test_run_step_submit_refuses_local_artifacts(bert_base, tmp_path):
    from pipelines.run_step import run_step

    run = _earlier_run(tmp_path, bert_base, {"clean": "/home/me/runs/1/clean", "vocab": "gs://b/vocab"})
    with pytest.raises(KorlmError, match="must be in a bucket .* /home/me/runs/1/clean is a local path"):
        run_step("vocab", str(run), submit="vertex", dry_run=True)


def test_run_step_dry_run_on_a_kfp_cluster(tmp_path):
    from pipelines.run_step import run_step

    conf = config.load("configs/vertex-small-gpu.yaml")
    run = _earlier_run(tmp_path, conf, {"clean": "gs://your-bucket/runs/1/clean"})
    summary = run_step("vocab", str(run), submit="kfp", dry_run=True)
    assert summary["pipeline_name"] == "korlm-bert-small-vocab"
    assert summary["tasks"]["importer"] == {"imports": "gs://your-bucket/runs/1/clean"}
    assert summary["dry_run"] is True
