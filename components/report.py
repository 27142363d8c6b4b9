"""KFP component: the checkpoint x task results table and plots (korlm report)."""

from typing import List  # noqa: UP035 (KFP parses typing.List for Collected artifacts)

from kfp.dsl import HTML, Artifact, Input, Markdown, Output


def report(results: Input[List[Artifact]], baseline: Input[Artifact],  # noqa: UP006
           report: Output[Artifact], table: Output[Markdown], page: Output[HTML]):
    """Collect every evaluation into results.md/.html and plots; the table also goes to a
    Markdown artifact and the page (plots inlined) to an HTML artifact, so both show in
    the pipeline UI."""
    import base64
    import os
    import re

    from korlm.evaluation.report import build_report

    dirs = [r.path for r in results] + [baseline.path]
    summary = build_report(dirs, report.path, overwrite=True)  # KFP owns the path
    with open(table.path, "w", encoding="utf-8") as f:
        f.write(summary["markdown"])

    def inline(match):
        # the UI shows the HTML file alone, so the PNGs go inside it
        with open(os.path.join(report.path, match.group(1)), "rb") as img:
            return 'src="data:image/png;base64,' + base64.b64encode(img.read()).decode() + '"'

    with open(page.path, "w", encoding="utf-8") as f:
        f.write(re.sub(r'src="([^"/]+\.png)"', inline, summary["html"]))
