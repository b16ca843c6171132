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
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices per process (default: config).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of JAX processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_string("distributed", "", "'auto': let jax.distributed detect SLURM / Open MPI / TPU.")
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
  from dmt_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         auto=FLAGS.distributed == "auto")
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
  sys.exit(app.run(main))
