"""Benchmark `korlm vocab` against the trainer called directly, and Kiwi pre-tokenization.

    .venv/bin/python benchmarks/vocab_build.py [--mb 50] [--vocab-size 32000] [--repeat 3]
        [--morpheme-sentences 5000] [--data DIR]

1. Writes ``--mb`` MB of shared-corpus sentences (NSMC extra reviews, then petitions)
   as a clean-format corpus. The data is read from ``--data``, default
   ``<repo>/../shared/data`` (the shared data checkout beside the repository).
2. Builds a WordPiece vocab with ``korlm.tokenizer.vocab.build_vocab`` (heldout_every=0, so it
   trains on exactly the same sentences) and with ``tokenizers.WordPieceTrainer`` called
   directly, each in a fresh process, ``--repeat`` times alternating; prints each run's
   wall time, peak RSS and korlm's phase split, and the overhead ratio of the medians.
3. Morpheme pre-tokenization (``korlm.tokenizer.morpheme.segment_batch``) throughput,
   single process, in sentences/s and MB/s (a quick figure; the single-process vs
   Beam 2-worker comparison is ``benchmarks/morpheme_throughput.py``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
DATA = DEFAULT_DATA
NSMC_EXTRA = os.path.join("nsmc", "nsmc_extra_reviews_not_in_nsmc.tsv.gz")
PETITIONS = "korean-petitions"


def check_data(data: str) -> str:
    """``data`` as an absolute path, or exit with a one-line error if the corpora are not there."""
    data = os.path.abspath(data)
    missing = [p for p in (NSMC_EXTRA, PETITIONS) if not os.path.exists(os.path.join(data, p))]
    if missing:
        sys.exit(f"vocab_build: shared data not found: {', '.join(os.path.join(data, p) for p in missing)} "
                 f"missing (expected the shared data checkout at <repo>/../shared/data; pass --data DIR)")
    return data


def _sentences(limit_bytes: int):
    total = 0
    with gzip.open(os.path.join(DATA, NSMC_EXTRA), "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            text = (row.get("review") or "").strip()
            if text:
                total += len(text.encode("utf-8")) + 1
                yield text
                if total >= limit_bytes:
                    return
    for name in sorted(os.listdir(os.path.join(DATA, PETITIONS))):
        if name.endswith(".jsonl.gz"):
            with gzip.open(os.path.join(DATA, PETITIONS, name), "rt", encoding="utf-8") as f:
                for line in f:
                    for text in json.loads(line).get("content", "").split("\n"):
                        text = text.strip()
                        if text:
                            total += len(text.encode("utf-8")) + 1
                            yield text
                            if total >= limit_bytes:
                                return


def _child(kind: str, corpus: str, vocab_size: int) -> dict:
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {ROOT!r})
kind, corpus, vocab_size = {kind!r}, {corpus!r}, {vocab_size}
started = time.perf_counter()
phases = {{}}
if kind == "korlm":
    import shutil
    from korlm.tokenizer.vocab import build_vocab
    shutil.rmtree(corpus + "-korlm-out", ignore_errors=True)
    phases = build_vocab(corpus, corpus + "-korlm-out", vocab_size=vocab_size, heldout_every=0)["seconds"]
else:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from korlm.clean.corpus import iter_sentences
    from korlm.tokenizer.files import SPECIAL_TOKENS
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.BertNormalizer(
        strip_accents=False, lowercase=False)])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    sents = list(iter_sentences(corpus))
    tok.train_from_iterator(sents, trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False), length=len(sents))
print(json.dumps({{"seconds": time.perf_counter() - started, "phases": phases,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; medians are compared")
    parser.add_argument("--morpheme-sentences", type=int, default=5000)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data dir (default <repo>/../shared/data)")
    args = parser.parse_args()
    global DATA
    DATA = check_data(args.data)
    sys.path.insert(0, ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        os.makedirs(corpus)
        sentences = list(_sentences(int(args.mb * 1e6)))
        with open(os.path.join(corpus, "part-00000-of-00001.txt"), "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sentences)
        mb = os.path.getsize(os.path.join(corpus, "part-00000-of-00001.txt")) / 1e6
        print(f"corpus: {len(sentences):,} sentences, {mb:.1f} MB; vocab_size {args.vocab_size}")
        runs: dict[str, list[dict]] = {"direct": [], "korlm": []}
        print("| run | seconds | peak RSS MB | korlm phases (read+sample / train / measure s) |\n|---|---|---|---|")
        for i in range(args.repeat):
            for kind, label in (("direct", "tokenizers WordPieceTrainer direct"),
                                ("korlm", "korlm vocab (wordpiece, coverage=full)")):
                r = _child(kind, corpus, args.vocab_size)
                runs[kind].append(r)
                p = r["phases"]
                split = " / ".join(f"{p[k]:.2f}" for k in ("read_and_sample", "train", "measure")) if p else ""
                print(f"| {label} #{i + 1} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {split} |", flush=True)
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
        print(f"median seconds: direct {med['direct']:.2f}, korlm {med['korlm']:.2f}; "
              f"overhead ratio (korlm / direct): {med['korlm'] / med['direct']:.2f} time (median of {args.repeat}), "
              f"{rss['korlm'] / rss['direct']:.2f} memory (max peak RSS)")

    from korlm.tokenizer import morpheme

    sample = sentences[:args.morpheme_sentences]
    morpheme.segment_batch(sample[:10])  # load Kiwi's model outside the timing
    started = time.perf_counter()
    morpheme.segment_batch(sample)
    seconds = time.perf_counter() - started
    size = sum(len(s.encode("utf-8")) for s in sample) / 1e6
    print(f"morpheme pre-tokenization, 1 process: {len(sample) / seconds:,.0f} sentences/s, "
          f"{size / seconds:.2f} MB/s ({len(sample)} sentences, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
