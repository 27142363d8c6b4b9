"""Ablation comparison: one table and one plot per task over vocab variants x model sizes.

Each arm of an ablation (a vocab variant at a model size) ends with its own report; the
arms are folded into one comparison, one ``merge_comparison`` call per arm, each adding
the arm's rows (``<arm> @ <checkpoint>``) and its vocab statistics. The output holds
``comparison.json``, ``results.md``, ``results.html`` and ``<task>_<metric>.png`` (metric
against pretraining step, one line per arm, each arm's random-init score dashed).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.evaluation.report import save_plot

COMPARISON_FILE = "comparison.json"
VOCAB_KEYS = ("algorithm", "pre_tokenizer", "vocab_size", "unk_rate", "tokens_per_eojeol", "coverage")


def _read_json(path: str, what: str) -> dict[str, Any]:
    if not storage.exists(path):
        raise KorlmError(f"{what} not found: {path}")
    return json.loads(storage.read_text(path))


def arm_rows(label: str, report_dir: str) -> list[dict[str, Any]]:
    """The arm's own rows of a report (external reference rows and the constant-predictor
    row are left out)."""
    results = _read_json(storage.join(report_dir, "results.json"), "report results.json")
    external = set(results.get("external_rows", [])) | {results.get("constant_row")}
    steps = {}
    for rec in results.get("records", []):
        steps[rec["checkpoint"]] = None if rec.get("random_init") else rec.get("step")
    return [{"arm": label, "checkpoint": row, "step": steps.get(row), "random_init": row == "random-init",
             "metrics": results["values"].get(row, {})}
            for row in results["rows"] if row not in external]


def vocab_row(label: str, tokenizer_dir: str) -> dict[str, Any]:
    stats = _read_json(storage.join(tokenizer_dir, "vocab_stats.json"), "vocab_stats.json")
    return {"arm": label, **{k: stats.get(k) for k in VOCAB_KEYS}}


def merge_comparison(previous_dir: str | None, report_dir: str, tokenizer_dir: str, label: str,
                     output_dir: str) -> dict[str, Any]:
    """``previous_dir``'s comparison (or none) plus one arm -> a new comparison in ``output_dir``."""
    comparison = ({"rows": [], "vocab": []} if previous_dir is None
                  else _read_json(storage.join(previous_dir, COMPARISON_FILE), "previous comparison"))
    if any(r["arm"] == label for r in comparison["rows"]):
        raise KorlmError(f"ablation arm {label!r} appears twice; give every arm its own name")
    comparison["rows"] += arm_rows(label, report_dir)
    comparison["vocab"] += [vocab_row(label, tokenizer_dir)]
    columns = sorted({c for r in comparison["rows"] for c in r["metrics"]})
    comparison["columns"] = columns
    markdown = render_markdown(comparison)
    with storage.atomic_output_dir(output_dir, "ablation",
                                   inputs=[previous_dir, report_dir, tokenizer_dir],
                                   overwrite=True) as staging:
        plots = plot_comparison(comparison, staging)
        with open(os.path.join(staging, COMPARISON_FILE), "w", encoding="utf-8") as f:
            json.dump(comparison, f, indent=2, ensure_ascii=False)
        with open(os.path.join(staging, "results.md"), "w", encoding="utf-8") as f:
            f.write("# korlm ablation\n\n" + markdown + "\n" + "".join(f"![{p}]({p})\n" for p in plots))
        with open(os.path.join(staging, "results.html"), "w", encoding="utf-8") as f:
            f.write(render_html(comparison, plots))
    return {**comparison, "markdown": markdown}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def render_markdown(comparison: dict[str, Any]) -> str:
    columns = comparison["columns"]
    lines = ["| arm @ checkpoint | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    best = {c: max((r["metrics"][c] for r in comparison["rows"] if r["metrics"].get(c) is not None),
                   default=None) for c in columns}
    for row in comparison["rows"]:
        cells = []
        for c in columns:
            v = row["metrics"].get(c)
            cells.append(f"**{_fmt(v)}**" if v is not None and v == best[c] and not row["random_init"] else _fmt(v))
        lines.append(f"| {row['arm']} @ {row['checkpoint']} | " + " | ".join(cells) + " |")
    lines += ["", "Vocabularies (held-out sentences):", "",
              "| arm | " + " | ".join(VOCAB_KEYS) + " |", "|---" * (len(VOCAB_KEYS) + 1) + "|"]
    lines += [f"| {v['arm']} | " + " | ".join(_fmt(v.get(k)) for k in VOCAB_KEYS) + " |"
              for v in comparison["vocab"]]
    return "\n".join(lines) + "\n"


def render_html(comparison: dict[str, Any], plots: list[str]) -> str:
    columns = comparison["columns"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(r['arm'])} @ {html.escape(r['checkpoint'])}</td>"
                   + "".join(f"<td>{_fmt(r['metrics'].get(c))}</td>" for c in columns) + "</tr>"
                   for r in comparison["rows"])
    vhead = "".join(f"<th>{k}</th>" for k in VOCAB_KEYS)
    vbody = "".join(f"<tr><td>{html.escape(v['arm'])}</td>"
                    + "".join(f"<td>{_fmt(v.get(k))}</td>" for k in VOCAB_KEYS) + "</tr>"
                    for v in comparison["vocab"])
    imgs = "".join(f"<img src='{p}'>" for p in plots)
    return ("<!doctype html><meta charset='utf-8'><title>korlm ablation</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
            f"<h1>korlm ablation</h1><table><tr><th>arm @ checkpoint</th>{head}</tr>{body}</table>"
            f"<h2>Vocabularies</h2><table><tr><th>arm</th>{vhead}</tr>{vbody}</table>{imgs}")


def plot_comparison(comparison: dict[str, Any], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    arms = list(dict.fromkeys(r["arm"] for r in comparison["rows"]))
    for col in comparison["columns"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=100)
        for i, arm in enumerate(arms):
            color = f"C{i % 10}"
            pts = sorted((r["step"], r["metrics"][col]) for r in comparison["rows"]
                         if r["arm"] == arm and not r["random_init"] and r["step"] is not None
                         and r["metrics"].get(col) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=arm)
            base = [r["metrics"][col] for r in comparison["rows"]
                    if r["arm"] == arm and r["random_init"] and r["metrics"].get(col) is not None]
            if base:
                ax.axhline(base[0], linestyle="--", color=color, alpha=0.6)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(col.split("/", 1)[-1])
        ax.set_title(f"{col} (dashed: random init)")
        if arms:
            ax.legend(loc="best", fontsize=8)
        names.append(save_plot(fig, col, out_dir))
    return names
