"""CLI contract: --help for every step, one-line errors for bad config and missing inputs."""

import subprocess
import sys

import pytest

STEPS = ["clean", "vocab", "pretrain-data", "pretrain", "evaluate", "finetune", "serve", "report", "export",
         "push", "pipeline"]


def korlm(*args):
    return subprocess.run([sys.executable, "-m", "korlm.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("step", STEPS)
def test_help(step):
    proc = korlm(step, "--help")
    assert proc.returncode == 0
    assert "--config" in proc.stdout


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_config_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  stepz: 10\n")
    _one_line_error(korlm("pipeline", "run", "--config", str(bad)), "pretrain.stepz", "unknown key")


def test_missing_config_file(tmp_path):
    _one_line_error(korlm("pipeline", "compile", "--config", str(tmp_path / "x.yaml")),
                    "does not exist")


def test_missing_clean_input(tmp_path):
    _one_line_error(korlm("clean", "--input", str(tmp_path / "none.txt"), "--output",
                          str(tmp_path / "out")), "none.txt")


def test_pipeline_run_missing_input(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("clean:\n  inputs:\n    - {path: data/sample/raw/missing.tsv}\n")
    _one_line_error(korlm("pipeline", "run", "--config", str(conf)), "missing.tsv", "matches no file")


def test_missing_step_inputs(tmp_path):
    _one_line_error(korlm("vocab", "--corpus", str(tmp_path / "nope"), "--output", str(tmp_path / "v")),
                    "nope")
    _one_line_error(korlm("pretrain", "--data", str(tmp_path / "nope"), "--tokenizer",
                          str(tmp_path / "t"), "--output", str(tmp_path / "r")), "nope")
    # --tokenizer is optional (a checkpoint carries its own): the checkpoint is what is missing
    for step in (["evaluate", "--task", "nsmc"], ["export"]):
        _one_line_error(korlm(*step, "--checkpoint", str(tmp_path / "nope"), "--output",
                              str(tmp_path / "o")), "nope", "is not a korlm checkpoint")


def test_kfp_submit_of_local_paths_without_a_data_volume_names_what_is_missing(tmp_path):
    _one_line_error(korlm("pipeline", "submit", "--target", "kfp", "--config", "configs/local.yaml"),
                    "clean.inputs[0].path", "kfp.data_pvc")


def test_vertex_submit_of_a_local_config_names_what_is_missing(tmp_path):
    _one_line_error(korlm("pipeline", "submit", "--target", "vertex", "--config", "configs/local.yaml",
                          "--dry-run"), "vertex.project is not set")


def test_override_flag_is_validated(tmp_path):
    _one_line_error(korlm("pretrain", "--data", "d", "--tokenizer", "t", "--output", "o",
                          "--steps", "0"), "pretrain.steps")
