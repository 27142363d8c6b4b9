"""Pipeline parameters: the settings users change between runs are typed KFP pipeline
parameters defaulting to the config's values; one compiled package runs with other values.

The kfp.local test compiles a package once and runs it twice (and once with a bad value).
It compiles the main DAG's first two steps (clean -> vocab, the same components and
parameter plumbing as pipelines/korlm_pipeline.py), since the whole DAG costs a minute a
run; the full DAG's wiring of every parameter is checked on its compiled YAML.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from korlm import config
from korlm.config import ConfigError
from korlm.errors import KorlmError
from pipelines import korlm_pipeline as kp
from pipelines.compile import compile_pipeline

TYPES = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING", bool: "BOOLEAN", list: "LIST"}


@pytest.fixture(scope="module")
def tiny():
    return config.load("configs/tiny.yaml")


def test_every_parameter_is_typed_with_the_config_value_as_default(tiny, tmp_path):
    spec = next(yaml.safe_load_all(open(compile_pipeline(tiny, str(tmp_path / "p.yaml")), encoding="utf-8")))
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == {name for name, _ in kp.PIPELINE_PARAMETERS.values()}
    defaults = kp.parameter_defaults(tiny)
    for name, kind in kp.PIPELINE_PARAMETERS.values():
        assert declared[name]["parameterType"] == TYPES[kind], name
        assert declared[name]["defaultValue"] == defaults[name], name
    assert defaults["vocab_size"] == 2000 and defaults["steps"] == 20 and defaults["eval_tasks"] == ["nsmc"]
    assert defaults["clean_inputs"][0] == {"path": "data/sample/raw/petitions.jsonl.gz", "field": "content"}
    # each task takes the parameter, not a compiled value
    tasks = spec["root"]["dag"]["tasks"]
    wiring = {("clean", "inputs"): "clean_inputs", ("vocab", "vocab_size"): "vocab_size",
              ("vocab", "algorithm"): "vocab_algorithm", ("pretrain", "model"): "model",
              ("pretrain", "size"): "model_size", ("pretrain", "steps"): "steps",
              ("pretrain", "batch_size"): "batch_size", ("pretrain", "learning_rate"): "learning_rate",
              ("pretrain", "checkpoint_every"): "checkpoint_every", ("push", "repo_id"): "push_repo_id",
              ("push", "dry_run"): "push_dry_run", ("evaluate-2", "tasks"): "eval_tasks",
              ("evaluate-2", "step"): "steps"}
    for (task, name), param in wiring.items():
        assert tasks[task]["inputs"]["parameters"][name] == {"componentInputParameter": param}, (task, name)
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["evaluate"]["inputs"]["parameters"]
    assert loop["tasks"] == {"componentInputParameter": "pipelinechannel--eval_tasks"}


def test_submit_overrides_split_into_parameter_values_and_compiled_keys(tiny):
    conf, values = kp.run_settings(tiny, {"vocab.vocab_size": 3000, "pretrain.learning_rate": 0.001,
                                          "evaluate.tasks": ["nsmc", "klue-ynat"], "run.id": "x"})
    assert values == {"vocab_size": 3000, "learning_rate": 0.001, "eval_tasks": ["nsmc", "klue-ynat"]}
    assert conf.run.id == "x" and conf.vocab.vocab_size == 2000  # compiled: only non-parameters
    with pytest.raises(ConfigError, match="vocab.vocab_size") as err:
        kp.run_settings(tiny, {"vocab.vocab_size": 3})
    assert "\n" not in str(err.value)
    with pytest.raises(KorlmError, match="vocab_sise is not a pipeline parameter"):
        kp.apply_parameters(tiny, {"vocab_sise": 3})
    assert kp.apply_parameters(tiny, {"steps": 40, "model": "roberta"}).pretrain.model == "roberta"
    ablation = config.load("configs/ablation-local.yaml")  # its DAG has no parameters: compiled in
    conf, values = kp.run_settings(ablation, {"pretrain.steps": 40})
    assert values == {} and conf.pretrain.steps == 40


def test_a_bad_value_fails_inside_the_task_in_one_line_naming_the_key():
    from components.pretrain import pretrain
    from components.vocab import vocab

    with pytest.raises(ConfigError) as err:  # before the task reads any input
        vocab(corpus=None, params={"vocab_size": 2000}, tokenizer=None, stats=None, vocab_size=5)
    assert "vocab.vocab_size" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pretrain.model"):
        pretrain(examples=None, tokenizer=None, params={"steps": 20, "checkpoint_every": 10}, run=None, metrics=None,
                 model="gpt")
    # the merged section is validated whole: a run-time steps below the compiled checkpoint_every
    with pytest.raises(ConfigError, match="checkpoint_every"):
        pretrain(examples=None, tokenizer=None, params={"steps": 20, "checkpoint_every": 10}, run=None, metrics=None,
                 steps=5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*non-Python base image")
def test_one_package_runs_with_different_parameter_values(tiny, tmp_path, capfd):
    """Compile once; run the package with kfp.local twice with other values; a bad value
    fails in the task naming its key."""
    from kfp import compiler, components, dsl, local

    op = kp.step_ops(tiny, "local")
    params = kp.target_params(tiny, "local")
    inputs = [{**i, "path": os.path.abspath(i["path"])} for i in kp.parameter_defaults(tiny)["clean_inputs"]]
    defaults = {k: v for k, v in kp.parameter_defaults(tiny, inputs).items()
                if k in ("clean_inputs", "vocab_size", "vocab_algorithm")}

    def first_steps(*values):
        p = dict(zip(defaults, values, strict=True))
        clean = op["clean"](inputs=p["clean_inputs"], params=params["clean"])
        op["vocab"](corpus=clean.outputs["corpus"], params=params["vocab"],
                    vocab_size=p["vocab_size"], algorithm=p["vocab_algorithm"])

    package = tmp_path / "first-steps.yaml"
    compiler.Compiler().compile(dsl.pipeline(kp.with_parameters(first_steps, defaults), name="first-steps"),
                                package_path=str(package))
    pipeline = components.load_component_from_file(str(package))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def run(name, **values):
        root = tmp_path / name
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True, enable_caching=False)
        pipeline(**values)
        (meta,) = [os.path.join(d, "tokenizer", "vocab_stats.json") for d, _, _ in os.walk(root)
                   if os.path.exists(os.path.join(d, "tokenizer", "vocab_stats.json"))]
        with open(meta, encoding="utf-8") as f:
            return json.load(f)

    default = run("default")
    other = run("other", vocab_size=1000, vocab_algorithm="sentencepiece-unigram",
                clean_inputs=[inputs[1]])  # the law texts only
    assert default["requested_vocab_size"] == 2000 and default["algorithm"] == "wordpiece"
    assert other["requested_vocab_size"] == 1000 and other["algorithm"] == "sentencepiece-unigram"
    assert other["vocab_size"] <= 1000 < default["vocab_size"]
    assert other["num_training_sentences"] < default["num_training_sentences"]  # one input of two
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="vocab"):
        run("bad", vocab_size=5)
    out = capfd.readouterr()
    assert "step parameters: vocab.vocab_size" in out.out + out.err


def test_the_run_manifest_records_the_parameter_values_the_run_was_given(tiny, tmp_path):
    from kfp.dsl import Artifact

    from components.manifest import run_manifest

    ins = [Artifact(uri=f"gs://b/{n}") for n in range(6)]
    manifest = Artifact(uri="gs://b/manifest")
    manifest.path = str(tmp_path / "manifest")
    compiled = yaml.safe_dump(tiny.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
    run_manifest(*ins, "run-8", compiled, manifest, steps=40, eval_tasks=["nsmc", "korsts"], push_dry_run=False,
                 vocab_size=0)  # 0: not given
    recorded = config.validate(yaml.safe_load((tmp_path / "manifest" / "config.yaml").read_text(encoding="utf-8")))
    assert recorded.pretrain.steps == 40 and recorded.evaluate.tasks == ["nsmc", "korsts"]
    assert recorded.push.dry_run is False and recorded.vocab.vocab_size == tiny.vocab.vocab_size
