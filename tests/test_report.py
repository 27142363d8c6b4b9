"""The report: checkpoints by step, the baseline last, plots written."""

import json
import os

import pytest

from korlm.errors import KorlmError
from korlm.report import build_report


def _metrics(d, checkpoint, step, acc, random_init=False):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": "nsmc", "checkpoint": checkpoint, "step": step,
                   "random_init": random_init, "metrics": {"accuracy": acc}}, f)


def test_report_orders_rows_and_writes_files(tmp_path):
    _metrics(tmp_path / "e2" / "nsmc", "step-000200", 200, 0.71)
    _metrics(tmp_path / "e1" / "nsmc", "step-000100", 100, 0.65)
    _metrics(tmp_path / "base" / "nsmc", "random-init", None, 0.55, random_init=True)
    out = tmp_path / "report"
    summary = build_report([str(tmp_path / "e2"), str(tmp_path / "e1"), str(tmp_path / "base")],
                           str(out))
    assert summary["rows"] == ["step-000100", "step-000200", "random-init"]
    assert summary["columns"] == ["nsmc/accuracy"]
    md = (out / "results.md").read_text()
    assert "| step-000200 | **0.7100** |" in md
    assert "| random-init | 0.5500 |" in md
    assert (out / "nsmc_accuracy.png").stat().st_size > 1000
    assert "<table>" in (out / "results.html").read_text()


def test_report_errors(tmp_path):
    with pytest.raises(KorlmError, match="does not exist"):
        build_report([str(tmp_path / "missing")], str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KorlmError, match="no metrics.json"):
        build_report([str(tmp_path / "empty")], str(tmp_path / "out"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    with pytest.raises(KorlmError, match="not valid JSON"):
        build_report([str(tmp_path / "broken")], str(tmp_path / "out"))
