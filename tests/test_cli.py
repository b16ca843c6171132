"""experiments/cli.py: asking a script for its usage succeeds (absl alone exits 1); failures still fail."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args],
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script,arg", [("benchmark.py", "--help"), ("slow_link_benchmark.py", "--helpfull"),
                                        ("main.py", "--helpshort")])
def test_help_exits_zero_and_prints_the_flags(script, arg):
  r = _run(script, arg)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--" in r.stdout and ("--suite" in r.stdout or "--speeds" in r.stdout or "--workdir" in r.stdout)


def test_a_bad_flag_still_fails():
  r = _run("benchmark.py", "--suite=nonsense")
  assert r.returncode != 0 and "nonsense" in r.stderr
