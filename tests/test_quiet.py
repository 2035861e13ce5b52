"""A command prints loraflow's own messages and its own progress bar; third-party logs, warnings and
loading bars appear only with --verbose."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

# Runs a real command through loraflow.cli.main, then reports the switches of the two libraries.
PROBE = """
import sys
from loraflow import cli
rc = cli.main(sys.argv[1:])
import diffusers.utils.logging as d, transformers.utils.logging as t
print("LEVELS", rc, d.get_verbosity(), d.is_progress_bar_enabled(), t.get_verbosity(), t.is_progress_bar_enabled())
"""
THIRD_PARTY = ("FutureWarning", "torch_dtype", "Loading pipeline components", "Loading weights",
               "[transformers]", "torchvision", "huggingface/tokenizers")


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()  # the user's own settings would mask ours
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY",
                        "TOKENIZERS_PARALLELISM", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=300)


def _generate(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return _run("generate", "--prompt", "a red circle on the left, white background", "--steps", "2",
                "--height", "64", "--width", "64", "--out", str(tmp_path), *extra)


def _levels(proc) -> list[str]:
    return next(line for line in proc.stdout.splitlines() if line.startswith("LEVELS")).split()[1:]


def test_generate_shows_our_notice_and_bar_and_no_third_party_output(tmp_path):
    proc = _generate(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the built-in demo model" in proc.stderr  # our notice
    assert "generate: 100%" in proc.stderr  # our one bar
    assert [s for s in THIRD_PARTY if s in proc.stderr] == [], proc.stderr
    assert _levels(proc) == ["0", str(logging.ERROR), "False", str(logging.ERROR), "False"]
    assert len(list(tmp_path.glob("*.png"))) == 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_leaves_third_party_logging_alone(tmp_path, where):
    command = ["demo", "dataset", "--n", "2", "--out", str(tmp_path)]  # the probe imports the libraries after it
    proc = _run(*(["--verbose", *command] if where == "before" else [*command, "--verbose"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the libraries' defaults: warnings and up, bars on
    assert _levels(proc) == ["0", str(logging.WARNING), "True", str(logging.WARNING), "True"]
