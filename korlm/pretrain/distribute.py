"""Where and how pretraining runs: distribution strategy, precision, MFU, batch checks.

One code path for every device (see ``docs/training.md``):

* TensorFlow backend (the default): ``resolve_strategy`` gives ``TPUStrategy`` (through
  ``TPUClusterResolver``), ``MirroredStrategy`` over several GPUs, or the default
  strategy on one GPU or the CPU.
* JAX backend (``KERAS_BACKEND=jax`` before Keras is imported): ``keras.distribution``
  ``DataParallel`` over the JAX devices (TPU VM chips, GPUs, or CPU devices).

``set_precision`` picks the Keras dtype policy, ``model_flops_per_token`` / ``mfu`` /
``PEAK_FLOPS`` say how well a run uses the hardware, and ``check_batch`` /
``estimate_train_memory_bytes`` / ``check_train_memory`` refuse an impossible batch
before any step runs. Multi-host (JAX): ``multihost_spec`` / ``initialize_multihost``
join the hosts of a slice (Keras's env variables, Vertex AI's ``CLUSTER_SPEC``, Cloud TPU
detection), ``process_shards`` / ``process_batch_size`` give each host its input, and
``is_checkpoint_writer`` / ``sync_processes`` let process 0 write while the others wait
(``docs/training.md#multi-host``; not yet called by ``korlm pretrain``).

Nothing here imports TensorFlow at module level, and the FLOP/peak/MFU arithmetic needs
none: ``benchmarks/pretrain_step_jax.py`` uses it where TensorFlow is absent.

Heavy imports (tensorflow, keras, jax) happen inside functions: importing this module is
cheap, for the CLI's ``--help`` and for pipeline compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from korlm.errors import KorlmError
from korlm.modeling.presets import model_config as _preset

STRATEGY_KINDS = ("auto", "tpu", "gpu", "cpu", "jax-data-parallel")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# Seconds to wait for a TCP connection to a TPU worker before calling it unreachable;
# TensorFlow itself retries gRPC for minutes without a word.
TPU_CONNECT_TIMEOUT_S = 15.0
GIB = 1024 ** 3


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ strategies

@dataclasses.dataclass
class TrainingDevices:
    """The resolved distribution: enter ``scope()`` to build and compile the model.

    ``name`` is ``tpu``, ``mirrored``, ``default``, ``one-device`` (TensorFlow) or
    ``jax-data-parallel``; ``device_kind`` names one device as its framework does
    ("cpu", "NVIDIA H100 80GB HBM3", "TPU v3"); ``num_replicas`` is the number of
    devices a global batch is split over. ``jit_compile`` is the value to give
    ``Model.compile``: always under JAX, where an uncompiled train step runs op by op (a
    tiny BERT on this CPU: 0.6 s a step against 0.01 s jitted); under TensorFlow on
    accelerators only (on a CPU XLA compiled for long and ran no faster; TPUStrategy
    compiles with XLA regardless).
    """

    name: str
    backend: str
    device_type: str  # cpu | gpu | tpu
    device_kind: str
    num_replicas: int
    strategy: Any = None  # tf.distribute.Strategy or keras.distribution.Distribution
    compute_capability: tuple[int, int] | None = None
    memory_per_replica_bytes: int | None = None
    _scope: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def jit_compile(self) -> bool:
        return self.backend == "jax" or self.device_type in ("gpu", "tpu")

    def scope(self):
        return self._scope() if self._scope is not None else contextlib.nullcontext()

    def peak_flops(self, precision: str, override: float | None = None) -> float | None:
        """Peak FLOP/s of all replicas together for ``precision`` (a policy name or
        ``bfloat16``/``float16``/``float32``); ``override`` is a per-device figure from
        config. None when the device has no table entry (e.g. a CPU)."""
        per_device = override if override else peak_flops_per_device(self.device_kind,
                                                                     precision)
        return per_device * self.num_replicas if per_device else None

    def describe(self) -> str:
        return (f"{self.name} ({self.backend}): {self.num_replicas} x {self.device_kind}"
                + (f", {self.memory_per_replica_bytes / GIB:.1f} GiB each"
                   if self.memory_per_replica_bytes else ""))


def configured_tpu(tpu: str | None = None) -> str | None:
    """The TPU to use when one is configured: the argument, ``TPU_NAME``, GKE's
    ``KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS``, Colab's ``COLAB_TPU_ADDR``, or ``local`` on a
    TPU VM (``TPU_ACCELERATOR_TYPE`` set or ``/dev/accel0`` present)."""
    if tpu:
        return tpu
    for var in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("COLAB_TPU_ADDR"):
        return "grpc://" + os.environ["COLAB_TPU_ADDR"]
    if os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0"):
        return "local"
    return None


def keras_backend() -> str:
    """The Keras backend this process runs (``KERAS_BACKEND``, default tensorflow)."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def resolve_strategy(kind: str = "auto", tpu: str | None = None) -> TrainingDevices:
    """Pick and initialise the distribution for training.

    ``auto``: a configured TPU (see ``configured_tpu``), else MirroredStrategy over the
    GPUs when there are several, else the one GPU or the CPU. ``tpu``/``gpu``/``cpu``
    force one. Under the JAX backend every kind (``jax-data-parallel`` included) uses
    ``keras.distribution.DataParallel`` over the JAX devices of that type.
    """
    if kind not in STRATEGY_KINDS:
        raise KorlmError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGY_KINDS)}")
    backend = keras_backend()
    if backend == "jax":
        device_type = {"tpu": "tpu", "gpu": "gpu", "cpu": "cpu"}.get(kind)
        return _jax_data_parallel(device_type)
    if kind == "jax-data-parallel":
        raise KorlmError(
            f"strategy jax-data-parallel needs the JAX backend: set KERAS_BACKEND=jax before "
            f"korlm starts (this process runs Keras on {backend})")
    if backend != "tensorflow":
        raise KorlmError(f"Keras backend {backend!r} is not supported for training; "
                         "use KERAS_BACKEND=tensorflow or jax")
    if kind == "tpu" or (kind == "auto" and configured_tpu(tpu)):
        return _tpu_strategy(configured_tpu(tpu))
    if kind == "gpu":
        return _gpu_strategy(required=True)
    if kind == "cpu":
        return _cpu_strategy()
    return _gpu_strategy(required=False) or _cpu_strategy()


def _tf():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    return tf


def _check_reachable(master: str, label: str) -> None:
    """gRPC to a dead address blocks for minutes inside TensorFlow; a TCP connect with a
    timeout tells the same in seconds."""
    match = re.fullmatch(r"(?:grpc://)?\[?([^\]]+?)\]?:(\d+)", master or "")
    if not match:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=TPU_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise KorlmError(f"TPU {label!r} at {host}:{port} is unreachable "
                         f"({_one_line(exc)}); is the TPU running and TPU_NAME right?") from None


def tpu_kind_from_accelerator_type(accelerator_type: str | None) -> str:
    """``v3-8`` -> ``TPU v3``, ``v5litepod-8`` -> ``TPU v5e``, ``v5p-8`` -> ``TPU v5p``."""
    match = re.match(r"v(\d+)(litepod|lite|e|p)?", (accelerator_type or "").strip().lower())
    if not match:
        return "TPU"
    version, variant = match.group(1), match.group(2) or ""
    suffix = {"litepod": "e", "lite": "e", "e": "e", "p": "p"}.get(variant, "")
    return f"TPU v{version}{suffix}"


def _tpu_strategy(tpu: str | None) -> TrainingDevices:
    tf = _tf()
    label = tpu or "(TPU_NAME unset)"
    try:  # URLError, ValueError, RuntimeError, HttpError from the Cloud TPU client
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        master = resolver.master()
    except Exception as exc:
        raise KorlmError(f"TPU {label!r} could not be resolved ({_one_line(exc)}); "
                         "set --tpu / TPU_NAME to a TPU name or grpc://host:port, "
                         "or 'local' on a TPU VM") from None
    _check_reachable(master, label)
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    except Exception as exc:
        raise KorlmError(f"TPU {label!r} could not be initialised ({_one_line(exc)})") from None
    accelerator_type = os.environ.get("TPU_ACCELERATOR_TYPE")
    if not accelerator_type:
        with contextlib.suppress(Exception):  # Cloud TPU API metadata, when reachable
            accelerator_type = resolver._cloud_tpu_client.accelerator_type()
    device_kind = tpu_kind_from_accelerator_type(accelerator_type)
    return TrainingDevices(
        name="tpu", backend="tensorflow", device_type="tpu", device_kind=device_kind,
        num_replicas=int(strategy.num_replicas_in_sync), strategy=strategy,
        memory_per_replica_bytes=device_memory_bytes(device_kind), _scope=strategy.scope)


def _gpu_details(tf, gpu) -> tuple[str, tuple[int, int] | None]:
    details = {}
    with contextlib.suppress(Exception):
        details = tf.config.experimental.get_device_details(gpu)
    return details.get("device_name", "GPU"), details.get("compute_capability")


def _gpu_strategy(required: bool) -> TrainingDevices | None:
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        if required:
            raise KorlmError(
                "strategy gpu requested but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; a CUDA build of "
                "TensorFlow, e.g. tensorflow[and-cuda], is needed)")
        return None
    device_kind, capability = _gpu_details(tf, gpus[0])
    if len(gpus) > 1:
        strategy, name = tf.distribute.MirroredStrategy(), "mirrored"
    else:  # one GPU: the default strategy, without MirroredStrategy's all-reduce overhead
        strategy, name = tf.distribute.get_strategy(), "default"
    return TrainingDevices(
        name=name, backend="tensorflow", device_type="gpu", device_kind=device_kind,
        num_replicas=int(strategy.num_replicas_in_sync), strategy=strategy,
        compute_capability=tuple(capability) if capability else None,
        memory_per_replica_bytes=device_memory_bytes(device_kind), _scope=strategy.scope)


def _cpu_strategy() -> TrainingDevices:
    tf = _tf()
    if tf.config.list_physical_devices("GPU"):  # asked for the CPU while GPUs are visible
        strategy, name = tf.distribute.OneDeviceStrategy("/cpu:0"), "one-device"
    else:
        strategy, name = tf.distribute.get_strategy(), "default"
    return TrainingDevices(name=name, backend="tensorflow", device_type="cpu",
                           device_kind="cpu", num_replicas=1, strategy=strategy,
                           _scope=strategy.scope)


def _jax_data_parallel(device_type: str | None) -> TrainingDevices:
    import jax
    import keras

    try:
        devices = jax.devices(device_type)
    except RuntimeError as exc:
        raise KorlmError(f"the JAX backend has no {device_type} device ({_one_line(exc)})") \
            from None
    names = [f"{d.platform}:{d.id}" for d in devices]
    distribution = keras.distribution.DataParallel(devices=names)
    keras.distribution.set_distribution(distribution)
    first = devices[0]
    memory = None
    with contextlib.suppress(Exception):  # memory_stats() is None on CPU
        memory = int(first.memory_stats()["bytes_limit"])
    capability = getattr(first, "compute_capability", None)
    if isinstance(capability, str):
        capability = tuple(int(x) for x in capability.split(".")[:2])
    kind = first.device_kind if first.platform != "cpu" else "cpu"
    return TrainingDevices(
        name="jax-data-parallel", backend="jax", device_type=first.platform,
        device_kind=kind, num_replicas=len(devices), strategy=distribution,
        compute_capability=capability,
        memory_per_replica_bytes=memory or device_memory_bytes(kind),
        _scope=distribution.scope)


# ------------------------------------------------------------------- precision

@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """``policy`` is the Keras global dtype policy now set. ``loss_scaling``: float16
    gradients need a scaled loss. Keras 3's ``Model.compile`` wraps the optimizer in
    ``LossScaleOptimizer`` itself when the model's dtype policy is ``mixed_float16``
    (``auto_scale_loss=True``), so ``wrap_optimizer`` is True only for a custom loop
    that calls ``optimizer.apply`` without ``compile``."""

    policy: str
    loss_scaling: bool
    wrap_optimizer: bool
    reason: str


# GPUs without bfloat16 (before Ampere, compute capability < 8.0).
_NO_BF16_GPUS = re.compile(r"v100|t4\b|p100|p40|p4\b|k80|m60|quadro rtx|rtx 20|titan v|gtx")
_BF16_GPUS = re.compile(r"a100|a10\b|a10g|a30|a40|a16|a800|h100|h200|h800|h20\b|gh200|"
                        r"l4\b|l40|b100|b200|gb200|rtx 30|rtx 40|rtx 50|rtx a|ada")


def gpu_supports_bf16(device_kind: str, compute_capability=None) -> bool | None:
    """True on Ampere and newer, False before, None when the GPU is unknown."""
    if compute_capability:
        return tuple(compute_capability) >= (8, 0)
    name = device_kind.lower()
    if _NO_BF16_GPUS.search(name):
        return False
    if _BF16_GPUS.search(name):
        return True
    return None


# CPU flags of native bfloat16 arithmetic (Linux /proc/cpuinfo names): AVX512-BF16
# (Cooper Lake, Zen 4 and newer) and AMX (Sapphire Rapids and newer).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU reports native bfloat16 (``CPU_BF16_FLAGS``); False where it
    does not or cannot say (no ``/proc/cpuinfo``: not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def device_type_of(device_kind: str) -> str:
    name = device_kind.lower()
    if name.startswith("tpu"):
        return "tpu"
    if name in ("cpu", "") or name.startswith("cpu"):
        return "cpu"
    return "gpu"


# auto on a CPU with native bfloat16 picks mixed_bfloat16 from this hidden size up. Measured
# (benchmarks/README.md, "bfloat16 on a CPU"): BERT-mini (hidden 256) stepped 1.5x faster
# (1.2x per CPU-second) in mixed_bfloat16; BERT-tiny (hidden 128) ran as fast either way
# (0.97-1.06x), its matmuls too small to gain, with a loss 0.006 nats higher after 1,000
# steps (within seed noise, but no reason to pay it for nothing).
CPU_BF16_MIN_HIDDEN = 256


def choose_precision(precision: str, device_kind: str, compute_capability=None,
                     hidden_dim: int | None = None) -> tuple[str, str]:
    """The policy name ``precision`` means on this device, and why. ``hidden_dim`` (the
    model's width) matters only to ``auto`` on a CPU; None: unknown, treated as small."""
    if precision not in PRECISIONS:
        raise KorlmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, "set in config"
    device_type = device_type_of(device_kind)
    if device_type == "tpu":
        return "mixed_bfloat16", "auto: TPU"
    if device_type == "cpu":
        if not cpu_supports_bf16():
            return "float32", "auto: CPU without native bfloat16 (it would be emulated, slower)"
        if hidden_dim is None or hidden_dim < CPU_BF16_MIN_HIDDEN:
            return "float32", (f"auto: CPU with native bfloat16, but a model narrower than "
                               f"{CPU_BF16_MIN_HIDDEN} (hidden {hidden_dim or 'unknown'}) "
                               "gains nothing from it")
        return "mixed_bfloat16", f"auto: CPU with native bfloat16 (hidden {hidden_dim})"
    bf16 = gpu_supports_bf16(device_kind, compute_capability)
    if bf16:
        return "mixed_bfloat16", f"auto: {device_kind} has bfloat16 (Ampere or newer)"
    if bf16 is False:
        return "mixed_float16", f"auto: {device_kind} has float16 tensor cores but no bfloat16"
    return "float32", f"auto: unknown GPU {device_kind!r}; set precision to use bf16/fp16"


def set_precision(precision: str, device_kind: Any, *, compiled: bool = True,
                  hidden_dim: int | None = None) -> PrecisionChoice:
    """Set Keras's global dtype policy before the model is built.

    ``device_kind`` is a ``TrainingDevices`` or a device name ("cpu", "TPU v4",
    "NVIDIA A100-SXM4-40GB"). ``auto``: ``mixed_bfloat16`` on a TPU, on GPUs with
    bfloat16 and, for models of ``hidden_dim`` >= ``CPU_BF16_MIN_HIDDEN``, on CPUs with
    native bfloat16 (``cpu_supports_bf16``), ``mixed_float16`` on older GPUs, ``float32``
    on other CPUs. A mixed policy on a CPU without native
    support is allowed but warned about: it is slow there.
    """
    capability = getattr(device_kind, "compute_capability", None)
    kind = getattr(device_kind, "device_kind", device_kind)
    policy, reason = choose_precision(precision, kind, capability, hidden_dim)
    if device_type_of(kind) == "cpu" and (
            policy == "mixed_float16" or (policy == "mixed_bfloat16" and not cpu_supports_bf16())):
        print(f"korlm: warning: {policy} on this CPU usually runs slower than float32 "
              f"(it has no native {policy.removeprefix('mixed_')} matmuls); use it to test the "
              "setting, not for speed",
              file=sys.stderr, flush=True)
    import keras

    keras.mixed_precision.set_global_policy(policy)
    loss_scaling = policy == "mixed_float16"
    return PrecisionChoice(policy=policy, loss_scaling=loss_scaling,
                           wrap_optimizer=loss_scaling and not compiled, reason=reason)


# ------------------------------------------------------------------------- MFU

def _dims(size_config: dict[str, int] | str, family: str) -> tuple[int, int, int, int]:
    # A preset name means korlm's model of that family (BART: num_layers per stack).
    cfg = _preset(family, size_config) if isinstance(size_config, str) else size_config
    try:
        return (int(cfg["num_layers"]), int(cfg["hidden_dim"]), int(cfg["num_heads"]),
                int(cfg["intermediate_dim"]))
    except KeyError as exc:
        raise KorlmError(f"size config lacks {exc.args[0]!r}") from None


def matmul_params(family: str, size_config: dict[str, int] | str) -> int:
    """Weights of the transformer layers' matrix multiplies (attention Q/K/V/output and
    the two feed-forward kernels; decoder layers add cross-attention), without biases,
    LayerNorm, embeddings, the MLM head and BERT's pooler."""
    layers, d, _, f = _dims(size_config, family)
    per_layer = 4 * d * d + 2 * d * f
    if family in ("bert", "roberta"):
        return layers * per_layer
    if family == "bart":  # encoder + decoder (self + cross attention), num_layers each
        return layers * per_layer + layers * (per_layer + 4 * d * d)
    raise KorlmError(f"unknown model family {family!r}; choose bert, roberta or bart")


def model_flops_per_token(family: str, size_config: dict[str, int] | str, vocab_size: int,
                          seq_len: int, *, mlm_predictions: int | None = None,
                          decoder_seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token, the PaLM formula (Chowdhery et al.
    2022, appendix B): ``6 N + 12 L d s``, with N the weights of the matrix multiplies a
    token goes through and ``12 L d s`` the attention scores and weighted sum (QK^T and
    AV, 2·s·d multiply-adds each per token and layer, x3 for training). Not counted:
    embedding lookups, biases, LayerNorm, softmax, BERT's pooler (one token a sequence).

    ``bert``/``roberta``: the encoder on every position, plus the MLM head (a d x d
    dense and the tied d x vocab output projection) on ``mlm_predictions`` positions per
    sequence only, as KerasHub's ``MaskedLM`` computes logits only at the mask slots
    (None: on every position, as Hugging Face ``BertForMaskedLM`` does).

    ``bart``: encoder over ``seq_len``, decoder over ``decoder_seq_len`` (default
    ``seq_len``) with self- and cross-attention (cross-attention keys/values are
    projected from the encoder positions), LM head on every decoder position. Per token
    means per ``seq_len`` position: tokens/s must be counted as examples/s x seq_len.
    """
    layers, d, _, f = _dims(size_config, family)
    s = int(seq_len)
    if s < 1 or vocab_size < 1:
        raise KorlmError("seq_len and vocab_size must be at least 1")
    block = 4 * d * d + 2 * d * f  # Q, K, V, output + two feed-forward kernels
    if family in ("bert", "roberta"):
        predictions = s if mlm_predictions is None else int(mlm_predictions)
        forward = (2 * s * layers * block + 4 * s * s * d * layers
                   + 2 * predictions * (d * d + d * vocab_size))
    elif family == "bart":
        t = s if decoder_seq_len is None else int(decoder_seq_len)
        encoder = 2 * s * layers * block + 4 * s * s * d * layers
        decoder = 2 * t * layers * block + 4 * t * t * d * layers
        cross = (2 * t * layers * 2 * d * d + 2 * s * layers * 2 * d * d
                 + 4 * t * s * d * layers)
        forward = encoder + decoder + cross + 2 * t * d * vocab_size
    else:
        raise KorlmError(f"unknown model family {family!r}; choose bert, roberta or bart")
    return 3.0 * forward / s


# Vendor dense peaks (no structured sparsity), FLOP/s per chip. "float32" is what a
# float32 matmul runs at by default: TensorFlow and JAX use TF32 tensor cores on Ampere
# and newer GPUs, and single-pass bfloat16 on the TPU MXU (Google publishes no separate
# float32 figure); older GPUs run float32 on CUDA cores. None: the chip lacks the type.
PEAK_FLOPS: dict[str, dict[str, float | None]] = {
    # Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v2 ... /v6e):
    # bf16 peak compute per chip.
    "TPU v2": {"bfloat16": 45e12, "float16": None, "float32": 45e12},
    "TPU v3": {"bfloat16": 123e12, "float16": None, "float32": 123e12},
    "TPU v4": {"bfloat16": 275e12, "float16": None, "float32": 275e12},
    "TPU v5e": {"bfloat16": 197e12, "float16": None, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float16": None, "float32": 459e12},
    "TPU v6e": {"bfloat16": 918e12, "float16": None, "float32": 918e12},
    # NVIDIA A100 datasheet: BF16/FP16 tensor 312 TF, TF32 156 TF (SXM4 and PCIe).
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    # NVIDIA H100 datasheet (SXM5): BF16/FP16 1,979 TF and TF32 989 TF with sparsity,
    # half that dense; PCIe: 1,513 / 756 sparse; NVL: 1,671 / 835 sparse.
    "H100 SXM": {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12},
    "H100 PCIe": {"bfloat16": 756.5e12, "float16": 756.5e12, "float32": 378e12},
    "H100 NVL": {"bfloat16": 835.5e12, "float16": 835.5e12, "float32": 417.5e12},
    # NVIDIA H200 datasheet (SXM): the same tensor cores as H100 SXM.
    "H200": {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12},
    # NVIDIA L4 datasheet: BF16/FP16 242 TF and TF32 120 TF with sparsity.
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12},
    # NVIDIA T4 datasheet: FP16 (mixed) tensor 65 TF, FP32 8.1 TF; no bf16, no TF32.
    "T4": {"bfloat16": None, "float16": 65e12, "float32": 8.1e12},
    # NVIDIA V100 datasheet: tensor 125 TF (SXM2) / 112 TF (PCIe), FP32 15.7 / 14 TF.
    "V100 SXM2": {"bfloat16": None, "float16": 125e12, "float32": 15.7e12},
    "V100 PCIe": {"bfloat16": None, "float16": 112e12, "float32": 14e12},
}

# TPU v2/v3 chips have two TensorCores, each its own device (replica) in TensorFlow and
# JAX; v4 and later present one device per chip.
_TPU_DEVICES_PER_CHIP = {"TPU v2": 2, "TPU v3": 2}

# Memory per device (replica), bytes. TPU: HBM per chip (Cloud TPU docs: v2 16 GiB,
# v3 32 GiB, v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB) / devices per chip. GPU:
# the datasheet size; where a model comes in two sizes the name carries it ("80GB"),
# else the smaller one counts only if refusing is still certain, so take the larger.
DEVICE_MEMORY_BYTES: dict[str, int] = {
    "TPU v2": 8 * GIB, "TPU v3": 16 * GIB, "TPU v4": 32 * GIB, "TPU v5e": 16 * GIB,
    "TPU v5p": 95 * GIB, "TPU v6e": 32 * GIB,
    "A100": 80 * GIB, "H100 SXM": 80 * GIB, "H100 PCIe": 80 * GIB, "H100 NVL": 94 * GIB,
    "H200": 141 * GIB, "L4": 24 * GIB, "T4": 16 * GIB, "V100 SXM2": 32 * GIB,
    "V100 PCIe": 32 * GIB,
}


def accelerator_name(device_kind: str) -> str | None:
    """The ``PEAK_FLOPS`` key of a device name as TensorFlow or JAX reports it
    ("TPU v5 lite" -> "TPU v5e", "NVIDIA H100 80GB HBM3" -> "H100 SXM"), or None."""
    name = (device_kind or "").lower()
    tpu = re.match(r"tpu\s*v(\d)\s*(lite|e|p)?", name)
    if tpu:
        version, variant = tpu.group(1), tpu.group(2)
        if version == "5":  # JAX: "TPU v5 lite" is v5e, "TPU v5" is v5p
            variant = "e" if variant in ("lite", "e") else "p"
        elif version == "6":  # JAX: "TPU v6 lite" is v6e (Trillium)
            variant = "e"
        elif variant == "lite":  # v4 lite (v4i) is an inference chip: no entry
            return None
        else:
            variant = ""
        key = f"TPU v{version}{variant}"
        return key if key in PEAK_FLOPS else None
    if "h100" in name:
        return "H100 PCIe" if "pcie" in name else "H100 NVL" if "nvl" in name else "H100 SXM"
    if "h200" in name:
        return "H200"
    if "a100" in name:
        return "A100"
    if re.search(r"\bl4\b", name):
        return "L4"
    if re.search(r"\bt4\b", name):
        return "T4"
    if "v100" in name:
        return "V100 PCIe" if "pcie" in name else "V100 SXM2"
    return None


def _dtype_of(precision: str) -> str:
    return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(precision, precision)


def peak_flops_per_device(device_kind: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device (replica) for a precision, or None (no entry)."""
    key = accelerator_name(device_kind)
    if key is None:
        return None
    peak = PEAK_FLOPS[key].get(_dtype_of(precision))
    return peak / _TPU_DEVICES_PER_CHIP.get(key, 1) if peak else None


def mfu(tokens_per_second: float, flops_per_token: float,
        peak_flops_total: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    if not peak_flops_total:
        return None
    return tokens_per_second * flops_per_token / peak_flops_total


# ---------------------------------------------------------------- batch checks

def check_batch(global_batch: int, num_replicas: int = 1, grad_accum_steps: int = 1) -> int:
    """The per-replica micro-batch of one forward/backward pass; a KorlmError when the
    global batch does not split evenly over replicas x accumulation steps."""
    for name, value in (("global batch", global_batch), ("replicas", num_replicas),
                        ("grad_accum_steps", grad_accum_steps)):
        if int(value) < 1:
            raise KorlmError(f"{name} must be at least 1, got {value}")
    parts = num_replicas * grad_accum_steps
    if global_batch % parts:
        raise KorlmError(
            f"global batch {global_batch} does not split evenly over {num_replicas} "
            f"replica(s) x {grad_accum_steps} accumulation step(s) = {parts}; use a "
            f"multiple of {parts}, e.g. {max(parts, global_batch // parts * parts)}")
    return global_batch // parts


def device_memory_bytes(device_kind: str) -> int | None:
    """Memory of one device from its name: "80GB" in a GPU's name, else the table,
    else ``nvidia-smi``; None for a CPU or an unknown device."""
    if device_type_of(device_kind) == "cpu":
        return None
    in_name = re.search(r"(\d+)\s*gb", device_kind.lower())
    if in_name and device_type_of(device_kind) == "gpu":
        return int(in_name.group(1)) * GIB
    key = accelerator_name(device_kind)
    if key in DEVICE_MEMORY_BYTES:
        return DEVICE_MEMORY_BYTES[key]
    if device_type_of(device_kind) == "gpu" and shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                 "-i", "0"], capture_output=True, text=True, timeout=20, check=True).stdout
            return int(float(out.split()[0])) * 1024 ** 2
    return None


def estimate_train_memory_bytes(params: int, per_replica_batch: int, seq_len: int,
                                hidden: int, layers: int, precision: str, *,
                                heads: int | None = None, intermediate: int | None = None,
                                optimizer_slots: int = 2) -> int:
    """Memory one replica needs to train, bytes, for a transformer without activation
    recomputation (what Keras does by default):

    * states: 4 bytes x params each for the float32 variables, their gradients and
      ``optimizer_slots`` Adam moments (Keras keeps variables in float32 under the
      mixed policies): ``(8 + 4 * optimizer_slots) * params``;
    * activations saved for the backward pass, per layer and token (Korthikanti et al.
      2022, "Reducing Activation Recomputation", eq. 1, generalised to any feed-forward
      width f and element size e = 2 bytes under mixed precision, 4 in float32, with
      1-byte dropout masks): ``h (8e + 2) + 2 e f + a s (2e + 1)``; with e=2, f=4h this
      is their ``34 h + 5 a s``.

    Logits, the embedding output and framework workspace are left out, so the figure
    errs low; ``check_train_memory`` refuses only when it is clearly over the device.
    """
    e = 4 if _dtype_of(precision) == "float32" else 2
    h, s, b = int(hidden), int(seq_len), int(per_replica_batch)
    f = int(intermediate) if intermediate else 4 * h
    a = int(heads) if heads else max(1, h // 64)
    states = (8 + 4 * optimizer_slots) * int(params)
    per_token_layer = h * (8 * e + 2) + 2 * e * f + a * s * (2 * e + 1)
    return states + int(layers) * b * s * per_token_layer


# Refuse when the estimate exceeds the device memory by this factor: XLA's fusion and
# rematerialisation can save some of the estimated activations, never this much.
MEMORY_REFUSAL_FACTOR = 1.5


def check_train_memory(devices: TrainingDevices | str, *, params: int,
                       per_replica_batch: int, seq_len: int, hidden: int, layers: int,
                       precision: str, heads: int | None = None,
                       intermediate: int | None = None,
                       memory_bytes: int | None = None) -> int | None:
    """Refuse, before training, a per-replica batch that certainly does not fit the
    device: a KorlmError with the numbers when the estimate is over
    ``MEMORY_REFUSAL_FACTOR`` x the memory. Returns the estimate, or None when the
    device memory is unknown (a CPU), in which case nothing is checked."""
    kind = getattr(devices, "device_kind", devices)
    if memory_bytes is None:
        memory_bytes = (getattr(devices, "memory_per_replica_bytes", None)
                        or device_memory_bytes(kind))
    if not memory_bytes:
        return None
    estimate = estimate_train_memory_bytes(params, per_replica_batch, seq_len, hidden, layers,
                                           precision, heads=heads, intermediate=intermediate)
    if estimate > MEMORY_REFUSAL_FACTOR * memory_bytes:
        per_example = estimate_train_memory_bytes(
            params, 1, seq_len, hidden, layers, precision, heads=heads,
            intermediate=intermediate) - estimate_train_memory_bytes(
            params, 0, seq_len, hidden, layers, precision, heads=heads,
            intermediate=intermediate)
        states = estimate_train_memory_bytes(params, 0, seq_len, hidden, layers, precision)
        fits = int((memory_bytes - states) // max(per_example, 1))
        advice = (f"use at most about {fits} examples per replica (raise grad_accum_steps "
                  "or lower the batch)" if fits > 0 else
                  "the model alone does not fit: use a smaller size or more memory per device")
        raise KorlmError(
            f"per-replica batch {per_replica_batch} x {seq_len} tokens needs about "
            f"{estimate / GIB:.1f} GiB to train ({precision}: {states / GIB:.1f} GiB weights, "
            f"gradients and optimizer state + {per_example / 2**20:.0f} MiB activations per "
            f"example) but one {kind} has {memory_bytes / GIB:.1f} GiB; {advice}")
    return estimate


# ------------------------------------------------------------------ multi-host

# Where the coordinator listens when a spec names hosts without a port (JAX's default).
DEFAULT_COORDINATOR_PORT = 8476
# Seconds every process waits for all the others to join (JAX's default is 300).
MULTIHOST_TIMEOUT_S = 300
# Vertex worker pools that train (0: the primary replica, 1: the other workers); pools 2
# (parameter or reduction servers) and 3 (evaluators) are not JAX processes.
_TRAINING_POOLS = ("workerpool0", "workerpool1")


@dataclasses.dataclass(frozen=True)
class MultihostSpec:
    """How this process joins a multi-host run: ``source`` says where it was read
    (``keras-env``, ``vertex``, ``cloud-tpu``); None fields are left to JAX's own
    detection (Cloud TPU VM metadata)."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int_env(env, name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise KorlmError(f"{name}={env.get(name)!r} is not a whole number") from None


def _vertex_spec(text: str) -> MultihostSpec | None:
    """Vertex AI's ``CLUSTER_SPEC`` (cloud.google.com/vertex-ai/docs/training/
    distributed-training#cluster-spec): ``{"cluster": {"workerpool0": ["host:port"],
    "workerpool1": [...]}, "task": {"type": "workerpool1", "index": 2}, ...}``. Processes
    are numbered pool 0 first, then pool 1 in list order; the primary replica's address
    is the coordinator's. None when only one replica trains."""
    import json

    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        pools = [list(cluster.get(name) or []) for name in _TRAINING_POOLS]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise KorlmError(f"CLUSTER_SPEC is not Vertex AI's cluster spec ({_one_line(exc)})") from None
    total = sum(len(p) for p in pools)
    if total <= 1:
        return None
    if kind not in _TRAINING_POOLS or not pools[0]:
        raise KorlmError(f"CLUSTER_SPEC: task type {kind!r} is not a training worker pool "
                         f"({', '.join(_TRAINING_POOLS)}) or workerpool0 is empty")
    offset = 0 if kind == "workerpool0" else len(pools[0])
    if not 0 <= index < len(pools[_TRAINING_POOLS.index(kind)]):
        raise KorlmError(f"CLUSTER_SPEC: task index {index} is outside {kind}")
    host = pools[0][0]
    if ":" not in host:
        host = f"{host}:{DEFAULT_COORDINATOR_PORT}"
    return MultihostSpec("vertex", host, total, offset + index)


def tpu_is_multihost(accelerator_type: str | None) -> bool | None:
    """Whether a Cloud TPU slice spans several hosts, from its accelerator type: the
    number after the dash counts TensorCores (v2-v5p) or chips (v5e, v6e), and no host
    holds more than 8 of them, so ``v5litepod-16``, ``v4-16``, ``v3-32`` are multi-host
    and ``v5litepod-8``, ``v6e-8``, ``v3-8`` are not. None: not a TPU type."""
    match = re.fullmatch(r"v\d+\w*-(\d+)", (accelerator_type or "").strip().lower())
    return int(match.group(1)) > 8 if match else None


def multihost_spec(env=None) -> MultihostSpec | None:
    """How this process should join a multi-host run, or None on a single host:

    1. ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (comma-separated; the first is the
       coordinator), ``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``:
       Keras's own variables (``keras.distribution.initialize``), set by hand or a launcher;
    2. Vertex AI's ``CLUSTER_SPEC`` with more than one training replica;
    3. a multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES``
       with several hosts, ``MEGASCALE_NUM_SLICES`` > 1, or ``TPU_ACCELERATOR_TYPE`` of
       more than one host): JAX finds coordinator and ids itself (TPU metadata).
    """
    env = os.environ if env is None else env
    if env.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        count = _int_env(env, "KERAS_DISTRIBUTION_NUM_PROCESSES")
        if count <= 1:
            return None
        addresses = [a.strip() for a in env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES", "").split(",")
                     if a.strip()]
        if not addresses:
            raise KorlmError("KERAS_DISTRIBUTION_NUM_PROCESSES is set but "
                             "KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's host:port) is not")
        process_id = _int_env(env, "KERAS_DISTRIBUTION_PROCESS_ID")
        if not 0 <= process_id < count:
            raise KorlmError(f"KERAS_DISTRIBUTION_PROCESS_ID={process_id} is outside 0..{count - 1}")
        return MultihostSpec("keras-env", addresses[0], count, process_id)
    if env.get("CLUSTER_SPEC"):
        spec = _vertex_spec(env["CLUSTER_SPEC"])
        if spec is not None:
            return spec
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    slices = env.get("MEGASCALE_NUM_SLICES", "1").strip() or "1"
    if (len([h for h in hosts.split(",") if h.strip()]) > 1 or slices not in ("0", "1")
            or tpu_is_multihost(env.get("TPU_ACCELERATOR_TYPE"))):
        return MultihostSpec("cloud-tpu")
    return None


def initialize_multihost(env=None, *, timeout_s: int = MULTIHOST_TIMEOUT_S) -> MultihostSpec | None:
    """Join the multi-host run ``multihost_spec`` describes (``jax.distributed.initialize``,
    before any JAX computation and before the model is built), or do nothing on a single
    host (returns None). Under JAX on CPUs (``JAX_PLATFORMS=cpu``) the collectives go
    through gloo. The JAX backend only: TensorFlow's multi-worker strategies read
    ``TF_CONFIG`` themselves."""
    spec = multihost_spec(env)
    if spec is None:
        return None
    env = os.environ if env is None else env
    import jax

    if jax.distributed.is_initialized():
        return spec
    if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except (AttributeError, ValueError) as exc:  # a jaxlib without CPU collectives
            raise KorlmError(f"this jaxlib has no gloo CPU collectives ({_one_line(exc)}); "
                             "multi-process CPU runs need jax/jaxlib 0.4.27 or later") from None
    try:
        jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                                   num_processes=spec.num_processes, process_id=spec.process_id,
                                   initialization_timeout=int(timeout_s))
    except Exception as exc:  # RuntimeError / XlaRuntimeError / ValueError from JAX
        where = (f"coordinator {spec.coordinator_address}, process {spec.process_id} of "
                 f"{spec.num_processes}" if spec.coordinator_address else "found by JAX")
        raise KorlmError(f"multi-host start ({spec.source}: {where}) failed: "
                         f"{_one_line(exc)}") from None
    return dataclasses.replace(spec, num_processes=jax.process_count(),
                               process_id=jax.process_index())


def process_index_and_count() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())`` under the JAX backend once JAX is
    imported, else ``(0, 1)``: TensorFlow runs and single hosts are one process."""
    if "jax" not in sys.modules or keras_backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def process_shards(files: list[str], process_index: int | None = None,
                   process_count: int | None = None) -> list[str]:
    """This process's share of the input shards: every ``process_count``-th file from
    ``process_index`` (what ``tf.data.Dataset.shard(count, index)`` keeps of a file
    list), so the processes read disjoint sets that together cover every file. A
    KorlmError when some process would get no file (it would then hang in the first
    collective): write at least as many shards as there are hosts."""
    if process_index is None or process_count is None:
        process_index, process_count = process_index_and_count()
    if not 0 <= process_index < process_count:
        raise KorlmError(f"process index {process_index} is outside 0..{process_count - 1}")
    if len(files) < process_count:
        raise KorlmError(f"{len(files)} input shard(s) for {process_count} processes: each host "
                         "reads its own shards, so write at least one shard per host "
                         "(pretrain-data's num_shards)")
    return list(files[process_index::process_count])


def process_batch_size(global_batch: int, process_count: int | None = None) -> int:
    """Examples each process feeds per step: Keras's ``DataParallel`` assembles the
    global batch from every process's local part (``jax.make_array_from_process_local_data``)."""
    if process_count is None:
        process_count = process_index_and_count()[1]
    if global_batch % process_count:
        raise KorlmError(f"global batch {global_batch} does not split evenly over "
                         f"{process_count} processes")
    return global_batch // process_count


def is_checkpoint_writer() -> bool:
    """Whether this process writes checkpoints and logs: process 0 only. Under
    ``DataParallel`` weights and optimizer state are replicated, so process 0 holds
    all of them; the others wait at ``sync_processes`` after each save."""
    return process_index_and_count()[0] == 0


def sync_processes(name: str) -> None:
    """A barrier across processes (no-op on one process): e.g. after process 0 wrote a
    checkpoint, before anyone reads it or moves on."""
    if process_index_and_count()[1] <= 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
