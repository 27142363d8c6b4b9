"""korlm's logging (korlm/logs.py): korlm's INFO lines show by default, TensorFlow's
native start-up noise does not unless --verbose, --quiet leaves warnings and errors only.
Each command runs in a subprocess of its own, as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from korlm import logs

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("CUDA", "cuda_", "oneDNN", "E0000", "I0000", "absl::InitializeLog")


def korlm(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "korlm.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A small corpus, a tokenizer, and `korlm pretrain-data` (Beam, then TensorFlow) run
    on them at the default verbosity."""
    from tests.test_pretrain import build_tokenizer, sample_reviews

    root = tmp_path_factory.mktemp("logging")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "part-00000-of-00001.txt").write_text(
        "".join(f"{t}\n\n" for t in sample_reviews(200)), encoding="utf-8")
    tokenizer = build_tokenizer(root / "tok", num_sentences=200, vocab_size=600)
    proc = korlm("pretrain-data", "--corpus", str(corpus), "--tokenizer", str(tokenizer),
                 "--output", str(root / "data"), "--max-seq-length", "32")
    assert proc.returncode == 0, proc.stderr
    return root, tokenizer, proc


def _inspect(root: Path, tokenizer: Path) -> tuple[str, ...]:
    return ("pretrain-data", "--inspect", str(root / "data"), "--tokenizer", str(tokenizer),
            "--examples", "1")


def test_korlm_info_lines_show_and_tensorflow_noise_does_not(packed):
    root, tokenizer, proc = packed
    lines = proc.stderr.splitlines()
    assert any(" INFO korlm.pretrain_data.beam: pretrain-data: " in ln for ln in lines), proc.stderr
    assert not [ln for ln in lines if any(n in ln for n in NOISE)], proc.stderr
    # --inspect imports TensorFlow and reads the shards with it: its noise is dropped
    inspect = korlm(*_inspect(root, tokenizer))
    assert inspect.returncode == 0 and "example 1:" in inspect.stdout, inspect.stderr
    assert not [ln for ln in inspect.stderr.splitlines() if any(n in ln for n in NOISE)], \
        inspect.stderr


def test_quiet_shows_warnings_only_and_verbose_shows_the_native_lines(packed):
    root, tokenizer, _ = packed
    vocab = ("vocab", "--corpus", str(root / "corpus"), "--vocab-size", "2000", "--output")
    quiet = korlm("-q", *vocab, str(root / "vocab-q"))  # before the command
    assert quiet.returncode == 0 and "vocab ->" in quiet.stdout, quiet.stderr
    assert quiet.stderr == ""  # no "INFO korlm.tokenizer.vocab: vocab: ..." line
    default = korlm(*vocab, str(root / "vocab"))
    assert " INFO korlm.tokenizer.vocab: vocab: " in default.stderr, default.stderr
    verbose = korlm(*_inspect(root, tokenizer), "--verbose")  # after it
    assert verbose.returncode == 0, verbose.stderr
    # TensorFlow's C++ lines (the oneDNN notice at least, on x86) pass unfiltered
    assert any(logs.is_native_noise(ln.encode(), gpu=False)
               for ln in verbose.stderr.splitlines()), verbose.stderr


@pytest.mark.parametrize("line, gpu, noise", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
     False, True),
    ("I0000 00:00:1796203924.076481   16986 port.cc:153] oneDNN custom operations are on.",
     False, True),
    ("I1202 09:32:02.123456   16986 cudart_stub.cc:31] Could not find cuda drivers", True, True),
    ("E0000 00:00:1796203928.760995   16986 cuda_platform.cc:52] failed call to cuInit: "
     "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)", False, True),
    # with a GPU present a CUDA error is real news: kept
    ("E0000 00:00:1796203928.760995   16986 cuda_platform.cc:52] failed call to cuInit: "
     "INTERNAL: CUDA error", True, False),
    ("E0000 00:00:1796203928.760995   16986 op_kernel.cc:1] OOM when allocating", False, False),
    ("W0000 00:00:1796203928.760995   16986 loader.cc:1] something to know", False, False),
    ("09:32:02 INFO korlm.clean.beam: clean: 10 of 10 records kept", False, False),
    ("Traceback (most recent call last):", False, False),
])
def test_only_the_native_start_up_lines_are_dropped(line, gpu, noise):
    assert logs.is_native_noise(line.encode(), gpu=gpu) is noise


def test_the_filter_passes_a_progress_bar_on_before_its_line_ends():
    """A line that cannot be noise is written at once, without waiting for its newline
    (a progress bar redraws with \\r); an absl-looking start waits for the whole line."""
    code = ("import os, sys, time\n"
            "from korlm import logs\n"
            "logs.filter_native_stderr()\n"
            "os.write(2, b'I0000 00:00:1796203924.076481   1 port.cc:153] oneDNN on\\n')\n"
            "os.write(2, b'progress 50%\\r')\n"
            "time.sleep(0.5)\n"
            "os.write(2, b'progress 100%\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = os.read(proc.stderr.fileno(), 100)  # before the sleep ends
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 0
    assert first == b"progress 50%\r", first
    assert rest == b"progress 100%\n", rest


def test_objects_in_reference_cycles_are_collected_at_exit_while_the_filter_still_runs():
    """At exit the filter collects garbage before it restores stderr: a cycle's finalizer
    (a tf.data iterator's, in the pretrain task: left to interpreter shutdown it took 43 s)
    runs while the pump thread is alive, and what it writes still passes the filter."""
    code = ("import os, threading\n"
            "from korlm import logs\n"
            "logs.filter_native_stderr()\n"
            "class Node:\n"
            "    def __del__(self):\n"
            "        alive = any(t.name == 'korlm-stderr-filter' for t in threading.enumerate())\n"
            "        os.write(2, b'I0000 00:00:1796203924.076481   1 port.cc:153] oneDNN on\\n')\n"
            "        os.write(2, b'finalized, filter alive: %s\\n' % str(alive).encode())\n"
            "a, b = Node(), Node()\n"
            "a.other, b.other = b, a\n"
            "del a, b\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"finalized, filter alive: True\n" * 2, proc.stderr


def test_a_kfp_task_filters_tensorflows_native_lines_in_its_own_process(tmp_path, capfd):
    """A component calling ``filter_task_stderr`` in a real KFP executor process (kfp.local,
    SubprocessRunner) drops the native start-up lines from the task's log and keeps its
    other lines; ``KORLM_NATIVE_LOGS=1`` keeps them (so the check can fail), and the
    function called in this process leaves this process's stderr alone."""
    from kfp import dsl, local

    def noisy(keep: str) -> str:
        import os

        os.environ["KORLM_NATIVE_LOGS"] = keep
        from korlm.logs import filter_task_stderr

        filter_task_stderr()
        os.write(2, b"I0000 00:00:1796203924.076481   1 port.cc:153] oneDNN custom operations\n")
        os.write(2, b"task line kept\n")
        return "done"

    task = dsl.component(noisy, base_image="python:3.11", install_kfp_package=False)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path),
               raise_on_error=True, enable_caching=False)
    logged = {}
    for keep in ("", "1"):
        capfd.readouterr()
        assert task(keep=keep).output == "done"
        out = capfd.readouterr()
        logged[keep] = out.out + out.err
    assert "task line kept" in logged[""] and "oneDNN custom operations" not in logged[""]
    assert "task line kept" in logged["1"] and "oneDNN custom operations" in logged["1"]

    logs.filter_task_stderr()  # not a KFP executor: nothing installed here
    assert not logs._filter_installed
