"""Pretraining step throughput: korlm's BERT (KerasHub, TF backend) vs transformers + PyTorch.

The same architecture (``korlm.presets``: mini by default), vocabulary size, batch and
sequence length; each side trains on one batch cached in memory (so the figure is the
model's alone, not the input pipeline's), with AdamW, for ``--steps`` timed steps after
``--warmup`` untimed ones. Each measurement runs in a fresh process, alternating korlm and
PyTorch round by round, and the medians are reported with the load average, since this
machine's 2 cores may be shared.

What differs by design: KerasHub's ``BertMaskedLM`` computes the MLM head only at the
masked positions (``mask_selection_length`` of them), while ``BertForMaskedLM`` computes
logits at every position and ignores the unmasked ones in the loss. Both are the
libraries' standard MLM training paths.

    .venv/bin/python benchmarks/train_throughput.py --size mini --batch-size 32 --seq-len 128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_korlm(args) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tensorflow as tf

    from korlm.models import build_masked_lm
    from korlm.pretrain import compile_masked_lm

    rng = np.random.default_rng(0)
    n_mask = max(1, math.ceil(args.seq_len * 0.15))
    task = build_masked_lm("bert", args.size, args.vocab_size, args.seq_len)
    compile_masked_lm(task, learning_rate=1e-4, warmup_steps=10, total_steps=10_000, weight_decay=0.01)
    ids = rng.integers(5, args.vocab_size, size=(args.batch_size, args.seq_len)).astype("int32")
    positions = np.sort(np.stack([rng.choice(np.arange(1, args.seq_len - 1), n_mask, replace=False)
                                  for _ in range(args.batch_size)]), axis=1).astype("int32")
    labels = np.take_along_axis(ids, positions, axis=1)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids, dtype=bool),
         "mask_positions": positions}
    ds = tf.data.Dataset.from_tensors((x, labels, np.ones_like(labels, dtype="float32"))).repeat()
    task.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    task.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"side": "korlm", "seconds": seconds, "params": task.count_params()}


def run_torch(args) -> dict:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    sys.path.insert(0, str(ROOT))
    from korlm.presets import size_config

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    size = size_config(args.size)
    config = BertConfig(vocab_size=args.vocab_size, hidden_size=size["hidden_dim"],
                        num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
                        intermediate_size=size["intermediate_dim"], max_position_embeddings=args.seq_len,
                        hidden_act="gelu_pytorch_tanh", attn_implementation="sdpa")
    model = BertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len))
    n_mask = max(1, math.ceil(args.seq_len * 0.15))
    labels = torch.full_like(ids, -100)
    for row in range(args.batch_size):
        pos = torch.randperm(args.seq_len - 2)[:n_mask] + 1
        labels[row, pos] = ids[row, pos]
    mask = torch.ones_like(ids)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    return {"side": "torch", "seconds": seconds, "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=["korlm", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_korlm(args) if args.one == "korlm" else run_torch(args)
        print("RESULT " + json.dumps(result))
        return

    tokens = args.steps * args.batch_size * args.seq_len
    rates: dict[str, list[float]] = {"korlm": [], "torch": []}
    params = {}
    passthrough = [f"--size={args.size}", f"--vocab-size={args.vocab_size}", f"--batch-size={args.batch_size}",
                   f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    for r in range(args.rounds):
        for side in ("korlm", "torch"):
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, *passthrough, "--one", side],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
            result = json.loads(line[len("RESULT "):])
            rates[side].append(tokens / result["seconds"])
            params[side] = result["params"]
            print(f"round {r + 1} {side:5s}: {tokens / result['seconds']:9.0f} tokens/s "
                  f"({result['seconds']:.1f} s for {args.steps} steps; load {load:.2f})", flush=True)
    med = {side: statistics.median(v) for side, v in rates.items()}
    print(json.dumps({"size": args.size, "batch_size": args.batch_size, "seq_len": args.seq_len,
                      "vocab_size": args.vocab_size, "params": params,
                      "median_tokens_per_s": {k: round(v) for k, v in med.items()},
                      "ratio_korlm_over_torch": round(med["korlm"] / med["torch"], 3),
                      "load_after": round(os.getloadavg()[0], 2)}, indent=2))


if __name__ == "__main__":
    main()
