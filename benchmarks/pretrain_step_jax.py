"""korlm's masked-LM pretraining step on whatever JAX device there is: tokens/s, model
TFLOP/s and MFU against the device's peak (``korlm.pretrain.distribute.PEAK_FLOPS``).

The step is the one ``korlm pretrain`` runs under ``KERAS_BACKEND=jax``:
``distribute.resolve_strategy`` (``keras.distribution.DataParallel`` over every local
JAX device), ``distribute.set_precision`` (``--precision``, default ``mixed_bfloat16``),
``build.build_pretraining_task`` (KerasHub ``BertMaskedLM`` / ``RobertaMaskedLM`` at a
korlm size preset) compiled by ``optimizer.compile_pretraining`` (AdamW, warmup/decay
schedule, global-norm clipping 1.0, loss over the real label slots, ``jit_compile``),
trained by ``keras.Model.fit`` (KerasHub's own ``fit`` would need tf.data or grain to
batch numpy arrays) with a callback that reads the loss after every step (as
korlm's monitor does). The batches are synthetic (random token ids, every position real,
``ceil(0.15 x seq)`` masked slots a sequence: what korlm's packed shards give at mask rate
0.15), built in memory: no tf.data, so neither TensorFlow nor a data set is needed.

Only JAX, Keras, KerasHub (and numpy) are imported on the korlm side: the script runs
where TensorFlow is absent (a lent GPU machine with wheels of keras and keras-hub
installed without their TensorFlow extras). ``--baseline torch`` (default: when torch
and transformers import) trains transformers' ``BertForMaskedLM`` / ``RobertaForMaskedLM``
of the same shapes in the same process, alternating with korlm round by round, on the
same kind of device (CUDA when JAX runs on a GPU, else the CPU), with the same optimizer
work and ``torch.autocast`` for the 16-bit precisions; its logits cover every position
(HF's MLM head), korlm's only the masked slots (KerasHub's), so compare tokens/s (same
model, same data, what a user waits for) and read each side's TFLOP/s with its own
FLOP count.

Figures: tokens/s = batch x seq x timed steps / their wall time (the first ``--warmup``
steps of every round, compilation included, are not timed), median over ``--rounds``;
model FLOPs per token from ``distribute.model_flops_per_token`` (PaLM's 6N + 12 L d s,
MLM head at the masked slots); MFU = achieved / peak of all devices, where the device has
a table entry (none for a CPU: give ``--peak-tflops``). The load average is printed with
every round: on a shared machine the ratio is the figure to read.

    KERAS_BACKEND=jax python benchmarks/pretrain_step_jax.py --size base --batch-size 8 --steps 3
    KERAS_BACKEND=jax python benchmarks/pretrain_step_jax.py --size tiny --precision float32
    # on a GPU (see benchmarks/README.md): --size base --batch-size 128 --steps 50 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MASK_RATE = 0.15  # korlm's default pretrain.mask_rate
LR, WARMUP_LR_STEPS, TOTAL_LR_STEPS, WEIGHT_DECAY = 1e-4, 10, 10_000, 0.01
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def label_slots(seq_len: int) -> int:
    """Masked slots a sequence: ``korlm.pretrain.masking.default_max_predictions(seq_len,
    0.15)`` (that module needs TensorFlow; tests/test_devices.py checks the two agree)."""
    return max(1, math.ceil(seq_len * MASK_RATE))


def synthetic_batches(n: int, seq_len: int, vocab_size: int, segment_ids: bool, seed: int = 0):
    """``(x, y, sample_weight)`` of ``n`` masked-LM examples as korlm's dataset yields them
    (``korlm.pretrain.dataset.make_dataset``, objective mlm): every position real, distinct
    sorted mask positions away from [CLS]/[SEP], labels the original ids, weights 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    slots = label_slots(seq_len)
    ids = rng.integers(5, vocab_size, size=(n, seq_len)).astype("int32")
    positions = np.sort(rng.random((n, seq_len - 2)).argsort(axis=1)[:, :slots] + 1,
                        axis=1).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool),
         "mask_positions": positions}
    if segment_ids:
        x["segment_ids"] = np.zeros_like(ids)
    return x, np.take_along_axis(ids, positions, axis=1), np.ones((n, slots), "float32")


# ---------------------------------------------------------------------------- korlm (JAX)

class KorlmSide:
    """korlm's model, built and compiled once; ``run`` trains one round."""

    def __init__(self, args):
        import keras

        from korlm.modeling import build
        from korlm.pretrain import distribute
        from korlm.pretrain.optimizer import compile_pretraining

        if keras.backend.backend() != "jax":
            sys.exit(f"Keras runs on {keras.backend.backend()}: set KERAS_BACKEND=jax before starting")
        self.args = args
        self.dist = distribute.resolve_strategy("auto")  # DataParallel over every JAX device
        self.micro_batch = distribute.check_batch(args.batch_size, self.dist.num_replicas)
        self.precision = distribute.set_precision(args.precision, self.dist)
        keras.utils.set_random_seed(0)
        with self.dist.scope():
            self.task = build.build_pretraining_task(args.model, args.size, args.vocab_size, args.seq_len)
            compile_pretraining(self.task, objective="mlm", learning_rate=LR,
                                warmup_steps=WARMUP_LR_STEPS, total_steps=TOTAL_LR_STEPS,
                                weight_decay=WEIGHT_DECAY, jit_compile=self.dist.jit_compile)
        self.params = int(self.task.count_params())
        n = args.batch_size * (args.warmup + args.steps)
        self.data = synthetic_batches(n, args.seq_len, args.vocab_size, build.uses_segment_ids(args.model))
        self.flops_per_token = distribute.model_flops_per_token(
            args.model, args.size, args.vocab_size, args.seq_len, mlm_predictions=label_slots(args.seq_len))
        override = args.peak_tflops * 1e12 if args.peak_tflops else None
        self.peak = self.dist.peak_flops(self.precision.policy, override=override)

    def run(self) -> dict:
        import keras

        args = self.args
        stamps: list[float] = []
        losses: list[float] = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == 0:
                    stamps.append(time.perf_counter())

            def on_train_batch_end(self, batch, logs=None):
                losses.append(float(logs["loss"]))  # waits for the step, as korlm's monitor does
                stamps.append(time.perf_counter())

        x, y, w = self.data
        # keras.Model.fit, not KerasHub's PipelineModel.fit: the latter turns numpy into a
        # tf.data or grain dataset first (even with no preprocessor), which needs TensorFlow
        # or grain; with preprocessor=None both run the same compiled train step.
        keras.Model.fit(self.task, x, y, sample_weight=w, batch_size=args.batch_size, epochs=1,
                        shuffle=False, verbose=0, callbacks=[Clock()])
        if not all(math.isfinite(v) for v in losses):
            sys.exit(f"korlm: non-finite loss {losses}")
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        return {"warmup_seconds": stamps[args.warmup] - stamps[0], "step_seconds": steps[args.warmup:],
                "loss": losses[-1]}

    def describe(self) -> str:
        import jax
        import keras
        import keras_hub

        return (f"korlm ({args_model(self.args)}, {self.params:,} params): {self.dist.describe()}, "
                f"{self.precision.policy}; jax {jax.__version__}, keras {keras.__version__}, "
                f"keras-hub {keras_hub.__version__}; micro-batch {self.micro_batch} per device")


def args_model(args) -> str:
    return f"{args.model}-{args.size}, seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab_size}"


# ---------------------------------------------------------------------------- baseline

class TorchSide:
    """transformers ``*ForMaskedLM`` of the same shapes: AdamW (no decay on LayerNorm and
    biases), global-norm clipping 1.0, linear warmup/decay, ``torch.autocast`` for the
    16-bit precisions (a ``GradScaler`` for float16), the loss read after every step."""

    def __init__(self, args, device: str):
        import torch
        import transformers as tr

        from korlm.modeling.presets import model_config

        self.args, self.torch, self.device = args, torch, device
        torch.manual_seed(0)
        torch.set_float32_matmul_precision("high")  # TF32 on GPUs, as XLA's default
        size = model_config(args.model, args.size)
        kw = {"hidden_size": size["hidden_dim"], "num_hidden_layers": size["num_layers"],
              "num_attention_heads": size["num_heads"], "intermediate_size": size["intermediate_dim"],
              "vocab_size": args.vocab_size, "attn_implementation": "sdpa"}
        if args.model == "roberta":
            config = tr.RobertaConfig(max_position_embeddings=args.seq_len + 2, type_vocab_size=1,
                                      pad_token_id=1, hidden_act="gelu", layer_norm_eps=1e-5, **kw)
            self.model = tr.RobertaForMaskedLM(config)
        else:
            config = tr.BertConfig(max_position_embeddings=args.seq_len, hidden_act="gelu_pytorch_tanh", **kw)
            self.model = tr.BertForMaskedLM(config)
        self.model.to(device).train()
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if "bias" in n or "LayerNorm" in n or "layer_norm" in n]
        decay = [p for _, p in named if all(p is not q for q in no_decay)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-6)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min((s + 1) / WARMUP_LR_STEPS, max(0.0, (TOTAL_LR_STEPS - s) / TOTAL_LR_STEPS)))
        self.dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(args.precision)
        self.scaler = torch.amp.GradScaler(device.split(":")[0]) if self.dtype is torch.float16 else None
        self.params = sum(p.numel() for p in self.model.parameters())
        x, y, _ = synthetic_batches(args.batch_size * (args.warmup + args.steps), args.seq_len,
                                    args.vocab_size, False, seed=1)
        ids = torch.from_numpy(x["token_ids"]).long()
        labels = torch.full_like(ids, -100)
        labels.scatter_(1, torch.from_numpy(x["mask_positions"]).long(), torch.from_numpy(y).long())
        self.batches = [(ids[i:i + args.batch_size].to(device), labels[i:i + args.batch_size].to(device))
                        for i in range(0, len(ids), args.batch_size)]
        from korlm.pretrain import distribute

        # HF computes MLM logits at every position.
        self.flops_per_token = distribute.model_flops_per_token(
            args.model, args.size, args.vocab_size, args.seq_len, mlm_predictions=None)

    def _step(self, ids, labels) -> float:
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.split(":")[0], dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())  # waits for the device

    def run(self) -> dict:
        stamps = [time.perf_counter()]
        losses = []
        for ids, labels in self.batches:
            losses.append(self._step(ids, labels))
            stamps.append(time.perf_counter())
        if not all(math.isfinite(v) for v in losses):
            sys.exit(f"torch: non-finite loss {losses}")
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        w = self.args.warmup
        return {"warmup_seconds": stamps[w] - stamps[0], "step_seconds": steps[w:], "loss": losses[-1]}

    def describe(self) -> str:
        import torch
        import transformers

        return (f"baseline transformers {transformers.__version__} + torch {torch.__version__} "
                f"{type(self.model).__name__} ({self.params:,} params) on {self.device}, "
                f"{'autocast ' + str(self.dtype).replace('torch.', '') if self.dtype else 'float32'}, "
                f"{torch.get_num_threads()} threads")


def torch_device(jax_platform: str) -> str:
    import torch

    if jax_platform == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


# ---------------------------------------------------------------------------- driver

def summarise(name: str, results: list[dict], tokens_per_step: int, flops_per_token: float,
              peak: float | None) -> dict:
    from korlm.pretrain import distribute

    rates = [tokens_per_step * len(r["step_seconds"]) / sum(r["step_seconds"]) for r in results]
    median_steps = [statistics.median(r["step_seconds"]) for r in results]
    tokens = statistics.median(rates)
    mfu = distribute.mfu(tokens, flops_per_token, peak)
    return {"side": name, "tokens_per_s": tokens, "tokens_per_s_rounds": rates,
            "step_median_s": statistics.median(median_steps),
            "model_tflops": tokens * flops_per_token / 1e12, "flops_per_token": flops_per_token,
            "mfu": mfu, "peak_tflops": peak / 1e12 if peak else None,
            "warmup_seconds": [r["warmup_seconds"] for r in results],
            "final_loss": results[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bert", "roberta"], default="bert")
    parser.add_argument("--size", choices=["tiny", "mini", "small", "base", "large"], default="base",
                        help="a korlm size preset (korlm/modeling/presets.py)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the devices")
    parser.add_argument("--steps", type=int, default=3, help="timed steps a round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps a round (compilation included)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS, default="mixed_bfloat16")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="peak TFLOP/s per device, for a device missing from korlm's table (a CPU)")
    parser.add_argument("--baseline", choices=["auto", "torch", "none"], default="auto")
    parser.add_argument("--json", help="write the summary here too")
    args = parser.parse_args()
    if min(args.steps, args.warmup, args.rounds, args.batch_size) < 1 or args.seq_len < 4:
        parser.error("steps, warmup, rounds and batch size must be at least 1, seq-len at least 4")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    # Let PyTorch share the GPU: JAX would otherwise take 75 % of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.path.insert(0, str(ROOT))
    import jax

    from korlm.errors import KorlmError

    print(f"load average {os.getloadavg()[0]:.2f}; tensorflow importable: "
          f"{_importable('tensorflow')}; jax devices: {jax.devices()}", flush=True)
    try:
        korlm = KorlmSide(args)
    except KorlmError as exc:
        sys.exit(f"pretrain_step_jax: error: {exc}")
    sides: list = [("korlm", korlm)]
    if args.baseline == "torch" or (args.baseline == "auto" and _importable("torch")
                                    and _importable("transformers")):
        sides.append(("torch", TorchSide(args, torch_device(korlm.dist.device_type))))
    for _, side in sides:
        print(side.describe(), flush=True)
    results: dict[str, list[dict]] = {name: [] for name, _ in sides}
    loads = []
    tokens_per_step = args.batch_size * args.seq_len
    for r in range(args.rounds):
        for name, side in sides if r % 2 == 0 else sides[::-1]:
            load = os.getloadavg()[0]
            loads.append(load)
            res = side.run()
            results[name].append(res)
            rate = tokens_per_step * len(res["step_seconds"]) / sum(res["step_seconds"])
            print(f"round {r + 1} {name:>5s}: {rate:10.1f} tokens/s, steps "
                  + " ".join(f"{s:.3f}" for s in res["step_seconds"])
                  + f" s, warm-up {res['warmup_seconds']:.1f} s, loss {res['loss']:.3f}, load {load:.2f}",
                  flush=True)
    summary = {"model": args.model, "size": args.size, "seq_len": args.seq_len, "batch_size": args.batch_size,
               "vocab_size": args.vocab_size, "precision": args.precision, "steps": args.steps,
               "warmup": args.warmup, "rounds": args.rounds, "devices": korlm.dist.describe(),
               "load_average": [min(loads), max(loads)], "sides": [],
               "tensorflow_loaded": sorted(m for m, v in sys.modules.items()
                                           if m.split(".")[0] == "tensorflow" and v is not None)[:3]}
    for name, side in sides:
        peak = korlm.peak if name == "korlm" else None
        summary["sides"].append(summarise(name, results[name], tokens_per_step, side.flops_per_token, peak))
    for s in summary["sides"]:
        mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a (no peak for this device: --peak-tflops)"
        print(f"{s['side']:>5s}: {s['tokens_per_s']:,.1f} tokens/s (median of {args.rounds}), "
              f"{s['model_tflops']:.4f} model TFLOP/s ({s['flops_per_token'] / 1e9:.4f} GFLOP/token), "
              f"MFU {mfu}", flush=True)
    if len(summary["sides"]) == 2:
        ratios = [a / b for a, b in zip(summary["sides"][0]["tokens_per_s_rounds"],
                                        summary["sides"][1]["tokens_per_s_rounds"], strict=True)]
        summary["ratio_korlm_over_torch"] = statistics.median(ratios)
        print(f"korlm / torch tokens/s: {summary['ratio_korlm_over_torch']:.2f} (median of per-round ratios "
              + ", ".join(f"{x:.2f}" for x in ratios) + f"); load average {min(loads):.2f}-{max(loads):.2f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":
    main()
