"""One logging setup for ``korlm`` (the CLI and the KFP components).

``setup(verbosity)``: 0 (default) shows korlm's INFO lines and every library's warnings;
-1 (``--quiet``) warnings and errors only; 1 (``--verbose``) korlm's DEBUG lines, the
libraries' INFO lines and TensorFlow's native start-up messages.

TensorFlow 2.21 writes its start-up messages from C++ through absl before Python logging
exists and before ``absl::InitializeLog()`` (``WARNING: All log messages before
absl::InitializeLog() ...``, ``oneDNN custom operations are on``, ``Could not find cuda
drivers``, the CPU-instructions notice and, on a machine without a GPU, ``failed call to
cuInit: ... CUDA error``). ``TF_CPP_MIN_LOG_LEVEL`` no longer silences them (measured:
the same lines with 2 and 3), and hiding the GPU (``CUDA_VISIBLE_DEVICES=``) would take
it from GPU users. So, unless verbose, :func:`filter_native_stderr` puts a filter on file
descriptor 2 that drops exactly those lines: absl's INFO lines (``I0000 ...``), its
notice line, the CPU-instructions continuation, and its CUDA ERROR lines only when the
machine has no NVIDIA device (``/dev/nvidia*`` absent: there they are noise; with a GPU
they are kept, as are all other WARNING/ERROR lines). The filter is installed only by
the command-line entry point (a process of its own) and, in a KFP task (the KFP
executor's process, which runs one component), by :func:`filter_task_stderr`; never in a
caller's process. ``KORLM_NATIVE_LOGS=1`` keeps the lines in a task's log.
"""

from __future__ import annotations

import atexit
import gc
import glob
import logging
import os
import re
import sys
import threading

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# absl / glog line prefix: severity, MMDD, time, thread id, file:line]
_ABSL = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ ([\w.]+):\d+\] ")
_NOTICES = (b"WARNING: All log messages before absl::InitializeLog() is called",
            b"To enable the following instructions:")  # cpu_feature_guard's second line
_CUDA = re.compile(rb"cuda|cuInit|CUDA", re.IGNORECASE)

_filter_installed = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(verbosity: int = 0) -> None:
    """Configure Python logging for a korlm process (idempotent: called again, it
    replaces its own handler). Unless ``verbosity`` > 0 it also sets
    ``TF_CPP_MIN_LOG_LEVEL=2`` (if unset) for the TensorFlow messages that honour it."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    korlm_level = {-1: logging.WARNING, 0: logging.INFO}.get(max(-1, min(verbosity, 1)),
                                                             logging.DEBUG)
    logging.getLogger("korlm").setLevel(korlm_level)
    if verbosity <= 0:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow's and absl's Python loggers: their INFO chatter only when verbose
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)


def has_nvidia_device() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.isdir("/proc/driver/nvidia")


def is_native_noise(line: bytes, *, gpu: bool) -> bool:
    """Whether a line written to file descriptor 2 is TensorFlow's native start-up noise
    (see the module docstring)."""
    if line.startswith(_NOTICES):
        return True
    match = _ABSL.match(line)
    if match is None:
        return False
    severity = match.group(1)
    if severity == b"I":
        return True
    return severity == b"E" and not gpu and bool(_CUDA.search(line))


def _may_be_noise(partial: bytes) -> bool:
    """Whether the start of a line (no newline yet) may still turn out to be noise: if
    not, it is passed on at once (progress bars redraw a line with ``\\r``, no newline)."""
    if len(partial) < 80:
        return partial[:1] in (b"I", b"W", b"E", b"F", b"T")
    return bool(_ABSL.match(partial)) or partial.startswith(_NOTICES)


def filter_native_stderr() -> None:
    """Route file descriptor 2 through a thread that drops TensorFlow's native noise
    (:func:`is_native_noise`) and passes every other byte on, in order. At exit the
    descriptor is restored and what is left is written out. Once per process."""
    global _filter_installed
    if _filter_installed:
        return
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        return  # no stderr to filter
    _filter_installed = True
    gpu = has_nvidia_device()

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                kept = b"".join(ln + b"\n" for ln in lines if not is_native_noise(ln, gpu=gpu))
                if pending and not _may_be_noise(pending):
                    kept, pending = kept + pending, b""
                if kept:
                    os.write(original, kept)
        if pending and not is_native_noise(pending, gpu=gpu):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="korlm-stderr-filter", daemon=True)
    thread.start()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def restore() -> None:
        # Objects in reference cycles first, while the interpreter and the pump still run:
        # left to interpreter shutdown, the pretrain task's tf.data iterator took 43 s to
        # wind down after the demo's 400 steps; collected here, the task ends 2 s after its
        # output is written (kfp.local, measured 2026-12-03).
        gc.collect()
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last write end: the pump drains and ends
        thread.join(timeout=5)

    atexit.register(restore)


KFP_EXECUTOR = "kfp.dsl.executor_main"


def filter_task_stderr() -> None:
    """:func:`filter_native_stderr` when this process is a KFP task's executor
    (``python -m kfp.dsl.executor_main``, one component per process: the local
    SubprocessRunner, a KFP pod, a Vertex AI task), unless ``KORLM_NATIVE_LOGS=1``.
    Components call it first; a component function called in another process (a test,
    a notebook) leaves that process's stderr alone."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(spec, "name", None) == KFP_EXECUTOR and os.environ.get("KORLM_NATIVE_LOGS") != "1":
        filter_native_stderr()
