"""Load test of `korlm serve` on loopback: p50/p99 latency, requests/s and failed requests
at several client concurrency levels, request batching on vs off side by side.

Two servers run as subprocesses (`python -m korlm.cli serve MODEL_DIR`) on free loopback
ports over the same model directory: one with batching (`--max-batch-size 32`, or
--batch-size), one without (`--max-batch-size 1`). Each level is driven against both,
alternating which goes first, by C concurrent httpx async clients, each sending one-text
`/v1/classify` requests (NSMC test reviews) back to back until the level's request count
is reached. The first requests of each server (graph tracing) are a warm-up, not counted.
The load average is printed with every row: the client, both servers and whatever else
runs on this machine share its cores.

Without --model it builds one first (a random-init BERT of --size, WordPiece on the NSMC
sample, fine-tuned one epoch on --train-examples NSMC reviews with `korlm.finetune`):
serving speed does not depend on how good the weights are.

    .venv/bin/python benchmarks/serve_load.py --size mini --levels 1,4,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # korlm from this checkout when run as a script
NSMC = ROOT / "data" / "sample" / "eval" / "nsmc"


def build_model(work: Path, size: str, seq: int, train_examples: int) -> Path:
    """A tokenizer on the NSMC sample, a random-init checkpoint and a one-epoch NSMC
    fine-tune of it, served as a classification model."""
    import pandas as pd
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing

    from korlm import models
    from korlm.finetune import finetune

    texts = pd.read_csv(NSMC / "ratings_train.txt", sep="\t")["document"].fillna("").tolist()
    tokenizer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tokenizer.train_from_iterator(texts, vocab_size=8000, min_frequency=1, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.post_processor = BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    (work / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(work / "tokenizer" / "tokenizer.json"))
    tokenizer.save_model(str(work / "tokenizer"))
    vocab = tokenizer.get_vocab_size()
    task = models.build_masked_lm("bert", size, vocab, seq)
    models.save_checkpoint(task, str(work / "checkpoint"), {
        "model": "bert", "size": size, "vocab_size": vocab, "max_seq_length": seq, "step": 0})
    record = finetune(str(work / "checkpoint"), str(work / "tokenizer"), "nsmc", str(NSMC.parent),
                      str(work / "model"), max_train_examples=train_examples,
                      max_eval_examples=100, epochs=1, batch_size=32, max_seq_length=seq)
    print(f"built {work / 'model'}: nsmc {record.get('metrics')}", flush=True)
    return work / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, max_batch_size: int, max_wait_ms: float, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.max_batch_size = max_batch_size
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "korlm.cli", "serve", str(model), "--port", str(self.port),
             "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
             "--max-items", "64"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    def wait_ready(self, timeout: float = 300.0) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                r = httpx.get(f"{self.base}/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server on {self.base} not ready after {timeout}s; see {self.log.name}")

    def counters(self) -> dict:
        import httpx

        return httpx.get(f"{self.base}/metrics", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def drive(base: str, concurrency: int, num_requests: int, texts: list[str]) -> dict:
    """C clients sending one-text requests back to back; latency per request."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    next_index = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < num_requests:
            i = next_index
            next_index += 1
            body = {"items": [{"text": texts[i % len(texts)]}]}
            started = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json=body)
                ok = r.status_code == 200 and len(r.json()["results"]) == 1
                if not ok:
                    failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    import numpy as np

    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": num_requests, "ok": len(latencies), "failed": len(failures),
            "first_failures": failures[:3], "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def run_level(server: Server, concurrency: int, num_requests: int, texts: list[str]) -> dict:
    before = server.counters()
    result = asyncio.run(drive(server.base, concurrency, num_requests, texts))
    after = server.counters()
    calls = after["model_calls"] - before["model_calls"]
    result["model_calls"] = calls
    result["mean_batch"] = round((after["items"] - before["items"]) / calls, 2) if calls else None
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a `korlm finetune` output directory (classification); "
                                   "default: build one in --work")
    p.add_argument("--work", help="where a built model goes (default: a temporary directory)")
    p.add_argument("--size", default="mini", help="model size when building (default mini)")
    p.add_argument("--seq", type=int, default=64, help="max_seq_length when building")
    p.add_argument("--train-examples", type=int, default=500)
    p.add_argument("--levels", default="1,4,16,64", help="client concurrency levels")
    p.add_argument("--requests", type=int, default=0,
                   help="requests per level and server (default max(100, 8 x concurrency))")
    p.add_argument("--batch-size", type=int, default=32, help="--max-batch-size of the batching server")
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--output", help="write the results as JSON here")
    a = p.parse_args()

    work = Path(a.work or tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else build_model(work, a.size, a.seq, a.train_examples)
    import pandas as pd

    texts = [t for t in pd.read_csv(NSMC / "ratings_test.txt", sep="\t")["document"]
             .fillna("").tolist() if t.strip()][:500]
    servers = {"batching": Server(model, a.batch_size, a.max_wait_ms, work / "server-batching.log"),
               "no batching": Server(model, 1, a.max_wait_ms, work / "server-nobatch.log")}
    rows = []
    try:
        info = {name: s.wait_ready() for name, s in servers.items()}
        print(f"model: {info['batching']}", flush=True)
        for s in servers.values():  # warm-up: graph tracing for the batch shapes
            run_level(s, 8, 64, texts)
        levels = [int(x) for x in a.levels.split(",")]
        for n, c in enumerate(levels):
            num = a.requests or max(100, 8 * c)
            order = list(servers) if n % 2 == 0 else list(servers)[::-1]
            for name in order:
                r = run_level(servers[name], c, num, texts)
                r.update(mode=name, concurrency=c,
                         max_batch_size=servers[name].max_batch_size)
                rows.append(r)
                print(json.dumps(r, ensure_ascii=False), flush=True)
    finally:
        for s in servers.values():
            s.stop()

    print(f"\nmodel {model} ({info['batching']['task']}, max_seq_length "
          f"{info['batching']['max_seq_length']}); one-text /v1/classify requests; "
          f"--max-wait-ms {a.max_wait_ms}\n")
    print("| concurrency | mode | requests | failed | p50 ms | p99 ms | requests/s | "
          "model calls | mean batch | load avg |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["mode"])):
        print(f"| {r['concurrency']} | {r['mode']} (max-batch {r['max_batch_size']}) | "
              f"{r['requests']} | {r['failed']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['requests_per_s']} | {r['model_calls']} | {r['mean_batch']} | "
              f"{r['loadavg_1m']} |")
    print("\nbatching / no batching, requests/s:")
    by = {(r["concurrency"], r["mode"]): r for r in rows}
    for c in sorted({r["concurrency"] for r in rows}):
        on, off = by[(c, "batching")], by[(c, "no batching")]
        ratio = on["requests_per_s"] / off["requests_per_s"] if off["requests_per_s"] else float("nan")
        print(f"  concurrency {c}: {ratio:.2f}x")
    if a.output:
        Path(a.output).write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    failed = sum(r["failed"] for r in rows)
    if failed:
        raise SystemExit(f"{failed} failed requests")


if __name__ == "__main__":
    main()
