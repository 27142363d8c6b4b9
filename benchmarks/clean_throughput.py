"""Throughput of the clean step: Beam DirectRunner vs the same functions in a plain loop vs datatrove.

    .venv/bin/python benchmarks/clean_throughput.py --sizes 20 40 --splitter regex \
        --datatrove-python /path/to/venv-with-datatrove/bin/python

Builds deterministic corpora of N MB of raw Korean text (UTF-8 bytes of the documents)
from ``../shared/data`` (movie reviews, petitions, news comments, shuffled with a fixed
seed so every size has the same mix), then runs each system in its own child process
(one at a time, so they never compete for the cores) and reads the child's peak RSS
from ``wait4``. Prints MB/s, peak memory and the ratios the issue asks for:
(a) Beam / (b) plain loop, and (a) Beam / (c) datatrove.

(c) datatrove runs the closest set it has to ours: PIIFormatter (e-mail, IP),
GopherRepetitionFilter with language ``ko`` (its Kiwi word tokenizer), an exclusion
writer and a JSONL writer, on one process (LocalPipelineExecutor, 1 task). It has no
Korean sentence splitter, phone/RRN/card scrubbing or dedup in a single stage, so it
does less work than (a) and (b). Install it apart from the project
(``benchmarks/requirements.txt``) and pass that interpreter with ``--datatrove-python``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")


def _documents() -> list[str]:
    docs: list[str] = []
    with gzip.open(os.path.join(DATA, "nsmc", "nsmc_extra_reviews_not_in_nsmc.tsv.gz"), "rt",
                   encoding="utf-8") as f:
        docs += [row["review"] for row in csv.DictReader(f, delimiter="\t") if row.get("review")]
    petitions = os.path.join(DATA, "korean-petitions")
    for name in sorted(os.listdir(petitions)):
        if name.endswith(".jsonl.gz"):
            with gzip.open(os.path.join(petitions, name), "rt", encoding="utf-8") as f:
                docs += [json.loads(line).get("content", "") for line in f]
    with gzip.open(os.path.join(DATA, "korean-hate-speech", "unlabeled_comments_5.txt.gz"), "rt",
                   encoding="utf-8") as f:
        docs += [line.rstrip("\n") for line in f]
    docs = [d for d in docs if d.strip()]
    random.Random(0).shuffle(docs)
    return docs


def build_corpus(size_mb: float, folder: str) -> str:
    """``corpus.jsonl`` holding the first ``size_mb`` MB (text bytes) of the shuffled documents."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "corpus.jsonl")
    if os.path.exists(path):
        return path
    limit = int(size_mb * 1_000_000)
    total = 0
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        for doc in _documents():
            out.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            total += len(doc.encode("utf-8"))
            if total >= limit:
                break
    os.replace(path + ".tmp", path)
    return path


def text_mb(path: str) -> float:
    with open(path, encoding="utf-8") as f:
        return sum(len(json.loads(line)["text"].encode("utf-8")) for line in f) / 1e6


# ---------------------------------------------------------------- one system, in a child process


def run_beam(corpus: str, out: str, splitter: str) -> dict:
    from korlm.clean.beam import run_clean

    stats = run_clean([corpus], out, sentence_splitter=splitter, overwrite=True)  # repeats: same out
    return {"kept": stats["kept_records"], "input": stats["input_records"]}


def run_loop(corpus: str, out: str, splitter: str) -> dict:
    import inspect

    from korlm.clean.beam import clean_in_process

    os.makedirs(out, exist_ok=True)
    part = os.path.join(out, "part-00000-of-00001.txt")
    if "corpus_path" in inspect.signature(clean_in_process).parameters:
        stats = clean_in_process([corpus], corpus_path=part, sentence_splitter=splitter)
    else:  # a checkout from before corpus_path (--baseline-root)
        stats = clean_in_process([corpus], keep_documents=True, sentence_splitter=splitter)
        with open(part, "w", encoding="utf-8") as f:
            for doc in stats["documents"]:
                f.write("\n".join(doc) + "\n\n")
    return {"kept": stats["kept_records"], "input": stats["input_records"]}


def run_datatrove(corpus: str, out: str, splitter: str) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils import word_tokenizers

    # datatrove asks Kiwi for its "sbg" model, which the kiwipiepy_model wheel does not
    # ship; Kiwi's default model is the one our sentence splitter uses too.
    word_tokenizers.KiwiTokenizer.__init__.__defaults__ = (None,)

    folder, name = os.path.split(corpus)
    executor = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(folder, glob_pattern=name, text_key="text"),
            PIIFormatter(),
            GopherRepetitionFilter(language="ko",
                                   exclusion_writer=JsonlWriter(os.path.join(out, "rejected"))),
            JsonlWriter(os.path.join(out, "kept")),
        ],
        tasks=1, workers=1, logging_dir=os.path.join(out, "logs"),
    )
    executor.run()
    kept = 0
    for root, _, files in os.walk(os.path.join(out, "kept")):
        for name in files:
            with gzip.open(os.path.join(root, name), "rt", encoding="utf-8") as f:
                kept += sum(1 for _ in f)
    return {"kept": kept}


SYSTEMS = {"beam": run_beam, "loop": run_loop, "datatrove": run_datatrove}
BASELINE_SUFFIX = "@baseline"


def output_digests(out: str) -> dict:
    """Order-free digests of what a run wrote: the multiset of kept documents and of
    rejection log lines (shard files and their order differ between systems)."""
    import glob
    import hashlib

    def digest(items: list[str]) -> str:
        return hashlib.sha256("\0".join(sorted(items)).encode("utf-8", "surrogateescape")).hexdigest()[:16]

    docs: list[str] = []
    for path in glob.glob(os.path.join(out, "part-*.txt")):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            docs += [d for d in f.read().split("\n\n") if d.strip()]
    rejected: list[str] = []
    for path in glob.glob(os.path.join(out, "rejected", "*.jsonl")):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            rejected += f.read().splitlines()
    return {"docs_digest": digest(docs), "rejected_digest": digest(rejected) if rejected else None}


def measure(system: str, corpus: str, splitter: str, python: str, root: str = ROOT) -> dict:
    """Run one system in a child process; wall time, the child's peak RSS and digests of
    its output."""
    out = tempfile.mkdtemp(prefix=f"clean-bench-{system}-")
    shutil.rmtree(out)
    cmd = [python, os.path.abspath(__file__), "--one", system.removesuffix(BASELINE_SUFFIX),
           "--corpus", corpus, "--out", out, "--splitter", splitter, "--root", root]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    try:
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{system} failed:\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        if system.removesuffix(BASELINE_SUFFIX) != "datatrove":
            result.update(output_digests(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"system": system, "seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "loadavg": [round(x, 2) for x in os.getloadavg()], **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[20.0, 40.0], help="corpus sizes in MB")
    parser.add_argument("--systems", nargs="+", default=["beam", "loop", "datatrove"], choices=list(SYSTEMS))
    parser.add_argument("--splitter", default="regex", choices=["regex", "kiwi"])
    parser.add_argument("--datatrove-python", default=sys.executable,
                        help="interpreter with datatrove installed (benchmarks/requirements.txt)")
    parser.add_argument("--memory-systems", nargs="+", default=["beam", "loop"],
                        help="systems also run at sizes after the first (peak memory vs size)")
    parser.add_argument("--baseline-root", help="another checkout of korlm (e.g. `git archive` of an "
                        "older commit): its beam and loop run too, as beam@baseline and loop@baseline, "
                        "each right before this checkout's, and their outputs are compared")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every system at every size")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "korlm-clean-bench"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sys.path.insert(0, os.path.abspath(args.root))
        result = SYSTEMS[args.one](args.corpus, args.out, args.splitter)
        print(json.dumps(result))
        return

    results = []
    for i, size in enumerate(args.sizes):
        corpus = build_corpus(size, os.path.join(args.workdir, f"{size:g}MB"))
        mb = text_mb(corpus)
        systems = args.systems if i == 0 else [s for s in args.systems if s in args.memory_systems]
        for _ in range(args.repeat):
            for system in systems:
                runs = [(system, ROOT)]
                if args.baseline_root and system != "datatrove":
                    runs.insert(0, (system + BASELINE_SUFFIX, os.path.abspath(args.baseline_root)))
                for name, root in runs:
                    python = args.datatrove_python if system == "datatrove" else sys.executable
                    r = measure(name, corpus, args.splitter, python, root)
                    r.update(size_mb=round(mb, 2), mb_per_s=mb / r["seconds"])
                    results.append(r)
                    print(f"{size:>5g} MB  {name:<15} {r['seconds']:7.1f} s  {r['mb_per_s']:6.3f} MB/s  "
                          f"peak {r['peak_rss_mb']:7.0f} MB  kept {r['kept']}  "
                          f"docs {r.get('docs_digest', '-')}  rejected {r.get('rejected_digest', '-')}  "
                          f"load {r['loadavg']}", flush=True)

    def median(values: list[float]) -> float:
        values = sorted(values)
        return (values[(len(values) - 1) // 2] + values[len(values) // 2]) / 2

    def speed(system: str, size: float) -> float | None:
        runs = [r["mb_per_s"] for r in results if r["system"] == system and r["size_mb"] == size]
        return median(runs) if runs else None

    for size in sorted({r["size_mb"] for r in results}):
        for a, b, target in (("beam", "loop", ">= 0.5"), ("beam", "datatrove", ">= 1"),
                             ("beam", "beam" + BASELINE_SUFFIX, "(speed vs the baseline checkout)"),
                             ("loop", "loop" + BASELINE_SUFFIX, "(speed vs the baseline checkout)")):
            if speed(a, size) and speed(b, size):
                print(f"{size:g} MB: {a} / {b} = {speed(a, size) / speed(b, size):.2f}  {target}")
        digests = {r["system"]: r.get("docs_digest") for r in results if r["size_mb"] == size}
        same = {s: d for s, d in digests.items() if d}
        if len(same) > 1:
            print(f"{size:g} MB: kept documents identical across {sorted(same)}: {len(set(same.values())) == 1}")
        rejected = {r["system"]: r.get("rejected_digest") for r in results
                    if r["size_mb"] == size and r.get("rejected_digest")}
        if len(rejected) > 1:
            print(f"{size:g} MB: rejection logs identical across {sorted(rejected)}: "
                  f"{len(set(rejected.values())) == 1}")
    for system in sorted({r["system"] for r in results}):
        peaks = {}
        for r in results:
            if r["system"] == system:
                peaks.setdefault(r["size_mb"], []).append(r["peak_rss_mb"])
        if len(peaks) > 1:
            sizes = sorted(peaks)
            growth = median(peaks[sizes[-1]]) / median(peaks[sizes[0]]) - 1
            print(f"{system}: peak RSS " + " -> ".join(f"{median(peaks[s]):.0f} MB @ {s:g} MB" for s in sizes)
                  + f"  ({growth:+.0%})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"splitter": args.splitter, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
