"""KFP component: fold one ablation arm into the vocab-variant x model-size comparison."""

from kfp.dsl import Artifact, Input, Output


def ablation_merge(report: Input[Artifact], tokenizer: Input[Artifact], label: str,
                   comparison: Output[Artifact], previous: Input[Artifact] = None):
    """The previous comparison (none for the first arm) plus this arm's report and vocab
    statistics: comparison.json, results.md/.html and one plot per task metric."""
    from korlm.evaluation.ablation import merge_comparison

    summary = merge_comparison(previous.path if previous is not None else None, report.path, tokenizer.path,
                               label, comparison.path)
    comparison.metadata.update({"arms": [v["arm"] for v in summary["vocab"]], "rows": len(summary["rows"])})
