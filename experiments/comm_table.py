"""Markdown table of per-device bytes per training step: flat sharding types vs DMT at several c.

  python experiments/comm_table.py --config_arg=tiny

Same model (DLRM), batch and mesh for every row; numbers come from the compiled HLO of one train step
(``dmt_jax.analysis.step_report``), the same source as ``experiments/comm_report.py``.
"""


from absl import flags

import cli

flags.DEFINE_string("config_arg", "tiny", "Preset passed to the configs (tiny, medium, ...).")
flags.DEFINE_string("model", "dlrm", "dlrm | dcn")
flags.DEFINE_integer("num_cpu_devices", 8, "Fake CPU devices.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  from dmt_jax import config_base, train
  from dmt_jax.analysis.step_report import step_report
  rows = []
  for s in ("table_wise", "row_wise", "column_wise", "table_row_wise"):
    c = config_base.get_config(FLAGS.model, "flat", FLAGS.config_arg)
    c.sharding = s
    rows.append((f"flat {s}", step_report(train.build_experiment(c))))
  for comp in (1, 2, 4, 8, 16):
    c = config_base.get_config(FLAGS.model, "dmt", FLAGS.config_arg)
    c.towers.compression = float(comp)
    rows.append((f"DMT linear TM, c={comp}", step_report(train.build_experiment(c))))
  base = rows[0][1]["embedding_cross_tower_bytes"]
  print(f"`python experiments/comm_table.py --config_arg={FLAGS.config_arg} --model={FLAGS.model}`\n")
  print("| layout | embedding cross-tower B | (vs flat TW) | ids exchange B | tower-output exchange B | "
        "intra-tower B | dense sync B |")
  print("|---|---|---|---|---|---|---|")
  for name, r in rows:
    by = r["bytes_by_role"]
    print(f"| {name} | {r['embedding_cross_tower_bytes']} | {r['embedding_cross_tower_bytes'] / base:.2f}x | "
          f"{by.get('ids_exchange', 0)} | {by.get('tower_output_exchange', 0)} | {r['intra_tower_bytes']} | "
          f"{r['dense_sync_bytes']} |")


if __name__ == "__main__":
  cli.run(main)
