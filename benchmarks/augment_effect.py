"""Does EDA augmentation help a small fine-tuning set? Accuracy with and without it.

    nice -n 10 .venv/bin/python benchmarks/augment_effect.py \
        --checkpoint /tmp/qbar/pretrain/checkpoints/step-000600 \
        --data-dir ../shared/data --task nsmc --train-sizes 200 --seeds 0 1 2 \
        --output /tmp/augment_effect.json

Fine-tunes one pretrained checkpoint on ``--train-sizes`` training examples of one task
(a fixed sample, the same rows in every arm) and scores the task's test split, in three
arms that differ only in what is said:

* ``baseline``: the rows as they are, ``--epochs`` epochs;
* ``eda``: the same rows plus ``--num-aug`` EDA copies each (korlm.evaluation.augment, default
  rates 0.1), the same ``--epochs`` epochs: (1 + num_aug) times the optimizer steps;
* ``duplicate``: each row repeated (1 + num_aug) times, unedited, ``--epochs`` epochs: the
  same rows, optimizer steps and dev scorings as ``eda`` (the control: is a gain from the
  edited text or from the extra steps?). Done by swapping, in this process only,
  ``korlm.evaluation.augment.augment_task_data`` for a plain repeat while this arm runs.
* ``baseline-steps``: the rows as they are for (1 + num_aug) × ``--epochs`` epochs: the
  same number of optimizer steps as ``eda`` another way (but (1 + num_aug) times the dev
  scorings, so slower than ``duplicate``).

``--arms`` picks which (default: baseline eda duplicate).

Everything else is equal: learning rate, batch, warmup/decay schedule (over each run's
own steps), the dev split for best-epoch selection (patience = epochs, so no arm stops
early; the best dev epoch's weights are scored), seeds. Arms are interleaved per seed
(every arm for seed 0, then seed 1...) so machine-load drift hits
all arms alike; every run prints ``os.getloadavg()``. The summary is mean ± sample std
over seeds, the mean paired difference (eda − baseline, per seed) and its std.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = ("baseline", "eda", "duplicate", "baseline-steps")


def repeat_rows(data, *, seed: int, method: str, num_aug: int):
    """The ``duplicate`` control: every row followed by ``num_aug`` unedited copies."""
    assert method == "duplicate"
    return data.take([i for i in range(len(data)) for _ in range(1 + num_aug)])


def run_one(args, arm: str, train_size: int, seed: int) -> dict:
    import keras

    from korlm.evaluation import augment as augmentation
    from korlm.evaluation.evaluate import fine_tune

    epochs = args.epochs * (1 + args.num_aug) if arm == "baseline-steps" else args.epochs
    augment = ({"method": arm, "num_aug": args.num_aug} if arm in ("eda", "duplicate")
               else None)
    keras.backend.clear_session()
    started = time.perf_counter()
    real = augmentation.augment_task_data
    if arm == "duplicate":
        augmentation.augment_task_data = repeat_rows
    try:
        tuned = fine_tune(args.checkpoint, args.tokenizer, args.task, args.data_dir,
                          max_train_examples=train_size, max_eval_examples=args.eval_examples,
                          epochs=epochs, patience=epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, max_seq_length=args.max_seq_length,
                          seed=seed, augment=augment)
    finally:
        augmentation.augment_task_data = real
    record = tuned.record
    metric = record["primary_metric"]
    return {
        "arm": arm, "train_size": train_size, "seed": seed, "epochs": epochs,
        "train_rows": record["fine_tune"].get("num_train_augmented", record["num_train"]),
        "optimizer_steps": max(1, record["fine_tune"].get("num_train_augmented",
                                                          record["num_train"])
                               // args.batch_size) * len(record["dev_history"]),
        "metric": metric, "test": record["metrics"][metric], "best_epoch": record["best_epoch"],
        "best_dev": record["best_dev_score"], "num_test": record["num_eval"],
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def summarise(results: list[dict], arms, train_sizes) -> str:
    lines = ["| train rows | arm | epochs | optimizer steps | test accuracy, mean ± std (seeds) | "
             "per seed | Δ vs baseline, mean ± std (paired) |", "|---|---|---:|---:|---|---|---|"]
    notes: list[str] = []
    for size in train_sizes:
        base = {r["seed"]: r["test"] for r in results
                if r["arm"] == "baseline" and r["train_size"] == size}
        dup = {r["seed"]: r["test"] for r in results
               if r["arm"] == "duplicate" and r["train_size"] == size}
        for arm in arms:
            rows = sorted((r for r in results if r["arm"] == arm and r["train_size"] == size),
                          key=lambda r: r["seed"])
            if not rows:
                continue
            values = [r["test"] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            delta = ""
            if arm == "eda" and dup:
                diffs = [r["test"] - dup[r["seed"]] for r in rows if r["seed"] in dup]
                if diffs:
                    dstd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                    notes.append(f"{size} rows: eda − duplicate, paired over {len(diffs)} "
                                 f"seed(s): {statistics.mean(diffs):+.4f} ± {dstd:.4f}")
            if arm != "baseline" and base:
                diffs = [r["test"] - base[r["seed"]] for r in rows if r["seed"] in base]
                if diffs:
                    dstd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                    delta = f"{statistics.mean(diffs):+.4f} ± {dstd:.4f}"
            lines.append(
                f"| {size} | {arm} | {rows[0]['epochs']} | {rows[0]['optimizer_steps']} | "
                f"{statistics.mean(values):.4f} ± {std:.4f} ({len(values)}) | "
                f"{' / '.join(f'{v:.3f}' for v in values)} | {delta} |")
    loads = [r["loadavg"][0] for r in results]
    notes.append(f"load average (1 min) at the end of the runs: {min(loads):.1f}–{max(loads):.1f}; "
                 f"seconds per run: {min(r['seconds'] for r in results):.0f}–"
                 f"{max(r['seconds'] for r in results):.0f}")
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--tokenizer", help="default: the tokenizer the checkpoint carries")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--task", default="nsmc")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[200])
    parser.add_argument("--eval-examples", type=int, default=1000,
                        help="caps the dev (best epoch) and test splits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:3]))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-aug", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--output", help="JSON file for every run's record (rewritten after each run)")
    parser.add_argument("--summarise", nargs="+", metavar="JSON",
                        help="run nothing: print the table of earlier --output files together")
    args = parser.parse_args(argv)
    if args.summarise:
        results = []
        for path in args.summarise:
            with open(path, encoding="utf-8") as f:
                results += json.load(f)["runs"]
        sizes = sorted({r["train_size"] for r in results})
        print(summarise(results, [a for a in ARMS if any(r["arm"] == a for r in results)], sizes))
        return 0

    if not args.checkpoint:
        parser.error("--checkpoint is required (unless --summarise)")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results: list[dict] = []
    for size in args.train_sizes:
        for seed in args.seeds:
            for arm in args.arms:
                result = run_one(args, arm, size, seed)
                results.append(result)
                print(json.dumps(result), flush=True)
                if args.output:
                    with open(args.output, "w", encoding="utf-8") as f:
                        json.dump({"settings": vars(args), "runs": results}, f, indent=1)
    print(summarise(results, args.arms, args.train_sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
