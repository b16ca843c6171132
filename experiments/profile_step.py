r"""Where a train step's time goes: a ``jax.profiler`` trace of a few steps, summarised per XLA op.

  python experiments/profile_step.py --config=experiments/configs/flat_dlrm.py:medium
  python experiments/profile_step.py --config=experiments/configs/dmt_dlrm.py:medium --top=40

Compiles one train step of ``--config`` (tables filled with a constant, as in the benchmarks), runs
``--warmup`` steps, traces ``--steps`` more and prints (1) the median step time and the process's CPU
time per step (user + system, and the average number of cores busy), (2) per-op time per
step summed over the emulated devices' threads (so it can exceed the wall time: 8 device threads share
this machine's cores) grouped into categories (matmul, sort, gather, scatter, zero-fill, collective,
other) and (3) the ``--top`` ops with their HLO shape. Collective times include waiting for the slowest
device. The Perfetto trace stays under ``--trace_dir`` (open it in ui.perfetto.dev).
"""

import collections
import glob
import gzip
import json
import os
import resource
import statistics
import time

from absl import flags
from ml_collections import config_flags

import cli
import runtime_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (:arg for presets).")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untraced steps first (compile, caches).")
_TOP = flags.DEFINE_integer("top", 25, "Ops listed.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "/tmp/dmt_profile", "Where the trace goes.")
flags.mark_flags_as_required(["config"])
runtime_flags.define_host_memory()

_SKIP = ("ThunkExecutor", "Wait", "Rendezvous", "$", "PjitFunction", "Common", "SlinkyThreadPool")


def category(name: str) -> str:
  """Coarse kind of one XLA:CPU op from its HLO name."""
  if any(k in name for k in ("all-to-all", "all-reduce", "all-gather", "collective", "reduce-scatter")):
    return "collective"
  if name.startswith("sort"):
    return "sort"
  if "ynn" in name or name.startswith(("dot", "convolution")):
    return "matmul"
  if "scatter" in name:
    return "scatter"
  if "gather" in name:
    return "gather"
  if name.startswith("wrapped_broadcast"):
    return "zero-fill"
  return "other"


def op_times(trace_file: str) -> dict[str, float]:
  """Summed duration (µs) per op name over all threads of a Perfetto JSON trace."""
  with gzip.open(trace_file) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  out = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_SKIP):
      out[e["name"]] += e.get("dur", 0)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  runtime_flags.apply_host_memory()
  import jax
  if config.get("num_cpu_devices", 0):
    jax.config.update("jax_num_cpu_devices", int(config.num_cpu_devices))
  from dmt_jax.analysis import bench, hlo
  case = bench.prepare(bench.Case("profile", config), num_batches=1)   # compiles; one warm-up step
  shapes = hlo.instruction_shapes(case.step.as_text())
  if _WARMUP.value:
    bench.run_round(case, _WARMUP.value)
  cpu0 = resource.getrusage(resource.RUSAGE_SELF)
  times = [bench.run_round(case, 1) for _ in range(_STEPS.value)]
  cpu1 = resource.getrusage(resource.RUSAGE_SELF)
  user_ms = 1e3 * (cpu1.ru_utime - cpu0.ru_utime) / _STEPS.value
  sys_ms = 1e3 * (cpu1.ru_stime - cpu0.ru_stime) / _STEPS.value
  run_dir = os.path.join(_TRACE_DIR.value, time.strftime("%Y%m%d-%H%M%S"))
  jax.profiler.start_trace(run_dir, create_perfetto_trace=True)
  bench.run_round(case, _STEPS.value)
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(os.path.join(run_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  per_op = {k: v / 1e3 / _STEPS.value for k, v in op_times(trace).items()}   # ms per step
  cats = collections.Counter()
  for name, ms in per_op.items():
    cats[category(name)] += ms
  print(f"median step {1e3 * statistics.median(times):.1f} ms (untraced, {_STEPS.value} steps, "
        f"{case.exp.topology.num_devices} devices); trace: {trace}")
  print(f"CPU time per step (untraced): user {user_ms:.1f} ms + system {sys_ms:.1f} ms = "
        f"{(user_ms + sys_ms) / (1e3 * statistics.mean(times)):.2f} cores busy on average")
  print("\nms per step, summed over device threads, by category:")
  for k, v in cats.most_common():
    print(f"  {k:11s} {v:8.1f}")
  print(f"\ntop {_TOP.value} ops (ms per step summed over device threads):")
  for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:_TOP.value]:
    print(f"  {ms:8.1f}  {category(name):10s}  {name:32s} {shapes.get(name, '')[:60]}")


if __name__ == "__main__":
  cli.run(main)
