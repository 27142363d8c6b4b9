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


# ---------------------------------------------------------------- the last tracebacks (issue 16)


def test_config_that_is_not_utf8_empty_or_a_folder(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("pretrain:\n  steps: 10\n# caf\xe9\n".encode("latin-1"))
    _one_line_error(korlm("pipeline", "compile", "--config", str(latin)), "not UTF-8 text",
                    "byte 0xe9 on line 3")
    empty = tmp_path / "empty.yaml"
    for text in ("", "\n\n", "# only a comment\n"):
        empty.write_text(text)
        _one_line_error(korlm("pipeline", "compile", "--config", str(empty), "--output",
                              str(tmp_path / "p.yaml")), "is empty")
    assert not (tmp_path / "p.yaml").exists()
    _one_line_error(korlm("vocab", "--config", str(tmp_path), "--corpus", "c", "--output", "o"),
                    "is a folder")


def test_a_config_without_inputs_compiles_no_pipeline(tmp_path):
    conf = tmp_path / "no-inputs.yaml"
    conf.write_text("pretrain:\n  steps: 100\n")
    _one_line_error(korlm("pipeline", "compile", "--config", str(conf), "--output",
                          str(tmp_path / "p.yaml")), "clean.inputs is empty")
    assert not (tmp_path / "p.yaml").exists()


def test_compile_replaces_only_a_compiled_pipeline(tmp_path):
    notes = tmp_path / "notes.yaml"
    notes.write_text("todo: [write thesis]\n")
    _one_line_error(korlm("pipeline", "compile", "--config", "configs/local.yaml", "--output", str(notes)),
                    "is not a compiled pipeline korlm wrote")
    assert notes.read_text() == "todo: [write thesis]\n"
    out = tmp_path / "p.yaml"
    for _ in range(2):  # the second compile replaces the first
        proc = korlm("pipeline", "compile", "--config", "configs/local.yaml", "--output", str(out))
        assert proc.returncode == 0, proc.stderr
    assert "pipelineInfo:" in out.read_text()


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "results" / "nsmc").mkdir(parents=True)
    (tmp_path / "results" / "nsmc" / "metrics.json").write_text(
        '{"task": "nsmc", "checkpoint": "step-000010", "step": 10, "metrics": {"accuracy": 0.5}}')
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_error(korlm("report", "--results", str(tmp_path / "results"), "--output",
                          str(blocker / "report")), "cannot write output", "Not a directory")
    _one_line_error(korlm("pipeline", "compile", "--config", "configs/local.yaml", "--output",
                          str(blocker / "p.yaml")), "a-file")
    assert blocker.read_text() == "x"


def _corpus_with_bad_part(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part-00000-of-00002.txt").write_text("좋은 영화였다.\n\n" * 30, encoding="utf-8")
    (corpus / "part-00001-of-00002.txt").write_bytes(
        "첫 문장입니다.\n\n".encode() + b"\xbf\xb5\xc8\xad euc-kr\n\n")
    return corpus


def test_vocab_and_pretrain_data_name_a_non_utf8_corpus_line(tmp_path):
    from tests.test_pretrain import build_tokenizer

    corpus = _corpus_with_bad_part(tmp_path)
    _one_line_error(korlm("vocab", "--corpus", str(corpus), "--output", str(tmp_path / "v"),
                          "--vocab-size", "1000"),
                    "part-00001-of-00002.txt, line 3: not UTF-8 text")
    tok = build_tokenizer(tmp_path / "tok", num_sentences=50, vocab_size=300)
    _one_line_error(korlm("pretrain-data", "--corpus", str(corpus), "--tokenizer", str(tok), "--output",
                          str(tmp_path / "ex")), "part-00001-of-00002.txt, line 3: not UTF-8 text")
    assert not (tmp_path / "v").exists() and not (tmp_path / "ex").exists()


@pytest.mark.parametrize("content", [b"{not json", b'{"outputs": ["a"]}', b"{}", b"\xff\xfe"])
def test_run_step_names_a_corrupt_outputs_json(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "outputs.json").write_bytes(content)
    (run / "config.yaml").write_text("pretrain:\n  steps: 10\n")
    _one_line_error(korlm("pipeline", "run-step", "vocab", "--from-run", str(run)),
                    "outputs.json is corrupt")


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
