"""CLI contract: --help for every step, one-line errors for bad config and missing inputs."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def test_kfp_submit_of_local_paths_without_a_data_volume_names_what_is_missing(tmp_path):
    _one_line_error(korlm("pipeline", "submit", "--target", "kfp", "--config", "configs/local.yaml"),
                    "clean.inputs[0].path", "kfp.data_pvc")


def test_vertex_submit_of_a_local_config_names_what_is_missing(tmp_path):
    _one_line_error(korlm("pipeline", "submit", "--target", "vertex", "--config", "configs/local.yaml",
                          "--dry-run"), "vertex.project is not set")


def test_override_flag_is_validated(tmp_path):
    _one_line_error(korlm("pretrain", "--data", "d", "--tokenizer", "t", "--output", "o",
                          "--steps", "0"), "pretrain.steps")


# ---------------------------------------------------------------- clean: inputs named in the config's terms

def _readme_clean_examples():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return [line.strip() for line in readme.splitlines() if line.strip().startswith("korlm clean --input data/")]


def test_the_readme_clean_examples_run():
    examples = _readme_clean_examples()
    assert any("movie_reviews.tsv" in e for e in examples)
    for example in examples:
        args = shlex.split(example.split("#")[0])[2:]
        i = args.index("--output")
        args[i: i + 2] = ["--dry-run", "--dry-run-records", "50"]
        proc = subprocess.run([sys.executable, "-m", "korlm.cli", "clean", *args], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0, example + "\n" + proc.stderr
        report = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert report["kept_records"] > 0.8 * report["input_records"] > 0, example


def test_clean_input_errors_are_one_line():
    reviews = "data/sample/raw/movie_reviews.tsv"
    _one_line_error(korlm("clean", "--input", reviews, "--output", "x"),
                    "has no column 'text'", "columns: id, movie_id, rating, review", "--field")
    _one_line_error(korlm("clean", "--input", reviews, "--format", "parquet", "--output", "x"),
                    "format: input should be 'txt'")
    _one_line_error(korlm("clean", "--input", f"{{path: {reviews}, colum: review}}", "--output", "x"),
                    "colum: unknown key")
    _one_line_error(korlm("clean", "--input", "{path:", reviews, "--output", "x"), "quote the whole input")
    _one_line_error(korlm("clean", "--field", "review", "--output", "x"), "--input paths")


def test_clean_that_keeps_nothing_exits_2_with_the_top_reasons(tmp_path):
    (tmp_path / "en.tsv").write_text("id\treview\n1\tEnglish only\n2\tStill English here\n3\t짧음\n",
                                     encoding="utf-8")
    (tmp_path / "c.yaml").write_text("clean:\n  sentence_splitter: regex\n")
    proc = korlm("clean", "--config", str(tmp_path / "c.yaml"), "--input", str(tmp_path / "en.tsv"),
                 "--field", "review", "--dry-run")
    _one_line_error(proc, "kept no documents: all 3 input records were rejected",
                    "low_hangul_ratio 2, too_short_document 1")
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["rejected_records"] == 3
