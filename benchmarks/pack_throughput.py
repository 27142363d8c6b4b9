"""Tokenize-and-pack throughput: the pretrain-data step vs Hugging Face ``tokenizers``.

    .venv/bin/python benchmarks/pack_throughput.py --corpus runs/<id>/clean --tokenizer runs/<id>/vocab
    .venv/bin/python benchmarks/pack_throughput.py ... --settings '{"packing": "segment-pair", "nsp": true}'

Same text, same machine, same process, rounds interleaved (the machine is shared, so
``os.getloadavg()`` is printed with every figure):

- (a) ``beam``: ``run_pretrain_data`` end to end on the DirectRunner (read part files,
  tokenize, pack, serialize ``tf.train.Example``, shuffle into shards, write TFRecords
  and metadata.json).
- (b) ``packer``: the DoFn's work without Beam: ``ExamplePacker.pack`` over the same
  document batches (tokenize with word offsets, pack, features, serialize).
- (c) ``hf``: the baseline: ``tokenizers.Tokenizer.encode_batch`` of the same sentences,
  batch by batch, plus the same greedy FULL-SENTENCES packing loop in plain Python lists
  (ids only: no features, no serialization, nothing written).

MB/s are UTF-8 bytes of the corpus text per second (median of ``--repeat`` rounds);
the ratios are (a)/(c) and (b)/(c).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _batches(corpus_dir: str) -> list[dict]:
    from korlm.clean.corpus import corpus_files
    from korlm.pretrain_data.beam import ReadDocuments

    reader = ReadDocuments()
    return [batch for path in corpus_files(corpus_dir) for batch in reader.process(path)]


def run_hf(tokenizer, batches: list[dict], max_seq_length: int, cls_id: int, sep_id: int) -> int:
    """Baseline: encode_batch + greedy full-sentences packing into lists; returns examples."""
    budget = max_seq_length - 2
    examples = 0
    for batch in batches:
        documents = batch["documents"]
        encodings = tokenizer.encode_batch([s for doc in documents for s in doc], add_special_tokens=False)
        i = 0
        current: list[int] = []
        for doc in documents:
            first = True
            for encoding in encodings[i:i + len(doc)]:
                ids = encoding.ids[:budget]
                if not ids:
                    continue
                extra = 1 if (first and current) else 0
                if current and len(current) + extra + len(ids) > budget:
                    _ = [cls_id, *current, sep_id]
                    examples += 1
                    current, extra = [], 0
                if extra:
                    current.append(sep_id)
                current.extend(ids)
                first = False
            i += len(doc)
        if current:
            _ = [cls_id, *current, sep_id]
            examples += 1
    return examples


def run_packer(packer, batches: list[dict], num_shards: int) -> int:
    from korlm.pretrain_data.beam import new_counts

    counts = new_counts(num_shards)
    for batch in batches:
        for _ in packer.pack(batch, counts):
            pass
    return counts["examples"]


def run_beam(corpus: str, tokenizer_dir: str, out: str, settings: dict, max_seq_length: int) -> int:
    from korlm.pretrain_data.beam import run_pretrain_data

    return run_pretrain_data(corpus, tokenizer_dir, out, max_seq_length=max_seq_length, overwrite=True,
                             **settings)["num_examples"]  # repeats write the same out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a `korlm clean` output directory")
    parser.add_argument("--tokenizer", required=True, help="a `korlm vocab` output directory")
    parser.add_argument("--copies", type=int, default=1, help="repeat the corpus N times (as N part files)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--settings", default="{}", help="JSON of run_pretrain_data settings for (a)/(b)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", nargs="+", default=["hf", "packer", "beam"])
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from korlm.clean.corpus import corpus_files
    from korlm.pretrain_data import packing
    from korlm.pretrain_data.beam import ExamplePacker
    from korlm.tokenizer import tokenization

    settings = json.loads(args.settings)
    work = tempfile.mkdtemp(prefix="pack-bench-")
    try:
        corpus = os.path.join(work, "corpus")
        os.makedirs(corpus)
        sources = corpus_files(args.corpus)
        if not sources:
            raise SystemExit(f"no part-*.txt in {args.corpus}; run `korlm clean` first")
        n = 0
        for _ in range(args.copies):
            for src in sources:
                shutil.copy(src, os.path.join(corpus, f"part-{n:05d}-of-{len(sources) * args.copies:05d}.txt"))
                n += 1
        batches = _batches(corpus)
        text_bytes = sum(len(s.encode("utf-8")) for b in batches for d in b["documents"] for s in d)
        tokenizer = tokenization.load(args.tokenizer)
        special = tokenizer.special_token_ids()
        resolved = packing.resolve_settings(max_seq_length=args.max_seq_length, **{
            k: v for k, v in settings.items() if k not in ("num_shards", "seed")})
        packer = ExamplePacker(tokenizer, resolved, settings.get("seed", 0))
        print(f"corpus: {text_bytes / 1e6:.2f} MB of text, {sum(len(b['documents']) for b in batches):,} documents; "
              f"settings {resolved}; cpu count {os.cpu_count()}")
        times: dict[str, list[float]] = {s: [] for s in args.systems}
        examples: dict[str, int] = {}
        for round_ in range(args.repeat):
            for system in args.systems:
                started = time.perf_counter()
                if system == "hf":
                    examples[system] = run_hf(tokenizer.hf, batches, args.max_seq_length, special["cls"],
                                              special["sep"])
                elif system == "packer":
                    examples[system] = run_packer(packer, batches, settings.get("num_shards", 2))
                elif system == "beam":
                    examples[system] = run_beam(corpus, args.tokenizer, os.path.join(work, f"out{round_}"),
                                                settings, args.max_seq_length)
                else:
                    raise SystemExit(f"unknown system {system}")
                elapsed = time.perf_counter() - started
                times[system].append(elapsed)
                print(f"round {round_} {system:7s} {elapsed:7.2f} s {text_bytes / 1e6 / elapsed:6.2f} MB/s "
                      f"{examples[system]:,} examples  load {os.getloadavg()[0]:.2f}", flush=True)
        medians = {s: statistics.median(t) for s, t in times.items()}
        print("\n| system | median s | MB/s | examples |\n|---|---:|---:|---:|")
        for system, seconds in medians.items():
            print(f"| {system} | {seconds:.2f} | {text_bytes / 1e6 / seconds:.2f} | {examples[system]:,} |")
        if "hf" in medians:
            for system in ("packer", "beam"):
                if system in medians:
                    print(f"ratio {system}/hf (throughput): {medians['hf'] / medians[system]:.2f}")
        print(f"load average {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
