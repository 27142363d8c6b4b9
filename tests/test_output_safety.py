"""Output safety through the CLI, for every command that writes an artifact folder: an
--output that holds anything korlm did not write (a user's folder, a regular file, the
folder around the command's own inputs, a gs:// prefix with other objects) is refused in
one line with exit 2 and every byte left as it was; --overwrite replaces korlm's own
artifact of the same step.

The module makes the commands' inputs once (a real 2-step pretraining run and its export
among them); the --overwrite test runs every command once, for real.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
import yaml

from korlm import storage
from korlm.cli import main
from tests import gcs_emulator
from tests.test_evaluate import write_nsmc_slice

SETTINGS = {
    "vocab": {"vocab_size": 1000},
    "pretrain_data": {"max_seq_length": 32},
    "pretrain": {"model": "bert", "size": "tiny", "steps": 2, "checkpoint_every": 2, "batch_size": 8},
    "evaluate": {"max_train_examples": 16, "max_eval_examples": 16, "epochs": 1, "batch_size": 8,
                 "max_seq_length": 32},
    "tune": {"n_trials": 1, "pruner": "none", "sampler": "random",
             "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3,
                                                "log": True}}},
}


def _commands(w: dict[str, Path]) -> dict[str, list[str]]:
    """Each command's argv without --output; the first input-ish path is the one whose
    parent folder the 'parent of an input' case writes to."""
    conf = ["--config", str(w["config"])]
    checkpoint = str(w["run"] / "checkpoints" / "step-000002")
    return {
        "clean": ["clean", "--input", str(w["raw"]), *conf],
        "vocab": ["vocab", "--corpus", str(w["corpus"]), *conf],
        "pretrain-data": ["pretrain-data", "--corpus", str(w["corpus"]), "--tokenizer", str(w["tok"]), *conf],
        "pretrain": ["pretrain", "--data", str(w["examples"]), "--tokenizer", str(w["tok"]), *conf],
        "evaluate": ["evaluate", "--checkpoint", checkpoint, "--task", "nsmc",
                     "--data-dir", str(w["nsmc"]), *conf],
        "report": ["report", "--results", str(w["evaluate"])],
        "export": ["export", "--checkpoint", str(w["run"]), *conf],
        "finetune": ["finetune", "--checkpoint", str(w["run"]), "--task", "nsmc",
                     "--data-dir", str(w["nsmc"]), *conf],
        "tune": ["tune", "--checkpoint", str(w["run"]), "--task", "nsmc", "--data-dir", str(w["nsmc"]),
                 *conf],
        "push": ["push", "--model", str(w["export"]), "--repo-id", "korlm/test-tiny", "--dry-run", *conf],
    }


# the input whose enclosing folder the "parent of an input" case names as --output
MAIN_INPUT = {"clean": "raw", "vocab": "corpus", "pretrain-data": "corpus", "pretrain": "examples",
              "evaluate": "run", "report": "evaluate", "export": "run", "finetune": "run", "tune": "run",
              "push": "export"}
STEPS = list(MAIN_INPUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The commands' inputs, made as cheaply as they can be real: a corpus and data in the
    steps' formats (tests' writers), a real 2-step pretraining run and its real export."""
    from tests.conftest import write_review_corpus
    from tests.test_pretrain import build_tokenizer, sample_reviews, write_pretraining_data

    root = tmp_path_factory.mktemp("safety")
    w = {"root": root, "raw": root / "raw" / "reviews.txt", "config": root / "korlm.yaml",
         "nsmc": write_nsmc_slice(root / "nsmc", num_train=60, num_test=30)}
    w["raw"].parent.mkdir()
    w["raw"].write_text("".join(f"{r}\n" for r in sample_reviews(300)), encoding="utf-8")
    w["config"].write_text(yaml.safe_dump(SETTINGS), encoding="utf-8")
    w["corpus"] = write_review_corpus(root / "corpus", 300)
    w["tok"] = build_tokenizer(root / "tok")
    w["examples"] = write_pretraining_data(root / "examples", w["tok"], num_examples=64)
    results = root / "evaluate" / "nsmc"
    results.mkdir(parents=True)
    (results / "metrics.json").write_text(json.dumps(
        {"task": "nsmc", "checkpoint": "step-000002", "step": 2, "metrics": {"accuracy": 0.5}}))
    w["evaluate"], w["run"], w["export"] = root / "evaluate", root / "run", root / "export"
    for step, out in (("pretrain", "run"), ("export", "export")):
        assert main([*_commands(w)[step], "--output", str(w[out])]) == 0, step
    return w


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"korlm {argv[0]}: error: output "), err
    return err


@pytest.fixture(scope="module")
def bucket():
    with gcs_emulator.running() as url:
        yield url


@pytest.mark.parametrize("step", STEPS)
def test_a_users_folder_is_refused_untouched(world, step, tmp_path, capsys):
    out = tmp_path / "notes"
    (out / "drafts").mkdir(parents=True)
    (out / "회의록.md").write_text("# 회의록\n예산 확정", encoding="utf-8")
    (out / "drafts" / "plan.txt").write_bytes(b"\x00\x01 binary too")
    before, inputs_before = _snapshot(tmp_path), _snapshot(world["root"])
    for extra in ([], ["--overwrite"]):
        err = _refused([*_commands(world)[step], "--output", str(out), *extra], capsys)
        assert "is not empty" in err and "not a korlm" in err
    assert _snapshot(tmp_path) == before and _snapshot(world["root"]) == inputs_before


@pytest.mark.parametrize("step", STEPS)
def test_a_regular_file_is_refused_untouched(world, step, tmp_path, capsys):
    out = tmp_path / "thesis.pdf"
    out.write_bytes(b"%PDF-1.7 my thesis")
    for extra in ([], ["--overwrite"]):
        assert "is an existing file" in _refused(
            [*_commands(world)[step], "--output", str(out), *extra], capsys)
    assert out.read_bytes() == b"%PDF-1.7 my thesis"


@pytest.mark.parametrize("step", STEPS)
def test_the_folder_around_an_input_is_refused_untouched(world, step, capsys):
    out = world[MAIN_INPUT[step]].parent  # the run's root: it holds every input
    before = _snapshot(world["root"])
    for extra in ([], ["--overwrite"]):
        err = _refused([*_commands(world)[step], "--output", str(out), *extra], capsys)
        assert "contains the input" in err, err
    assert _snapshot(world["root"]) == before


@pytest.mark.parametrize("step", STEPS)
def test_a_gcs_prefix_with_other_objects_is_refused_untouched(world, bucket, step, capsys):
    prefix = f"{bucket}/{uuid.uuid4().hex[:8]}"
    objects = {f"{prefix}/models/README.md": "팀 공용 버킷", f"{prefix}/models/v1/config.json": "{}"}
    for path, text in objects.items():
        storage.write_text(path, text)
    for extra in ([], ["--overwrite"]):
        assert "is not empty" in _refused(
            [*_commands(world)[step], "--output", f"{prefix}/models", *extra], capsys)
    assert {p: storage.read_text(p) for p in objects} == objects
    assert storage.listdir(prefix) == ["models"]


def _stub_artifact(path: Path, step: str) -> None:
    """An earlier korlm ``step`` output at ``path`` (its marker as the step writes it)."""
    with storage.atomic_output_dir(str(path), step) as staging:
        storage.write_text(storage.join(staging, "earlier.txt"), f"an earlier {step} output")


@pytest.mark.parametrize("step", STEPS)
def test_overwrite_replaces_only_the_same_steps_artifact(world, step, tmp_path, capsys):
    """Each command once, for real, with --overwrite over an earlier output of its own
    step (the real pretraining run for pretrain); without --overwrite it is refused, and
    another step's output is refused either way. evaluate, finetune, tune and export
    read the checkpoint's own tokenizer (no --tokenizer)."""
    out = world["run"] if step == "pretrain" else tmp_path / "out"
    if step != "pretrain":
        _stub_artifact(out, step)
    argv = [*_commands(world)[step], "--output", str(out)]
    if step != "pretrain":  # a pretraining run resumes (here: it is done) instead
        assert "already holds a korlm " + step in _refused(argv, capsys)
    other = tmp_path / "other"
    _stub_artifact(other, "report" if step != "report" else "push")
    before = _snapshot(other)
    assert "holds a korlm" in _refused([*argv[:-1], str(other), "--overwrite"], capsys)
    assert _snapshot(other) == before
    inputs = _snapshot(world["nsmc"])
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    marker = json.loads((out / storage.ARTIFACT_MARKER).read_text())
    assert marker["step"] == step and (out / storage.SUCCESS_MARKER).exists()
    assert not (out / "earlier.txt").exists()
    assert step == "pretrain" or marker["files"]
    assert _snapshot(world["nsmc"]) == inputs
    assert not [p.name for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    if step == "finetune":  # the run's last checkpoint and its own tokenizer were used
        from korlm.evaluation import finetune

        record = json.loads((out / "metrics.json").read_text())
        checkpoint = str(world["run"] / "checkpoints" / "step-000002")
        assert record["checkpoint_uri"] == checkpoint
        assert record["tokenizer_uri"] == str(Path(checkpoint) / "tokenizer")
        assert finetune.load_finetuned(str(out)).classify(["재밌어요"])[0]["label"] in ("0", "1")


def test_config_key_run_overwrite_acts_as_the_flag(world, tmp_path, capsys):
    conf = tmp_path / "overwrite.yaml"
    conf.write_text(yaml.safe_dump({**SETTINGS, "run": {"overwrite": True}}), encoding="utf-8")
    argv = ["push", "--model", str(world["export"]), "--repo-id", "korlm/test-tiny",
            "--output", str(tmp_path / "plan")]
    assert main(argv) == 0
    assert "already holds" in _refused(argv, capsys)
    assert main([*argv, "--config", str(conf)]) == 0


def test_pretrain_resumes_its_own_run_and_starts_over_with_overwrite(world, capsys):
    cmd = [*_commands(world)["pretrain"], "--output", str(world["run"])]
    assert main(cmd) == 0
    assert "already trained to step 2; nothing to do" in capsys.readouterr().out
    # a user's file dropped into the run folder survives and blocks --overwrite
    note = world["run"] / "my-notes.txt"
    note.write_text("lr 실험 메모", encoding="utf-8")
    assert "did not write (my-notes.txt)" in _refused([*cmd, "--overwrite"], capsys)
    assert note.read_text(encoding="utf-8") == "lr 실험 메모"
    assert main(cmd) == 0  # resuming leaves it alone too
    assert note.exists()
    note.unlink()


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_the_quality_run_script_refuses_a_folder_it_did_not_make(tmp_path, kind):
    """benchmarks/quality_run.sh writes config copies and a corpus cut into OUT: a folder
    without its marker that holds anything, or a regular file, is refused in one line with
    exit 2 and left as it was."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "notes"
    if kind == "folder":
        out.mkdir()
        (out / "bert.yaml").write_text("my own notes\n", encoding="utf-8")
    else:
        out.write_text("my own notes\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    proc = subprocess.run(["bash", "benchmarks/quality_run.sh", "evaluate"], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={"OUT": str(out), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did not write" in proc.stderr
    assert _snapshot(tmp_path) == before
