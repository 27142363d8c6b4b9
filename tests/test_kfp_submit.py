"""`korlm pipeline submit --target kfp`: the package compiled for a KFP cluster (Hub token
Secret mounted through kfp-kubernetes, local data on a PVC) and the requests kfp.Client
sends, against a local stand-in of the KFP REST API (tests/kfp_api_standin.py).

Not run here: a real KFP cluster (no Docker engine, no network); `make run-local` does
that on a laptop (see k8s/README.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from korlm import config
from korlm.errors import KorlmError
from pipelines import kfp_submit
from tests.kfp_api_standin import KfpApiStandIn

SECRET = "hf_kfp_cluster_secret_0123456789"
CLUSTER_SET = ["--set", "kfp.data_pvc=korlm-data", "--set", "kfp.poll_interval_s=0.01",
               "--set", "kfp.experiment=korlm-test"]


@pytest.fixture(scope="module")
def conf():
    return config.apply_overrides(config.load("configs/local.yaml"),
                                  {"kfp.data_pvc": "korlm-data", "kfp.poll_interval_s": 0.01})


@pytest.fixture(scope="module")
def package(conf, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", SECRET)  # in the environment while compiling: must not leak in
    try:
        out = kfp_submit.compile_for_cluster(conf, str(tmp_path_factory.mktemp("kfp") / "p.yaml"))
    finally:
        mp.undo()
    with open(out, encoding="utf-8") as f:
        text = f.read()
    return text, list(yaml.safe_load_all(text))


def _env(tmp_path) -> dict[str, str]:
    # HOME: kfp.Client reads ~/.config/kfp/context.json; keep the test's own.
    return {**os.environ, "HOME": str(tmp_path), "HF_TOKEN": SECRET}


def _korlm(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "korlm.cli", *args], capture_output=True, text=True,
                          timeout=300, env=_env(tmp_path))


def test_package_mounts_the_token_secret_and_data_pvc_and_never_holds_the_token(package, conf):
    text, (spec, platform) = package
    assert SECRET not in text
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    push = executors[spec["components"]["comp-push"]["executorLabel"]]
    assert push["secretAsEnv"] == [{
        "keyToEnv": [{"envVar": "HF_TOKEN", "secretKey": "token"}], "optional": True,
        "secretName": "korlm-hf-token",
        "secretNameParameter": {"runtimeValue": {"constant": "korlm-hf-token"}}}]
    mounted = {label for label, e in executors.items()
               if any(m["mountPath"] == "/opt/korlm/data" and m["constant"] == "korlm-data"
                      for m in e.get("pvcMount", []))}
    data_readers = {spec["components"][c]["executorLabel"] for c in spec["components"]
                    if c.startswith(("comp-clean", "comp-evaluate"))}
    assert mounted == data_readers and len(mounted) >= 3  # clean, evaluate per checkpoint, random init
    # only the push task sees the secret
    assert [label for label, e in executors.items() if "secretAsEnv" in e] == [
        spec["components"]["comp-push"]["executorLabel"]]
    # the clean inputs are the pipeline parameter clean_inputs, its default the cluster paths
    assert spec["root"]["dag"]["tasks"]["clean"]["inputs"]["parameters"]["inputs"] == {
        "componentInputParameter": "clean_inputs"}
    paths = [i["path"] for i in spec["root"]["inputDefinitions"]["parameters"]["clean_inputs"]["defaultValue"]]
    assert paths == ["/opt/korlm/data/sample/raw/movie_reviews.tsv", "/opt/korlm/data/sample/raw/petitions.jsonl.gz",
                     "/opt/korlm/data/sample/raw/law/*.txt"]


def test_local_paths_need_the_data_volume(conf):
    bare = conf.model_copy(update={"kfp": conf.kfp.model_copy(update={"data_pvc": None})})
    with pytest.raises(KorlmError, match=r"clean.inputs\[0\].path: data/sample/raw/movie_reviews.tsv .*kfp.data_pvc"):
        kfp_submit.cluster_inputs(bare)
    outside = config.apply_overrides(conf, {"evaluate.data_dir": "/home/me/eval"})
    with pytest.raises(KorlmError, match="evaluate.data_dir: /home/me/eval is not under data/"):
        kfp_submit.cluster_inputs(outside)
    gs = config.apply_overrides(bare, {"evaluate.data_dir": "gs://b/eval"})
    gs = gs.model_copy(update={"clean": gs.clean.model_copy(update={"inputs": []})})
    assert kfp_submit.cluster_inputs(gs) == ([], "gs://b/eval")


def test_wait_follows_the_run_to_succeeded_and_says_where_the_report_is(tmp_path):
    with KfpApiStandIn(states=("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")) as api:
        proc = _korlm("pipeline", "submit", "--target", "kfp", "--config", "configs/local.yaml", *CLUSTER_SET,
                      "--host", api.url, "--wait", "--set", "vocab.vocab_size=4000",
                      "--set", "clean.inputs=[{path: data/sample/raw/law/*.txt}]", tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert SECRET not in proc.stdout + proc.stderr
        (experiment,) = api.experiments.values()
        (run,) = api.runs.values()
        polls = [p for m, p in api.requests if m == "GET" and p.startswith("/apis/v2beta1/runs/")]
    assert experiment["display_name"] == "korlm-test"
    assert run["experiment_id"] == experiment["experiment_id"] == summary["experiment_id"]
    assert run["display_name"].startswith("korlm-demo-") and run["display_name"] == summary["run_name"]
    # the request carries the compiled pipeline: its name, the push task's secret env, no token
    sent = json.dumps(run)
    assert SECRET not in sent
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "korlm-demo"
    push_exec = run["pipeline_spec"]["pipeline_spec"]["components"]["comp-push"]["executorLabel"]
    k8s = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s[push_exec]["secretAsEnv"][0]["secretName"] == "korlm-hf-token"
    assert summary["state"] == "SUCCEEDED" and summary["run_id"] == run["run_id"]
    # --set of pipeline parameters: run arguments (paths as the cluster sees them), not recompiled
    assert run["runtime_config"]["parameters"] == {
        "vocab_size": 4000, "clean_inputs": [{"path": "/opt/korlm/data/sample/raw/law/*.txt"}]}
    root = run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert root["vocab_size"]["defaultValue"] == config.load("configs/local.yaml").vocab.vocab_size
    assert len(polls) == 3  # followed PENDING -> RUNNING -> RUNNING -> SUCCEEDED
    assert "RUNNING" in proc.stderr and "SUCCEEDED" in proc.stderr
    assert summary["report"]["artifacts"] == f"minio://mlpipeline/v2/artifacts/korlm-demo/{run['run_id']}/"
    assert summary["report"]["artifact_ids"] == ["42"]
    assert summary["ui"] == f"{api.url}/#/runs/details/{run['run_id']}"
    assert summary["tasks"]["push"]["secret_env"] == ["HF_TOKEN <- secret korlm-hf-token/token"]


def test_a_failed_run_is_a_clear_one_line_error(tmp_path):
    with KfpApiStandIn(states=("PENDING", "RUNNING", "FAILED"), failed_task="pretrain") as api:
        proc = _korlm("pipeline", "submit", "--target", "kfp", "--config", "configs/local.yaml", *CLUSTER_SET,
                      "--host", api.url, "--wait", tmp_path=tmp_path)
        (run_id,) = api.runs
    assert proc.returncode == 2, proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("korlm pipeline: error: run ")
    assert f"run {run_id} ended FAILED" in last and "failed tasks: pretrain (OOMKilled)" in last
    assert f"#/runs/details/{run_id}" in last
    assert proc.stdout == ""


def test_experiment_is_reused_and_without_wait_the_run_is_only_started(conf, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiStandIn() as api:
        first = kfp_submit.submit(conf, host=api.url, package_dir=str(tmp_path))
        second = kfp_submit.submit(conf, host=api.url + "/", package_dir=str(tmp_path))
        assert len(api.experiments) == 1 and len(api.runs) == 2
        assert first["experiment_id"] == second["experiment_id"]
        assert first["state"] == "PENDING" and "report" not in first
        assert not [p for m, p in api.requests if m == "GET" and p.startswith("/apis/v2beta1/runs/")]


def test_dry_run_sends_nothing(conf, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiStandIn() as api:
        summary = kfp_submit.submit(conf, host=api.url, dry_run=True, package_dir=str(tmp_path))
        assert api.requests == []
    assert summary["dry_run"] is True and summary["experiment"] == "korlm"
    assert summary["tasks"]["clean"]["pvc_mounts"] == ["korlm-data -> /opt/korlm/data"]
    with pytest.raises(KorlmError, match="kfp.host: string should match"):
        kfp_submit.submit(conf, host="localhost:8080", dry_run=True, package_dir=str(tmp_path))


def test_no_api_at_the_host_is_a_one_line_error(conf, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KorlmError, match=f"no KFP API at http://127.0.0.1:{port}.*port-forward"):
        kfp_submit.submit(conf, host=f"http://127.0.0.1:{port}", package_dir=str(tmp_path))
