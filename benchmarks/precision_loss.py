"""Does ``mixed_bfloat16`` pretraining on a CPU reach the loss float32 reaches?

Runs ``korlm pretrain`` (the real command, one fresh process a run) for every precision
and seed on the same pretraining data and tokenizer, alternating the precisions seed by
seed (the order reversed every other seed, so a change of load hits both alike), and
compares the mean training loss over the last ``--window`` logged steps. A precision is
"within noise" of float32 when its mean over seeds differs from float32's by less than
float32's own seed-to-seed standard deviation; the paired difference (same seed, same data
order, same initialisation) and its standard error are printed too. Throughput is the
median ``tokens_per_second`` korlm logged over the run (``train_log.jsonl``); the step
itself is compared more carefully, side by side, by ``train_throughput.py --no-torch``.

A finished run folder is reused as it is (``korlm pretrain`` resumes a run, and a run at
its last step has nothing left to do), so the command can be re-run to extend ``--seeds``.

    .venv/bin/python benchmarks/precision_loss.py --data runs/x/pretrain_data --tokenizer runs/x/vocab \
        --out /tmp/precision --size tiny --steps 1000 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(args, precision: str, seed: int) -> Path:
    out = Path(args.out)
    config = out / f"{precision}-{seed}.yaml"
    config.write_text(
        "pretrain:\n"
        f"  model: {args.model}\n  size: {args.size}\n  steps: {args.steps}\n"
        f"  checkpoint_every: {args.steps}\n  batch_size: {args.batch_size}\n"
        f"  learning_rate: {args.learning_rate}\n  warmup_steps: {args.warmup_steps}\n"
        f"  seed: {seed}\n  precision: {precision}\n", encoding="utf-8")
    run_dir = out / f"run-{precision}-{seed}"
    korlm = Path(sys.executable).with_name("korlm")
    start, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run([str(korlm), "pretrain", "-q", "--config", str(config), "--data", args.data,
                           "--tokenizer", args.tokenizer, "--output", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"korlm pretrain ({precision}, seed {seed}) failed:\n{proc.stderr[-3000:]}")
    print(f"{precision:>15s} seed {seed}: {time.time() - start:6.1f} s (load {load:.2f} at start)", flush=True)
    return run_dir


def summarize_run(run_dir: Path, window: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    last = rows[-1]["step"]
    tail = [r["loss"] for r in rows if r["step"] > last - window]
    rates = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")]
    return {"last_step": last, "loss": statistics.fmean(tail), "tokens_per_second": statistics.median(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="output of korlm pretrain-data")
    parser.add_argument("--tokenizer", required=True, help="output of korlm vocab")
    parser.add_argument("--out", required=True, help="folder for the runs (reused when re-run)")
    parser.add_argument("--model", default="bert")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--window", type=int, default=100, help="steps the final loss is averaged over")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {p: {} for p in args.precisions}
    for i, seed in enumerate(args.seeds):
        for precision in (args.precisions if i % 2 == 0 else args.precisions[::-1]):
            results[precision][seed] = summarize_run(run_one(args, precision, seed), args.window)
    reference = args.precisions[0]
    ref_losses = [results[reference][s]["loss"] for s in args.seeds]
    noise = statistics.stdev(ref_losses) if len(ref_losses) > 1 else float("nan")
    print(f"\n{args.model}-{args.size}, {args.steps} steps, batch {args.batch_size}, lr {args.learning_rate}, "
          f"loss = mean over the last {args.window} steps; seeds {args.seeds}\n")
    print("| precision | loss per seed | mean | Δ vs " + reference + " (paired, ± SE) | tokens/s (median of runs) |")
    print("|---|---|---:|---:|---:|")
    for precision in args.precisions:
        losses = [results[precision][s]["loss"] for s in args.seeds]
        diffs = [a - b for a, b in zip(losses, ref_losses, strict=True)]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        rate = statistics.median(results[precision][s]["tokens_per_second"] for s in args.seeds)
        delta = "–" if precision == reference else f"{statistics.fmean(diffs):+.4f} ± {se:.4f}"
        print(f"| {precision} | {' / '.join(f'{x:.4f}' for x in losses)} | {statistics.fmean(losses):.4f} | "
              f"{delta} | {rate:,.0f} |")
    print(f"\nseed-to-seed SD of {reference}: {noise:.4f} nats; a precision is within noise when its mean "
          f"differs by less than that")
    for precision in args.precisions[1:]:
        mean = statistics.fmean(results[precision][s]["loss"] for s in args.seeds)
        gap = mean - statistics.fmean(ref_losses)
        verdict = ("within noise of" if abs(gap) < noise else
                   "higher (worse) beyond the noise of" if gap > 0 else "lower (better) than the noise of")
        print(f"{precision}: {verdict} {reference} ({gap:+.4f} nats)")


if __name__ == "__main__":
    main()
