"""`korlm COMMAND --help` teaches: every flag has help text and every command's help ends
with examples; the clean --dry-run example runs as printed."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from korlm.cli import EXAMPLES, build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_flag_has_help_and_the_help_ends_with_examples(name):
    parser = _subcommands()[name]
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"korlm {name}: flags without help: {missing}"
    text = parser.format_help()
    assert "Examples:" in text
    epilog = text[text.index("Examples:"):]
    assert f"korlm {name} " in epilog, epilog
    # every example names only flags the command has
    flags = {s for a in parser._actions for s in a.option_strings}
    for line in EXAMPLES[name].splitlines():
        for word in shlex.split(line.replace("\\", "")):
            if word.startswith("--") and f"korlm {name}" in line:
                assert word.split("=")[0] in flags, f"{line}: {word}"


def test_the_clean_dry_run_example_runs_as_printed():
    example = next(ln for ln in EXAMPLES["clean"].splitlines() if "--dry-run" in ln)
    argv = shlex.split(example)
    assert argv[:2] == ["korlm", "clean"]
    proc = subprocess.run([sys.executable, "-m", "korlm.cli", *argv[1:],
                           "--dry-run-records", "50"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"input_records": 50' in proc.stdout, proc.stdout
