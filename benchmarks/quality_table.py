"""The quality run's tables and held-out plot (benchmarks/quality_run.sh): one table of
both families' reports (each checkpoint and its own random init, mean ± SD over seeds,
Δ vs that random init ± paired SE, the bag-of-words row) and the held-out curve of each
pretraining run against the unigram floor.

    .venv/bin/python benchmarks/quality_table.py runs/quality --plot docs/results/heldout.png
"""

from __future__ import annotations

import argparse
import json
import math
import os

FAMILIES = ("bert", "electra")


def _cell(values: dict, spread: dict, row: str, col: str) -> str:
    value = values.get(row, {}).get(col)
    if value is None:
        return "—"
    sd = (spread.get(row, {}).get(col) or {}).get("sd")
    seeds = (spread.get(row, {}).get(col) or {}).get("seeds")
    return f"{value:.4f}" + (f" ± {sd:.4f} ({seeds})" if sd is not None and seeds and seeds > 1 else "")


def _paired(report: dict, row: str, col: str) -> str:
    entry = report["paired_vs_random_init"].get(row, {}).get(col)
    if not entry:
        return "—"
    se = entry.get("se")
    return f"{entry['delta']:+.4f}" + (f" ± {se:.4f}" if se is not None else "")


def score_table(root: str) -> str:
    reports = {m: json.load(open(os.path.join(root, f"report-{m}", "results.json"), encoding="utf-8"))
               for m in FAMILIES if os.path.exists(os.path.join(root, f"report-{m}", "results.json"))}
    cols = sorted({c for r in reports.values() for c in r["columns"]
                   if c.endswith("/accuracy") or c.endswith("/macro_f1")})
    head = ("| row | " + " | ".join(f"{c} (mean ± SD, seeds)" for c in cols) + " | "
            + " | ".join(f"Δ {c} vs its random init ± paired SE" for c in cols) + " |")
    lines = [head, "|---|" + "---:|" * (2 * len(cols))]
    seen_bow = False
    for family, report in reports.items():
        own = [r for r in report["rows"] if r not in report["external_rows"]]
        for row in own:
            if row == "bag-of-words":
                if seen_bow:
                    continue
                seen_bow, label = True, "bag-of-words (same tokens)"
            elif row.startswith("constant"):
                if family != FAMILIES[0]:
                    continue
                label = row
            else:
                label = f"{family} {row}"
            cells = [_cell(report["values"], report["spread"], row, c) for c in cols]
            deltas = [_paired(report, row, c) for c in cols]
            lines.append(f"| {label} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(lines)


def heldout_rows(root: str) -> dict[str, list[dict]]:
    out = {}
    for m in FAMILIES:
        path = os.path.join(root, f"pretrain-{m}", "train_log.jsonl")
        if os.path.exists(path):
            rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
            out[m] = rows
    return out


def heldout_table(logs: dict[str, list[dict]]) -> str:
    lines = ["| model | step | minutes | training loss | held-out MLM loss | held-out MLM accuracy "
             "| unigram floor | ELECTRA discriminator: held-out loss / accuracy "
             "| its floor: loss / accuracy of saying \"original\" everywhere |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for m, rows in logs.items():
        start = rows[0]["time"] - rows[0]["step"] / max(rows[0]["steps_per_second"], 1e-9)
        for r in rows:
            if "heldout_loss" not in r:
                continue
            disc = prior = "—"
            if "heldout_disc_loss" in r:
                disc = f"{r['heldout_disc_loss']:.4f} / {r['heldout_disc_accuracy']:.4f}"
                q = r["heldout_replaced_rate"]  # the binary entropy of the replaced share
                entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q)) if 0 < q < 1 else 0.0
                prior = f"{entropy:.4f} / {1 - q:.4f}"
            train = r.get("mlm_loss", r["loss"])
            lines.append(f"| {m} | {r['step']} | {(r['time'] - start) / 60:.1f} | {train:.4f} | "
                         f"{r['heldout_loss']:.4f} | {r['heldout_accuracy']:.4f} | "
                         f"{r.get('unigram_entropy', float('nan')):.4f} | {disc} | {prior} |")
    return "\n".join(lines)


def plot(logs: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = None
    for m, rows in logs.items():
        start = rows[0]["time"] - rows[0]["step"] / max(rows[0]["steps_per_second"], 1e-9)
        pts = [((r["time"] - start) / 60, r["heldout_loss"]) for r in rows if "heldout_loss" in r]
        train = [((r["time"] - start) / 60, r.get("mlm_loss", r["loss"])) for r in rows]
        (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=f"{m}: held-out MLM loss"
                          + (" (generator)" if m == "electra" else ""))
        ax.plot(*zip(*train, strict=True), alpha=0.3, color=line.get_color(),
                label=f"{m}: training MLM loss")
        floor = next((r["unigram_entropy"] for r in rows if "unigram_entropy" in r), floor)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label=f"unigram floor {floor:.3f}")
    ax.set_xlabel("minutes of pretraining (one core each)")
    ax.set_ylabel("nats per masked token")
    ax.set_ylim(top=(floor or 9) + 0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the quality run's folder (runs/quality)")
    parser.add_argument("--plot", help="write the held-out curve here (PNG)")
    args = parser.parse_args()
    logs = heldout_rows(args.root)
    print(heldout_table(logs) + "\n")
    if any(os.path.exists(os.path.join(args.root, f"report-{m}")) for m in FAMILIES):
        print(score_table(args.root))
    if args.plot:
        plot(logs, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
