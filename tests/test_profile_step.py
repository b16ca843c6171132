"""experiments/profile_step.py and bench_interaction.py: op categories, trace parsing, real runs."""

import gzip
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import profile_step  # noqa: E402


def test_categories():
  assert profile_step.category("all-to-all.3") == "collective"
  assert profile_step.category("all-reduce.14") == "collective"
  assert profile_step.category("sort.21") == "sort"
  assert profile_step.category("ynn_fusion.17") == "matmul" and profile_step.category("dot.10") == "matmul"
  assert profile_step.category("wrapped_scatter.5") == "scatter"
  assert profile_step.category("bitcast_gather_fusion.3") == "gather"
  assert profile_step.category("wrapped_broadcast.7") == "zero-fill"
  assert profile_step.category("multiply_add_fusion.14") == "other"


def test_op_times_sums_complete_events_and_skips_runtime_ones(tmp_path):
  events = [{"ph": "X", "name": "dot.1", "dur": 10}, {"ph": "X", "name": "dot.1", "dur": 5},
            {"ph": "X", "name": "sort.2", "dur": 7}, {"ph": "B", "name": "dot.1"},
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 100}, {"ph": "X", "name": "Wait: x", "dur": 9}]
  path = tmp_path / "t.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  assert profile_step.op_times(str(path)) == {"dot.1": 15, "sort.2": 7}


def test_hlo_shapes():
  from dmt_jax.analysis import hlo
  text = ("  %dot.10 = f32[512,27,64]{2,1,0} dot(%a, %b), lhs_batch_dims={0}\n"
          "  ROOT %sort.2 = (s32[8]{0}, s32[8]{0}) sort(%c, %d), dimensions={0}\n")
  shapes = hlo.instruction_shapes(text)
  assert shapes["dot.10"].startswith("f32[512,27,64]")
  assert shapes["sort.2"].startswith("(s32[8]{0},")


@pytest.mark.slow
def test_runs_on_tiny(tmp_path):
  res = subprocess.run([sys.executable, "experiments/profile_step.py",
                        "--config=experiments/configs/flat_dlrm.py:tiny", "--steps=1", "--warmup=1",
                        f"--trace_dir={tmp_path}", "--top=5"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "median step" in res.stdout and "by category" in res.stdout and "cores busy" in res.stdout
  assert "collective" in res.stdout and "matmul" in res.stdout


def test_bench_interaction_checks_and_times_every_form():
  """The interaction micro-benchmark verifies each rewrite against the library before timing it."""
  res = subprocess.run([sys.executable, "experiments/bench_interaction.py", "--batch=64", "--vectors=5",
                        "--dim=8", "--repeats=1", "--rounds=1"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.count("median") == 5 and "library (einsum + index)" in res.stdout
  assert "broadcast multiply-sum" in res.stdout
