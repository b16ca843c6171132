"""The benchmark harness (dmt_jax/analysis/bench.py): rates, floor arithmetic, a real tiny round."""

import jax
import pytest

from dmt_jax import config_base
from dmt_jax.analysis import bench


def test_median_rates_takes_per_key_median_and_spread():
  probes = [{"matmul_flops_per_s": 3.0, "memory_bytes_per_s": 10.0},
            {"matmul_flops_per_s": 1.0, "memory_bytes_per_s": 30.0},
            {"matmul_flops_per_s": 2.0, "memory_bytes_per_s": 20.0}]
  r = bench.median_rates(probes)
  assert r["matmul_flops_per_s"] == 2.0 and r["memory_bytes_per_s"] == 20.0
  assert (r["matmul_flops_per_s_min"], r["matmul_flops_per_s_max"]) == (1.0, 3.0)
  assert (r["memory_bytes_per_s_min"], r["memory_bytes_per_s_max"]) == (10.0, 30.0)


def test_summarize_floor_is_flops_at_the_matmul_rate():
  case = bench.Case("x", config_base.get_config("dlrm", "flat", "tiny"), flops=4e9, bytes_accessed=1e9,
                    times=[0.5, 0.1, 0.2])
  rates = {"matmul_flops_per_s": 1e11, "memory_bytes_per_s": 1e10, "random_row_s": 1e-7}
  row = bench.summarize(case, rates)
  assert row["floor_ms"] == pytest.approx(40.0)                 # 4 GFLOP at 100 GFLOP/s
  lookups = case.config.batch_size * sum(case.config.data.max_bags)
  scale = max(1.0, 4 * case.config.data.embedding_dim / 256)
  assert row["rows_floor_ms"] == pytest.approx(1e3 * lookups * 1e-7 * scale)
  assert row["x_serial_floor"] == pytest.approx(200.0 / (40.0 + row["rows_floor_ms"]))
  assert row["step_ms_median"] == pytest.approx(200.0)
  assert (row["step_ms_min"], row["step_ms_max"]) == pytest.approx((100.0, 500.0))
  assert row["x_floor"] == pytest.approx(5.0)
  assert row["mem_traffic_est_ms"] == pytest.approx(100.0)
  assert row["examples_per_s"] == pytest.approx(case.config.batch_size / 0.2)


def test_interleaved_times_every_case_each_round_and_probes_rates():
  """Two tiny cases compiled for real: each round times both, and samples the machine's rates once."""
  cases = []
  for name, sharding in (("tw", "table_wise"), ("rw", "row_wise")):
    c = config_base.get_config("dlrm", "flat", "tiny")
    c.sharding = sharding
    cases.append(bench.prepare(bench.Case(name, c)))
  probes = bench.interleaved(cases, rounds=2, steps=1, rate_probe_s=0.05)
  assert len(probes) == 2 and all(p["matmul_flops_per_s"] > 0 for p in probes)
  # a random 256-B row from a 256 MiB table costs DRAM latency: far more than 256 B at streaming speed
  # (~2.5x here when quiet). Best streaming rate of the rounds: a probe slowed by other load on these
  # shared cores must not make the comparison flip.
  best_bw = max(p["memory_bytes_per_s"] for p in probes)
  assert max(p["random_row_s"] for p in probes) > 256 / best_bw
  for c in cases:
    assert len(c.times) == 2 and all(t > 0 for t in c.times)
    assert c.flops > 0 and c.comm["embedding_cross_tower_bytes"] > 0
  rows = [bench.summarize(c, bench.median_rates(probes)) for c in cases]
  assert rows[0]["comm/embedding_cross_tower_bytes"] != rows[1]["comm/embedding_cross_tower_bytes"]
  table = bench.markdown_table(rows, ["name", "step_ms_median", "x_floor"])
  assert table.splitlines()[0] == "| name | step_ms_median | x_floor |" and "| tw |" in table
  assert bench.interleaved(cases, rounds=1, steps=1) == []     # no probe asked, none taken
  for c in cases:
    bench.release(c)


def test_run_round_keeps_at_most_two_steps_in_flight(monkeypatch):
  """Step i is dispatched only after step i-2's output was waited for (XLA:CPU deadlocks with a long
  unsynchronised queue of collective steps; see ``bench.run_round``)."""
  dispatched, awaited = [], set()

  class StepOutput:
    def __init__(self, i):
      self.i = i

  def step(state, batch):
    i = len(dispatched)
    assert all(j in awaited for j in range(i - 1)), f"step {i} dispatched with {sorted(awaited)} awaited"
    dispatched.append(i)
    return state + 1, {"loss": StepOutput(i)}

  def wait(tree):
    awaited.update(leaf.i for leaf in jax.tree_util.tree_leaves(tree) if isinstance(leaf, StepOutput))
    return tree

  monkeypatch.setattr(bench.jax, "block_until_ready", wait)
  case = bench.Case("fake", None, step=step, state=0, batches=[None])
  assert bench.run_round(case, 6) > 0
  assert dispatched == list(range(6)) and case.state == 6 and awaited == set(range(6))
