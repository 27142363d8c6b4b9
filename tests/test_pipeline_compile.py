"""Compiling the DAG needs only kfp, and the compiled spec has every step."""

import subprocess
import sys

import yaml

from korlm import config
from pipelines.compile import compile_pipeline

HEAVY = ("tensorflow", "keras", "keras_hub", "apache_beam", "torch", "transformers")


def test_compile_writes_every_step(tmp_path):
    out = tmp_path / "p.yaml"
    compile_pipeline(config.load("configs/local.yaml"), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))  # 2nd doc: the Kubernetes platform spec
    executors = spec["deploymentSpec"]["executors"]
    names = " ".join(executors)
    for step in ("clean", "vocab", "pretrain-data", "pretrain", "evaluate", "report",
                 "export", "push"):
        assert f"exec-{step}" in names, step
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"korlm:0.1.0"}
    root = spec["root"]["dag"]["tasks"]
    assert "checkpoints" in " ".join(root) or any("for-loop" in t for t in root)
    assert root["push"]["cachingOptions"] == {}  # push is never cached
    # no pip install at task start: the image has korlm
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"].get("command", []))


def test_compile_imports_no_heavy_library():
    code = ("import sys; from korlm import config; from pipelines.compile import compile_pipeline;"
            "import tempfile, os; d = tempfile.mkdtemp();"
            "compile_pipeline(config.load('configs/tiny.yaml'), os.path.join(d, 'p.yaml'));"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_compile(tmp_path):
    out = tmp_path / "cli.yaml"
    proc = subprocess.run([sys.executable, "-m", "korlm.cli", "pipeline", "compile",
                           "--config", "configs/tiny.yaml", "--output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_cli_compile_refuses_an_incoherent_config_in_one_line(tmp_path):
    out = tmp_path / "cli.yaml"
    proc = subprocess.run([sys.executable, "-m", "korlm.cli", "pipeline", "compile", "--target", "vertex",
                           "--config", "configs/vertex-bert-base.yaml", "--output", str(out),
                           "--set", "pretrain.strategy=gpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == ("korlm pipeline: error: pretrain.strategy gpu but "
                                   "pipeline.resources.pretrain.accelerator_type TPU_V5_LITEPOD is not a GPU")


def test_push_gets_run_id_and_config_hash_but_never_the_token(tmp_path, monkeypatch):
    secret = "hf_compile_time_secret_123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    conf = config.load("configs/local.yaml")
    out = tmp_path / "p.yaml"
    compile_pipeline(conf, str(out))
    text = out.read_text()
    assert secret not in text
    push_inputs = next(yaml.safe_load_all(text))["root"]["dag"]["tasks"]["push"]["inputs"]["parameters"]
    assert push_inputs["config_hash"]["runtimeValue"]["constant"] == config.config_hash(conf)
    assert push_inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"


def test_long_steps_retry_and_push_is_never_cached(tmp_path):
    conf = config.load("configs/local.yaml")
    out = tmp_path / "p.yaml"
    compile_pipeline(conf, str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("clean", "pretrain-data", "pretrain", "evaluate-2"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name
    loop = next(c for n, c in spec["components"].items() if n.startswith("comp-for-loop"))
    assert loop["dag"]["tasks"]["evaluate"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["push"] and tasks["push"]["cachingOptions"] == {}
