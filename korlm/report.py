"""Collect per-(checkpoint, task) ``metrics.json`` files into a table and plots.

Rows are checkpoints by pretraining step, then the random-init baseline; columns are
``task/metric``. Writes ``results.md``, ``results.html``, ``results.json`` and one PNG
per metric (metric against step, the baseline as a dashed line).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError

BASELINE = "random-init"


def find_metrics(result_dirs: list[str]) -> list[dict[str, Any]]:
    """Every metrics.json in the given directories (searched two levels deep)."""
    records = []
    for d in result_dirs:
        if not storage.exists(d):
            raise KorlmError(f"results directory {d} does not exist")
        paths = [p for pattern in ("metrics.json", "*/metrics.json", "*/*/metrics.json")
                 for p in storage.glob(storage.join(d, pattern))]
        for p in sorted(set(paths)):
            try:
                rec = json.loads(storage.read_text(p))
            except json.JSONDecodeError as exc:
                raise KorlmError(f"{p} is not valid JSON ({exc.msg})") from None
            if not {"task", "checkpoint", "metrics"} <= rec.keys():
                raise KorlmError(f"{p} lacks task/checkpoint/metrics keys")
            records.append(rec)
    if not records:
        raise KorlmError(f"no metrics.json found under {', '.join(result_dirs)}")
    return records


def _row_key(rec: dict[str, Any]) -> tuple[int, int]:
    # checkpoints by step first, the baseline last
    if rec.get("random_init") or rec["checkpoint"] == BASELINE:
        return (1, 0)
    return (0, int(rec.get("step") or 0))


def build_table(records: list[dict[str, Any]]) -> tuple[list[str], list[str], dict]:
    rows: dict[str, dict[str, float]] = {}
    order: dict[str, tuple[int, int]] = {}
    columns: list[str] = []
    for rec in records:
        name = BASELINE if rec.get("random_init") else rec["checkpoint"]
        order[name] = _row_key(rec)
        for metric, value in sorted(rec["metrics"].items()):
            col = f"{rec['task']}/{metric}"
            if col not in columns:
                columns.append(col)
            rows.setdefault(name, {})[col] = float(value)
    row_names = sorted(rows, key=lambda n: order[n])
    return row_names, sorted(columns), rows


def render_markdown(row_names, columns, rows) -> str:
    lines = ["| checkpoint | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    best = {c: max((rows[r][c] for r in row_names if c in rows[r]), default=None) for c in columns}
    for r in row_names:
        cells = []
        for c in columns:
            v = rows[r].get(c)
            cell = "—" if v is None else f"{v:.4f}"
            if v is not None and v == best[c] and len(row_names) > 1:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_html(row_names, columns, rows, plots: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in row_names:
        cells = "".join(
            f"<td>{'—' if rows[r].get(c) is None else f'{rows[r][c]:.4f}'}</td>" for c in columns)
        body.append(f"<tr><th>{html.escape(r)}</th>{cells}</tr>")
    imgs = "".join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
    return ("<!doctype html><meta charset='utf-8'><title>korlm results</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}</style><h1>korlm results</h1>"
            f"<table><tr><th>checkpoint</th>{head}</tr>{''.join(body)}</table>{imgs}")


def plot_metrics(records, columns, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for col in columns:
        task, metric = col.split("/", 1)
        pts = sorted((int(r["step"]), r["metrics"][metric]) for r in records
                     if r["task"] == task and metric in r["metrics"] and not r.get("random_init")
                     and r.get("step") is not None)
        base = [r["metrics"][metric] for r in records
                if r["task"] == task and r.get("random_init") and metric in r["metrics"]]
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="pretrained")
        if base:
            ax.axhline(base[0], linestyle="--", color="grey", label=BASELINE)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(metric)
        ax.set_title(col)
        ax.legend(loc="best")
        fig.tight_layout()
        name = col.replace("/", "_") + ".png"
        fig.savefig(os.path.join(out_dir, name))
        plt.close(fig)
        names.append(name)
    return names


def build_report(result_dirs: list[str], output_dir: str) -> dict[str, Any]:
    records = find_metrics(result_dirs)
    row_names, columns, rows = build_table(records)
    markdown = render_markdown(row_names, columns, rows)
    with storage.atomic_output_dir(output_dir) as staging:
        plots = plot_metrics(records, columns, staging)
        with open(os.path.join(staging, "results.md"), "w", encoding="utf-8") as f:
            f.write("# korlm results\n\n" + markdown + "\n"
                    + "".join(f"![{p}]({p})\n" for p in plots))
        with open(os.path.join(staging, "results.html"), "w", encoding="utf-8") as f:
            f.write(render_html(row_names, columns, rows, plots))
        with open(os.path.join(staging, "results.json"), "w", encoding="utf-8") as f:
            json.dump({"rows": row_names, "columns": columns, "values": rows,
                       "records": records}, f, indent=2, ensure_ascii=False)
    return {"markdown": markdown, "rows": row_names, "columns": columns, "values": rows,
            "plots": plots}
