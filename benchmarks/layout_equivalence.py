"""Do two checkouts of korlm produce the same artifacts? clean -> vocab -> pretrain-data on
the bundled sample with the tiny config, run through each checkout's own CLI
(``python -m korlm.cli`` with the checkout first on ``PYTHONPATH``), then compared:

* clean: every ``part-*.txt`` byte for byte (sha256), ``stats.json`` (timings left out)
  and the rejection logs (their lines as a sorted list: shard order is the runner's);
* vocab: the token SET, ``vocab_stats.json`` (timings, ids and hashes left out) and
  ``tokenizer_config.json``. WordPiece training is not deterministic across processes
  (the Hugging Face trainer breaks count ties in hash-map order, huggingface/tokenizers#1794):
  the same corpus gives the same tokens in other ids, and now and then another token at the
  cutoff. So each checkout trains ``--vocab-runs`` times, and the vocab compares equal
  when a run of one checkout gives the same token set (and stats) as a run of the other;
  otherwise the differences are printed next to each checkout's own run-to-run spread;
* pretrain-data: both checkouts pack with the SAME tokenizer folder (the baseline's), so
  the TFRecord shards compare record by record, byte for byte, and ``metadata.json``
  (timings left out). Two packings: the config's (``full-sentences``, dynamic masking)
  and ``segment-pair`` with next-sentence labels and static masks.

Written for issue 17 (one folder per pipeline stage: a move with behaviour unchanged):

    mkdir -p /tmp/l17/base && git archive dbf0e18 | tar -x -C /tmp/l17/base
    .venv/bin/python benchmarks/layout_equivalence.py --baseline-root /tmp/l17/base

Exit status 0 when everything compares equal, 1 otherwise (the differences are printed).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = {"build_seconds", "seconds", "elapsed_seconds", "wall_seconds", "created", "time"}
PACKINGS = {
    "default": [],
    "segment-pair-nsp-static": ["--packing", "segment-pair", "--nsp", "--masking", "static"],
}


def korlm(root: str, *args: str) -> None:
    """``python -m korlm.cli ARGS`` with ``root``'s korlm (and its config paths) in charge."""
    env = {**os.environ, "PYTHONPATH": root, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "korlm.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{root}: korlm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    print(f"  {os.path.basename(root.rstrip('/')) or root}: korlm {args[0]} "
          f"({time.monotonic() - started:.0f} s)", flush=True)


def which_korlm(root: str) -> str:
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([sys.executable, "-c", "import korlm; print(korlm.__file__)"], cwd=root,
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# (path, placeholder): each checkout's root and output folder, the same in both reports
PLACES: list[tuple[str, str]] = []


def without(obj, keys=TIMING_KEYS):
    """``obj`` without timing keys, with each checkout's own paths as placeholders."""
    if isinstance(obj, dict):
        return {without(k, keys): without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    if isinstance(obj, str):
        for path, placeholder in PLACES:
            obj = obj.replace(path, placeholder)
    return obj


def read_json(path: str, drop=TIMING_KEYS):
    with open(path, encoding="utf-8") as f:
        return without(json.load(f), drop)


def corpus_digest(folder: str) -> dict:
    rejected = []
    for path in sorted(glob.glob(os.path.join(folder, "rejected", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            rejected += f.read().splitlines()
    return {"parts": {os.path.basename(p): sha256(p) for p in sorted(glob.glob(os.path.join(folder, "part-*")))},
            "stats": read_json(os.path.join(folder, "stats.json")),
            "rejected_lines": hashlib.sha256("\n".join(sorted(without(rejected))).encode()).hexdigest(),
            "rejected_count": len(rejected)}


def vocab_digest(folder: str) -> dict:
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        tokens = sorted(json.load(f)["model"]["vocab"])
    return {"token_set": hashlib.sha256("\n".join(tokens).encode()).hexdigest(), "size": len(tokens),
            "stats": read_json(os.path.join(folder, "vocab_stats.json"), TIMING_KEYS | {"vocab_hash"}),
            "tokenizer_config": read_json(os.path.join(folder, "tokenizer_config.json"))}


def records(path: str) -> list[bytes]:
    """The records of a TFRecord file (length, CRCs and payload framing read by hand)."""
    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            n = int.from_bytes(header[:8], "little")
            out.append(f.read(n))
            f.read(4)
    return out


def examples_digest(folder: str) -> dict:
    shards = {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.tfrecord"), recursive=True)):
        recs = records(path)
        shards[os.path.relpath(path, folder)] = {
            "records": len(recs), "sha256": hashlib.sha256(b"".join(
                len(r).to_bytes(8, "little") + r for r in recs)).hexdigest()}
    return {"shards": shards, "metadata": read_json(os.path.join(folder, "metadata.json"),
                                                     TIMING_KEYS | {"vocab_hash_source"})}


def compare(what: str, a, b) -> bool:
    if a == b:
        print(f"SAME  {what}")
        return True
    print(f"DIFF  {what}")
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                print(f"      {key}: baseline {json.dumps(a.get(key), ensure_ascii=False)[:300]}\n"
                      f"      {' ' * len(key)}  this     {json.dumps(b.get(key), ensure_ascii=False)[:300]}")
    return False


def token_set(folder: str) -> set[str]:
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        return set(json.load(f)["model"]["vocab"])


def compare_vocabs(runs: dict[str, list[str]]) -> bool:
    """Equal when some run of each checkout has the same digest; else the cross-checkout
    token differences are shown with each checkout's own run-to-run differences."""
    digests = {name: [vocab_digest(f) for f in folders] for name, folders in runs.items()}
    for a in digests["baseline"]:
        for b in digests["this"]:
            if a == b:
                print(f"SAME  vocab: token set, vocab_stats.json, tokenizer_config.json "
                      f"(distinct token sets over {len(runs['baseline'])} runs each: baseline "
                      f"{len({d['token_set'] for d in digests['baseline']})}, this "
                      f"{len({d['token_set'] for d in digests['this']})})")
                return True
    sets = {name: [token_set(f) for f in folders] for name, folders in runs.items()}
    for name, found in sets.items():
        spread = set.union(*found) - set.intersection(*found)
        print(f"      {name}: tokens not in every one of its own runs: {sorted(spread)[:20]}")
    base, this = sets["baseline"][0], sets["this"][0]
    print(f"      baseline run 0 only: {sorted(base - this)[:20]}; this run 0 only: {sorted(this - base)[:20]}")
    return compare("vocab: token set, vocab_stats.json, tokenizer_config.json",
                   digests["baseline"][0], digests["this"][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-root", required=True, help="the other checkout (e.g. a git archive of main)")
    ap.add_argument("--root", default=ROOT, help="this checkout (default: the one holding this script)")
    ap.add_argument("--config", default="configs/tiny.yaml", help="relative to each root")
    ap.add_argument("--work", default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--vocab-runs", type=int, default=3, help="vocab trainings per checkout")
    args = ap.parse_args()

    roots = {"baseline": os.path.abspath(args.baseline_root), "this": os.path.abspath(args.root)}
    for name, root in roots.items():
        found = which_korlm(root)
        if not found.startswith(root):
            sys.exit(f"{name}: PYTHONPATH={root} imports korlm from {found}, not from that checkout")
    work = args.work or tempfile.mkdtemp(prefix="korlm-layout-eq-")
    os.makedirs(work, exist_ok=True)
    out = {name: os.path.join(work, name) for name in roots}
    # longest first: an output folder may sit inside a checkout
    PLACES.extend(sorted([(out[n], "<OUT>") for n in roots] + [(roots[n], "<ROOT>") for n in roots],
                         key=lambda p: -len(p[0])))
    same = True
    try:
        for name, root in roots.items():
            shutil.rmtree(out[name], ignore_errors=True)
            os.makedirs(out[name])
            korlm(root, "clean", "--config", args.config, "--output", f"{out[name]}/clean")
            for i in range(args.vocab_runs):
                korlm(root, "vocab", "--config", args.config, "--corpus", f"{out[name]}/clean",
                      "--output", f"{out[name]}/vocab-{i}")
        same &= compare("clean: part files, stats.json, rejection logs",
                        corpus_digest(f"{out['baseline']}/clean"), corpus_digest(f"{out['this']}/clean"))
        same &= compare_vocabs({name: [f"{out[name]}/vocab-{i}" for i in range(args.vocab_runs)]
                                for name in roots})
        shared_tokenizer = f"{out['baseline']}/vocab-0"  # one tokenizer, so the ids compare
        for packing, flags in PACKINGS.items():
            for name, root in roots.items():
                korlm(root, "pretrain-data", "--config", args.config, "--corpus", f"{out[name]}/clean",
                      "--tokenizer", shared_tokenizer, "--output", f"{out[name]}/examples-{packing}", *flags)
            same &= compare(f"pretrain-data ({packing}): TFRecord records, metadata.json",
                            examples_digest(f"{out['baseline']}/examples-{packing}"),
                            examples_digest(f"{out['this']}/examples-{packing}"))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("equal" if same else "NOT equal")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
