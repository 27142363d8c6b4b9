"""Benchmark `korlm vocab` against the trainer called directly, and Kiwi pre-tokenization.

    .venv/bin/python benchmarks/vocab_build.py [--mb 50] [--vocab-size 32000] [--morpheme-sentences 5000]

1. Writes ``--mb`` MB of shared-corpus sentences (NSMC extra reviews, petitions, news
   comments) as a clean-format corpus.
2. Builds a WordPiece vocab with ``korlm.vocab.build_vocab`` (heldout_every=0, so it
   trains on exactly the same sentences) and with ``tokenizers.WordPieceTrainer`` called
   directly, each in a fresh process; prints wall time, peak RSS and the overhead ratio.
3. Morpheme pre-tokenization (``korlm.morpheme.segment_batch``) throughput,
   single process, in sentences/s and MB/s.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

DATA = "/work/shared/data"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sentences(limit_bytes: int):
    total = 0
    with gzip.open(f"{DATA}/nsmc/nsmc_extra_reviews_not_in_nsmc.tsv.gz", "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            text = (row.get("review") or "").strip()
            if text:
                total += len(text.encode("utf-8")) + 1
                yield text
                if total >= limit_bytes:
                    return
    for name in sorted(os.listdir(f"{DATA}/korean-petitions")):
        if name.endswith(".jsonl.gz"):
            with gzip.open(f"{DATA}/korean-petitions/{name}", "rt", encoding="utf-8") as f:
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
if kind == "korlm":
    from korlm.vocab import build_vocab
    build_vocab(corpus, corpus + "-korlm-out", vocab_size=vocab_size, heldout_every=0)
else:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from korlm.vocab import iter_sentences, SPECIAL_TOKENS
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.BertNormalizer(
        strip_accents=False, lowercase=False)])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    sents = list(iter_sentences(corpus))
    tok.train_from_iterator(sents, trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False), length=len(sents))
print(json.dumps({{"seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--morpheme-sentences", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        os.makedirs(corpus)
        sentences = list(_sentences(int(args.mb * 1e6)))
        with open(os.path.join(corpus, "part-00000-of-00001.txt"), "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sentences)
        mb = os.path.getsize(os.path.join(corpus, "part-00000-of-00001.txt")) / 1e6
        print(f"corpus: {len(sentences):,} sentences, {mb:.1f} MB; vocab_size {args.vocab_size}")
        direct = _child("direct", corpus, args.vocab_size)
        korlm = _child("korlm", corpus, args.vocab_size)
        print("| run | seconds | peak RSS MB |\n|---|---|---|")
        print(f"| tokenizers WordPieceTrainer direct | {direct['seconds']:.1f} | {direct['peak_rss_mb']:.0f} |")
        print(f"| korlm vocab (wordpiece, coverage=full) | {korlm['seconds']:.1f} | {korlm['peak_rss_mb']:.0f} |")
        print(f"overhead ratio (korlm / direct): {korlm['seconds'] / direct['seconds']:.2f} time, "
              f"{korlm['peak_rss_mb'] / direct['peak_rss_mb']:.2f} memory")

    from korlm import morpheme

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
