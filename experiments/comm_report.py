"""Prints one JSON object: the collectives of one compiled training step, bytes per device.

  python experiments/comm_report.py --config=experiments/configs/dmt_dlrm.py:tiny
  python experiments/comm_report.py --config=experiments/configs/flat_dlrm.py:tiny --config.sharding=row_wise

Keys: cross_tower_bytes, intra_tower_bytes, embedding_cross_tower_bytes (cross-tower bytes except dense
gradient sync), dense_sync_bytes, and collectives (op, groups, bytes, scope, role of each). A collective
is intra_tower when every replica group stays inside one tower group of the mesh.
``mesh_process_index`` lists the JAX process of each mesh position (``mesh.devices.flat`` order).

Multi-process (the report of the real multi-host program; process 0 prints):

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
      experiments/comm_report.py --config=experiments/configs/dmt_dlrm.py:tiny
"""

import json

from absl import flags
from ml_collections import config_flags

import cli
import runtime_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
flags.DEFINE_bool("compact", False, "Omit the per-collective list.")
flags.mark_flags_as_required(["config"])
runtime_flags.define()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  config = FLAGS.config
  runtime_flags.start(config)
  from dmt_jax import train
  from dmt_jax.analysis.step_report import step_report
  exp = train.build_experiment(config, jax.process_index(), jax.process_count())
  rep = step_report(exp)
  rep["num_processes"] = jax.process_count()
  rep["mesh_process_index"] = [int(d.process_index) for d in exp.mesh.devices.flat]
  if FLAGS.compact:
    rep.pop("collectives")
  if jax.process_index() == 0:
    print(json.dumps(rep, default=str), flush=True)


if __name__ == "__main__":
  cli.run(main)
