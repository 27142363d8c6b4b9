"""Multi-host pieces of korlm.pretrain.distribute: reading the cluster from the
environment (Keras's variables, Vertex AI's CLUSTER_SPEC, Cloud TPU slices), each
process's input shards and batch, and two real JAX processes on this CPU joined through
``initialize_multihost`` (gloo collectives), checked for device counts, disjoint shards,
an all-reduce, a replicated array readable by the checkpoint writer, and Keras
``DataParallel`` training fed half a batch by each process matching one process fed the
whole batch. Vertex and Cloud TPU themselves are not reachable here: their environments
are written out from their documentation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError
from korlm.pretrain import distribute

REPO = Path(__file__).resolve().parents[1]


def _vertex(task_type: str, index: int, workers: int = 3) -> dict:
    # The shape Vertex AI documents for CLUSTER_SPEC (distributed-training#cluster-spec).
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab12-0:2222"],
                        "workerpool1": [f"cmle-training-workerpool1-ab12-{i}:2222"
                                        for i in range(workers)]},
            "environment": "cloud", "task": {"type": task_type, "index": index, "trial": ""},
            "job": '{"python_module":"","package_uris":[],"job_args":[]}'}
    return {"CLUSTER_SPEC": json.dumps(spec)}


def test_single_host_environments_are_not_multihost():
    assert distribute.multihost_spec({}) is None
    assert distribute.multihost_spec({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}) is None
    assert distribute.multihost_spec({"TPU_WORKER_HOSTNAMES": "t1v-n-0"}) is None
    assert distribute.multihost_spec({"KERAS_DISTRIBUTION_NUM_PROCESSES": "1"}) is None
    one = {"cluster": {"workerpool0": ["cmle-0:2222"]}, "task": {"type": "workerpool0", "index": 0}}
    assert distribute.multihost_spec({"CLUSTER_SPEC": json.dumps(one)}) is None
    assert distribute.initialize_multihost({}) is None  # a no-op: JAX is not even started


def test_keras_variables_name_the_coordinator_and_process():
    spec = distribute.multihost_spec({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.2:1234,10.0.0.3:1234",
                                      "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                                      "KERAS_DISTRIBUTION_PROCESS_ID": "1"})
    assert spec == distribute.MultihostSpec("keras-env", "10.0.0.2:1234", 2, 1)


def test_vertex_cluster_spec_numbers_pool0_then_pool1():
    assert distribute.multihost_spec(_vertex("workerpool0", 0)) == distribute.MultihostSpec(
        "vertex", "cmle-training-workerpool0-ab12-0:2222", 4, 0)
    assert distribute.multihost_spec(_vertex("workerpool1", 2)).process_id == 3
    ids = {distribute.multihost_spec(_vertex("workerpool1", i)).process_id for i in range(3)}
    assert ids == {1, 2, 3}


def test_multihost_cloud_tpu_is_left_to_jax_detection():
    for env in ({"TPU_ACCELERATOR_TYPE": "v5litepod-16"}, {"TPU_ACCELERATOR_TYPE": "v3-32"},
                {"TPU_WORKER_HOSTNAMES": "t1v-n-0,t1v-n-1"}, {"MEGASCALE_NUM_SLICES": "2"}):
        assert distribute.multihost_spec(env) == distribute.MultihostSpec("cloud-tpu"), env
    assert [distribute.tpu_is_multihost(t) for t in ("v5litepod-8", "v6e-8", "v3-8", "v4-8",
                                                     "v4-16", "v6e-16", "", None)] == \
        [False, False, False, False, True, True, None, None]


@pytest.mark.parametrize("env, words", [
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "KERAS_DISTRIBUTION_NUM_PROCESSES"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0"},
     "KERAS_DISTRIBUTION_JOB_ADDRESSES"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_JOB_ADDRESSES": "h:1",
      "KERAS_DISTRIBUTION_PROCESS_ID": "2"}, "outside 0..1"),
    ({"CLUSTER_SPEC": "{not json"}, "CLUSTER_SPEC"),
    (_vertex("workerpool2", 0), "workerpool2"),
    (_vertex("workerpool1", 5), "task index 5"),
])
def test_bad_cluster_environments_are_one_line(env, words):
    with pytest.raises(KorlmError, match=words) as info:
        distribute.multihost_spec(env)
    assert "\n" not in str(info.value)


def test_process_shards_are_disjoint_and_cover_every_file():
    files = [f"shard-{i:05d}" for i in range(10)]
    for count in (1, 2, 3, 4, 10):
        parts = [distribute.process_shards(files, i, count) for i in range(count)]
        assert sorted(f for p in parts for f in p) == files
        assert sum(len(p) for p in parts) == len(files)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert distribute.process_shards(files) == files  # one process here
    with pytest.raises(KorlmError, match="at least one shard per host"):
        distribute.process_shards(files[:3], 0, 4)
    assert distribute.process_batch_size(256, 4) == 64
    with pytest.raises(KorlmError, match="does not split evenly over 3 processes"):
        distribute.process_batch_size(256, 3)
    assert distribute.is_checkpoint_writer()  # the one process of a single-host run
    distribute.sync_processes("single")  # no-op


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(*child_args: str) -> list[dict]:
    """tests/multihost_child.py as processes 0 and 1 of a 2-process JAX run on this CPU
    (2 devices each); their RESULT dicts."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    for var in ("CLUSTER_SPEC", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "MEGASCALE_NUM_SLICES"):
        env.pop(var, None)
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "multihost_child.py"), *child_args],
                              env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120))
    finally:
        for proc in procs:
            proc.kill()
    if any(p.returncode == 77 for p in procs):
        pytest.skip("this jaxlib has no CPU collectives (gloo): " + outputs[0][0].strip()[-200:])
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        assert proc.returncode == 0 and line, err[-3000:]
        results.append(json.loads(line[len("RESULT "):]))
    return results


def check_tf_data_auto_shard() -> None:
    """Run by hand, not collected (TensorFlow in two more processes costs ~15 s here):
    ``python -c "from tests import test_multihost as t; t.check_tf_data_auto_shard()"``.
    Every process feeds the same tf.data pipeline of global batches and Keras's
    auto-sharding splits it; the weights must equal whole-batch SGD as in the test."""
    results = run_two_processes("--tf-data")
    assert results[0]["weights"] == results[1]["weights"]
    for got, want in zip(results[0]["weights"], _one_process_weights(results[0]["initial"]),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    print("tf.data auto-shard over 2 processes: weights equal whole-batch SGD")


def test_two_local_processes_share_devices_shards_and_training():
    results = run_two_processes()
    first, second = results
    assert [r["process_index"] for r in results] == [0, 1]
    for r in results:
        assert r["source"] == "keras-env" and r["process_count"] == 2
        assert r["device_count"] == 2 * r["local_device_count"] == 4
        assert r["picked_by_all"] == results[0]["picked_by_all"]
        assert r["sum"] == 1 + 1 + 2 + 2  # every device of both processes contributed
    picked = np.array(first["picked_by_all"])
    assert picked.shape == (2, 7) and (picked.sum(axis=0) == 1).all()  # disjoint, covering
    assert set(first["shards"]).isdisjoint(second["shards"])
    assert [r["writer"] for r in results] == [True, False]
    # Both processes hold the same weights, equal to one process trained on whole batches.
    assert first["initial"] == second["initial"] and first["weights"] == second["weights"]
    assert first["weights"] != first["initial"]
    expected = _one_process_weights(first["initial"])
    for got, want in zip(first["weights"], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _one_process_weights(initial) -> list[list[float]]:
    """The same model and data as multihost_child.train from the same initial weights,
    one process, whole batches: plain SGD on the mean squared error, in numpy."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import multihost_child as child
    finally:
        sys.path.pop(0)
    x, y = child.training_data()
    kernel, bias = (np.array(w, "float64") for w in initial)
    kernel = kernel.reshape(4, 1)
    for step in range(child.STEPS):
        xb = x[step * child.GLOBAL_BATCH:(step + 1) * child.GLOBAL_BATCH].astype("float64")
        yb = y[step * child.GLOBAL_BATCH:(step + 1) * child.GLOBAL_BATCH].astype("float64")
        err = xb @ kernel + bias - yb
        kernel -= 0.1 * 2 * xb.T @ err / len(xb)
        bias -= 0.1 * 2 * err.mean(axis=0)
    return [kernel.ravel().tolist(), bias.ravel().tolist()]
