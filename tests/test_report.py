"""The report: checkpoints by step, the baseline last, plots written."""

import json
import os

import pytest

from korlm.errors import KorlmError
from korlm.report import build_report


def _metrics(d, checkpoint, step, acc, random_init=False, task="nsmc", metrics=None,
             split_note=""):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"task": task, "checkpoint": checkpoint, "step": step,
                   "random_init": random_init, "metrics": metrics or {"accuracy": acc},
                   "split_note": split_note}, f)


def test_report_orders_rows_and_writes_files(tmp_path):
    _metrics(tmp_path / "e2" / "nsmc", "step-000200", 200, 0.71)
    _metrics(tmp_path / "e1" / "nsmc", "step-000100", 100, 0.65)
    _metrics(tmp_path / "base" / "nsmc", "random-init", None, 0.55, random_init=True)
    out = tmp_path / "report"
    summary = build_report([str(tmp_path / "e2"), str(tmp_path / "e1"), str(tmp_path / "base")],
                           str(out))
    assert summary["rows"][:3] == ["step-000100", "step-000200", "random-init"]
    assert summary["columns"] == ["nsmc/accuracy"]
    md = (out / "results.md").read_text()
    assert "| step-000200 | **0.7100** |" in md
    assert "| random-init | 0.5500 |" in md
    # published reference rows come last, marked external, never bold, with their source
    assert summary["rows"][3:] == ["KoELECTRA-Small-v3 (external)",
                                   "KoELECTRA-Base-v3 (external)", "KoBERT (external)"]
    assert "| KoELECTRA-Small-v3 (external) | 0.8936 |" in md
    assert "github.com/monologg/KoELECTRA" in md
    assert (out / "nsmc_accuracy.png").stat().st_size > 1000
    page = (out / "results.html").read_text()
    assert "<table>" in page and "class='external'" in page


def test_report_notes_undefined_values_and_reference_columns(tmp_path):
    note = "train/dev/test derived from klue-sts-v1.1_dev.json (519 rows) by a fixed permutation"
    _metrics(tmp_path / "a" / "klue-sts", "step-000100", 100, None, task="klue-sts",
             metrics={"pearson": 0.31, "spearman": None, "f1_at_threshold": 0.5},
             split_note=note)
    _metrics(tmp_path / "b" / "klue-sts", "random-init", None, None, task="klue-sts",
             random_init=True, metrics={"pearson": 0.12, "spearman": 0.1,
                                        "f1_at_threshold": 0.4}, split_note=note)
    summary = build_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    # no reference model reports klue-sts here: no external rows, no extra columns
    assert summary["rows"] == ["step-000100", "random-init"]
    assert summary["columns"] == ["klue-sts/f1_at_threshold", "klue-sts/pearson",
                                  "klue-sts/spearman"]
    md = summary["markdown"]
    assert "| step-000100 | **0.5000** | **0.3100** | n/a |" in md
    assert "n/a: undefined" in md and f"- klue-sts: {note}" in md
    assert (tmp_path / "out" / "klue-sts_spearman.png").exists()
    assert summary["split_notes"] == {"klue-sts": note}
    empty = build_report([str(tmp_path / "a")], str(tmp_path / "out2"), references=[])
    assert empty["rows"] == ["step-000100"]


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


def test_report_component_writes_markdown_and_self_contained_html(tmp_path):
    from types import SimpleNamespace

    from components.report import report

    _metrics(tmp_path / "e1" / "nsmc", "step-000100", 100, 0.65)
    _metrics(tmp_path / "base" / "nsmc", "random-init", None, 0.55, random_init=True)
    art = lambda name: SimpleNamespace(path=str(tmp_path / name))  # noqa: E731
    table, page = art("table.md"), art("page.html")
    report([art("e1")], art("base"), art("report"), table, page)
    assert "| step-000100 | **0.6500** |" in (tmp_path / "table.md").read_text()
    html_page = (tmp_path / "page.html").read_text()
    assert 'src="data:image/png;base64,' in html_page and 'src="nsmc_accuracy.png"' not in html_page
    assert (tmp_path / "report" / "results.html").exists()
