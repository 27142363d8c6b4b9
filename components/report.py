"""KFP component: the checkpoint x task results table and plots (korlm report)."""

from typing import List  # noqa: UP035 (KFP parses typing.List for Collected artifacts)

from kfp.dsl import Artifact, Input, Markdown, Output


def report(results: Input[List[Artifact]], baseline: Input[Artifact],  # noqa: UP006
           report: Output[Artifact], table: Output[Markdown]):
    """Collect every evaluation into results.md/.html and plots; the table also goes to
    a Markdown artifact so it shows in the pipeline UI."""
    from korlm.report import build_report

    dirs = [r.path for r in results] + [baseline.path]
    summary = build_report(dirs, report.path)
    with open(table.path, "w", encoding="utf-8") as f:
        f.write(summary["markdown"])
