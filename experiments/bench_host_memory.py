r"""A/B of ``--retain_host_memory``: the same train step in alternating fresh processes, glibc's default
malloc thresholds vs ``dmt_jax.host_memory.retain_freed_memory`` (which must be set before the first
allocation, hence one process per arm).

  python experiments/bench_host_memory.py --pairs=4 --steps=40
  python experiments/bench_host_memory.py --config=experiments/configs/dmt_dlrm.py:medium --pairs=2

Each child compiles the step, runs 5 warm-up steps, then ``--steps`` steps in rounds of 5 and prints the
median and min step time, user and system CPU time per step and minor page faults per step.
"""

import json
import statistics
import subprocess
import sys
import time

from absl import flags
from ml_collections import config_flags

import cli

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/flat_dlrm.py:medium",
                                          "Experiment config file (:arg for presets).")
_PAIRS = flags.DEFINE_integer("pairs", 4, "Alternating (default, retained) process pairs.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per process (rounds of 5).")
_CHILD = flags.DEFINE_enum("child", None, ["default", "retained"], "Internal: run one arm.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")

ROUND = 5


def child(arm: str) -> dict:
  import resource
  if arm == "retained":
    from dmt_jax import host_memory
    host_memory.retain_freed_memory()
  import jax
  config = _CONFIG.value
  if config.get("num_cpu_devices", 0):
    jax.config.update("jax_num_cpu_devices", int(config.num_cpu_devices))
  from dmt_jax.analysis import bench
  case = bench.prepare(bench.Case(arm, config))
  bench.run_round(case, ROUND)
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  times = [bench.run_round(case, ROUND) for _ in range(max(1, _STEPS.value // ROUND))]
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  n = len(times) * ROUND
  return {"arm": arm, "step_ms_median": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
          "user_ms_per_step": 1e3 * (r1.ru_utime - r0.ru_utime) / n,
          "sys_ms_per_step": 1e3 * (r1.ru_stime - r0.ru_stime) / n,
          "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / n}


def main(argv):
  del argv
  if _CHILD.value:
    print("@@" + json.dumps(child(_CHILD.value)), flush=True)
    return
  passthrough = [a for a in sys.argv[1:] if a.startswith("--config")]   # --config and its overrides
  rows = []
  for pair in range(_PAIRS.value):
    for arm in ("default", "retained"):
      cmd = [sys.executable, __file__, f"--child={arm}", f"--steps={_STEPS.value}"] + passthrough
      out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
      row = next(json.loads(l[2:]) for l in out.splitlines() if l.startswith("@@"))
      row["pair"] = pair
      rows.append(row)
      print(f"pair {pair} {arm:8s} median {row['step_ms_median']:6.1f} ms  min {row['step_ms_min']:6.1f}  "
            f"user {row['user_ms_per_step']:4.0f} ms  sys {row['sys_ms_per_step']:3.0f} ms  "
            f"faults {row['minor_faults_per_step']:7.0f} per step", flush=True)
  for arm in ("default", "retained"):
    r = [x for x in rows if x["arm"] == arm]
    print(f"{arm:8s} median of medians {statistics.median(x['step_ms_median'] for x in r):.1f} ms, "
          f"sys {statistics.median(x['sys_ms_per_step'] for x in r):.0f} ms, "
          f"faults {statistics.median(x['minor_faults_per_step'] for x in r):.0f} per step")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
