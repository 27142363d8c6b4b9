"""Fine-tuning throughput on NSMC: korlm (Keras/TF, `korlm.evaluation.evaluate`) vs transformers +
PyTorch `Trainer`, same model size, batch, sequence length and examples, on this CPU.
`korlm` batches by length (`evaluate.group_by_length`, the default), `korlm-padded` pads
every batch to the sequence length, as the Trainer run does.

Both fine-tune a randomly initialised BERT of the same size (throughput does not depend
on the weights) with a classification head, AdamW, linear warmup/decay, one epoch. Each
run is its own child process (TF and torch never share a process), runs alternate
korlm / transformers, and the load average is printed with every result because this
machine's speed drifts. Reported: training examples per second over the whole fit
(graph tracing / first-step overhead included, as a user pays it), their medians over
the rounds and the ratios of the medians to transformers' and to korlm-padded's.

    .venv/bin/python benchmarks/finetune_throughput.py --size mini --examples 2000 --repeats 2
    .venv/bin/python benchmarks/finetune_throughput.py --size tiny --examples 3600 --repeats 5 \
        --systems korlm korlm-padded
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # korlm from this checkout when run as a script
NSMC = ROOT / "data" / "sample" / "eval" / "nsmc"
SYSTEMS = ("korlm", "korlm-padded", "transformers")


def prepare(work: Path, size: str, vocab_size: int, max_seq_length: int) -> None:
    """A WordPiece tokenizer on the NSMC sample and a random-init korlm checkpoint."""
    import pandas as pd
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing

    texts = pd.read_csv(NSMC / "ratings_train.txt", sep="\t")["document"].fillna("").tolist()
    tokenizer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                                  show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.post_processor = BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    (work / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(work / "tokenizer" / "tokenizer.json"))
    tokenizer.save_model(str(work / "tokenizer"))

    from korlm.modeling.build import build_masked_lm
    from korlm.modeling.checkpoints import save_checkpoint

    actual_vocab = tokenizer.get_vocab_size()
    task = build_masked_lm("bert", size, actual_vocab, max_seq_length)
    save_checkpoint(task, str(work / "checkpoint"), {
        "model": "bert", "size": size, "vocab_size": actual_vocab,
        "max_seq_length": max_seq_length, "step": 0})


def run_korlm(work: Path, examples: int, batch: int, seq: int, group_by_length: bool = True) -> dict:
    from korlm.evaluation import evaluate

    record = evaluate.evaluate_checkpoint(
        str(work / "checkpoint"), str(work / "tokenizer"), "nsmc", str(NSMC.parent),
        str(work / "korlm-out"), random_init=True, overwrite=True, max_train_examples=examples,
        max_eval_examples=32, epochs=1, batch_size=batch, max_seq_length=seq,
        group_by_length=group_by_length)
    return {"examples": record["num_train"], "seconds": record["fine_tune_seconds"]}


def run_transformers(work: Path, examples: int, batch: int, seq: int, size: str) -> dict:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from korlm.evaluation import tasks
    from korlm.modeling.presets import size_config

    splits = tasks.load_task(tasks.get_task("nsmc"), str(NSMC.parent),
                             max_train_examples=examples, max_eval_examples=32)
    tokenizer = Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=seq)
    tokenizer.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(splits.train.texts)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(encodings)

        def __getitem__(self, i):
            e = encodings[i]
            return {"input_ids": torch.tensor(e.ids), "attention_mask":
                    torch.tensor(e.attention_mask), "token_type_ids": torch.tensor(e.type_ids),
                    "labels": torch.tensor(splits.train.labels[i])}

    s = size_config(size)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=s["hidden_dim"],
                        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                        intermediate_size=s["intermediate_dim"], max_position_embeddings=seq,
                        num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(work / "hf-out"), per_device_train_batch_size=batch,
        num_train_epochs=1, learning_rate=2e-4, weight_decay=0.01,
        warmup_steps=max(1, int(0.1 * (len(encodings) // batch))),
        max_grad_norm=1.0, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
        dataloader_drop_last=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Data())
    started = time.perf_counter()
    trainer.train()
    return {"examples": len(encodings), "seconds": round(time.perf_counter() - started, 2)}


def child(system: str, work: Path, examples: int, batch: int, seq: int, size: str,
          vocab_size: int = 8000) -> dict:
    cmd = [sys.executable, __file__, "--child", system, "--work", str(work),
           "--examples", str(examples), "--batch", str(batch), "--seq", str(seq),
           "--size", size, "--vocab-size", str(vocab_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{system} run failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="mini")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--child", choices=["prepare", *SYSTEMS])
    p.add_argument("--work")
    a = p.parse_args()
    if a.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        work = Path(a.work)
        if a.child == "prepare":
            prepare(work, a.size, a.vocab_size, max(a.seq, 128))
            print("RESULT {}", flush=True)
            return
        result = (run_transformers(work, a.examples, a.batch, a.seq, a.size)
                  if a.child == "transformers"
                  else run_korlm(work, a.examples, a.batch, a.seq, group_by_length=a.child == "korlm"))
        print("RESULT " + json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="korlm-ft-bench-") as tmp:
        work = Path(tmp)
        child("prepare", work, a.examples, a.batch, a.seq, a.size, a.vocab_size)
        print(f"NSMC sample, bert-{a.size}, {a.examples} examples, batch {a.batch}, "
              f"seq {a.seq}, 1 epoch, CPU ({os.cpu_count()} cores)")
        rates: dict[str, list[float]] = {system: [] for system in a.systems}
        for r in range(a.repeats):
            for system in a.systems:
                load = os.getloadavg()[0]
                res = child(system, work, a.examples, a.batch, a.seq, a.size)
                rate = res["examples"] / res["seconds"]
                rates[system].append(rate)
                print(f"run {r + 1} {system:12s} {res['examples']} examples in "
                      f"{res['seconds']:.1f} s = {rate:.1f} examples/s "
                      f"(load avg before {load:.2f}, after {os.getloadavg()[0]:.2f})",
                      flush=True)
        median = {k: statistics.median(v) for k, v in rates.items()}
        print("median ex/s: " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
        for base in ("transformers", "korlm-padded"):
            for system in (s for s in median if s != base and base in median):
                print(f"ratio {system}/{base} {median[system] / median[base]:.2f}")


if __name__ == "__main__":
    main()
