"""The main DAG: clean -> vocab -> pretrain-data -> pretrain -> evaluate (ParallelFor over
checkpoints, plus the random-init baseline) -> report -> export -> push.

Step parameters are compiled in from the run config, so one config file describes one
run on every target (kfp.local, KFP on kind/minikube, Vertex AI).
"""

from __future__ import annotations

from typing import Any

from kfp import dsl

import components
from korlm.config import Config, config_hash


def step_params(conf: Config) -> dict[str, dict[str, Any]]:
    """The keyword arguments each library step receives, from the config sections.

    Unset (None) values and empty Beam options are left out: KFP parameters cannot be
    null, and the library's defaults apply."""

    def section(model, exclude=()):
        d = model.model_dump(exclude=set(exclude), exclude_none=True)
        if not d.get("beam_options", True):
            del d["beam_options"]
        return d

    return {
        "clean": section(conf.clean, {"inputs"}),
        "vocab": section(conf.vocab),
        "pretrain_data": section(conf.pretrain_data),
        "pretrain": section(conf.pretrain),
        "evaluate": section(conf.evaluate, {"tasks", "data_dir", "parallelism"}),
        "export": section(conf.export),
        "push": section(conf.push),
    }


def build_pipeline(conf: Config, clean_inputs: list[dict[str, Any]] | None = None,
                   eval_data_dir: str | None = None):
    """A @dsl.pipeline function for this config. `clean_inputs` / `eval_data_dir`
    override the config's paths (the local runner passes absolute paths)."""
    ops = components.build(conf.pipeline.image)
    params = step_params(conf)
    inputs = clean_inputs if clean_inputs is not None else [
        i.model_dump(exclude_none=True) for i in conf.clean.inputs]
    data_dir = eval_data_dir or conf.evaluate.data_dir
    tasks = list(conf.evaluate.tasks)
    final_step = conf.pretrain.steps

    @dsl.pipeline(name=conf.pipeline.name,
                  description="Raw Korean text to a pretrained, evaluated and exported LM")
    def korlm_pipeline():
        clean = ops.clean(inputs=inputs, params=params["clean"]).set_display_name("clean")
        vocab = ops.vocab(corpus=clean.outputs["corpus"], params=params["vocab"])
        data = ops.pretrain_data(corpus=clean.outputs["corpus"],
                                 tokenizer=vocab.outputs["tokenizer"],
                                 params=params["pretrain_data"]).set_display_name("pretrain-data")
        train = ops.pretrain(examples=data.outputs["examples"],
                             tokenizer=vocab.outputs["tokenizer"], params=params["pretrain"])
        train.set_retry(num_retries=2)  # resumes from its last checkpoint after preemption

        with dsl.ParallelFor(train.outputs["Output"], name="checkpoints",
                            parallelism=conf.evaluate.parallelism) as step:
            ev = ops.evaluate(run=train.outputs["run"], tokenizer=vocab.outputs["tokenizer"],
                              step=step, tasks=tasks, data_dir=data_dir, random_init=False,
                              params=params["evaluate"]).set_display_name("evaluate-checkpoint")

        baseline = ops.evaluate(run=train.outputs["run"], tokenizer=vocab.outputs["tokenizer"],
                                step=final_step, tasks=tasks, data_dir=data_dir, random_init=True,
                                params=params["evaluate"]).set_display_name("evaluate-random-init")

        rep = ops.report(results=dsl.Collected(ev.outputs["results"]),
                         baseline=baseline.outputs["results"])
        exp = ops.export(run=train.outputs["run"], tokenizer=vocab.outputs["tokenizer"],
                         report=rep.outputs["report"], params=params["export"])
        pushed = ops.push(hf_model=exp.outputs["hf_model"], params=params["push"],
                          run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, config_hash=config_hash(conf))
        pushed.set_caching_options(False)  # a push is a side effect, never cached
        for task in (clean, vocab, data, train, rep, exp):
            task.set_caching_options(conf.pipeline.enable_caching)

    return korlm_pipeline
