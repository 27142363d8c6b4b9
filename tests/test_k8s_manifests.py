"""k8s/: korlm's own manifests validate offline against the Kubernetes version of the kind
node image (kubernetes-validate) and build with `kubectl kustomize` when kubectl is on
PATH; the KFP standalone kustomizations reference one pinned KFP release that matches the
kfp SDK; `make -n run-local` / `clean-local` run the right commands and never print the
Hub token.

Not run here: building the remote KFP bases (they need network) and anything on a real
cluster (no Docker engine): `make run-local` on a laptop does that.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from importlib.metadata import version

import kubernetes_validate
import pytest
import yaml

from korlm.config import KfpSection

K8S = "k8s"
KFP_REPO = "github.com/kubeflow/pipelines/manifests/kustomize/"
SECRET = "hf_make_dry_run_secret_0123456789"


def _docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture(scope="module")
def kind_config() -> dict:
    (doc,) = _docs(f"{K8S}/kind-cluster.yaml")
    return doc


@pytest.fixture(scope="module")
def k8s_version(kind_config) -> str:
    """The schema version for the node image's Kubernetes minor (v1.32.2 -> 1.32.0)."""
    image = kind_config["nodes"][0]["image"]
    major, minor = re.fullmatch(r"kindest/node:v(\d+)\.(\d+)\.\d+@sha256:[0-9a-f]{64}", image).groups()
    return f"{major}.{minor}.0"


def _korlm_manifest_files() -> list[str]:
    files = sorted(glob.glob(f"{K8S}/korlm/*.yaml"))
    return [f for f in files if not f.endswith("kustomization.yaml")]


def test_kind_node_image_is_pinned_and_mounts_the_data_folder(kind_config):
    assert kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and kind_config["kind"] == "Cluster"
    (node,) = kind_config["nodes"]
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    (mount,) = node["extraMounts"]
    pv = next(d for d in _docs(f"{K8S}/korlm/data-volume.yaml") if d["kind"] == "PersistentVolume")
    assert mount["hostPath"] == "data" and mount["containerPath"] == pv["spec"]["hostPath"]["path"]


def test_korlm_manifests_validate_offline(k8s_version):
    files = _korlm_manifest_files()
    kinds = set()
    for path in files:
        for doc in _docs(path):
            kubernetes_validate.validate(doc, k8s_version, strict=True)
            kinds.add(doc["kind"])
    assert kinds == {"LimitRange", "PersistentVolume", "PersistentVolumeClaim", "Secret"}
    broken = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "x"},
              "spec": {"limits": [{"type": "Container", "defaultRequests": {"cpu": "1"}}]}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, k8s_version, strict=True)


def test_hub_token_secret_is_a_template_matching_the_pipeline_config():
    (secret,) = _docs(f"{K8S}/korlm/hf-token-secret.template.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["namespace"] == "kubeflow"
    assert secret["metadata"]["name"] == KfpSection().hf_token_secret
    assert secret["stringData"] == {"token": "REPLACE_ME"}  # the key the push task's env reads
    with open(f"{K8S}/korlm/kustomization.yaml", encoding="utf-8") as f:
        assert "hf-token-secret" not in yaml.safe_load(f)["resources"]  # never re-applied over a real token


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_korlm_kustomization_builds_with_kubectl(k8s_version):
    out = subprocess.run(["kubectl", "kustomize", f"{K8S}/korlm"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"LimitRange", "PersistentVolume", "PersistentVolumeClaim"}
    assert by_kind["LimitRange"]["metadata"]["namespace"] == "kubeflow"
    pvc = by_kind["PersistentVolumeClaim"]
    assert pvc["metadata"]["namespace"] == "kubeflow" and pvc["metadata"]["name"] == "korlm-data"
    assert pvc["spec"]["volumeName"] == by_kind["PersistentVolume"]["metadata"]["name"]
    assert "namespace" not in by_kind["PersistentVolume"]["metadata"]  # cluster-scoped
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "korlm" for d in docs)


def test_kfp_standalone_is_referenced_remotely_at_one_pinned_release_matching_the_sdk():
    refs = {}
    for step in ("cluster-scoped", "platform-agnostic"):
        with open(f"{K8S}/kfp/{step}/kustomization.yaml", encoding="utf-8") as f:
            (resource,) = yaml.safe_load(f)["resources"]
        m = re.fullmatch(re.escape(KFP_REPO) + r"([\w/-]+)\?ref=(\d+\.\d+\.\d+)", resource)
        assert m, resource
        refs[m.group(1)] = m.group(2)
    assert set(refs) == {"cluster-scoped-resources", "env/platform-agnostic"}
    assert set(refs.values()) == {version("kfp")} == {version("kfp-kubernetes")}
    # referenced, not copied: no KFP manifests in the repository
    copied = [p for p in glob.glob(f"{K8S}/**/*.yaml", recursive=True)
              if "ml-pipeline" in open(p, encoding="utf-8").read()]
    assert copied == []


def _make_n(*args: str) -> str:
    # a fresh top-level make: under `make test` the inherited MAKELEVEL/MAKEFLAGS would add
    # "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["HF_TOKEN"] = SECRET
    proc = subprocess.run(["make", "--no-print-directory", "-n", *args], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_make_run_local_on_kind_runs_the_steps_in_order():
    out = _make_n("run-local", "REGISTRY=reg.example/korlm", "TAG=abc123")
    steps = [
        "kind create cluster --name korlm --config build/kind-cluster.yaml",
        "kubectl --context kind-korlm apply -k k8s/kfp/cluster-scoped",
        "kubectl --context kind-korlm wait --for=condition=established",
        "kubectl --context kind-korlm apply -k k8s/kfp/platform-agnostic",
        "kubectl --context kind-korlm apply -k k8s/korlm",
        "kubectl --context kind-korlm -n kubeflow wait --for=condition=available",
        "kind load docker-image reg.example/korlm/korlm:abc123 --name korlm",
        "create secret generic korlm-hf-token",
        "port-forward svc/ml-pipeline-ui 8080:80",
        "korlm pipeline submit --target kfp --config configs/local.yaml --host http://localhost:8080 --wait",
        "build/kfp-run.json",
    ]
    flat = re.sub(r"\\\n\s*", "", out)
    positions = [flat.find(s) for s in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert f"hostPath: {os.path.abspath('data')}" in flat  # kind gets an absolute path
    assert "--set pipeline.image=reg.example/korlm/korlm:abc123 --set kfp.data_pvc=korlm-data" in flat
    assert "--from-file=token=/dev/stdin" in flat and "--from-literal" not in flat  # token not in argv
    assert ":latest" not in flat


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_make_run_local_on_minikube_and_clean_local():
    out = re.sub(r"\\\n\s*", "", _make_n("run-local", "CLUSTER=minikube", "TAG=abc123"))
    assert "minikube start -p korlm --kubernetes-version=v1.32.2" in out
    assert f"--mount-string={os.path.abspath('data')}:/korlm/data" in out
    assert "minikube -p korlm image load localhost:5001/korlm/korlm:abc123" in out
    assert "kubectl --context korlm apply -k k8s/kfp/cluster-scoped" in out and "kind " not in out
    assert _make_n("clean-local").strip().endswith("kind delete cluster --name korlm")
    assert _make_n("clean-local", "CLUSTER=minikube").strip().endswith("minikube delete -p korlm")
