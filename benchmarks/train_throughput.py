"""Pretraining step throughput: korlm's models (KerasHub, TF backend) vs transformers + PyTorch.

The same architecture (``korlm.modeling.presets``: mini by default), vocabulary size, batch and
sequence length, float32 on both sides, the same number of CPU threads; each side trains
on one batch cached in memory (so the figure is the model's alone, not the input
pipeline's) for ``--steps`` timed steps after ``--warmup`` untimed ones. The optimizer work
is the same on both sides: AdamW (beta 0.9/0.999, eps 1e-6, weight decay 0.01 with
LayerNorm and bias excluded), gradient clipping at norm 1.0, linear warmup/decay schedule.
Each measurement runs in a fresh process; korlm variants and PyTorch alternate round by
round; medians are reported with the load average, since this machine's cores are shared.

Models (``--model``):

- ``bert``: KerasHub ``BertMaskedLM`` vs ``BertForMaskedLM``.
- ``roberta``: KerasHub ``RobertaMaskedLM`` vs ``RobertaForMaskedLM``.
- ``bart``: KerasHub ``BartSeq2SeqLM`` vs ``BartForConditionalGeneration``, encoder and
  decoder each ``num_layers / 2`` deep (``korlm.modeling.presets.model_config``: BART splits the
  depth of the BERT of the same size name); the decoder is as long as the encoder.
- ``electra``: korlm's generator + discriminator (``korlm.modeling.electra``) with its own
  loss; korlm variants only (``--no-torch``).

The korlm side is what ``korlm pretrain`` trains: ``korlm.modeling.build.build_pretraining_task``
compiled by ``korlm.pretrain.optimizer.compile_pretraining``.

What differs by design: KerasHub's masked LMs compute the MLM head only at the masked
positions (``mask_selection_length`` of them), while ``*ForMaskedLM`` computes logits at
every position and ignores the unmasked ones in the loss. Both are the libraries' standard
MLM training paths.

``--variants`` runs korlm several ways side by side (each a fresh process per round), to
find what helps. A variant is ``name`` or ``name:key=value,key=value`` with keys:
``jit`` (0/1: XLA), ``spe`` (Keras ``steps_per_execution``), ``onednn`` (0/1:
``TF_ENABLE_ONEDNN_OPTS``), ``intra``/``inter`` (``tf.config.threading``), ``autotune``
(0: ``tf.data.Options().autotune.enabled = False`` on the cached-batch dataset),
``policy`` (a Keras dtype policy set before the model is built: ``mixed_bfloat16`` is what
``pretrain.precision: mixed_bfloat16`` sets). ``--no-torch`` leaves the PyTorch side out
and reports each variant's ratio over the first variant instead (e.g. bf16 over float32).
``--per-step`` prints every step's seconds. Every run reports tokens/s over the whole timed
fit (``wall``: the headline figure), from the median step and from the mean of the fastest
quarter of steps (closest to an unshared machine), tokens per CPU-second of the process,
its CPU seconds per wall second (2.0 = both cores all the time) and the seconds its
threads sat runnable but waiting for a core per wall second (Linux schedstat: the direct
measure of sharing the cores with other jobs).

    .venv/bin/python benchmarks/train_throughput.py --rounds 5 --per-step --variants korlm korlm_noautotune:autotune=0
    .venv/bin/python benchmarks/train_throughput.py --rounds 2 --variants default onednn:onednn=1 xla:jit=1 spe5:spe=5
    .venv/bin/python benchmarks/train_throughput.py --model roberta --rounds 3   # or --model bart
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR, WARMUP_LR_STEPS, TOTAL_LR_STEPS, WEIGHT_DECAY = 1e-4, 10, 10_000, 0.01
VARIANT_KEYS = {"jit", "spe", "onednn", "intra", "inter", "autotune", "policy"}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    settings = dict(item.split("=", 1) for item in spec.split(",") if item) if spec else {}
    unknown = set(settings) - VARIANT_KEYS
    if unknown or not name:
        raise SystemExit(f"bad variant {text!r}: keys are {', '.join(sorted(VARIANT_KEYS))}")
    return name, settings


def n_masked(seq_len: int) -> int:
    return max(1, math.ceil(seq_len * 0.15))


def _step_summary(step_seconds: list[float]) -> dict:
    fastest = sorted(step_seconds)[:max(1, len(step_seconds) // 4)]
    return {"step_median": statistics.median(step_seconds), "step_max": max(step_seconds),
            "step_min": min(step_seconds), "step_fast_quartile": statistics.fmean(fastest),
            "step_seconds": step_seconds}


def runqueue_wait_seconds() -> float:
    """Seconds this process's threads have spent runnable but waiting for a core (Linux
    schedstat): the direct measure of sharing the CPU with other jobs."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


# --------------------------------------------------------------------------- korlm

def _korlm_task(args):
    """The korlm-side task and one batch of its inputs (x, y, sample_weight)."""
    import numpy as np

    from korlm.modeling.build import uses_segment_ids

    rng = np.random.default_rng(0)
    ids = rng.integers(5, args.vocab_size, size=(args.batch_size, args.seq_len)).astype("int32")
    mask = np.ones_like(ids, dtype=bool)
    task = _build_korlm_task(args)
    if args.model == "bart":
        decoder_ids = np.concatenate([np.full((args.batch_size, 1), 2, "int32"), ids[:, :-1]], axis=1)
        x = {"encoder_token_ids": ids, "encoder_padding_mask": mask,
             "decoder_token_ids": decoder_ids, "decoder_padding_mask": mask}
        return task, x, ids, np.ones(ids.shape, dtype="float32")
    positions = np.sort(np.stack([rng.choice(np.arange(1, args.seq_len - 1), n_masked(args.seq_len), replace=False)
                                  for _ in range(args.batch_size)]), axis=1).astype("int32")
    labels = np.take_along_axis(ids, positions, axis=1)
    x = {"token_ids": ids, "padding_mask": mask, "mask_positions": positions}
    if uses_segment_ids(args.model):
        x["segment_ids"] = np.zeros_like(ids)
    weights = np.ones(labels.shape, dtype="float32")
    if args.model == "electra":  # korlm.pretrain.electra.labels_in_inputs
        x.update(mask_ids=labels, mask_weights=weights)
    return task, x, labels, weights


def _build_korlm_task(args):
    from korlm.modeling.build import build_pretraining_task

    return build_pretraining_task(args.model, args.size, args.vocab_size, args.seq_len)


def _compile_korlm(task, args):
    """korlm's compile: AdamW, global-norm clipping 1.0, weight decay without
    LayerNorm/bias, loss averaged over the real label slots."""
    from korlm.modeling.build import objective_of
    from korlm.pretrain.optimizer import compile_pretraining

    if args.model == "electra":  # the model's own loss (generator MLM + 50 x discriminator)
        from korlm.pretrain.electra import compile_electra

        compile_electra(task, learning_rate=LR, warmup_steps=WARMUP_LR_STEPS,
                        total_steps=TOTAL_LR_STEPS, weight_decay=WEIGHT_DECAY)
        return

    compile_pretraining(task, objective=objective_of(args.model), learning_rate=LR,
                                 warmup_steps=WARMUP_LR_STEPS, total_steps=TOTAL_LR_STEPS, weight_decay=WEIGHT_DECAY)


def run_korlm(args, settings: dict[str, str]) -> dict:
    import keras
    import tensorflow as tf

    threads = int(settings.get("intra", args.threads))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(int(settings.get("inter", threads)))
    if "policy" in settings:  # before the model is built, as korlm.pretrain.distribute.set_precision
        keras.mixed_precision.set_global_policy(settings["policy"])
    task, x, y, weights = _korlm_task(args)
    _compile_korlm(task, args)
    # Compile flags applied after korlm's compile, so the optimizer, loss and metrics are
    # exactly korlm's; Keras builds its train function from these at the first fit.
    task.jit_compile = settings.get("jit", "0") == "1"
    spe = int(settings.get("spe", 1))
    task.steps_per_execution = spe
    x = {k: tf.constant(v) for k, v in x.items()}
    ds = tf.data.Dataset.from_tensors((x, tf.constant(y), tf.constant(weights))).repeat()
    if settings.get("autotune", "1") == "0":
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)

    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    compile_start = time.perf_counter()
    task.fit(ds, steps_per_epoch=max(args.warmup, spe), epochs=1, verbose=0)
    warmup_seconds = time.perf_counter() - compile_start
    steps = max(spe, args.steps // spe * spe)
    wait0, cpu0, start = runqueue_wait_seconds(), time.process_time(), time.perf_counter()
    task.fit(ds, steps_per_epoch=steps, epochs=1, callbacks=[Stamp()], verbose=0)
    seconds = time.perf_counter() - start
    cpu, wait = time.process_time() - cpu0, runqueue_wait_seconds() - wait0
    # Time in fit() outside the steps: before the first (iterator, callbacks) and after the
    # last (epoch end), so a per-call cost shows apart from the per-step rate.
    outside = (stamps[0] - start) + (start + seconds - stamps[-1])
    per_execution = [b - a for a, b in itertools.pairwise(stamps)]
    step_seconds = [s / spe for s in per_execution]
    return {"seconds": seconds, "steps": steps, "cpu_per_wall": cpu / seconds, "wait_per_wall": wait / seconds,
            "warmup_seconds": warmup_seconds, "outside_steps_seconds": outside,
            "params": task.count_params(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            **_step_summary(step_seconds)}


# --------------------------------------------------------------------------- torch

def _torch_model(args):
    import transformers as tr

    from korlm.modeling.presets import model_config

    size = model_config(args.model, args.size)  # BART: num_layers per stack
    common = {"vocab_size": args.vocab_size, "attn_implementation": "sdpa"}
    if args.model == "bart":
        config = tr.BartConfig(d_model=size["hidden_dim"], encoder_layers=size["num_layers"],
                               decoder_layers=size["num_layers"], encoder_attention_heads=size["num_heads"],
                               decoder_attention_heads=size["num_heads"], encoder_ffn_dim=size["intermediate_dim"],
                               decoder_ffn_dim=size["intermediate_dim"], max_position_embeddings=args.seq_len,
                               activation_function="gelu", dropout=0.1, attention_dropout=0.0,
                               activation_dropout=0.0, **common)
        return tr.BartForConditionalGeneration(config)
    kw = {"hidden_size": size["hidden_dim"], "num_hidden_layers": size["num_layers"],
          "num_attention_heads": size["num_heads"], "intermediate_size": size["intermediate_dim"]}
    if args.model == "roberta":
        # RoBERTa's positions start after the padding index: seq_len + 2 rows, as KerasHub's
        # seq_len rows plus two; one segment type; exact GELU and epsilon 1e-5 as KerasHub.
        config = tr.RobertaConfig(max_position_embeddings=args.seq_len + 2, type_vocab_size=1, pad_token_id=1,
                                  hidden_act="gelu", layer_norm_eps=1e-5, **kw, **common)
        return tr.RobertaForMaskedLM(config)
    config = tr.BertConfig(max_position_embeddings=args.seq_len, hidden_act="gelu_pytorch_tanh", **kw, **common)
    return tr.BertForMaskedLM(config)


def run_torch(args, settings: dict[str, str]) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(int(settings.get("intra", args.threads)))
    model = _torch_model(args).train()
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n or "layer_norm" in n
                or "layernorm" in n]
    decay = [p for n, p in model.named_parameters() if all(p is not q for q in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / WARMUP_LR_STEPS, max(0.0, (TOTAL_LR_STEPS - s) / TOTAL_LR_STEPS)))
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len))
    mask = torch.ones_like(ids)
    if args.model == "bart":
        decoder_ids = torch.cat([torch.full((args.batch_size, 1), 2), ids[:, :-1]], dim=1)
        inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
                  "decoder_attention_mask": mask, "labels": ids}
    else:
        labels = torch.full_like(ids, -100)
        for row in range(args.batch_size):
            pos = torch.randperm(args.seq_len - 2)[:n_masked(args.seq_len)] + 1
            labels[row, pos] = ids[row, pos]
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_seconds = time.perf_counter() - warm_start
    stamps = []
    wait0, cpu0, start = runqueue_wait_seconds(), time.process_time(), time.perf_counter()
    stamps.append(start)
    for _ in range(args.steps):
        step()
        stamps.append(time.perf_counter())
    seconds = time.perf_counter() - start
    cpu, wait = time.process_time() - cpu0, runqueue_wait_seconds() - wait0
    return {"seconds": seconds, "steps": args.steps, "cpu_per_wall": cpu / seconds, "wait_per_wall": wait / seconds,
            "warmup_seconds": warmup_seconds,
            "params": sum(p.numel() for p in model.parameters()),
            **_step_summary([b - a for a, b in itertools.pairwise(stamps)])}


# --------------------------------------------------------------------------- driver

def _child(args, side: str, settings: dict[str, str]) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if "onednn" in settings:
        env["TF_ENABLE_ONEDNN_OPTS"] = settings["onednn"]
    passthrough = [f"--model={args.model}", f"--size={args.size}", f"--vocab-size={args.vocab_size}",
                   f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}", f"--steps={args.steps}",
                   f"--warmup={args.warmup}", f"--threads={args.threads}"]
    spec = ",".join(f"{k}={v}" for k, v in settings.items())
    proc = subprocess.run([sys.executable, __file__, *passthrough, "--one", side, "--settings", spec],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bert", "roberta", "bart", "electra"], default="bert")
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads on both sides (tf.config.threading / torch.set_num_threads)")
    parser.add_argument("--variants", nargs="+", default=["korlm"],
                        help="korlm variants, each 'name' or 'name:key=value,...' (see the module doc)")
    parser.add_argument("--per-step", action="store_true", help="print every timed step's seconds")
    parser.add_argument("--no-torch", action="store_true",
                        help="korlm variants only; ratios over the first variant")
    parser.add_argument("--one", choices=["korlm", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(ROOT))
        settings = parse_variant("x:" + args.settings)[1]
        result = run_korlm(args, settings) if args.one == "korlm" else run_torch(args, settings)
        result["load_in_child"] = os.getloadavg()[0]
        print("RESULT " + json.dumps(result))
        return

    if args.model == "electra" and not args.no_torch:
        parser.error("--model electra has no PyTorch side here: add --no-torch")
    variants = [parse_variant(v) for v in args.variants]
    sides = ([] if args.no_torch else [("torch", {})]) + variants
    reference = sides[0][0]
    tokens_per_step = args.batch_size * args.seq_len
    metrics = ("wall", "median_step", "fast_quartile", "per_cpu_second")
    rates: dict[str, dict[str, list[float]]] = {m: {name: [] for name, _ in sides} for m in metrics}
    loads, params, waits = [], {}, {name: [] for name, _ in sides}
    for r in range(args.rounds):
        # Alternate which side goes first, so a load change hits both sides alike.
        order = sides if r % 2 == 0 else sides[::-1]
        for name, settings in order:
            load = os.getloadavg()[0]
            loads.append(load)
            res = _child(args, "torch" if name == "torch" else "korlm", settings)
            rate = res["steps"] * tokens_per_step / res["seconds"]
            rates["wall"][name].append(rate)
            rates["median_step"][name].append(tokens_per_step / res["step_median"])
            rates["fast_quartile"][name].append(tokens_per_step / res["step_fast_quartile"])
            rates["per_cpu_second"][name].append(rate / res["cpu_per_wall"])
            waits[name].append(res["wait_per_wall"])
            params[name] = res["params"]
            print(f"round {r + 1} {name:>10s}: {rate:6.0f} tokens/s ({res['seconds']:5.1f} s / {res['steps']} steps; "
                  f"step median {res['step_median']:.3f} s, fastest quarter {res['step_fast_quartile']:.3f} s, "
                  f"slowest {res['step_max']:.3f} s; cpu/wall {res['cpu_per_wall']:.2f}, "
                  f"runqueue wait/wall {res['wait_per_wall']:.2f}; warm-up {res['warmup_seconds']:.1f} s; "
                  f"in fit outside steps {res.get('outside_steps_seconds', 0):.1f} s; "
                  f"load {load:.2f})", flush=True)
            if args.per_step:
                print("    steps: " + " ".join(f"{s:.2f}" for s in res["step_seconds"]), flush=True)
    summary = {"model": args.model, "size": args.size, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "vocab_size": args.vocab_size, "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
               "params": params, "load_range": [round(min(loads), 2), round(max(loads), 2)],
               "runqueue_wait_per_wall_median": {k: round(statistics.median(v), 2) for k, v in waits.items()}}
    for metric in metrics:
        med = {name: statistics.median(v) for name, v in rates[metric].items()}
        summary[metric] = {
            "median_tokens_per_s": {k: round(v) for k, v in med.items()},
            f"ratio_over_{reference}": {name: round(med[name] / med[reference], 3) for name, _ in sides[1:]},
            "ratio_per_round": {name: [round(a / b, 3) for a, b in zip(rates[metric][name], rates[metric][reference], strict=True)]
                                for name, _ in sides[1:]}}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
