"""Side-by-side train-step benchmarks on emulated CPU devices (JSON + markdown table).

  python experiments/benchmark.py --suite=compare --output_dir=/tmp/bench      # flat TW/RW/TWRW vs DMT c=1..8
  python experiments/benchmark.py --suite=update  --output_dir=/tmp/bench      # dense vs row-sparse update, 100k vs 1M rows
  python experiments/benchmark.py --suite=rows|batch|features --output_dir=/tmp/bench   # scaling sweeps
  python experiments/benchmark.py --quick ...                                   # small sizes, a few minutes

Every suite compiles its cases, then times them interleaved (``--rounds`` rounds of ``--steps`` steps),
reporting median and min/max step time, examples/s, compile time, XLA memory analysis, FLOPs and bytes
(XLA cost analysis) against this machine's matmul rate and memory bandwidth (the floor; measured at
the start of every round, median used, so they drift with the machine like the steps do), the rows floor
(every looked-up row read once at the measured random-row cost; ``x_serial_floor`` = step / (compute +
rows floor), ``x_floor`` = step / compute floor), and the
communication bytes of the compiled step. Default model: DLRM, 26 tables x 100k rows x dim 64, batch
4096, MLPs 13-512-256-64 / 512-256-1, 8 CPU devices as host=2 x device=4.
"""

import json
import os
import sys

from absl import flags

import cli
import runtime_flags

flags.DEFINE_enum("suite", "compare", ["compare", "update", "rows", "batch", "features"], "What to measure.")
flags.DEFINE_string("output_dir", "/tmp/dmt_bench", "Where JSON and markdown go.")
flags.DEFINE_bool("quick", False, "Small sizes and few rounds (a few minutes here).")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
flags.DEFINE_integer("steps", 5, "Steps per round.")
flags.DEFINE_string("model", "dlrm", "dlrm | dcn")
flags.DEFINE_integer("num_cpu_devices", 8, "Fake CPU devices.")
runtime_flags.define_host_memory()
FLAGS = flags.FLAGS

KEYS = ["name", "step_ms_median", "step_ms_min", "step_ms_max", "examples_per_s", "compile_s",
        "floor_ms", "x_floor", "rows_floor_ms", "x_serial_floor", "temp_mib_per_device", "comm/embedding_cross_tower_bytes",
        "comm/intra_tower_bytes", "comm/dense_sync_bytes"]


def base_config(mode, quick, **over):
  from dmt_jax import config_base
  c = config_base.get_config(FLAGS.model, mode, "medium")
  c.model.bottom_mlp = (512, 256, 64)
  c.model.top_mlp = (512, 256, 1)
  c.model.deep_mlp = (512, 256)
  c.data.num_planted_groups = 4
  if quick:
    c.data.vocab_sizes = (20_000,) * 26
    c.batch_size = 1024
  config_base.set_fields(c, over)
  return c


def suite_cases(suite, quick):
  from dmt_jax.analysis.bench import Case
  if suite == "compare":
    cases = [Case(f"flat {s}", base_config("flat", quick, sharding=s))
             for s in ("table_wise", "row_wise", "table_row_wise")]
    # The same table-wise layout on the sort-bucketed id route (static_routing off), side by side.
    cases.insert(1, Case("flat table_wise, bucketed", base_config("flat", quick, sharding="table_wise",
                                                                  static_routing=False)))
    cases += [Case(f"dmt c={c}", base_config("dmt", quick, **{"towers.compression": float(c),
                                                              "towers.num_towers": 2}))
              for c in (1, 2, 4, 8)]
    # The feature-mixing tower module (D times cheaper than linear), at the headline c=4.
    cases.append(Case("dmt c=4, mix towers", base_config("dmt", quick, **{
        "towers.compression": 4.0, "towers.num_towers": 2, "towers.module": "mix"})))
    return cases
  if suite == "update":
    # Row-wise Adagrad (one accumulator per row, the large-table default) keeps 26 x 1M x 64 in memory.
    big = 200_000 if quick else 1_000_000
    small = 20_000 if quick else 100_000
    opt = dict(embedding_optimizer="rowwise_adagrad")
    return [Case(f"sparse update, {small // 1000}k rows", base_config("flat", quick, **opt, **{"data.vocab_sizes": (small,) * 26})),
            Case(f"dense update, {small // 1000}k rows", base_config("flat", quick, embedding_update="dense", **opt,
                                                                      **{"data.vocab_sizes": (small,) * 26})),
            Case(f"sparse update, {big // 1000}k rows", base_config("flat", quick, **opt, **{"data.vocab_sizes": (big,) * 26}))]
  if suite == "rows":
    sizes = (100_000, 1_000_000) if quick else (100_000, 1_000_000, 10_000_000)
    return [Case(f"{v // 1000}k rows x 2 tables", base_config(
        "flat", quick, embedding_optimizer="rowwise_adagrad",
        **{"data.vocab_sizes": (v,) * 2, "data.max_bags": (1,) * 2, "data.embedding_dim": 32,
           "model.bottom_mlp": (64, 32), "data.num_planted_groups": 1})) for v in sizes]
  if suite == "batch":
    sizes = (512, 1024, 2048) if quick else (1024, 4096, 16384)
    return [Case(f"{m} batch {b}", base_config(m, quick, batch_size=b)) for b in sizes for m in ("flat", "dmt")]
  if suite == "features":
    counts = (8, 16) if quick else (8, 26, 52)
    return [Case(f"{m} {f} features, {t} towers", base_config(
        m, quick, **{"data.vocab_sizes": (20_000 if quick else 100_000,) * f, "data.max_bags": (1,) * f,
                     "towers.num_towers": t}))
            for f in counts for m, t in (("flat", 0), ("dmt", 2), ("dmt", 4))]
  raise ValueError(suite)


def main(argv):
  del argv
  runtime_flags.apply_host_memory()
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  from dmt_jax.analysis import bench
  rounds = 3 if FLAGS.quick else FLAGS.rounds
  steps = 3 if FLAGS.quick else FLAGS.steps
  cases = suite_cases(FLAGS.suite, FLAGS.quick)
  for c in cases:
    print(f"[bench] compiling {c.name}", file=sys.stderr, flush=True)
    bench.prepare(c)
  # The floor's matmul rate and memory bandwidth are sampled at the start of every round (median used).
  rates = bench.median_rates(bench.interleaved(cases, rounds, steps, rate_probe_s=0.3 if FLAGS.quick else 0.5))
  rows = [bench.summarize(c, rates) for c in cases]
  cmd = "python experiments/benchmark.py " + " ".join(sys.argv[1:])
  result = {"suite": FLAGS.suite, "command": cmd, "machine": rates, "rounds": rounds, "steps": steps,
            "peak_rss_mib": bench.peak_rss_mib(), "cases": rows}
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, f"{FLAGS.suite}.json"), "w") as f:
    json.dump(result, f, indent=1)
  md = (f"`{cmd}` — matmul {rates['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"[{rates['matmul_flops_per_s_min'] / 1e9:.0f}–{rates['matmul_flops_per_s_max'] / 1e9:.0f} over {rounds} "
        f"rounds], memory {rates['memory_bytes_per_s'] / 1e9:.1f} GB/s, random 256-B row "
        f"{rates['random_row_s'] * 1e9:.0f} ns, peak RSS {result['peak_rss_mib']:.0f} MiB\n\n"
        + bench.markdown_table(rows, KEYS))
  with open(os.path.join(FLAGS.output_dir, f"{FLAGS.suite}.md"), "w") as f:
    f.write(md + "\n")
  print(md)


if __name__ == "__main__":
  cli.run(main)
