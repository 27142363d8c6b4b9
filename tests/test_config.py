"""The config schema: good files load, bad ones fail in one line naming the key."""

import pytest

from korlm import config


def test_bundled_configs_validate():
    for path in ("configs/local.yaml", "configs/tiny.yaml"):
        conf = config.load(path)
        assert conf.clean.inputs, path
        assert conf.pretrain.checkpoint_every <= conf.pretrain.steps


@pytest.mark.parametrize("data, message", [
    ({"pretrain": {"stepz": 3}}, "pretrain.stepz: unknown key"),
    ({"pretrian": {}}, "pretrian: unknown key"),
    ({"pretrain": {"steps": 0}}, "pretrain.steps: input should be greater than 0"),
    ({"pretrain": {"steps": "many"}}, "pretrain.steps: input should be a valid integer"),
    ({"pretrain": {"steps": 10, "checkpoint_every": 50}}, "checkpoint_every (50) is larger than steps (10)"),
    ({"vocab": {"algorithm": "bpe"}}, "vocab.algorithm: input should be 'wordpiece'"),
    ({"pretrain": {"size": "huge"}}, "pretrain.size: input should be 'tiny'"),
    ({"clean": {"inputs": [{"field": "text"}]}}, "clean.inputs.0.path: required key is missing"),
    ({"clean": {"min_sentence_chars": 50, "max_sentence_chars": 10}}, "min_sentence_chars must not exceed"),
    ({"pipeline": {"image": "gcr.io/p/korlm:latest"}}, "needs a pinned tag"),
    ({"push": {"repo_id": "no-namespace"}}, "push.repo_id"),
    ({"run": {"id": "../escape"}}, "run.id"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(config.ConfigError) as err:
        config.validate(data)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  steps: [1,\n")
    with pytest.raises(config.ConfigError, match="not valid YAML at line"):
        config.load(str(bad))
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(config.ConfigError, match="top level must be a mapping"):
        config.load(str(top))


def test_overrides_are_validated():
    conf = config.load("configs/tiny.yaml")
    new = config.apply_overrides(conf, config.parse_set(["pretrain.steps=40", "vocab.vocab_size=3000"]))
    assert new.pretrain.steps == 40 and new.vocab.vocab_size == 3000
    assert conf.pretrain.steps == 20  # the original is untouched
    with pytest.raises(config.ConfigError, match="pretrain.steps"):
        config.apply_overrides(conf, {"pretrain.steps": -5})
    with pytest.raises(config.ConfigError, match="expected section.key=value"):
        config.parse_set(["steps"])


def test_section_params_restore_types_inside_tasks():
    # KFP turns every number in a dict parameter into a double
    assert config.section_params("vocab", {"vocab_size": 2000.0, "min_frequency": 2.0}) == {
        "vocab_size": 2000, "min_frequency": 2}
    out = config.section_params("evaluate", {"max_train_examples": 200.0, "learning_rate": 2e-4})
    assert out == {"max_train_examples": 200, "learning_rate": 2e-4}
    assert isinstance(out["max_train_examples"], int)
    with pytest.raises(config.ConfigError, match="vocab.vocab_size"):
        config.section_params("vocab", {"vocab_size": 2000.5})


# Config sections and the library functions they feed (the CLI and the components pass a
# section's keys as keyword arguments): the same names, and the same defaults, so a
# library call without a config trains and evaluates as the config's defaults say.
# Section keys a function does not take (the pipeline uses them) or takes under another name.
# evaluate.seeds / baselines: evaluate_runs' (one fine_tune per seed; baselines with random init).
SECTION_ONLY = {"evaluate": {"tasks", "parallelism", "per_task", "seeds", "baselines"}}
RENAMED = {"push": {"tag_runs": "tag"}}


def _section_functions():
    from korlm.evaluation.evaluate import fine_tune
    from korlm.hub.push import push_model
    from korlm.pretrain.train import run_pretrain
    from korlm.pretrain_data.beam import run_pretrain_data
    from korlm.tokenizer.vocab import build_vocab

    return {"pretrain": run_pretrain, "vocab": build_vocab, "pretrain_data": run_pretrain_data,
            "evaluate": fine_tune, "push": push_model}


@pytest.mark.parametrize("section", ["pretrain", "vocab", "pretrain_data", "evaluate", "push"])
def test_section_defaults_are_the_functions_defaults(section):
    import inspect

    function = _section_functions()[section]
    parameters = inspect.signature(function).parameters
    model = config.Config.model_fields[section].annotation
    checked, drift = 0, []
    for name, field in model.model_fields.items():
        if name in SECTION_ONLY.get(section, ()):
            continue
        param = parameters.get(RENAMED.get(section, {}).get(name, name))
        if param is None:
            drift.append(f"{section}.{name}: {function.__name__} has no such parameter")
            continue
        if param.default is inspect.Parameter.empty:
            continue  # required by the function (an input path, the repo id)
        ours = field.get_default(call_default_factory=True)
        if isinstance(ours, list | dict) and not ours and param.default is None:
            ours = None  # an empty list in the config is the function's None
        if hasattr(ours, "model_dump"):
            ours = ours.model_dump()
        checked += 1
        if ours != param.default:
            drift.append(f"{section}.{name}: config {ours!r}, {function.__name__} {param.default!r}")
    assert not drift, "; ".join(drift)
    assert checked >= 5, f"{section}: only {checked} defaults compared"
