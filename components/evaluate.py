"""KFP component: fine-tune one checkpoint on each task and score it (korlm evaluate)."""

from kfp.dsl import Artifact, ClassificationMetrics, Input, Metrics, Model, Output


def evaluate(run: Input[Model], tokenizer: Input[Artifact], step: int, tasks: list,
             data_dir: str, random_init: bool, params: dict,
             results: Output[Artifact], metrics: Output[Metrics],
             confusion_matrix: Output[ClassificationMetrics]):
    """Evaluate checkpoint `step` of `run` (or, with random_init, the same architecture
    untrained) on every task (built-in names or task YAML files); one metrics.json per
    task under `results`, every score also logged to the KFP Metrics artifact as
    `<task>/<metric>` (the names of the report's columns).

    `confusion_matrix`: KFP gives one artifact per output name and the Vertex AI / KFP
    UIs draw one matrix per ClassificationMetrics artifact, so it holds the test-split
    matrix of the first classification task in `tasks` (its name in the artifact's
    `task` metadata; rows gold, columns predicted, with the task's label names); every
    classification task's matrix is in its metrics.json (`confusion_matrix`). With no
    classification task it stays empty.

    Every seed of `evaluate.seeds` is fine-tuned (`<task>/seed-<s>/metrics.json` when
    there are several; the Metrics entries are their means), and the random-init task
    also computes `evaluate.baselines` (`<task>/bag-of-words/metrics.json`, logged as
    `bag-of-words/<task>/<metric>`)."""
    from korlm.logs import filter_task_stderr

    filter_task_stderr()  # TensorFlow's native start-up lines out of the task log
    from korlm.config import fine_tuning_seeds, section_params

    params = section_params("evaluate", params)
    import os

    from korlm.evaluation.evaluate import evaluate_runs, settings_for_task
    from korlm.modeling.checkpoints import checkpoint_name, checkpoint_path

    seeds = fine_tuning_seeds(params.get("seed", 0), params.pop("seeds", None))
    baselines = params.pop("baselines", ["bag-of-words"]) if random_init else []
    checkpoint = checkpoint_path(run.path, step)
    name = "random-init" if random_init else checkpoint_name(step)
    os.makedirs(results.path, exist_ok=True)
    records = []
    for task in tasks:
        folder = task.rstrip("/").rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
        settings = settings_for_task(params, task)
        settings.pop("baselines", None)
        recs = evaluate_runs(checkpoint, tokenizer.path, task, data_dir,
                             os.path.join(results.path, folder), random_init=random_init,
                             overwrite=True,  # KFP owns the path: a retry replaces it
                             seeds=seeds, baselines=baselines, **settings)
        tuned = [r for r in recs if not r.get("baseline")]
        records.append(tuned[0])
        for metric in tuned[0]["metrics"]:
            values = [r["metrics"][metric] for r in tuned if r["metrics"][metric] is not None]
            if values:  # undefined (e.g. correlation of constant predictions): not logged
                metrics.log_metric(f"{tuned[0]['task']}/{metric}", sum(values) / len(values))
        for rec in recs:
            if rec.get("baseline"):
                for metric, value in rec["metrics"].items():
                    if value is not None:
                        metrics.log_metric(f"{rec['baseline']}/{rec['task']}/{metric}", value)
    results.metadata.update({"checkpoint": name, "step": None if random_init else step})
    drawn = next((r for r in records if r.get("confusion_matrix")), None)
    if drawn is not None:
        confusion_matrix.log_confusion_matrix(drawn["confusion_matrix"]["labels"],
                                              drawn["confusion_matrix"]["matrix"])
        confusion_matrix.metadata["task"] = drawn["task"]
