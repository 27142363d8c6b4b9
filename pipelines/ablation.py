"""The ablation DAG: vocab variants x model sizes from one cleaned corpus, one comparison.

::

    clean ─┬─ vocab[wordpiece] ─ pretrain-data ─┬─ pretrain[tiny] ─ evaluate x checkpoints ─ report ─┐
           │                                    └─ pretrain[mini] ─ ...                              ├─ merge ─ merge ─ ... ─ comparison
           └─ vocab[morpheme]  ─ pretrain-data ─── pretrain[tiny] ─ ...                              ┘

Arms are unrolled when the pipeline is built (the variants and sizes are config), so
each task's parameters are plain constants and cached arms are reused on a cluster.
The comparison folds the arms' reports one by one (``ablation_merge``): rows are
``<variant>-<size> @ <checkpoint>``, columns the task metrics, plus each variant's vocab
statistics and one plot per task metric.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl

from korlm.config import Config
from korlm.errors import KorlmError
from pipelines.korlm_pipeline import (
    RETRIES,
    Target,
    evaluate_and_report,
    mount_cluster_volumes,
    place_task,
    step_env,
    step_ops,
    target_params,
)


def build_ablation_pipeline(conf: Config, clean_inputs: list[dict[str, Any]] | None = None,
                            eval_data_dir: str | None = None, target: Target = "local"):
    if not conf.ablation.vocab_variants:
        raise KorlmError("ablation.vocab_variants is empty: list the vocab variants to compare")
    op = step_ops(conf, target)
    params = target_params(conf, target)
    resources = conf.pipeline.resources if target != "local" else {}
    inputs = clean_inputs if clean_inputs is not None else [
        i.model_dump(exclude_none=True) for i in conf.clean.inputs]
    data_dir = eval_data_dir or conf.evaluate.data_dir
    tasks = list(conf.evaluate.tasks)
    sizes = conf.ablation.sizes or [conf.pretrain.size]

    @dsl.pipeline(name=f"{conf.pipeline.name}-ablation",
                  description="Vocab variants x model sizes, each evaluated per checkpoint, one comparison")
    def ablation_pipeline():
        placed: list[tuple[str, Any]] = []
        clean = op["clean"](inputs=inputs, params=params["clean"]).set_display_name("clean")
        clean.set_retry(num_retries=RETRIES, backoff_duration="60s")
        placed.append(("clean", clean))
        comparison = None
        for variant in conf.ablation.vocab_variants:
            vocab_params = {**params["vocab"], **variant.model_dump(exclude={"name"}, exclude_none=True)}
            vocab = op["vocab"](corpus=clean.outputs["corpus"], params=vocab_params)
            vocab.set_display_name(f"vocab-{variant.name}")
            data = op["pretrain_data"](corpus=clean.outputs["corpus"], tokenizer=vocab.outputs["tokenizer"],
                                       params=params["pretrain_data"]).set_display_name(f"data-{variant.name}")
            data.set_retry(num_retries=RETRIES, backoff_duration="60s")
            placed += [("vocab", vocab), ("pretrain_data", data)]
            for size in sizes:
                label = f"{variant.name}-{size}"
                train = op["pretrain"](examples=data.outputs["examples"], tokenizer=vocab.outputs["tokenizer"],
                                       params={**params["pretrain"], "size": size})
                train.set_display_name(f"pretrain-{label}").set_retry(num_retries=RETRIES)
                rep, evaluations = evaluate_and_report(op, conf, params, train.outputs["run"],
                                                       vocab.outputs["tokenizer"], train.outputs["Output"],
                                                       tasks, data_dir)
                rep.set_display_name(f"report-{label}")
                merge_inputs = {"report": rep.outputs["report"], "tokenizer": vocab.outputs["tokenizer"],
                                "label": label}
                if comparison is not None:
                    merge_inputs["previous"] = comparison.outputs["comparison"]
                comparison = op["ablation_merge"](**merge_inputs).set_display_name(f"compare-{label}")
                placed += [("pretrain", train), *(("evaluate", ev) for ev in evaluations), ("report", rep),
                           ("ablation_merge", comparison)]
        for step, task in placed:
            place_task(task, resources.get(step), step_env(conf, step) if resources else None)
            task.set_caching_options(conf.pipeline.enable_caching)
        if target == "kfp":  # the data volume on the tasks that read raw or task data
            mount_cluster_volumes(conf, None, [t for s, t in placed if s in ("clean", "evaluate")])

    return ablation_pipeline
