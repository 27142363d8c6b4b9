"""PII detections on the shared raw corpora: an earlier korlm.pii (korlm.clean.pii since the stage layout) against this checkout's.

For every corpus, each record is read by the clean step's reader and normalized as the
clean step does (``normalize_text``, NFC), then ``find_pii`` of both versions runs on it.
The table counts detections per kind before and after, and how many the new version
adds and drops. For each kind with added detections a seeded random sample (default 50)
is written with its context to ``--samples`` for reading by hand: that reading, not
this script, gives the false-positive estimate (benchmarks/README.md, "PII").

    .venv/bin/python benchmarks/pii_false_positives.py                       # all corpora
    .venv/bin/python benchmarks/pii_false_positives.py --nsmc-every 5 --samples /tmp/pii.txt

The samples hold excerpts of the shared corpora (possibly real personal data): keep them
out of the repository.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import time
import types
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from korlm.clean import pii as pii_after  # noqa: E402
from korlm.clean.readers import FileReadSummary, read_records  # noqa: E402
from korlm.clean.text import normalize_text  # noqa: E402

# The last commit before issue 16's PII changes (width-folded view, parenthesized area
# codes, resident numbers without check digit).
DEFAULT_BEFORE = "46fd769"


def load_pii(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:korlm/pii.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"pii_{rev}")
    exec(compile(source, f"{rev}:korlm/pii.py", "exec"), module.__dict__)  # noqa: S102
    return module


def corpora(data: str, nsmc_every: int, extra: bool) -> dict:
    """name -> [(path, format, field)] (the raw pretraining corpora; with ``extra`` also
    KorQuAD's Wikipedia paragraphs and the chatbot Q/A pairs, for more matches)."""
    more = {
        "KorQuAD 1.0 dev contexts (extra)": "korquad",
        "chatbot Q and A (extra)": [(os.path.join(data, "chatbot-data", "ChatbotData.csv"), "csv", column)
                                    for column in ("Q", "A")],
    } if extra else {}
    return {
        f"nsmc extra reviews (every {nsmc_every}. line)" if nsmc_every > 1 else "nsmc extra reviews":
            [(os.path.join(data, "nsmc", "nsmc_extra_reviews_not_in_nsmc.tsv.gz"), "tsv", "review")],
        "hate-speech unlabeled comments":
            [(os.path.join(data, "korean-hate-speech", "unlabeled_comments_5.txt.gz"), "txt", None)],
        "petitions (content)":
            [(p, "jsonl", "content") for p in sorted(glob.glob(os.path.join(data, "korean-petitions", "*.jsonl.gz")))],
        "law bills":
            [(p, "txt", None) for p in sorted(glob.glob(os.path.join(data, "korean-law-bills", "*.txt")))
             if "LICENSE" not in p],
        **more,
    }


def korquad_contexts(data: str):
    """The distinct Wikipedia paragraphs of KorQuAD 1.0 dev (evaluation data: measured
    here for PII only, never cleaned into a pretraining corpus)."""
    with gzip.open(os.path.join(data, "korquad-1.0", "KorQuAD_v1.0_dev.json.gz"), "rt", encoding="utf-8") as f:
        seen = set()
        for article in json.load(f)["data"]:
            for i, paragraph in enumerate(article["paragraphs"]):
                if paragraph["context"] not in seen:
                    seen.add(paragraph["context"])
                    yield f"{article['title']}:{i}", normalize_text(paragraph["context"])


def texts(files, every: int, data: str):
    if files == "korquad":
        yield from korquad_contexts(data)
        return
    for path, fmt, field in files:
        good = 0
        for line, text, reason in read_records(path, fmt, field, FileReadSummary()):
            if reason is not None:
                continue
            good += 1
            if every > 1 and good % every:
                continue
            yield f"{os.path.basename(path)}:{line}", normalize_text(text)


def context(text: str, span: str, width: int = 30) -> str:
    i = text.find(span)
    if i < 0:
        return text[: 2 * width]
    return (text[max(0, i - width): i] + "[[" + span + "]]" + text[i + len(span): i + len(span) + width]).replace("\n", " ")


def synthetic_rrn_rate(before: types.ModuleType, n: int, seed: int) -> None:
    """How often a uniformly random 13-digit number (a product or order code) is taken
    for a resident registration number, before and after."""
    rng = random.Random(seed)
    numbers = [f"{rng.randrange(10**13):013d}" for _ in range(n)]
    print(f"random 13-digit numbers ({n:,}, seed {seed}) detected as rrn:\n")
    print("| form | before | after |")
    print("|---|---:|---:|")
    for form, make in (("bare `1234567890123`", lambda d: d), ("hyphenated `123456-7890123`", lambda d: f"{d[:6]}-{d[6:]}")):
        hits = [sum(1 for d in numbers if any(k == "rrn" for k, _ in module.find_pii(f"코드 {make(d)} 입니다")))
                for module in (before, pii_after)]
        print(f"| {form} | {hits[0] / n:.2%} | {hits[1] / n:.2%} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--before-rev", default=DEFAULT_BEFORE, help=f"git revision of the old korlm/pii.py ({DEFAULT_BEFORE})")
    ap.add_argument("--nsmc-every", type=int, default=1, help="read every N-th NSMC review (1 = all 502k)")
    ap.add_argument("--sample", type=int, default=50, help="added detections sampled per kind")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--samples", default="/tmp/pii_samples.txt", help="where the samples go (not the repo)")
    ap.add_argument("--extra", action="store_true",
                    help="also KorQuAD 1.0 dev paragraphs and the chatbot Q/A pairs")
    ap.add_argument("--synthetic", type=int, default=100_000,
                    help="random 13-digit numbers (bare and 6-7 hyphenated) checked for the rrn rate")
    args = ap.parse_args()

    before = load_pii(args.before_rev)
    if args.synthetic:
        synthetic_rrn_rate(before, args.synthetic, args.seed)
    rows = []
    added: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    started = time.monotonic()
    for name, files in corpora(args.data, args.nsmc_every, args.extra).items():
        docs = 0
        counts_before: Counter = Counter()
        counts_after: Counter = Counter()
        new: Counter = Counter()
        gone: Counter = Counter()
        every = args.nsmc_every if name.startswith("nsmc") else 1
        for source, text in texts(files, every, args.data):
            docs += 1
            b = Counter(before.find_pii(text))
            a = Counter(pii_after.find_pii(text))
            counts_before.update(kind for kind, _ in b.elements())
            counts_after.update(kind for kind, _ in a.elements())
            for (kind, span), n in (a - b).items():
                new[kind] += n
                added.setdefault(kind, []).extend([f"{name} | {source} | {context(text, span)}"] * n)
            for (kind, span), n in (b - a).items():
                gone[kind] += n
                dropped.setdefault(kind, []).extend([f"{name} | {source} | {context(text, span)}"] * n)
        for kind in pii_after.PII_KINDS:
            if counts_before[kind] or counts_after[kind]:
                rows.append((name, docs, kind, counts_before[kind], counts_after[kind], new[kind], gone[kind]))
        print(f"{name}: {docs:,} records ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    print(f"before = {args.before_rev}:korlm/pii.py, after = this checkout\n")
    print("| corpus | records | kind | before | after | added | no longer found |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, docs, kind, b, a, n, g in rows:
        print(f"| {name} | {docs:,} | {kind} | {b:,} | {a:,} | {n:,} | {g:,} |")

    rng = random.Random(args.seed)
    with open(args.samples, "w", encoding="utf-8") as f:
        for title, found in (("ADDED", added), ("NO LONGER FOUND", dropped)):
            for kind in sorted(found):
                items = found[kind]
                chosen = rng.sample(items, min(args.sample, len(items)))
                f.write(f"== {title} {kind}: {len(chosen)} of {len(items)} ==\n")
                for i, item in enumerate(chosen, 1):
                    f.write(f"{i:3d}. {item}\n")
    print(f"\nsamples: {args.samples}", file=sys.stderr)


if __name__ == "__main__":
    main()
