"""Benchmark harness: compile, time side by side (interleaved), and compare with the physical floor.

Benchmarks are measurements, not tests. Cases are compiled once, then timed in interleaved rounds
(case A, B, C, A, B, C, ...) so that load on this shared machine hits every case alike; we report the
median and the spread (min/max over rounds) of the per-step time.

The *floor* of a step is ``flops / matmul_rate``: the FLOPs of XLA's cost analysis of the compiled step
(summed over the emulated devices, which all share this machine's cores) at this machine's f32 matmul
rate, measured in the same run (``interleaved(..., rate_probe_s=...)`` samples it every round). XLA's
"bytes accessed" over-counts (every op's operands), so ``bytes / memory_bandwidth`` is reported as an
estimate next to it, not used as a floor.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dmt_jax import train
from dmt_jax.analysis import hlo


@dataclasses.dataclass
class Case:
  name: str
  config: Any
  exp: Any = None
  state: Any = None
  step: Callable | None = None
  batches: list = dataclasses.field(default_factory=list)
  compile_s: float = 0.0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  temp_bytes: int = 0
  argument_bytes: int = 0
  comm: dict = dataclasses.field(default_factory=dict)
  times: list = dataclasses.field(default_factory=list)


def fast_state(exp):
  """Train state with tables drawn directly on device (no host copy of the logical tables).

  Benchmarks only: a constant fill instead of ``init_state``'s random tables; shapes are the same.
  """
  eng = exp.engine
  shape = (exp.topology.num_devices, eng.layout.rows_local, eng.layout.width)
  # A constant fill is created shard by shard (random bits of the global shape would need a full
  # temporary); lookup and update cost do not depend on the values.
  fill = jax.jit(lambda: jnp.full(shape, 0.01, jnp.float32), out_shardings=eng.sharding)
  return train.init_state(exp, 0, tables=fill())


def prepare(case: Case, num_batches: int = 2) -> Case:
  """Builds, compiles and analyses one case."""
  exp = train.build_experiment(case.config)
  state = fast_state(exp)
  case.exp, case.state = exp, state
  case.batches = [train.to_global(exp, exp.source.train_batch(i)) for i in range(num_batches)]
  step = train.make_train_step(exp, train.state_shardings(state))
  t0 = time.perf_counter()
  compiled = step.lower(state, case.batches[0]).compile()
  case.compile_s = time.perf_counter() - t0
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  n = exp.topology.num_devices
  case.flops = float(ca.get("flops", 0.0)) * n
  case.bytes_accessed = float(ca.get("bytes accessed", 0.0)) * n
  mem = compiled.memory_analysis()
  if mem is not None:
    case.temp_bytes = int(getattr(mem, "temp_size_in_bytes", 0))
    case.argument_bytes = int(getattr(mem, "argument_size_in_bytes", 0))
  topo = exp.topology
  gsize = topo.group_size if topo.tower_level else topo.num_devices
  rep = hlo.comm_report(compiled.as_text(), gsize)
  case.comm = {k: rep[k] for k in ("cross_tower_bytes", "intra_tower_bytes", "embedding_cross_tower_bytes",
                                   "dense_sync_bytes")}
  case.step = compiled
  # warm-up: first call allocates, then the state is donated forward
  case.state, out = case.step(case.state, case.batches[0])
  jax.block_until_ready(out)
  return case


def run_round(case: Case, steps: int) -> float:
  """Runs ``steps`` steps, returns seconds per step.

  At most two steps are in flight: step i is dispatched before waiting for step i-1, so dispatch still
  overlaps execution. With no bound, XLA:CPU on emulated devices can deadlock: after tens of queued
  steps one device thread never reaches an all-to-all rendezvous and the process aborts ("Termination
  timeout for `all to all RendezvousKey...`"; 2 of 2 runs of 80 unsynchronised 8-device DLRM steps here,
  0 of 3 with this bound).
  """
  t0 = time.perf_counter()
  prev = out = None
  for i in range(steps):
    case.state, out = case.step(case.state, case.batches[i % len(case.batches)])
    if prev is not None:
      jax.block_until_ready(prev)
    prev = out
  jax.block_until_ready((case.state, out))
  return (time.perf_counter() - t0) / steps


def interleaved(cases: Sequence[Case], rounds: int, steps: int, rate_probe_s: float = 0.0) -> list[dict]:
  """``rounds`` rounds over all cases; with ``rate_probe_s > 0`` each round starts with a
  ``machine_rates`` probe of that length, so the floor's matmul rate is sampled under the same drifting
  conditions as the steps (returned, one dict per round; see ``median_rates``)."""
  probes = []
  for _ in range(rounds):
    if rate_probe_s > 0:
      probes.append(machine_rates(rate_probe_s))
    for c in cases:
      c.times.append(run_round(c, steps))
  return probes


def median_rates(probes: Sequence[dict]) -> dict:
  """Per-key median of several ``machine_rates`` results (plus their min and max, for the record)."""
  keys = probes[0].keys()
  out = {k: statistics.median(p[k] for p in probes) for k in keys}
  out.update({f"{k}_min": min(p[k] for p in probes) for k in keys})
  out.update({f"{k}_max": max(p[k] for p in probes) for k in keys})
  return out


def machine_rates(seconds: float = 1.0) -> dict:
  """Measured f32 matmul FLOP/s (XLA on all cores), memory bandwidth (large copy) and random-row gather
  cost (``random_row_seconds``) of this machine."""
  n = 1024
  a = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  reps, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    mm(a).block_until_ready()
    reps += 1
  flops = 2 * n ** 3 * reps / (time.perf_counter() - t0)
  big = jnp.ones((64 * 1024 * 1024 // 4,), jnp.float32)       # 64 MiB
  cp = jax.jit(lambda x: x + 1.0)
  cp(big).block_until_ready()
  reps, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    cp(big).block_until_ready()
    reps += 1
  bw = 2 * big.nbytes * reps / (time.perf_counter() - t0)    # read + write
  del big
  return {"matmul_flops_per_s": flops, "memory_bytes_per_s": bw, "random_row_s": random_row_seconds(seconds)}


PROBE_ROW_BYTES = 256          # one 64-wide f32 embedding row

# Module-level so that the probe, run at the start of every round, compiles once per process.
_gather_rows = jax.jit(lambda table, idx: jnp.take(table, idx, axis=0, mode="clip"))


def random_row_seconds(seconds: float = 1.0, table_mib: int = 256, rows_per_call: int = 16384) -> float:
  """Seconds per row of a gather of random ``PROBE_ROW_BYTES`` rows from a table far larger than the
  caches (``table_mib``), cycling through 64 random index sets (256 MiB of rows before one repeats): the
  DRAM-latency-bound cost of an embedding
  lookup's table read on this machine (~105-125 ns here after a warm-up pass, i.e. ~2 GB/s, a third of
  the streaming bandwidth; ~200-220 ns in the first few calls)."""
  width = PROBE_ROW_BYTES // 4
  num_rows = table_mib * 2 ** 20 // PROBE_ROW_BYTES
  table = jnp.full((num_rows, width), 0.01, jnp.float32)
  rng = np.random.default_rng(0)
  # 64 x 16384 rows x 256 B = 256 MiB of distinct reads before an index set repeats: 8x the 32 MiB L3
  # here, so a repeat finds its rows evicted (8 sets = 32 MiB measured ~106 ns/row, half of it cached).
  indices = [jnp.asarray(rng.integers(0, num_rows, rows_per_call, dtype=np.int32)) for _ in range(64)]
  for idx in indices:     # one untimed pass over every index set: steady state, as in a training loop
    _gather_rows(table, idx).block_until_ready()
  elapsed, calls = 0.0, 0
  while elapsed < seconds:
    idx = indices[calls % len(indices)]
    t = time.perf_counter()
    _gather_rows(table, idx).block_until_ready()
    elapsed += time.perf_counter() - t
    calls += 1
  return elapsed / (calls * rows_per_call)


def lookups_per_step(config) -> int:
  """Embedding rows one step reads at most: global batch x the summed per-feature bag lengths."""
  return int(config.batch_size) * int(sum(config.data.max_bags))


def summarize(case: Case, rates: dict) -> dict:
  t = sorted(case.times)
  med = statistics.median(t)
  # Compute floor: the step's FLOPs at this machine's measured matmul rate (a lower bound). XLA's
  # "bytes accessed" counts every op's operands and over-states traffic, so memory time is reported
  # as an upper estimate, not used as a floor. Rows floor: every looked-up row read once from DRAM at
  # the measured random-row cost (scaled by row size; the update's re-touch assumed cached). Whether the
  # two overlap is the machine's business: max() of them is a strict floor, their sum the floor of a
  # step that does not overlap its lookups with its matmuls.
  floor = case.flops / rates["matmul_flops_per_s"]
  row_bytes = 4 * int(case.config.data.embedding_dim)
  rows_floor = (lookups_per_step(case.config) * rates["random_row_s"]
                * max(1.0, row_bytes / PROBE_ROW_BYTES))
  mem_est = case.bytes_accessed / rates["memory_bytes_per_s"]
  return {
      "name": case.name,
      "step_ms_median": 1e3 * med,
      "step_ms_min": 1e3 * t[0],
      "step_ms_max": 1e3 * t[-1],
      "examples_per_s": case.config.batch_size / med,
      "compile_s": case.compile_s,
      "gflops_per_step": case.flops / 1e9,
      "gbytes_per_step": case.bytes_accessed / 1e9,
      "floor_ms": 1e3 * floor,
      "rows_floor_ms": 1e3 * rows_floor,
      "serial_floor_ms": 1e3 * (floor + rows_floor),
      "mem_traffic_est_ms": 1e3 * mem_est,
      "x_floor": med / floor if floor > 0 else float("nan"),
      "x_serial_floor": med / (floor + rows_floor) if floor + rows_floor > 0 else float("nan"),
      "temp_mib_per_device": case.temp_bytes / 2 ** 20,
      "argument_mib_per_device": case.argument_bytes / 2 ** 20,
      **{f"comm/{k}": v for k, v in case.comm.items()},
  }


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(rows: list[dict], keys: Sequence[str]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)
  out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    out.append("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
  return "\n".join(out)


def release(case: Case) -> None:
  case.state = case.step = None
  case.batches = []
  case.exp = None
