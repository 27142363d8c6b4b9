"""Tests of korlm.pretrain.distribute: strategies, precision, FLOPs/MFU, batch and memory checks,
and a tiny BERT trained under the JAX backend with keras.distribution.DataParallel."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from korlm.errors import KorlmError
from korlm.pretrain import distribute
from korlm.pretrain.distribute import GIB

REPO = Path(__file__).resolve().parents[1]
TPU_ENV = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "COLAB_TPU_ADDR",
           "TPU_ACCELERATOR_TYPE")


@pytest.fixture
def no_tpu_env(monkeypatch):
    for var in TPU_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def restore_policy():
    import keras

    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def _one_line(exc: KorlmError) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_module_imports_no_framework():
    code = ("import sys, korlm.pretrain.distribute; "
            "print([m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ strategies

@pytest.mark.skipif(os.path.exists("/dev/accel0"), reason="a TPU VM")
def test_auto_and_cpu_resolve_to_the_cpu_here(no_tpu_env):
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this test is for a machine without GPUs")
    for kind in ("auto", "cpu"):
        devices = distribute.resolve_strategy(kind)
        assert (devices.name, devices.backend, devices.device_type) == (
            "default", "tensorflow", "cpu")
        assert devices.device_kind == "cpu" and devices.num_replicas == 1
        assert devices.memory_per_replica_bytes is None and not devices.jit_compile
        assert devices.peak_flops("float32") is None  # no CPU entry: MFU stays None
        assert devices.peak_flops("float32", override=1e12) == 1e12
        with devices.scope():
            layer = keras.layers.Dense(3)
            layer.build((None, 2))
            assert tf.distribute.get_strategy() is devices.strategy
        assert layer.kernel.shape == (2, 3)


def test_gpu_requested_without_a_gpu():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(KorlmError, match="strategy gpu requested but TensorFlow sees no GPU"):
        distribute.resolve_strategy("gpu")


def test_tpu_name_that_cannot_be_resolved():
    # The real TPUClusterResolver: off Google Cloud it cannot look the name up.
    with pytest.raises(KorlmError) as info:
        distribute.resolve_strategy("tpu", tpu="korlm-no-such-tpu")
    text = _one_line(info.value)
    assert text.startswith("TPU 'korlm-no-such-tpu' could not be resolved (")
    assert "TPU_NAME" in text


def test_tpu_address_that_is_unreachable(monkeypatch, no_tpu_env):
    # Port 1 on localhost is closed: refused at once instead of gRPC retrying for minutes.
    start = time.monotonic()
    with pytest.raises(KorlmError) as info:
        distribute.resolve_strategy("tpu", tpu="grpc://127.0.0.1:1")
    text = _one_line(info.value)
    assert text.startswith("TPU 'grpc://127.0.0.1:1' at 127.0.0.1:1 is unreachable (")
    # auto picks the TPU named by TPU_NAME and fails the same way
    monkeypatch.setenv("TPU_NAME", "grpc://127.0.0.1:1")
    assert distribute.configured_tpu() == "grpc://127.0.0.1:1"
    with pytest.raises(KorlmError, match="is unreachable"):
        distribute.resolve_strategy("auto")
    assert time.monotonic() - start < 30


def test_tpu_strategy_calls_on_a_mocked_tpu(monkeypatch, no_tpu_env):
    # Mocked: no TPU here. Checks the call sequence, the device kind and the figures
    # derived from it; the resolver/connect/initialize calls are TensorFlow's real names.
    import tensorflow as tf

    calls = []

    class FakeResolver:
        def __init__(self, tpu=None):
            calls.append(("resolver", tpu))

        def master(self):
            return ""  # a TPU VM: no gRPC address to probe

    class FakeStrategy:
        num_replicas_in_sync = 8

        def __init__(self, resolver):
            calls.append(("strategy", type(resolver).__name__))

        def scope(self):
            return tf.distribute.get_strategy().scope()

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster",
                        lambda r: calls.append(("connect", type(r).__name__)))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                        lambda r: calls.append(("initialize", type(r).__name__)))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeStrategy)
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v3-8")
    assert distribute.configured_tpu() == "local"

    devices = distribute.resolve_strategy("auto")
    assert calls == [("resolver", "local"), ("connect", "FakeResolver"),
                     ("initialize", "FakeResolver"), ("strategy", "FakeResolver")]
    assert (devices.name, devices.device_kind, devices.num_replicas) == ("tpu", "TPU v3", 8)
    assert devices.jit_compile
    assert devices.memory_per_replica_bytes == 16 * GIB  # 32 GiB per chip, 2 cores
    assert devices.peak_flops("mixed_bfloat16") == 8 * 61.5e12  # 123 TF per chip / 2

    def broken(resolver):
        raise tf.errors.UnavailableError(None, None, "Socket closed\nmore detail")

    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", broken)
    with pytest.raises(KorlmError) as info:
        distribute.resolve_strategy("tpu", tpu="local")
    assert _one_line(info.value) == (
        "TPU 'local' could not be initialised (UnavailableError: Socket closed more detail)")


def test_strategy_kind_errors():
    with pytest.raises(KorlmError, match="unknown strategy 'tpus'"):
        distribute.resolve_strategy("tpus")
    with pytest.raises(KorlmError, match="needs the JAX backend: set KERAS_BACKEND=jax"):
        distribute.resolve_strategy("jax-data-parallel")


def test_tpu_kind_names():
    assert [distribute.tpu_kind_from_accelerator_type(t) for t in
            ("v2-8", "v3-32", "v4-8", "v5litepod-16", "v5p-8", "v6e-8", None)] == [
        "TPU v2", "TPU v3", "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e", "TPU"]


# ------------------------------------------------------------------- precision

@pytest.mark.parametrize(("kind", "capability", "policy"), [
    ("TPU v4", None, "mixed_bfloat16"),
    ("TPU v5 lite", None, "mixed_bfloat16"),
    ("NVIDIA A100-SXM4-40GB", None, "mixed_bfloat16"),
    ("NVIDIA H100 80GB HBM3", None, "mixed_bfloat16"),
    ("NVIDIA L4", None, "mixed_bfloat16"),
    ("Tesla V100-SXM2-16GB", None, "mixed_float16"),
    ("Tesla T4", None, "mixed_float16"),
    ("Some Future GPU", (9, 0), "mixed_bfloat16"),
    ("Some Old GPU", (7, 5), "mixed_float16"),
    ("Some Unknown GPU", None, "float32"),
])
def test_auto_precision(restore_policy, kind, capability, policy):
    import keras

    device = distribute.TrainingDevices(
        name="x", backend="tensorflow", device_type=distribute.device_type_of(kind),
        device_kind=kind, num_replicas=1, compute_capability=capability)
    choice = distribute.set_precision("auto", device)
    assert choice.policy == policy
    assert keras.mixed_precision.global_policy().name == policy
    assert choice.loss_scaling == (policy == "mixed_float16")
    assert choice.reason.startswith("auto: ")


AVX512_BF16_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
PLAIN_AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


def test_cpu_bf16_is_read_from_the_flags_line():
    assert distribute.cpu_supports_bf16(AVX512_BF16_CPU)
    assert distribute.cpu_supports_bf16("flags\t: sse2 amx_bf16 amx_tile\n")
    assert not distribute.cpu_supports_bf16(PLAIN_AVX2_CPU)
    assert not distribute.cpu_supports_bf16("")


@pytest.mark.parametrize(("native", "hidden", "policy"), [
    (True, 256, "mixed_bfloat16"), (True, 768, "mixed_bfloat16"),
    (True, 128, "float32"), (True, None, "float32"),  # tiny: measured no faster
    (False, 768, "float32"),
])
def test_auto_precision_on_a_cpu_follows_native_bf16_and_width(restore_policy, monkeypatch,
                                                               capsys, native, hidden, policy):
    import keras

    monkeypatch.setattr(distribute, "cpu_supports_bf16", lambda cpuinfo=None: native)
    choice = distribute.set_precision("auto", "cpu", hidden_dim=hidden)
    assert (choice.policy, choice.loss_scaling) == (policy, False)
    assert keras.mixed_precision.global_policy().name == policy
    assert ("without" in choice.reason) != native
    assert capsys.readouterr().err == ""  # auto never picks what it would warn about


def test_explicit_precision_and_loss_scaling(restore_policy, capsys, monkeypatch):
    import keras

    monkeypatch.setattr(distribute, "cpu_supports_bf16", lambda cpuinfo=None: False)
    choice = distribute.set_precision("mixed_bfloat16", "cpu")
    assert choice.policy == "mixed_bfloat16" and not choice.loss_scaling
    assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
    assert "mixed_bfloat16 on this CPU usually runs slower than float32" in capsys.readouterr().err
    monkeypatch.setattr(distribute, "cpu_supports_bf16", lambda cpuinfo=None: True)
    distribute.set_precision("mixed_bfloat16", "cpu")
    assert capsys.readouterr().err == ""  # native bfloat16: nothing to warn about

    choice = distribute.set_precision("mixed_float16", "NVIDIA A100-SXM4-80GB")
    assert (choice.policy, choice.loss_scaling, choice.wrap_optimizer) == (
        "mixed_float16", True, False)
    assert capsys.readouterr().err == ""
    assert distribute.set_precision("mixed_float16", "cpu", compiled=False).wrap_optimizer
    # What wrap_optimizer=False relies on: Keras 3 compile wraps the optimizer itself
    # when the model is built under mixed_float16.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    distribute.set_precision("float32", "TPU v4")
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(KorlmError, match="unknown precision 'bf16'"):
        distribute.set_precision("bf16", "cpu")


# ------------------------------------------------------------------- FLOPs/MFU

TINY = {"num_layers": 2, "hidden_dim": 128, "num_heads": 2, "intermediate_dim": 512}


def test_flops_per_token_hand_count():
    # BERT tiny, vocab 1000, seq 64, 10 predictions a sequence. Per layer the matmul
    # weights are 4*128*128 (Q, K, V, out) + 2*128*512 (feed-forward) = 196,608.
    assert distribute.matmul_params("bert", TINY) == 2 * 196_608
    flops = distribute.model_flops_per_token("bert", TINY, 1000, 64, mlm_predictions=10)
    six_n = 6 * 393_216  # 2,359,296
    attention = 12 * 2 * 128 * 64  # 196,608
    head = 6 * (128 * 128 + 128 * 1000) * 10 / 64  # 135,360: dense + tied output, 10 of 64
    assert flops == six_n + attention + head == 2_691_264
    # None: the head on every position, as transformers' BertForMaskedLM does
    assert distribute.model_flops_per_token("bert", "tiny", 1000, 64) == (
        six_n + attention + 6 * (128 * 128 + 128 * 1000))
    assert distribute.model_flops_per_token("roberta", TINY, 1000, 64, mlm_predictions=10) \
        == flops
    # BART tiny: 2 encoder + 2 decoder layers; decoder adds 4*128*128 cross-attention
    # weights a layer; attention terms for encoder self, decoder self and cross; LM head
    # (tied, 128 x 1000) on every decoder position.
    assert distribute.matmul_params("bart", TINY) == 2 * 196_608 + 2 * (196_608 + 65_536)
    assert distribute.model_flops_per_token("bart", TINY, 1000, 64) == (
        6 * 917_504 + 3 * 12 * 2 * 128 * 64 + 6 * 128 * 1000) == 6_862_848
    # a shorter decoder: hand count of the forward pass, x3, per encoder position
    forward = (2 * 64 * 2 * 196_608 + 4 * 64 * 64 * 128 * 2          # encoder
               + 2 * 32 * 2 * 196_608 + 4 * 32 * 32 * 128 * 2        # decoder self
               + 2 * 32 * 2 * 2 * 128 * 128 + 2 * 64 * 2 * 2 * 128 * 128  # cross Q,O / K,V
               + 4 * 32 * 64 * 128 * 2 + 2 * 32 * 128 * 1000)        # cross scores, head
    assert distribute.model_flops_per_token("bart", TINY, 1000, 64, decoder_seq_len=32) == (
        3 * forward / 64)
    with pytest.raises(KorlmError, match="unknown model family 'gpt'"):
        distribute.model_flops_per_token("gpt", TINY, 1000, 64)


def test_matmul_params_match_built_keras_hub_models():
    import keras_hub

    from korlm.modeling.build import build_backbone, build_masked_lm

    vocab, seq = 1000, 64
    task = build_masked_lm("bert", "tiny", vocab, seq)
    backbone = task.backbone
    layers, d, f = 2, 128, 512

    def kernel_sum(model, prefix):
        return sum(math.prod(w.shape) for w in model.weights
                   if w.path.startswith(prefix) and w.path.endswith("/kernel"))

    kernels = kernel_sum(backbone, "transformer_layer_")
    assert kernels == distribute.matmul_params("bert", "tiny")
    # Everything else the backbone holds is what the FLOP count leaves out, exactly:
    embeddings = (vocab + seq + 2) * d                  # token, position, segment
    layer_norms = 2 * d * (1 + 2 * layers)              # embedding LN + 2 a layer
    biases = layers * (3 * d + d + f + d)               # Q, K, V, out, ff in, ff out
    pooler = d * d + d
    assert backbone.count_params() == kernels + embeddings + layer_norms + biases + pooler
    # The MLM head: a d x d dense (+bias, LayerNorm) and a vocab bias; its output
    # projection is the tied token embedding, counted in the FLOPs as d x vocab.
    assert task.count_params() - backbone.count_params() == d * d + d + 2 * d + vocab
    assert distribute.model_flops_per_token("bert", "tiny", vocab, seq, mlm_predictions=0) \
        == 6 * kernels + 12 * layers * d * seq

    bart = keras_hub.models.BartBackbone(vocabulary_size=vocab, max_sequence_length=seq,
                                         **TINY)
    assert (kernel_sum(bart, "transformer_encoder_layer_")
            + kernel_sum(bart, "transformer_decoder_layer_")) == distribute.matmul_params(
        "bart", TINY)
    # korlm's BART "tiny" splits the 2 layers: 1 encoder + 1 decoder layer.
    korlm_bart = build_backbone("bart", "tiny", vocab, seq)
    assert (kernel_sum(korlm_bart, "transformer_encoder_layer_")
            + kernel_sum(korlm_bart, "transformer_decoder_layer_")) == distribute.matmul_params(
        "bart", "tiny") == distribute.matmul_params("bart", TINY) // 2


def test_peak_table_and_mfu():
    names = {
        "TPU v2": "TPU v2", "TPU v3": "TPU v3", "TPU v4": "TPU v4", "TPU v5 lite": "TPU v5e",
        "TPU v5e": "TPU v5e", "TPU v5": "TPU v5p", "TPU v5p": "TPU v5p",
        "TPU v6 lite": "TPU v6e", "NVIDIA A100-SXM4-40GB": "A100",
        "NVIDIA A100-PCIE-40GB": "A100", "NVIDIA H100 80GB HBM3": "H100 SXM",
        "NVIDIA H100 PCIe": "H100 PCIe", "NVIDIA H100 NVL": "H100 NVL",
        "NVIDIA H200": "H200", "NVIDIA L4": "L4", "Tesla T4": "T4",
        "Tesla V100-SXM2-16GB": "V100 SXM2", "Tesla V100-PCIE-32GB": "V100 PCIe",
        "cpu": None, "NVIDIA L40S": None, "TPU v4 lite": None,
    }
    assert {n: distribute.accelerator_name(n) for n in names} == names
    assert set(names.values()) - {None} == set(distribute.PEAK_FLOPS)
    peak = distribute.peak_flops_per_device
    assert peak("NVIDIA H100 80GB HBM3", "mixed_bfloat16") == 989.5e12
    assert peak("NVIDIA H100 80GB HBM3", "float32") == 494.5e12  # TF32
    assert peak("TPU v4", "bfloat16") == 275e12
    assert peak("TPU v2", "float32") == 22.5e12  # 45 TF per chip, 2 devices per chip
    assert peak("Tesla T4", "mixed_bfloat16") is None  # T4 has no bfloat16
    assert peak("Tesla T4", "mixed_float16") == 65e12
    assert peak("cpu", "float32") is None

    # BERT-base at seq 128, 20 predictions, on 8 H100s at 400k tokens/s
    per_token = distribute.model_flops_per_token("bert", "base", 30522, 128,
                                                 mlm_predictions=20)
    assert per_token == pytest.approx(6 * 84_934_656 + 12 * 12 * 768 * 128
                                      + 6 * (768 * 768 + 768 * 30522) * 20 / 128)
    assert distribute.mfu(400_000, per_token, 8 * 989.5e12) == pytest.approx(
        400_000 * per_token / 7.916e15)
    assert distribute.mfu(1e5, 5e8, None) is None


# ---------------------------------------------------------------- batch checks

def test_check_batch():
    assert distribute.check_batch(256, 8, 4) == 8
    assert distribute.check_batch(32) == 32
    with pytest.raises(KorlmError) as info:
        distribute.check_batch(100, 8, 1)
    assert _one_line(info.value) == (
        "global batch 100 does not split evenly over 8 replica(s) x 1 accumulation step(s)"
        " = 8; use a multiple of 8, e.g. 96")
    with pytest.raises(KorlmError, match="grad_accum_steps must be at least 1, got 0"):
        distribute.check_batch(32, 1, 0)


def test_memory_estimate_and_refusal():
    # The activation term is Korthikanti et al.'s 34 h + 5 a s bytes a token and layer
    # for 16-bit activations and f = 4h; float32 doubles the 2-byte tensors.
    h, s, a, layers, b = 768, 512, 12, 12, 4
    est = distribute.estimate_train_memory_bytes(0, b, s, h, layers, "mixed_bfloat16",
                                                 heads=a)
    assert est == layers * b * s * (34 * h + 5 * a * s)
    est32 = distribute.estimate_train_memory_bytes(0, b, s, h, layers, "float32", heads=a)
    assert est32 == layers * b * s * (66 * h + 9 * a * s)
    assert distribute.estimate_train_memory_bytes(1000, 0, s, h, layers, "float32") == 16_000

    assert distribute.device_memory_bytes("NVIDIA A100-SXM4-40GB") == 40 * GIB
    assert distribute.device_memory_bytes("NVIDIA H200") == 141 * GIB
    assert distribute.device_memory_bytes("TPU v5 lite") == 16 * GIB
    assert distribute.device_memory_bytes("cpu") is None

    base = dict(params=110_000_000, seq_len=512, hidden=768, layers=12,
                precision="mixed_bfloat16", heads=12)
    h100 = "NVIDIA H100 80GB HBM3"
    assert distribute.check_train_memory(h100, per_replica_batch=32, **base) < 80 * GIB
    with pytest.raises(KorlmError) as info:
        distribute.check_train_memory(h100, per_replica_batch=4096, **base)
    text = _one_line(info.value)
    assert text.startswith("per-replica batch 4096 x 512 tokens needs about ")
    # 16 B x 110M params = 1.6 GiB; 12 x 512 x (34 x 768 + 5 x 12 x 512) B = 333 MiB an
    # example; (80 GiB - 1.76e9 B) / 349,175,808 B = 240.96
    assert "(mixed_bfloat16: 1.6 GiB weights, gradients and optimizer state + 333 MiB " \
        "activations per example) but one NVIDIA H100 80GB HBM3 has 80.0 GiB; use at most " \
        "about 240 examples per replica" in text
    # no known memory (a CPU): nothing to check
    assert distribute.check_train_memory("cpu", per_replica_batch=10**6, **base) is None
    with pytest.raises(KorlmError, match="the model alone does not fit"):
        distribute.check_train_memory("Tesla T4", per_replica_batch=1,
                                      **{**base, "params": 3_000_000_000})


# ------------------------------------------------------------------------- JAX

JAX_TRAINING = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    import keras
    from korlm.errors import KorlmError
    from korlm.modeling.build import build_masked_lm
    from korlm.pretrain import distribute
    from korlm.pretrain.optimizer import compile_masked_lm

    try:
        distribute.resolve_strategy("gpu")
        no_gpu = None
    except KorlmError as exc:
        no_gpu = str(exc)
    auto = distribute.resolve_strategy("auto").name
    devices = distribute.resolve_strategy("jax-data-parallel")
    choice = distribute.set_precision("auto", devices)
    per_replica = distribute.check_batch(8, devices.num_replicas, 1)
    with devices.scope():
        task = build_masked_lm("bert", "tiny", 120, 16)
        compile_masked_lm(task, learning_rate=2e-3, warmup_steps=0,
                          total_steps=100, weight_decay=0.01)
    task.jit_compile = devices.jit_compile  # True under JAX: one XLA program a step
    rng = np.random.default_rng(0)
    batch, seq, slots = 8, 16, 3
    tokens = rng.integers(5, 120, (batch, seq)).astype("int32")
    positions = np.tile(np.arange(1, 1 + slots), (batch, 1)).astype("int32")
    labels = np.take_along_axis(tokens, positions, axis=1)
    np.put_along_axis(tokens, positions, 4, axis=1)  # [MASK]
    x = {"token_ids": tokens, "padding_mask": np.ones((batch, seq), bool),
         "segment_ids": np.zeros((batch, seq), "int32"), "mask_positions": positions}
    weights = np.ones((batch, slots), "float32")
    data = tf.data.Dataset.from_tensors((x, labels, weights)).repeat()
    history = task.fit(data, epochs=4, steps_per_epoch=2, verbose=0)
    sharding = task.trainable_variables[0].value.sharding  # replicated over the mesh
    print("RESULT " + json.dumps({
        "backend": keras.backend.backend(), "name": devices.name, "auto": auto,
        "no_gpu": no_gpu,
        "replicas": devices.num_replicas, "device_kind": devices.device_kind,
        "policy": choice.policy, "per_replica": per_replica, "jit": task.jit_compile,
        "distribution": type(keras.distribution.distribution()).__name__,
        "mesh_devices": int(sharding.mesh.devices.size),
        "loss": history.history["loss"]}))
""")


def test_tiny_bert_trains_under_jax_data_parallel():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           # two CPU devices, so DataParallel really splits each batch in two; the
           # optimisation flags only cut XLA's compile time on CPU (24 s -> 6 s here)
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                        "--xla_backend_optimization_level=0 "
                        "--xla_llvm_disable_expensive_passes=true",
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for var in TPU_ENV:
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", JAX_TRAINING], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["backend"] == "jax"
    assert result["name"] == result["auto"] == "jax-data-parallel"
    assert result["no_gpu"].startswith("the JAX backend has no gpu device ("), result["no_gpu"]
    assert result["replicas"] == 2 and result["device_kind"] == "cpu"
    assert result["distribution"] == "DataParallel" and result["mesh_devices"] == 2
    assert result["policy"] == "float32"  # auto, no model width given: float32 on a CPU
    assert result["per_replica"] == 4 and result["jit"]
    losses = result["loss"]
    assert all(math.isfinite(v) for v in losses)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.8 * losses[0], losses
