"""Collect per-(checkpoint, task) ``metrics.json`` files into a table and plots.

Rows are checkpoints by pretraining step, then the random-init baseline, then published
reference models marked "(external)"; columns are ``task/metric``. Writes ``results.md``,
``results.html``, ``results.json`` and one PNG per metric (metric against step, the
baseline as a dashed line). Split notes (a task scored on derived splits, on the official
dev set...) and the sources of the external numbers are printed under the table.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError

BASELINE = "random-init"
EXTERNAL = " (external)"

# Published fine-tuning scores of reference models, as printed by their source (percent);
# only numbers copied from the cited table, mapped to korlm's task/metric columns. They
# were fine-tuned on the full official train sets: compare with a korlm row only when the
# task's split note says nothing. KLUE-paper numbers are not here: they could not be
# checked against the paper from this machine.
_KOELECTRA = ("KoELECTRA finetune/README_EN.md, Result tables (github.com/monologg/KoELECTRA"
              " @ 61e2420e73f26bf8116496ad5a79c0108aa39d9f); KorNLI: trained on KorNLI "
              "MNLI+SNLI; KorQuAD: dev set")
REFERENCE_RESULTS: list[dict[str, Any]] = [
    {"model": "KoELECTRA-Small-v3", "source": _KOELECTRA, "scale": 100,
     "metrics": {"nsmc/accuracy": 89.36, "kornli/accuracy": 78.60, "korsts/spearman": 80.79,
                 "question-pair/accuracy": 94.85, "korquad/exact_match": 82.11,
                 "korquad/f1": 91.13}},
    {"model": "KoELECTRA-Base-v3", "source": _KOELECTRA, "scale": 100,
     "metrics": {"nsmc/accuracy": 90.63, "kornli/accuracy": 82.24, "korsts/spearman": 85.53,
                 "question-pair/accuracy": 95.25, "korquad/exact_match": 84.83,
                 "korquad/f1": 93.45}},
    {"model": "KoBERT", "source": _KOELECTRA, "scale": 100,
     "metrics": {"nsmc/accuracy": 89.59, "kornli/accuracy": 79.62, "korsts/spearman": 81.59,
                 "question-pair/accuracy": 94.85, "korquad/exact_match": 51.75,
                 "korquad/f1": 79.15}},
]


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
    rows: dict[str, dict[str, float | None]] = {}
    order: dict[str, tuple[int, int]] = {}
    columns: list[str] = []
    for rec in records:
        name = BASELINE if rec.get("random_init") else rec["checkpoint"]
        order[name] = _row_key(rec)
        for metric, value in sorted(rec["metrics"].items()):
            col = f"{rec['task']}/{metric}"
            if col not in columns:
                columns.append(col)
            rows.setdefault(name, {})[col] = None if value is None else float(value)
    row_names = sorted(rows, key=lambda n: order[n])
    return row_names, sorted(columns), rows


def add_references(row_names: list[str], columns: list[str], rows: dict,
                   references: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Append external rows for the reference models that report any of ``columns``
    (only those columns: the table stays the run's tasks); returns the new row names and
    the distinct sources, in order."""
    names, sources = list(row_names), []
    for ref in references:
        values = {c: v / ref.get("scale", 1) for c, v in ref["metrics"].items() if c in columns}
        if not values:
            continue
        name = ref["model"] + EXTERNAL
        rows[name] = values
        names.append(name)
        if ref["source"] not in sources:
            sources.append(ref["source"])
    return names, sources


def split_notes(records: list[dict[str, Any]]) -> dict[str, str]:
    """task -> its split note (how its splits were made), for tasks that have one."""
    notes: dict[str, str] = {}
    for rec in records:
        if rec.get("split_note"):
            notes.setdefault(rec["task"], rec["split_note"])
    return dict(sorted(notes.items()))


def _cell(value: float | None, present: bool) -> str:
    if not present:
        return "—"
    return "n/a" if value is None else f"{value:.4f}"


def _best(row_names, columns, rows) -> dict[str, float | None]:
    own = [r for r in row_names if not r.endswith(EXTERNAL)]
    return {c: max((rows[r][c] for r in own if rows[r].get(c) is not None), default=None)
            for c in columns}


def render_markdown(row_names, columns, rows, notes: dict[str, str] | None = None,
                    sources: list[str] | None = None) -> str:
    lines = ["| checkpoint | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    best = _best(row_names, columns, rows)
    own = [r for r in row_names if not r.endswith(EXTERNAL)]
    for r in row_names:
        cells = []
        for c in columns:
            v = rows[r].get(c)
            cell = _cell(v, c in rows[r])
            if (v is not None and v == best[c] and len(own) > 1
                    and not r.endswith(EXTERNAL)):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if any(v is None for r in row_names for v in rows[r].values()):
        text += "\nn/a: undefined (a correlation of constant predictions).\n"
    if notes:
        text += "\nSplits:\n" + "".join(f"- {t}: {n}\n" for t, n in notes.items())
    if sources:
        text += ("\nRows marked (external) are published scores, not korlm runs, fine-tuned "
                 "on the full official training sets. Source:\n"
                 + "".join(f"- {s}\n" for s in sources))
    return text


def render_html(row_names, columns, rows, plots: list[str], notes: dict[str, str] | None = None,
                sources: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    best = _best(row_names, columns, rows)
    body = []
    for r in row_names:
        external = r.endswith(EXTERNAL)
        cells = "".join(
            "<td{}>{}</td>".format(
                " class='best'" if not external and rows[r].get(c) is not None
                and rows[r][c] == best[c] else "",
                _cell(rows[r].get(c), c in rows[r])) for c in columns)
        style = " class='external'" if external else ""
        body.append(f"<tr{style}><th>{html.escape(r)}</th>{cells}</tr>")
    imgs = "".join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
    extra = ""
    if notes:
        extra += "<h2>Splits</h2><ul>" + "".join(
            f"<li><b>{html.escape(t)}</b>: {html.escape(n)}</li>" for t, n in notes.items()
        ) + "</ul>"
    if sources:
        extra += ("<p>Rows in grey italics marked (external) are published scores, not korlm "
                  "runs, fine-tuned on the full official training sets. Source:</p><ul>"
                  + "".join(f"<li>{html.escape(s)}</li>" for s in sources) + "</ul>")
    return ("<!doctype html><meta charset='utf-8'><title>korlm results</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}.best{font-weight:bold}.external{color:#777;font-style:italic}"
            "</style><h1>korlm results</h1>"
            f"<table><tr><th>checkpoint</th>{head}</tr>{''.join(body)}</table>{extra}{imgs}")


def save_plot(fig, column: str, out_dir: str) -> str:
    """Save one metric's figure as ``<task>_<metric>.png`` in ``out_dir``; returns the name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    name = column.replace("/", "_") + ".png"
    fig.savefig(os.path.join(out_dir, name))
    plt.close(fig)
    return name


def plot_metrics(records, columns, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for col in columns:
        task, metric = col.split("/", 1)
        pts = sorted((int(r["step"]), r["metrics"][metric]) for r in records
                     if r["task"] == task and r["metrics"].get(metric) is not None
                     and not r.get("random_init") and r.get("step") is not None)
        base = [r["metrics"][metric] for r in records
                if r["task"] == task and r.get("random_init")
                and r["metrics"].get(metric) is not None]
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="pretrained")
        if base:
            ax.axhline(base[0], linestyle="--", color="grey", label=BASELINE)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(metric)
        ax.set_title(col)
        if pts or base:
            ax.legend(loc="best")
        names.append(save_plot(fig, col, out_dir))
    return names


def build_report(result_dirs: list[str], output_dir: str,
                 references: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``references``: external rows (default :data:`REFERENCE_RESULTS`; ``[]`` for none)."""
    records = find_metrics(result_dirs)
    row_names, columns, rows = build_table(records)
    own_rows = list(row_names)
    row_names, sources = add_references(
        row_names, columns, rows, REFERENCE_RESULTS if references is None else references)
    notes = split_notes(records)
    markdown = render_markdown(row_names, columns, rows, notes, sources)
    with storage.atomic_output_dir(output_dir) as staging:
        plots = plot_metrics(records, columns, staging)
        with open(os.path.join(staging, "results.md"), "w", encoding="utf-8") as f:
            f.write("# korlm results\n\n" + markdown + "\n"
                    + "".join(f"![{p}]({p})\n" for p in plots))
        html_text = render_html(row_names, columns, rows, plots, notes, sources)
        with open(os.path.join(staging, "results.html"), "w", encoding="utf-8") as f:
            f.write(html_text)
        with open(os.path.join(staging, "results.json"), "w", encoding="utf-8") as f:
            json.dump({"rows": row_names, "columns": columns, "values": rows,
                       "external_rows": [r for r in row_names if r not in own_rows],
                       "split_notes": notes, "sources": sources,
                       "records": records}, f, indent=2, ensure_ascii=False)
    return {"markdown": markdown, "html": html_text, "rows": row_names, "columns": columns,
            "values": rows, "plots": plots, "split_notes": notes}
