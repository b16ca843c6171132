"""Prints one JSON object: the collectives of one compiled training step, bytes per device.

  python experiments/comm_report.py --config=experiments/configs/dmt_dlrm.py:tiny
  python experiments/comm_report.py --config=experiments/configs/flat_dlrm.py:tiny --config.sharding=row_wise

Keys: cross_tower_bytes, intra_tower_bytes, embedding_cross_tower_bytes (cross-tower bytes except dense
gradient sync), dense_sync_bytes, and collectives (op, groups, bytes, scope, role of each). A collective
is intra_tower when every replica group stays inside one tower group of the mesh.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices (default: config).")
flags.DEFINE_bool("compact", False, "Omit the per-collective list.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  config = FLAGS.config
  ndev = FLAGS.num_cpu_devices if FLAGS.num_cpu_devices is not None else config.num_cpu_devices
  if ndev:
    jax.config.update("jax_num_cpu_devices", int(ndev))
  from dmt_jax import train
  from dmt_jax.analysis.step_report import step_report
  rep = step_report(train.build_experiment(config))
  if FLAGS.compact:
    rep.pop("collectives")
  print(json.dumps(rep, default=str))


if __name__ == "__main__":
  sys.exit(app.run(main))
