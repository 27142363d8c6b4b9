"""korlm's device arithmetic (peak table, model FLOPs, MFU) and the JAX pretraining-step
benchmark work where TensorFlow is absent, as on a lent GPU machine that has JAX, Keras
and KerasHub only: TensorFlow is blocked in the child processes
(``sys.modules['tensorflow'] = None`` makes every ``import tensorflow`` fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from korlm.pretrain import distribute

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "pretrain_step_jax.py"
BLOCK_TF = ("import sys\n"
            "for name in ('tensorflow', 'tensorflow_text'):\n"
            "    sys.modules[name] = None\n")


def _run(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", BLOCK_TF + code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def test_benchmark_slots_match_korlm_masking():
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        import pretrain_step_jax as bench
    finally:
        sys.path.pop(0)
    from korlm.pretrain.masking import default_max_predictions

    for seq in (16, 128, 512):
        assert bench.label_slots(seq) == default_max_predictions(seq, bench.MASK_RATE)
    x, y, w = bench.synthetic_batches(3, 16, 100, segment_ids=True)
    positions = x["mask_positions"]
    assert positions.shape == y.shape == w.shape == (3, 3)
    assert ((positions >= 1) & (positions <= 14)).all()
    assert all(len(set(row)) == len(row) and list(row) == sorted(row) for row in positions.tolist())
    assert (y == x["token_ids"][[[0], [1], [2]], positions]).all()


def test_benchmark_trains_korlm_bert_without_tensorflow(tmp_path):
    """The script a lent GPU runs: korlm's distribute/build/optimizer, Keras and KerasHub's
    BertMaskedLM on the JAX backend, one compiled training step, figures in its JSON."""
    out = tmp_path / "summary.json"
    args = ["--model", "bert", "--size", "tiny", "--seq-len", "16", "--vocab-size", "500",
            "--batch-size", "4", "--steps", "1", "--warmup", "1", "--precision", "float32", "--baseline", "none",
            "--peak-tflops", "2.5", "--json", str(out)]
    proc = _run(f"import runpy\nsys.argv = [{str(BENCHMARK)!r}] + {args!r}\n"
                f"runpy.run_path({str(BENCHMARK)!r}, run_name='__main__')\n")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "tensorflow importable: False" in proc.stdout
    summary = json.loads(out.read_text())
    assert summary["tensorflow_loaded"] == []
    (korlm,) = summary["sides"]
    assert summary["devices"].startswith("jax-data-parallel (jax)")
    assert korlm["flops_per_token"] == distribute.model_flops_per_token(
        "bert", "tiny", 500, 16, mlm_predictions=3)
    # korlm's arithmetic ran here without TensorFlow too; the table holds the lent GPU.
    assert distribute.peak_flops_per_device("NVIDIA H200", "mixed_bfloat16") == 989.5e12
    assert korlm["tokens_per_s"] > 0 and len(korlm["tokens_per_s_rounds"]) == 1
    assert korlm["peak_tflops"] == 2.5
    assert korlm["mfu"] == pytest.approx(korlm["tokens_per_s"] * korlm["flops_per_token"] / 2.5e12)
    assert "MFU" in proc.stdout and "tokens/s" in proc.stdout
