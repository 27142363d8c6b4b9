"""Benchmark Kiwi morpheme pre-tokenization: one process vs Beam DirectRunner on 2 workers.

    .venv/bin/python benchmarks/morpheme_throughput.py [--mb 5] [--repeat 2] [--batch 500]
        [--form wordpiece|sentencepiece] [--data DIR]

The same ``--mb`` MB of shared-corpus sentences (NSMC extra reviews, then petitions, as
``benchmarks/vocab_build.py``; data from ``--data``, default ``<repo>/../shared/data``)
are segmented by ``korlm.tokenizer.morpheme.segment_batch`` (the function ``KorlmTokenizer.prepare``
calls) and written to a file:

* ``loop``: one process, batches of ``--batch`` sentences, in order.
* ``beam``: a Beam pipeline on the DirectRunner with ``--direct_num_workers=2
  --direct_running_mode=multi_processing``: read the file as batches of ``--batch``
  lines (elements are batches, never single lines), Reshuffle (spreads the batches over
  the workers), segment in a DoFn that loads Kiwi once per worker in ``setup``, write
  text shards.

Each run is a fresh child process (so model loading and, for Beam, worker start-up are
counted: that is what a user pays), ``--repeat`` times, alternating loop/beam; the load
average is printed before every run because other jobs share this machine. Both
outputs are checked to hold the same segmented lines. Prints sentences/s and MB/s per
run, the medians and the ratio beam / loop.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BEAM_OPTIONS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _boundary(form: str):
    from korlm.tokenizer import morpheme

    return morpheme.BOUNDARY if form == "sentencepiece" else None


def _batches(path: str, size: int):
    with open(path, encoding="utf-8") as f:
        batch = []
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def run_loop(input_path: str, output: str, batch: int, form: str) -> dict:
    from korlm.tokenizer import morpheme

    started = time.perf_counter()
    morpheme.segment_batch(["모델을 불러온다."])  # Kiwi's model load, counted in the total
    loaded = time.perf_counter()
    boundary = _boundary(form)
    with open(output, "w", encoding="utf-8") as f:
        for lines in _batches(input_path, batch):
            f.writelines(s + "\n" for s in morpheme.segment_batch(lines, boundary=boundary))
    done = time.perf_counter()
    return {"seconds": done - started, "model_load_seconds": loaded - started}


def run_beam(input_path: str, output_dir: str, batch: int, form: str) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    class SegmentBatch(beam.DoFn):
        def __init__(self, form: str):
            self.form = form

        def setup(self):
            from korlm.tokenizer import morpheme

            self.morpheme = morpheme
            self.boundary = _boundary(self.form)
            morpheme.segment_batch(["모델을 불러온다."])  # load Kiwi once per worker

        def process(self, lines):
            # one counter per worker process: shows the batches really spread over both
            beam.metrics.Metrics.counter("morpheme", f"batches_in_pid_{os.getpid()}").inc()
            yield from self.morpheme.segment_batch(lines, boundary=self.boundary)

    started = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(BEAM_OPTIONS))
    _ = (p
         | "InputFile" >> beam.Create([input_path])
         | "ReadBatches" >> beam.FlatMap(lambda path: _batches(path, batch))
         | "SpreadBatches" >> beam.Reshuffle()
         | "Segment" >> beam.ParDo(SegmentBatch(form))
         | "Write" >> beam.io.WriteToText(os.path.join(output_dir, "part"), num_shards=2))
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("morpheme"))["counters"]
    return {"seconds": seconds, "batches_per_worker": sorted(c.committed or c.attempted for c in counters)}


def _child(kind: str, input_path: str, output: str, batch: int, form: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--input", input_path, "--output", output,
           "--batch", str(batch), "--form", form]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _read_lines(paths: list[str]) -> list[str]:
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines += f.read().splitlines()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=5.0, help="MB of sentences (UTF-8)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; medians are compared")
    parser.add_argument("--batch", type=int, default=500, help="sentences per batch (Beam element)")
    parser.add_argument("--form", choices=["wordpiece", "sentencepiece"], default="wordpiece",
                        help="segmentation form: ## continuations (WordPiece) or boundary marks (SentencePiece)")
    parser.add_argument("--data", default=None, help="shared data dir (default <repo>/../shared/data)")
    parser.add_argument("--child", choices=["loop", "beam"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_loop if args.child == "loop" else run_beam
        print(json.dumps(run(args.input, args.output, args.batch, args.form)))
        return

    import vocab_build

    vocab_build.DATA = vocab_build.check_data(args.data or vocab_build.DEFAULT_DATA)
    with tempfile.TemporaryDirectory() as tmp:
        input_path = os.path.join(tmp, "sentences.txt")
        sentences = list(vocab_build._sentences(int(args.mb * 1e6)))
        with open(input_path, "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sentences)
        mb = os.path.getsize(input_path) / 1e6
        print(f"input: {len(sentences):,} sentences, {mb:.2f} MB; batch {args.batch}; form {args.form}; "
              f"{os.cpu_count()} CPUs; beam options {' '.join(BEAM_OPTIONS)}")
        print("| run | load avg (1/5/15 min) before | seconds | sentences/s | MB/s | note |\n|---|---|---|---|---|---|")
        runs: dict[str, list[float]] = {"loop": [], "beam": []}
        reference = None
        for i in range(args.repeat):
            for kind in ("loop", "beam"):
                load = "/".join(f"{x:.2f}" for x in os.getloadavg())
                output = os.path.join(tmp, f"{kind}-{i}")
                if kind == "beam":
                    os.makedirs(output)
                r = _child(kind, input_path, output if kind == "beam" else output + ".txt", args.batch, args.form)
                lines = sorted(_read_lines(glob.glob(os.path.join(output, "part*")) if kind == "beam"
                                           else [output + ".txt"]))
                if reference is None:
                    reference = lines
                elif lines != reference:
                    sys.exit(f"morpheme_throughput: {kind} run {i + 1} segmented differently from the first run")
                runs[kind].append(r["seconds"])
                note = f"Kiwi model load {r['model_load_seconds']:.1f} s included" if "model_load_seconds" in r else \
                    (f"start-up and per-worker Kiwi load included; batches per worker process "
                     f"{r['batches_per_worker']}")
                print(f"| {kind} #{i + 1} | {load} | {r['seconds']:.1f} | {len(sentences) / r['seconds']:,.0f} "
                      f"| {mb / r['seconds']:.3f} | {note} |", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"median: loop {len(sentences) / med['loop']:,.0f} sentences/s ({med['loop']:.1f} s), "
              f"beam 2 workers {len(sentences) / med['beam']:,.0f} sentences/s ({med['beam']:.1f} s); "
              f"speed ratio beam / loop = {med['loop'] / med['beam']:.2f}; outputs identical; "
              f"load avg after {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
