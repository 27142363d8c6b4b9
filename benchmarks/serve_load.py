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
sample, fine-tuned one epoch on --train-examples NSMC reviews with `korlm.evaluation.finetune`):
serving speed does not depend on how good the weights are.

With --poison FRACTION (e.g. 0.1) it measures bad input instead: one batching server,
and at each level clean load and load where that share of the requests (evenly spread)
carries text the tokenizer cannot encode (POISON: a lone surrogate, NUL-only, control-only,
format-only, whitespace-only, U+FFFD/private-use only, in turn), alternated --rounds
times, medians reported. Valid requests must all succeed and every poisoned one must get
a 422 naming its item; latency and valid requests/s count the valid requests only.

    .venv/bin/python benchmarks/serve_load.py --size mini --levels 1,4,16,64
    .venv/bin/python benchmarks/serve_load.py --model MODEL_DIR --poison 0.1 --levels 4,16 --rounds 3
    .venv/bin/python benchmarks/serve_load.py --summarise RESULTS.json   # that table again
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
# text the tokenizer cannot encode, each answered 422 by validation
POISON = ["좋\ud800아요", "\x00\x00\x00", "\x01\x02\x1b\x7f", "\u200b\u200d\ufeff", " \u3000\t",
          "\ufffd\ue000"]


def build_model(work: Path, size: str, seq: int, train_examples: int) -> Path:
    """A tokenizer on the NSMC sample, a random-init checkpoint and a one-epoch NSMC
    fine-tune of it, served as a classification model."""
    import pandas as pd
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing

    from korlm.evaluation.finetune import finetune
    from korlm.modeling.build import build_masked_lm
    from korlm.modeling.checkpoints import save_checkpoint

    texts = pd.read_csv(NSMC / "ratings_train.txt", sep="\t")["document"].fillna("").tolist()
    tokenizer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    tokenizer.train_from_iterator(texts, vocab_size=8000, min_frequency=1, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.post_processor = BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    (work / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(work / "tokenizer" / "tokenizer.json"))
    tokenizer.save_model(str(work / "tokenizer"))
    vocab = tokenizer.get_vocab_size()
    task = build_masked_lm("bert", size, vocab, seq)
    save_checkpoint(task, str(work / "checkpoint"), {
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

        return httpx.get(f"{self.base}/metrics.json", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def poisoned(i: int, fraction: float) -> bool:
    """Whether request ``i`` is poisoned: ``fraction`` of them, evenly spread."""
    return int((i + 1) * fraction) > int(i * fraction)


async def drive(base: str, concurrency: int, num_requests: int, texts: list[str],
                poison: float = 0.0) -> dict:
    """C clients sending one-text requests back to back; latency per request. With
    ``poison`` > 0 that share of the requests carries a POISON text instead; they must
    answer 422 naming item 0 and are left out of the latency and valid requests/s."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    poison_ok, poison_wrong = 0, []
    next_index = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index, poison_ok
        while next_index < num_requests:
            i = next_index
            next_index += 1
            bad = poison > 0 and poisoned(i, poison)
            text = POISON[i % len(POISON)] if bad else texts[i % len(texts)]
            # poison as ASCII JSON (\\u escapes): a lone surrogate cannot be sent as UTF-8
            body = json.dumps({"items": [{"text": text}]}, ensure_ascii=bad).encode("utf-8")
            started = time.perf_counter()
            try:
                r = await client.post("/v1/classify", content=body,
                                      headers={"content-type": "application/json"})
                if bad:
                    if r.status_code == 422 and r.json()["message"].startswith("items.0.text: "):
                        poison_ok += 1
                    else:
                        poison_wrong.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                ok = r.status_code == 200 and len(r.json()["results"]) == 1
                if not ok:
                    failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                (poison_wrong if bad else failures).append(f"{type(exc).__name__}: {exc}")
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
            "all_requests_per_s": round((len(latencies) + poison_ok) / elapsed, 1),
            "poison": poison_ok + len(poison_wrong), "poison_answered_422": poison_ok,
            "poison_wrong": poison_wrong[:3],
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def run_level(server: Server, concurrency: int, num_requests: int, texts: list[str],
              poison: float = 0.0) -> dict:
    before = server.counters()
    result = asyncio.run(drive(server.base, concurrency, num_requests, texts, poison))
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
    p.add_argument("--poison", type=float, default=0.0, metavar="FRACTION",
                   help="compare clean load with load where this share of the requests is "
                        "poisoned (e.g. 0.1), on one batching server")
    p.add_argument("--rounds", type=int, default=3,
                   help="--poison: clean/poisoned runs per level, alternated; medians reported")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--summarise", metavar="JSON",
                   help="print the --poison table of an earlier run's --output and exit")
    a = p.parse_args()
    if a.summarise:
        print_poison_table(json.loads(Path(a.summarise).read_text(encoding="utf-8")))
        return

    work = Path(a.work or tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else build_model(work, a.size, a.seq, a.train_examples)
    import pandas as pd

    texts = [t for t in pd.read_csv(NSMC / "ratings_test.txt", sep="\t")["document"]
             .fillna("").tolist() if t.strip()][:500]
    if a.poison > 0:
        poison_comparison(a, model, work, texts)
        return
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


def print_poison_table(rows: list[dict]) -> None:
    """Per level and mix: totals of requests and failures, medians (and the range of
    valid requests/s) over the alternated runs."""
    import statistics

    print("| concurrency | mix | runs | requests | valid failed | poisoned: 422 naming the item |"
          " valid req/s, median (range) | all req/s | valid p50 ms | valid p99 ms | mean batch |"
          " load avg |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["concurrency"], r["mix"]), []).append(r)
    for (c, mix), runs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "clean")):
        def med(key: str, runs=runs) -> float:
            return round(statistics.median(r[key] for r in runs), 1)
        rates, loads = [r["requests_per_s"] for r in runs], [r["loadavg_1m"] for r in runs]
        print(f"| {c} | {mix} | {len(runs)} | {sum(r['requests'] for r in runs)} | "
              f"{sum(r['failed'] for r in runs)} | "
              f"{sum(r['poison_answered_422'] for r in runs)} / {sum(r['poison'] for r in runs)} | "
              f"{med('requests_per_s')} ({min(rates)}–{max(rates)}) | "
              f"{med('all_requests_per_s')} | {med('p50_ms')} | {med('p99_ms')} | "
              f"{med('mean_batch')} | {min(loads)}–{max(loads)} |")


def poison_comparison(a: argparse.Namespace, model: Path, work: Path, texts: list[str]) -> None:
    """Clean vs. poisoned load on one server (--batch-size, --max-wait-ms), alternated
    --rounds times per level; medians of requests/s and latency, all failures summed."""
    server = Server(model, a.batch_size, a.max_wait_ms, work / "server-poison.log")
    rows = []
    try:
        info = server.wait_ready()
        print(f"model: {info}", flush=True)
        run_level(server, 8, 64, texts)  # warm-up: graph tracing for the batch shapes
        for c in (int(x) for x in a.levels.split(",")):
            num = a.requests or max(100, 8 * c)
            for k in range(a.rounds):
                order = (0.0, a.poison) if k % 2 == 0 else (a.poison, 0.0)
                for fraction in order:
                    r = run_level(server, c, num, texts, fraction)
                    r.update(mix="clean" if fraction == 0 else f"{fraction:.0%} poison",
                             concurrency=c, round=k)
                    rows.append(r)
                    print(json.dumps(r, ensure_ascii=False), flush=True)
    finally:
        server.stop()

    print(f"\nmodel {model} ({info['task']}, max_seq_length {info['max_seq_length']}); "
          f"one-text /v1/classify requests; --max-batch-size {a.batch_size} --max-wait-ms "
          f"{a.max_wait_ms}; medians of {a.rounds} alternated runs\n")
    if a.output:
        Path(a.output).write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    print_poison_table(rows)
    failed = sum(r["failed"] for r in rows)
    wrong = sum(r["poison"] - r["poison_answered_422"] for r in rows)
    if failed or wrong:
        raise SystemExit(f"{failed} valid requests failed; {wrong} poisoned requests not "
                         "answered 422 naming their item")


if __name__ == "__main__":
    main()
