"""Collect per-(checkpoint, task) ``metrics.json`` files into a table and plots.

Rows are checkpoints by pretraining step, then the random-init baseline, then published
reference models marked "(external)"; columns are ``task/metric``. Writes ``results.md``,
``results.html``, ``results.json`` and one PNG per metric (metric against step, the
baseline as a dashed line). Scores carry their test-set standard error (``± SE``, from
the ``standard_errors`` evaluate records: binomial for accuracy, bootstrap over test
items for the rest) and a "constant predictor" row gives what predicting the majority
class (classification) or the mean train score (regression) scores on the same test
set; a cell within one standard error of it is flagged ``≈`` (indistinguishable from
the constant predictor). Plots draw the standard errors as error bars on the checkpoint
points and a ± 1 SE band around the random-init line, the constant predictor as a
dotted line. Older metrics.json files without these fields render without them. Split notes (a task scored on derived splits, on the official
dev set...) and the sources of the external numbers are printed under the table.

Two small sections follow (:func:`extra_sections`): the fine-tuning head each task's
rows used (``pooling``, dropout: ``korlm.evaluation.heads.resolve_pooling``) and, when
the checkpoints carry them (``korlm.pretrain.heldout``), their pretraining figures:
training and held-out MLM loss by step against the unigram-entropy floor, as a table and
``pretraining_loss.png``.

The ``bag-of-words`` row (``korlm.evaluation.baseline``, computed beside random init) is
drawn after random init and as a dash-dotted line in the plots. Records that carry their
per-item test predictions (``predictions``) give a second table: each row's difference
from random init on the same test items, ± its paired standard error
(:func:`korlm.evaluation.metrics.paired_difference`; seeds averaged per item).
``style="paper"`` prints scores as Korean papers do (percent, two decimals) in the
column order of the KoELECTRA and KLUE tables (:data:`PAPER_ORDER`).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError

BASELINE = "random-init"
STYLES = ("default", "paper")
CONSTANT = "constant predictor"
FLAG = "≈"
FLAG_NOTE = (f"{FLAG}: within one standard error of the constant predictor (the majority "
             "class for classification, the mean train score for regression) on the same "
             "test set: this score does not show the model learned anything.")
EXTERNAL = " (external)"

# Published fine-tuning scores of reference models, as printed by their source (percent);
# only numbers copied from the cited table, mapped to korlm's task/metric columns. They
# were fine-tuned on the full official train sets: compare with a korlm row only when the
# task's split note says nothing. The KLUE rows are copied from the KLUE repository
# README's "Baseline Scores" table (its later revision; an earlier one printed slightly
# different numbers); the KLUE paper itself could not be read from this machine.
_KOELECTRA = ("KoELECTRA finetune/README_EN.md, Result tables (github.com/monologg/KoELECTRA"
              " @ 61e2420e73f26bf8116496ad5a79c0108aa39d9f); KorNLI: trained on KorNLI "
              "MNLI+SNLI; KorQuAD: dev set")
_KLUE = ("KLUE README.md, Baseline Scores (github.com/KLUE-benchmark/KLUE"
         " @ 3efd98708a40ff49251fddde35453f8fbb11f536); the README does not say which split;"
         " KLUE test labels are not public and the KLUE-baseline README (@ 443c38b) points"
         " to dev-set comparisons with these baselines; STS F1: binary label at 3.0;"
         " NER: entity-level and character-level macro F1")
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
    {"model": "KLUE-BERT-base", "source": _KLUE, "scale": 100,
     "metrics": {"klue-nli/accuracy": 81.63, "klue-sts/pearson": 90.85,
                 "klue-sts/f1_at_threshold": 82.84, "klue-ner/entity_f1": 83.97,
                 "klue-ner/char_f1": 91.39}},
    {"model": "KLUE-RoBERTa-small", "source": _KLUE, "scale": 100,
     "metrics": {"klue-nli/accuracy": 79.33, "klue-sts/pearson": 91.54,
                 "klue-sts/f1_at_threshold": 85.16, "klue-ner/entity_f1": 83.65,
                 "klue-ner/char_f1": 91.14}},
    {"model": "KLUE-RoBERTa-base", "source": _KLUE, "scale": 100,
     "metrics": {"klue-nli/accuracy": 84.83, "klue-sts/pearson": 92.50,
                 "klue-sts/f1_at_threshold": 85.40, "klue-ner/entity_f1": 84.60,
                 "klue-ner/char_f1": 91.44}},
    {"model": "KLUE-RoBERTa-large", "source": _KLUE, "scale": 100,
     "metrics": {"klue-nli/accuracy": 89.17, "klue-sts/pearson": 93.35,
                 "klue-sts/f1_at_threshold": 86.63, "klue-ner/entity_f1": 85.00,
                 "klue-ner/char_f1": 91.86}},
    # the same KLUE table's other baselines (only their NER columns are copied here)
    *({"model": model, "source": _KLUE, "scale": 100,
       "metrics": {"klue-ner/entity_f1": entity, "klue-ner/char_f1": char}}
      for model, entity, char in (("mBERT-base", 76.50, 89.23), ("XLM-R-base", 80.37, 92.12),
                                  ("XLM-R-large", 82.27, 93.22),
                                  ("KR-BERT-base", 74.58, 90.13),
                                  ("koELECTRA-base", 86.11, 92.56))),
]


def find_metrics(result_dirs: list[str]) -> list[dict[str, Any]]:
    """Every metrics.json in the given directories (searched three levels deep:
    ``<checkpoint>/<task>/seed-<s>/metrics.json``)."""
    records = []
    for d in result_dirs:
        if not storage.exists(d):
            raise KorlmError(f"results directory {d} does not exist")
        paths = [p for pattern in ("metrics.json", "*/metrics.json", "*/*/metrics.json",
                                   "*/*/*/metrics.json")
                 for p in storage.glob(storage.join(d, pattern))]
        for p in sorted(set(paths)):
            try:
                rec = json.loads(storage.read_text(p))
            except json.JSONDecodeError as exc:
                raise KorlmError(f"{p} is not valid JSON ({exc.msg})") from None
            if not {"task", "checkpoint", "metrics"} <= rec.keys():
                raise KorlmError(f"{p} lacks task/checkpoint/metrics keys")
            records.append({**rec, "path": p})
    if not records:
        raise KorlmError(f"no metrics.json found under {', '.join(result_dirs)}")
    return records


def _row_key(rec: dict[str, Any]) -> tuple[int, int]:
    # checkpoints by step first, the baseline last, then classical baselines (bag-of-words)
    if rec.get("random_init") or rec["checkpoint"] == BASELINE:
        return (1, 0)
    if rec.get("baseline"):
        return (2, 0)
    return (0, int(rec.get("step") or 0))


def _row_name(rec: dict[str, Any]) -> str:
    if rec.get("random_init"):
        return BASELINE
    return rec.get("baseline") or rec["checkpoint"]


def _seed(rec: dict[str, Any]) -> Any:
    return (rec.get("fine_tune") or {}).get("seed")


def build_table(records: list[dict[str, Any]]) -> tuple[list[str], list[str], dict, dict]:
    """Rows, columns, ``values[row][column]`` and ``spread[row][column] = (sd, seeds)``.

    Results of one checkpoint and task fine-tuned with several seeds are averaged: the
    cell is the mean, ``spread`` the sample standard deviation and the number of seeds
    (a cell some seeds leave undefined averages the defined ones). The same checkpoint,
    task and seed twice is an error naming both files, never a silent overwrite."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: dict[str, tuple[int, int]] = {}
    for rec in records:
        name = _row_name(rec)
        order[name] = _row_key(rec)
        group = groups.setdefault((name, rec["task"]), [])
        for other in group:
            if _seed(other) == _seed(rec):
                raise KorlmError(
                    f"two results for {name} on {rec['task']} with fine-tuning seed "
                    f"{_seed(rec)}: {other.get('path', '?')} and {rec.get('path', '?')}; "
                    "pass one of them (or fine-tune with another seed)")
        group.append(rec)
    rows: dict[str, dict[str, float | None]] = {}
    spread: dict[str, dict[str, tuple[float, int]]] = {}
    columns: set[str] = set()
    for (name, task), group in groups.items():
        for metric in sorted({m for rec in group for m in rec["metrics"]}):
            col = f"{task}/{metric}"
            columns.add(col)
            values = [float(rec["metrics"][metric]) for rec in group
                      if rec["metrics"].get(metric) is not None]
            rows.setdefault(name, {})[col] = float(np.mean(values)) if values else None
            if len(values) > 1:
                spread.setdefault(name, {})[col] = (float(np.std(values, ddof=1)), len(values))
    row_names = sorted(rows, key=lambda n: order[n])
    return row_names, sorted(columns), rows, spread


def noise_table(records: list[dict[str, Any]], rows: dict) -> dict[str, Any]:
    """Standard errors and the constant-predictor baseline of each cell.

    Returns ``{"se": {row: {col: se}}, "baseline": {col: value | None}, "flags": {row:
    {col: bool}}, "kinds": {task: str}}``. A cell's SE is the mean of its records'
    recorded SEs (seeds share one test set, so averaging seeds does not shrink the
    test-set noise); records without ``standard_errors`` (older files) give none. The
    baseline of a column comes from the first record of its task that has one; ``None``
    where the constant prediction's score is undefined (a correlation). A cell is flagged
    when ``|value - baseline| <= SE``."""
    se_lists: dict[str, dict[str, list[float]]] = {}
    baseline: dict[str, float | None] = {}
    kinds: dict[str, str] = {}
    for rec in records:
        name = _row_name(rec)
        for metric, se in (rec.get("standard_errors") or {}).items():
            if se is not None:
                se_lists.setdefault(name, {}).setdefault(f"{rec['task']}/{metric}", []).append(
                    float(se))
        const = rec.get("constant_baseline")
        if const and rec["task"] not in kinds:
            kinds[rec["task"]] = const.get("kind", "constant prediction")
            for metric, value in (const.get("metrics") or {}).items():
                baseline[f"{rec['task']}/{metric}"] = None if value is None else float(value)
    se = {r: {c: sum(v) / len(v) for c, v in cols.items()} for r, cols in se_lists.items()}
    flags: dict[str, dict[str, bool]] = {}
    for r, cols in se.items():
        for c, err in cols.items():
            value, base = rows.get(r, {}).get(c), baseline.get(c)
            if value is not None and base is not None and abs(value - base) <= err:
                flags.setdefault(r, {})[c] = True
    return {"se": se, "baseline": baseline, "flags": flags, "kinds": dict(sorted(kinds.items()))}


def add_constant_row(row_names: list[str], rows: dict, noise: dict[str, Any]) -> list[str]:
    """Insert the constant-predictor row after the run's rows when any task has one."""
    if not noise["baseline"]:
        return row_names
    rows[CONSTANT] = dict(noise["baseline"])
    return [*row_names, CONSTANT]


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


def _fmt(value: float, style: str = "default", signed: bool = False) -> str:
    """A score as the style prints it: a fraction with four decimals, or (``paper``)
    percent with two decimals, as the KoELECTRA and KLUE tables print them."""
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.2f}" if style == "paper" else f"{value:{sign}.4f}"


def _cell(value: float | None, present: bool, spread: tuple[float, int] | None = None,
          se: float | None = None, flagged: bool = False, style: str = "default") -> str:
    if not present:
        return "—"
    if value is None:
        return "n/a"
    text = _fmt(value, style)
    if spread is not None:  # several seeds: mean ± seed SD (seeds), then the test-set SE
        text += f" ± {_fmt(spread[0], style)} ({spread[1]})"
        if se is not None:
            text += f", SE {_fmt(se, style)}"
    elif se is not None:
        text += f" ± {_fmt(se, style)}"
    return f"{text} {FLAG}" if flagged else text


def _noise_cell(r: str, c: str, rows: dict, spread: dict | None, noise: dict | None,
                style: str = "default") -> str:
    noise = noise or {}
    return _cell(rows[r].get(c), c in rows[r], (spread or {}).get(r, {}).get(c),
                 noise.get("se", {}).get(r, {}).get(c),
                 noise.get("flags", {}).get(r, {}).get(c, False), style)


def _noise_notes(noise: dict | None) -> list[str]:
    if not noise:
        return []
    notes = []
    if noise.get("se"):
        notes.append("± SE: the standard error of the score from the test-set size "
                     "(binomial for accuracy, per-question for QA, a bootstrap over test "
                     "items for the rest); differences smaller than about two SEs are noise.")
    if noise.get("baseline"):
        notes.append("The constant predictor row scores one prediction for every test "
                     "item: " + "; ".join(f"{t}: {k}" for t, k in noise["kinds"].items())
                     + (" (n/a: undefined for a constant, e.g. a correlation)."
                        if None in noise["baseline"].values() else "."))
    if noise.get("flags"):
        notes.append(FLAG_NOTE)
    return notes


def _seeds_note(spread: dict | None) -> str:
    if not spread:
        return ""
    return ("mean ± sample standard deviation (number of fine-tuning seeds) where a "
            "checkpoint was fine-tuned with several seeds.")


def _best(row_names, columns, rows) -> dict[str, float | None]:
    own = [r for r in row_names if not r.endswith(EXTERNAL) and r != CONSTANT]
    return {c: max((rows[r][c] for r in own if rows[r].get(c) is not None), default=None)
            for c in columns}


def render_markdown(row_names, columns, rows, notes: dict[str, str] | None = None,
                    sources: list[str] | None = None, spread: dict | None = None,
                    noise: dict | None = None, style: str = "default",
                    paired: dict | None = None, extra_notes: list[str] | None = None) -> str:
    lines = ["| checkpoint | " + " | ".join(column_label(c, style) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    best = _best(row_names, columns, rows)
    own = [r for r in row_names if not r.endswith(EXTERNAL) and r != CONSTANT]
    for r in row_names:
        cells = []
        for c in columns:
            v = rows[r].get(c)
            cell = _noise_cell(r, c, rows, spread, noise, style)
            if (v is not None and v == best[c] and len(own) > 1
                    and not r.endswith(EXTERNAL) and r != CONSTANT):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if any(v is None for r in row_names for v in rows[r].values()):
        text += "\nn/a: undefined (a correlation of constant predictions).\n"
    if _seeds_note(spread):
        text += "\n" + _seeds_note(spread).capitalize() + "\n"
    text += "".join(f"\n{n}\n" for n in _noise_notes(noise))
    if style == "paper":
        text += f"\n{PAPER_NOTE}\n"
    text += "".join(f"\n{n}\n" for n in extra_notes or [])
    if paired and paired.get("rows"):
        text += "\n" + render_paired_markdown(paired, columns, style)
    if notes:
        text += "\nSplits:\n" + "".join(f"- {t}: {n}\n" for t, n in notes.items())
    if sources:
        text += ("\nRows marked (external) are published scores, not korlm runs, fine-tuned "
                 "on the full official training sets. Source:\n"
                 + "".join(f"- {s}\n" for s in sources))
    return text


def render_html(row_names, columns, rows, plots: list[str], notes: dict[str, str] | None = None,
                sources: list[str] | None = None, spread: dict | None = None,
                noise: dict | None = None, style: str = "default",
                paired: dict | None = None, extra_notes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(column_label(c, style))}</th>" for c in columns)
    best = _best(row_names, columns, rows)
    body = []
    for r in row_names:
        external = r.endswith(EXTERNAL)
        cells = "".join(
            "<td{}>{}</td>".format(
                " class='best'" if not external and r != CONSTANT
                and rows[r].get(c) is not None and rows[r][c] == best[c] else "",
                html.escape(_noise_cell(r, c, rows, spread, noise, style)))
            for c in columns)
        style = " class='external'" if external else ""
        body.append(f"<tr{style}><th>{html.escape(r)}</th>{cells}</tr>")
    imgs = "".join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
    extra = f"<p>{html.escape(_seeds_note(spread).capitalize())}</p>" if spread else ""
    extra += "".join(f"<p>{html.escape(n)}</p>" for n in _noise_notes(noise))
    if style == "paper":
        extra += f"<p>{html.escape(PAPER_NOTE)}</p>"
    extra += "".join(f"<p>{html.escape(n)}</p>" for n in extra_notes or [])
    if paired and paired.get("rows"):
        extra += render_paired_html(paired, columns, style)
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


# --- Korean-paper style: the KoELECTRA and KLUE tables' task order, percent ---

# (task, its metrics in the order the source table prints them). KoELECTRA's tables
# (finetune/README_EN.md): NSMC (acc), Naver NER (F1), PAWS (acc), KorNLI (acc), KorSTS
# (spearman), Question Pair (acc), KorQuAD (EM/F1), Korean-Hate-Speech (F1); then KLUE's
# (README.md, Baseline Scores): TC (F1), STS (Pearson r, F1), NLI (acc), NER (entity F1,
# char F1), RE (F1, AUPRC), DP (UAS, LAS), MRC (EM, ROUGE), DST (JGA, slot F1). Tasks korlm
# does not have yet keep their place for when a YAML task or a later built-in uses the
# name; any other column follows, in name order.
PAPER_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nsmc", ("accuracy", "macro_f1")),
    ("naver-ner", ("entity_f1", "char_f1")),
    ("paws", ("accuracy",)),
    ("kornli", ("accuracy",)),
    ("korsts", ("spearman", "pearson")),
    ("question-pair", ("accuracy",)),
    ("korquad", ("exact_match", "f1")),
    ("hate-speech", ("macro_f1", "accuracy")),
    ("hate-speech-bias", ("macro_f1", "accuracy")),
    ("klue-ynat", ("macro_f1", "accuracy")),
    ("klue-sts", ("pearson", "f1_at_threshold", "spearman")),
    ("klue-nli", ("accuracy",)),
    ("klue-ner", ("entity_f1", "char_f1")),
    ("klue-re", ("micro_f1", "auprc")),
    ("klue-dp", ("uas", "las")),
    ("klue-mrc", ("exact_match", "rouge_w")),
    ("klue-wos", ("joint_goal_accuracy", "slot_f1")),
)
PAPER_TASKS = {"nsmc": "NSMC", "naver-ner": "Naver NER", "paws": "PAWS", "kornli": "KorNLI",
               "korsts": "KorSTS", "question-pair": "Question Pair", "korquad": "KorQuAD",
               "hate-speech": "Korean-Hate-Speech", "hate-speech-bias": "Korean-Hate-Speech bias",
               "klue-ynat": "KLUE-TC", "klue-sts": "KLUE-STS", "klue-nli": "KLUE-NLI",
               "klue-ner": "KLUE-NER", "klue-re": "KLUE-RE", "klue-dp": "KLUE-DP",
               "klue-mrc": "KLUE-MRC", "klue-wos": "KLUE-DST", "chatbot": "Chatbot"}
PAPER_METRICS = {"accuracy": "acc", "macro_f1": "F1", "spearman": "spearman",
                 "pearson": "Pearson r", "f1_at_threshold": "F1", "exact_match": "EM",
                 "f1": "F1", "entity_f1": "entity F1", "char_f1": "char F1"}
PAPER_NOTE = ("Scores in percent with two decimals (± SE and seed SD too), columns in the "
              "order of the KoELECTRA and KLUE tables.")


def order_columns(columns: list[str], style: str = "default") -> list[str]:
    """``columns`` in name order, or (``paper``) in :data:`PAPER_ORDER`'s order: listed
    tasks first, each task's listed metrics first, everything else after, by name."""
    if style not in STYLES:
        raise KorlmError(f"unknown report style {style!r}; choose one of {', '.join(STYLES)}")
    if style != "paper":
        return sorted(columns)
    tasks = {task: (i, metrics) for i, (task, metrics) in enumerate(PAPER_ORDER)}

    def key(column: str):
        task, metric = column.split("/", 1)
        if task not in tasks:
            return (len(tasks), task, 0, metric)
        rank, metrics = tasks[task]
        return (rank, task, metrics.index(metric) if metric in metrics else len(metrics), metric)

    return sorted(columns, key=key)


def column_label(column: str, style: str = "default") -> str:
    """The header of a column: ``task/metric``, or (``paper``) ``NSMC (acc)``."""
    if style != "paper":
        return column
    task, metric = column.split("/", 1)
    return f"{PAPER_TASKS.get(task, task)} ({PAPER_METRICS.get(metric, metric)})"


# --- classical baselines and paired differences from random init ---

PAIRED_NOTE = (
    "Δ vs random init: each row's score minus random init's on the same test items "
    "(checked by a digest of the items), ± the paired standard error: for accuracy and "
    "KorQuAD EM/F1, SE = sd(d_i) / sqrt(n) over the per-item differences d_i of the two "
    "systems' per-item scores, each first averaged over its fine-tuning seeds (Miller 2024, "
    "'Adding Error Bars to Evals', arXiv:2411.00640, paired differences); for macro-F1, "
    "correlations and F1@threshold, the SD of the difference over 200 paired bootstrap "
    "resamples of the test items (Koehn 2004). Pairing removes the item difficulty both "
    "systems share, so it is usually much smaller than either row's ± SE; a Δ within about "
    "two paired SEs of 0 is noise.")


def paired_table(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's difference from random init per column, on the test items both scored.

    Returns ``{"rows": {row: {col: {"delta", "se", "n", "seeds", "method"}}},
    "skipped": {row: reason}}``. A row pairs with random init on a task when every record
    of both carries ``predictions`` of the same items (``items_sha256``); seeds are
    averaged per item (:func:`korlm.evaluation.metrics.paired_difference`)."""
    from korlm.evaluation import metrics as metric_fns

    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        groups.setdefault(rec["task"], {}).setdefault(_row_name(rec), []).append(rec)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for task, by_row in sorted(groups.items()):
        reference = by_row.get(BASELINE)
        if not reference:
            continue
        for row, recs in by_row.items():
            if row == BASELINE:
                continue
            both = reference + recs
            if not all(r.get("predictions") for r in both):
                skipped.setdefault(row, "metrics.json without per-item predictions (older korlm)")
                continue
            if len({r["predictions"].get("items_sha256") for r in both}) != 1:
                skipped.setdefault(row, f"{task}: not scored on the same test items as "
                                        f"{BASELINE}")
                continue
            gold = reference[0]["predictions"]["gold"]
            labels = reference[0].get("label_names")
            for metric in reference[0]["metrics"]:
                if reference[0]["metrics"].get(metric) is None:
                    continue
                if metric not in metric_fns.PAIRED_METRICS:  # e.g. a tagger's span F1
                    skipped.setdefault(row, f"{task}/{metric}: no paired SE for this metric")
                    continue
                result = metric_fns.paired_difference(
                    metric, gold, [r["predictions"]["predicted"] for r in recs],
                    [r["predictions"]["predicted"] for r in reference],
                    None if labels is None else len(labels))
                if result is not None:
                    out.setdefault(row, {})[f"{task}/{metric}"] = result
    return {"rows": out, "skipped": skipped}


def _paired_cell(entry: dict[str, Any] | None, style: str) -> str:
    if entry is None:
        return "—"
    text = _fmt(entry["delta"], style, signed=True)
    return text if entry["se"] is None else f"{text} ± {_fmt(entry['se'], style)}"


def _paired_rows(paired: dict[str, Any], columns: list[str]) -> tuple[list[str], list[str]]:
    rows = [r for r in paired["rows"] if any(c in paired["rows"][r] for c in columns)]
    cols = [c for c in columns if any(c in paired["rows"][r] for r in rows)]
    return rows, cols


def render_paired_markdown(paired: dict[str, Any], columns: list[str],
                           style: str = "default") -> str:
    rows, cols = _paired_rows(paired, columns)
    lines = [f"Δ vs {BASELINE} (± paired SE):", "",
             "| row | " + " | ".join(column_label(c, style) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(
            _paired_cell(paired["rows"][r].get(c), style) for c in cols) + " |")
    text = "\n".join(lines) + f"\n\n{PAIRED_NOTE}\n"
    for row, reason in paired.get("skipped", {}).items():
        text += f"\nNo Δ for {row}: {reason}.\n"
    return text


def render_paired_html(paired: dict[str, Any], columns: list[str], style: str = "default") -> str:
    rows, cols = _paired_rows(paired, columns)
    head = "".join(f"<th>{html.escape(column_label(c, style))}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{html.escape(r)}</th>" + "".join(
            f"<td>{html.escape(_paired_cell(paired['rows'][r].get(c), style))}</td>"
            for c in cols) + "</tr>" for r in rows)
    skipped = "".join(f"<p>No Δ for {html.escape(r)}: {html.escape(why)}.</p>"
                      for r, why in paired.get("skipped", {}).items())
    return (f"<h2>Δ vs {BASELINE} (± paired SE)</h2><table><tr><th>row</th>{head}</tr>"
            f"{body}</table><p>{html.escape(PAIRED_NOTE)}</p>{skipped}")


def baseline_notes(records: list[dict[str, Any]]) -> list[str]:
    """What each classical baseline row is (the model and hyperparameters dev picked,
    its features), and the tasks it has no row for."""
    from korlm.evaluation.baseline import unsupported

    notes, names = [], []
    for rec in sorted((r for r in records if r.get("baseline")), key=lambda r: r["task"]):
        if rec["baseline"] not in names:
            names.append(rec["baseline"])
        features = (rec.get("bag_of_words") or {}).get("features")
        notes.append(f"{rec['baseline']}, {rec['task']}: {rec.get('note', '')}"
                     + (f"; {features}" if features else "") + ".")
    if names:
        covered = {r["task"] for r in records if r.get("baseline")}
        for task, kind in sorted({(r["task"], r.get("task_type")) for r in records
                                  if r["task"] not in covered and r.get("task_type")}):
            reason = unsupported(kind)
            if reason:
                notes.append(f"{', '.join(names)}: not computed for {task} ({reason}).")
    return notes


def save_plot(fig, column: str, out_dir: str) -> str:
    """Save one metric's figure as ``<task>_<metric>.png`` in ``out_dir``; returns the name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    name = column.replace("/", "_") + ".png"
    fig.savefig(os.path.join(out_dir, name))
    plt.close(fig)
    return name


def _mean_se(recs: list[dict[str, Any]], metric: str) -> float | None:
    values = [float(r["standard_errors"][metric]) for r in recs
              if (r.get("standard_errors") or {}).get(metric) is not None]
    return sum(values) / len(values) if values else None


def plot_metrics(records, columns, out_dir: str, noise: dict | None = None) -> list[str]:
    """One PNG per column: the checkpoints' scores against step (error bars: ± 1 SE),
    the random-init score as a dashed line in a ± 1 SE band, the classical baselines
    (bag-of-words) as dash-dotted lines (``≈`` in the legend when flagged) and the
    constant predictor as a dotted line (when recorded and defined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for col in columns:
        task, metric = col.split("/", 1)
        by_step: dict[int, list[dict[str, Any]]] = {}
        for r in records:
            if r["task"] == task and r["metrics"].get(metric) is not None \
                    and not r.get("random_init") and r.get("step") is not None:
                by_step.setdefault(int(r["step"]), []).append(r)
        # seed means, and their test-set SE (None: not recorded)
        pts = sorted((step, sum(float(r["metrics"][metric]) for r in v) / len(v),
                      _mean_se(v, metric)) for step, v in by_step.items())
        base_recs = [r for r in records if r["task"] == task and r.get("random_init")
                     and r["metrics"].get(metric) is not None]
        base = ([sum(float(r["metrics"][metric]) for r in base_recs) / len(base_recs)]
                if base_recs else [])
        base_se = _mean_se(base_recs, metric)
        constant = (noise or {}).get("baseline", {}).get(col)
        classical: dict[str, list[float]] = {}
        for r in records:
            if r["task"] == task and r.get("baseline") and r["metrics"].get(metric) is not None:
                classical.setdefault(r["baseline"], []).append(float(r["metrics"][metric]))
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        if pts:
            errors = [p[2] for p in pts]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], marker="o", capsize=3,
                        yerr=None if all(e is None for e in errors)
                        else [e or 0.0 for e in errors],
                        label="pretrained (± 1 SE)" if any(e is not None for e in errors)
                        else "pretrained")
        if base:
            ax.axhline(base[0], linestyle="--", color="grey", label=BASELINE)
            if base_se is not None:
                ax.axhspan(base[0] - base_se, base[0] + base_se, color="grey", alpha=0.2,
                           label=f"{BASELINE} ± 1 SE")
        for (row, values), color in zip(sorted(classical.items()), ("tab:green", "tab:purple"),
                                        strict=False):
            flagged = (noise or {}).get("flags", {}).get(row, {}).get(col)
            ax.axhline(sum(values) / len(values), linestyle="-.", color=color,
                       label=f"{row} {FLAG}" if flagged else row)
        if constant is not None:
            ax.axhline(constant, linestyle=":", color="firebrick", label=CONSTANT)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(metric)
        ax.set_title(col)
        if pts or base or classical or constant is not None:
            ax.legend(loc="best")
        names.append(save_plot(fig, col, out_dir))
    return names


def build_report(result_dirs: list[str], output_dir: str,
                 references: list[dict[str, Any]] | None = None,
                 overwrite: bool = False, style: str = "default") -> dict[str, Any]:
    """``references``: external rows (default :data:`REFERENCE_RESULTS`; ``[]`` for none).
    ``output_dir`` may not be, hold or lie inside a results folder; ``overwrite``
    replaces an earlier report. ``style``: ``default`` (fractions, four decimals,
    columns by name) or ``paper`` (percent, two decimals, the KoELECTRA/KLUE order)."""
    order_columns([], style)  # an unknown style: one line, before anything is read
    storage.check_output(output_dir, "report", inputs=result_dirs, overwrite=overwrite)
    records = find_metrics(result_dirs)
    row_names, columns, rows, spread = build_table(records)
    columns = order_columns(columns, style)
    paired = paired_table(records)
    extra = baseline_notes(records)
    noise = noise_table(records, rows)
    row_names = add_constant_row(row_names, rows, noise)
    paired["rows"] = {r: paired["rows"][r] for r in row_names if r in paired["rows"]}
    own_rows = list(row_names)
    row_names, sources = add_references(
        row_names, columns, rows, REFERENCE_RESULTS if references is None else references)
    notes = split_notes(records)
    markdown = render_markdown(row_names, columns, rows, notes, sources, spread, noise, style,
                               paired, extra)
    extra_md, extra_html = extra_sections(records)
    markdown += extra_md
    with storage.atomic_output_dir(output_dir, "report", inputs=result_dirs,
                                   overwrite=overwrite) as staging:
        plots = plot_metrics(records, columns, staging, noise)
        loss_plot = plot_pretraining(records, staging)
        plots += [loss_plot] if loss_plot else []
        with open(os.path.join(staging, "results.md"), "w", encoding="utf-8") as f:
            f.write("# korlm results\n\n" + markdown + "\n"
                    + "".join(f"![{p}]({p})\n" for p in plots))
        html_text = render_html(row_names, columns, rows, plots, notes, sources, spread, noise,
                                style, paired, extra)
        html_text += extra_html
        with open(os.path.join(staging, "results.html"), "w", encoding="utf-8") as f:
            f.write(html_text)
        with open(os.path.join(staging, "results.json"), "w", encoding="utf-8") as f:
            json.dump({"rows": row_names, "columns": columns, "values": rows,
                       "spread": {r: {c: {"sd": sd, "seeds": n} for c, (sd, n) in cols.items()}
                                  for r, cols in spread.items()},
                       "external_rows": [r for r in row_names if r not in own_rows],
                       "standard_errors": noise["se"], "constant_row": CONSTANT
                       if CONSTANT in rows else None, "constant_kinds": noise["kinds"],
                       "within_one_se_of_constant": {r: sorted(c) for r, c
                                                     in noise["flags"].items()},
                       "split_notes": notes, "sources": sources, "style": style,
                       "paired_vs_random_init": paired["rows"],
                       "paired_skipped": paired["skipped"], "baseline_notes": extra,
                       # per-item predictions stay in each metrics.json
                       "records": [{k: v for k, v in r.items() if k != "predictions"}
                                   for r in records]}, f, indent=2, ensure_ascii=False)
    return {"markdown": markdown, "html": html_text, "rows": row_names, "columns": columns,
            "values": rows, "plots": plots, "split_notes": notes,
            "standard_errors": noise["se"], "flags": noise["flags"], "paired": paired["rows"]}


# ------------------------------------------------- fine-tuning heads, pretraining loss


def head_notes(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per task: the pooling and dropout its fine-tuning heads used (several when rows
    differ); tasks whose metrics.json records none (older files, extractive QA) are left out."""
    found: dict[str, set[str]] = {}
    for rec in records:
        tune = rec.get("fine_tune") or {}
        if rec.get("pooling"):
            why = tune.get("pooling_note")
            found.setdefault(rec["task"], set()).add(
                f"pooling {rec['pooling']}" + (f" ({why})" if why and why != "requested" else "")
                + (f", dropout {tune['dropout']:g}" if tune.get("dropout") is not None else ""))
    return {task: "; ".join(sorted(v)) for task, v in sorted(found.items())}


def pretraining_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    """One row per pretraining step with the checkpoint's recorded figures (training loss,
    held-out loss/accuracy), and the unigram floor; ([], None) when none is recorded."""
    steps: dict[int, dict[str, Any]] = {}
    floor = None
    for rec in records:
        figures = rec.get("pretraining") or {}
        if rec.get("random_init") or rec.get("step") is None or "heldout_loss" not in figures:
            continue
        steps[int(rec["step"])] = figures
        floor = figures.get("unigram_entropy", floor)
    return [{"step": k, **steps[k]} for k in sorted(steps)], floor


def extra_sections(records: list[dict[str, Any]]) -> tuple[str, str]:
    """The markdown and HTML of the heads notes and the pretraining-loss table."""
    md, page = "", ""
    heads = head_notes(records)
    if heads:
        md += "\nFine-tuning heads:\n" + "".join(f"- {t}: {n}\n" for t, n in heads.items())
        page += "<h2>Fine-tuning heads</h2><ul>" + "".join(
            f"<li><b>{html.escape(t)}</b>: {html.escape(n)}</li>" for t, n in heads.items()) + "</ul>"
    rows, floor = pretraining_rows(records)
    if rows:
        def num(v):
            return "" if v is None else f"{v:.4f}"

        md += ("\nPretraining loss (nats; held-out: the data's held-out slice, fixed masks)"
               + (f"; unigram floor {floor:.4f} nats, the loss of predicting masked tokens from "
                  "their frequencies alone" if floor is not None else "") + ":\n\n"
               "| step | train loss | held-out loss | held-out accuracy |\n|---:|---:|---:|---:|\n"
               + "".join(f"| {r['step']} | {num(r.get('train_loss'))} | {num(r.get('heldout_loss'))} "
                         f"| {num(r.get('heldout_accuracy'))} |\n" for r in rows))
        page += ("<h2>Pretraining loss</h2>"
                 + (f"<p>Unigram floor {floor:.4f} nats.</p>" if floor is not None else "")
                 + "<table><tr><th>step</th><th>train loss</th><th>held-out loss</th>"
                 "<th>held-out accuracy</th></tr>"
                 + "".join(f"<tr><td>{r['step']}</td><td>{num(r.get('train_loss'))}</td>"
                           f"<td>{num(r.get('heldout_loss'))}</td>"
                           f"<td>{num(r.get('heldout_accuracy'))}</td></tr>" for r in rows)
                 + "</table>")
    return md, page


def plot_pretraining(records: list[dict[str, Any]], out_dir: str) -> str | None:
    """``pretraining_loss.png``: training and held-out loss by step, the unigram floor as
    a dotted line; None when no checkpoint records a held-out loss."""
    rows, floor = pretraining_rows(records)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["heldout_loss"] for r in rows], marker="o", label="held-out loss")
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", linestyle="--", label="train loss")
    if floor is not None:
        ax.axhline(floor, linestyle=":", color="firebrick", label="unigram floor")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("MLM loss (nats)")
    ax.set_title("pretraining loss")
    ax.legend(loc="best")
    return save_plot(fig, "pretraining_loss", out_dir)
