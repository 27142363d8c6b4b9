"""Trust at the edges (issue 16): each edge case a new user meets, run through the real
`korlm` command line in a child process, with what it answered and how many bytes of
what korlm did not write were lost (must be 0).

Every case works in its own folder under a temporary root: a "protected" tree (the
user's files, the command's inputs) is hashed before and after the command, and "bytes
lost" is the size of every protected file that changed or disappeared. The clean cases
with bad records also report in = kept + rejected from the step's stats.json.

Serving rows are not run here: `benchmarks/serve_load.py --poison 0.1` measures them
(valid requests failed under a 10 % poisoned load; see benchmarks/README.md).

    .venv/bin/python benchmarks/edge_cases.py            # prints a markdown table
    .venv/bin/python benchmarks/edge_cases.py --gcs      # adds gs:// cases on the GCS emulator
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KORLM = [sys.executable, "-m", "korlm.cli"]
SAMPLE = ROOT / "data" / "sample"
REVIEWS = [f"영화 {i}번째 리뷰입니다. 배우들의 연기가 정말 좋았고 이야기도 탄탄했어요." for i in range(400)]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


def bytes_lost(before: dict, after: dict) -> int:
    return sum(size for name, (digest, size) in before.items()
               if after.get(name, (None, 0))[0] != digest)


def run(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[int, str]:
    done = subprocess.run([*KORLM, *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    tb = any("Traceback" in line for line in lines)
    message = (errors or lines or [""])[-1].strip()
    return done.returncode, ("TRACEBACK " if tb else "") + message


def user_notes(folder: Path) -> None:
    (folder / "drafts").mkdir(parents=True)
    (folder / "회의록.md").write_text("# 회의록\n예산 확정", encoding="utf-8")
    (folder / "drafts" / "plan.txt").write_bytes(b"\x00\x01 binary too")


def write_reviews(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reviews.txt").write_text("".join(r + "\n" for r in REVIEWS), encoding="utf-8")
    return folder / "reviews.txt"


def counted(stats_file: Path) -> str:
    stats = json.loads(stats_file.read_text())
    n_in, kept, rej = stats["input_records"], stats["kept_records"], stats["rejected_records"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("rejected_by_reason", {}).items()) if v)
    return f"in {n_in} = kept {kept} + rejected {rej} ({reasons})" + ("" if n_in == kept + rej else " MISMATCH")


def cases(work: Path, gcs: str | None):
    """(case, setup(folder) -> (argv, protected_root, cwd, extra)), in table order."""

    def clean_dot(d):
        write_reviews(d / "raw")
        return ["clean", "--input", "raw/reviews.txt", "--output", "."], d, d

    def clean_notes(d):
        write_reviews(d / "raw")
        user_notes(d / "notes")
        return ["clean", "--input", "raw/reviews.txt", "--output", "notes"], d, d

    def clean_notes_overwrite(d):
        argv, p, c = clean_notes(d)
        return [*argv, "--overwrite"], p, c

    def clean_file(d):
        write_reviews(d / "raw")
        (d / "thesis.pdf").write_bytes(b"%PDF-1.7 my thesis")
        return ["clean", "--input", "raw/reviews.txt", "--output", "thesis.pdf"], d, d

    def report_into_results(d):
        (d / "results" / "nsmc").mkdir(parents=True)
        (d / "results" / "nsmc" / "metrics.json").write_text(json.dumps(
            {"task": "nsmc", "checkpoint": "step-000002", "step": 2, "metrics": {"accuracy": 0.5}}))
        return ["report", "--results", "results", "--output", "results"], d, d

    def vocab_into_clean_output(d):
        write_reviews(d / "raw")
        code, msg = run(["clean", "--input", "raw/reviews.txt", "--output", "corpus"], d)
        assert code == 0, msg
        return ["vocab", "--corpus", "corpus", "--output", "corpus", "--overwrite"], d, d

    def vocab_over_other_step(d):
        write_reviews(d / "raw")
        code, msg = run(["clean", "--input", "raw/reviews.txt", "--output", "corpus"], d)
        assert code == 0, msg
        shutil.copytree(d / "corpus", d / "corpus2")
        return ["vocab", "--corpus", "corpus2", "--output", "corpus", "--overwrite"], d, d

    def clean_overwrite_own(d):
        write_reviews(d / "raw")
        code, msg = run(["clean", "--input", "raw/reviews.txt", "--output", "corpus"], d)
        assert code == 0, msg
        return ["clean", "--input", "raw/reviews.txt", "--output", "corpus", "--overwrite"], d / "raw", d

    def clean_stale_staging(d):
        write_reviews(d / "raw")
        stale = d / ".corpus.tmp-host01-4242-abcd"
        stale.mkdir()
        (stale / "part-00000.txt").write_text("half written", encoding="utf-8")
        return ["clean", "--input", "raw/reviews.txt", "--output", "corpus"], d / "raw", d

    def clean_truncated_gz(d):
        raw = d / "raw"
        raw.mkdir()
        blob = gzip.compress("".join(json.dumps({"text": r}, ensure_ascii=False) + "\n"
                                     for r in REVIEWS).encode())
        (raw / "cut.jsonl.gz").write_bytes(blob[: len(blob) * 2 // 3])
        return ["clean", "--input", "raw/cut.jsonl.gz", "--output", "corpus"], raw, d

    def clean_bad_bytes(d):
        raw = d / "raw"
        raw.mkdir()
        data = b"".join(r.encode() + b"\n" for r in REVIEWS[:200])
        data += b"\xff\xfe broken \xc3\x28 bytes\n" * 5 + b"".join(r.encode() + b"\n" for r in REVIEWS[200:])
        (raw / "mixed.txt").write_bytes(data)
        return ["clean", "--input", "raw/mixed.txt", "--output", "corpus"], raw, d

    def clean_csv_unbalanced(d):
        raw = d / "raw"
        raw.mkdir()
        rows = ["id,text"] + [f'{i},"{r}"' for i, r in enumerate(REVIEWS[:100])]
        rows.insert(40, '999,"이 따옴표는 닫히지 않습니다')
        (raw / "reviews.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        return ["clean", "--input", "raw/reviews.csv", "--output", "corpus"], raw, d

    def clean_wrong_field(d):
        raw = d / "raw"
        raw.mkdir()
        (raw / "docs.jsonl").write_text("".join(json.dumps({"body": r}, ensure_ascii=False) + "\n"
                                                for r in REVIEWS), encoding="utf-8")
        return ["clean", "--input", "raw/docs.jsonl", "--output", "corpus"], raw, d

    def clean_keeps_nothing(d):
        raw = d / "raw"
        raw.mkdir()
        (raw / "short.txt").write_text("".join(f"ㅋ{i}\n" for i in range(50)), encoding="utf-8")
        return ["clean", "--input", "raw/short.txt", "--output", "corpus"], raw, d

    def vocab_non_utf8(d):
        corpus = d / "corpus"
        corpus.mkdir()
        (corpus / "part-00000.txt").write_bytes("좋은 영화\n".encode("cp949") * 20)
        return ["vocab", "--corpus", "corpus", "--output", "tok"], corpus, d

    def config_non_utf8(d):
        write_reviews(d / "raw")
        (d / "korlm.yaml").write_bytes("vocab:\n  vocab_size: 1000  # 어휘 크기\n".encode("cp949"))
        return ["clean", "--input", "raw/reviews.txt", "--output", "corpus", "--config", "korlm.yaml"], d, d

    def config_empty(d):
        write_reviews(d / "raw")
        (d / "korlm.yaml").write_text("# nothing here yet\n", encoding="utf-8")
        return ["clean", "--input", "raw/reviews.txt", "--output", "corpus", "--config", "korlm.yaml"], d, d

    def compile_over_file(d):
        (d / "pipeline.yaml").write_text("my: own yaml\n", encoding="utf-8")
        return ["pipeline", "compile", "--config", str(ROOT / "configs" / "tiny.yaml"),
                "--output", "pipeline.yaml"], d, d

    yield "clean --output . (cwd holds the input)", clean_dot
    yield "clean --output a folder of notes", clean_notes
    yield "clean --output a folder of notes --overwrite", clean_notes_overwrite
    yield "clean --output a regular file", clean_file
    yield "report --results X --output X", report_into_results
    yield "vocab --output = its --corpus (a clean output), --overwrite", vocab_into_clean_output
    yield "vocab --output over a clean output, --overwrite", vocab_over_other_step
    yield "clean --output its own earlier output, --overwrite", clean_overwrite_own
    yield "clean after a killed run left .corpus.tmp-*", clean_stale_staging
    yield "pipeline compile --output over a user's YAML", compile_over_file
    yield "clean a truncated .jsonl.gz", clean_truncated_gz
    yield "clean a .txt with invalid UTF-8 lines", clean_bad_bytes
    yield "clean a CSV with an unclosed quote", clean_csv_unbalanced
    yield "clean JSONL without the text field", clean_wrong_field
    yield "clean where every record is rejected", clean_keeps_nothing
    yield "vocab on a CP949 corpus", vocab_non_utf8
    yield "--config in CP949", config_non_utf8
    yield "--config empty (comments only)", config_empty
    if gcs:
        def gcs_prefix(d, step):
            from korlm import storage

            prefix = f"{gcs}/{d.name}"
            objects = {f"{prefix}/models/README.md": "팀 공용 버킷", f"{prefix}/models/v1/config.json": "{}"}
            for path, text in objects.items():
                storage.write_text(path, text)
            write_reviews(d / "raw")
            argv = {"clean": ["clean", "--input", "raw/reviews.txt"],
                    "vocab": ["vocab", "--corpus", "raw"]}[step]
            return [*argv, "--output", f"{prefix}/models", "--overwrite"], (prefix, objects), d

        yield "clean --output gs://…/models holding other objects, --overwrite", lambda d: gcs_prefix(d, "clean")
        yield "vocab --output gs://…/models holding other objects, --overwrite", lambda d: gcs_prefix(d, "vocab")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gcs", action="store_true", help="also gs:// cases on the GCS emulator")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="korlm-edges-") as tmp:
        emulator = None
        env = {}
        if args.gcs:
            from tests import gcs_emulator

            emulator = gcs_emulator.running()
            bucket = emulator.__enter__()
            env = {k: os.environ[k] for k in ("STORAGE_EMULATOR_HOST",) if k in os.environ}
        try:
            for i, (name, setup) in enumerate(cases(Path(tmp), bucket if args.gcs else None)):
                d = Path(tmp) / f"case{i:02d}"
                d.mkdir()
                argv, protected, cwd = setup(d)
                if isinstance(protected, tuple):  # gs:// prefix and its objects
                    from korlm import storage

                    prefix, objects = protected
                    before = {p: (t, len(t.encode())) for p, t in objects.items()}
                    started = time.time()
                    code, message = run(argv, cwd, env)
                    after = {p: (storage.read_text(p), 0) for p in objects if storage.exists(p)}
                    lost = sum(size for p, (t, size) in before.items() if after.get(p, (None,))[0] != t)
                else:
                    before = snapshot(protected)
                    started = time.time()
                    code, message = run(argv, cwd, env)
                    lost = bytes_lost(before, snapshot(protected))
                stats = cwd / "corpus" / "stats.json"
                if code == 0 and argv[0] == "clean" and stats.exists():
                    message = counted(stats)
                elif code == 0:
                    message = message or "ok"
                failed_stats = cwd / "corpus.failed" / "stats.json"
                if code == 2 and failed_stats.exists():
                    message += f" [{counted(failed_stats)}]"
                rows.append((name, code, message, lost, time.time() - started))
                print(f"{name}: exit {code}, lost {lost} B ({time.time() - started:.0f} s)", file=sys.stderr,
                      flush=True)
        finally:
            if emulator is not None:
                emulator.__exit__(None, None, None)
    print("| case | exit | message (stderr, one line) | bytes lost |")
    print("|---|---:|---|---:|")
    for name, code, message, lost, _ in rows:
        message = message.replace("|", "\\|").replace(tmp, "…")
        print(f"| {name} | {code} | {message} | {lost} |")
    return 0 if all(lost == 0 and "TRACEBACK" not in m for _, _, m, lost, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
